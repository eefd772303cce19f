"""A Server's ``spec.podSpec`` merged over its ServerConfig's, and its ``spec.imageOverrides`` applied.

The merge follows what ``kubectl`` users expect of a strategic merge of a PodSpec, for the lists where that
matters: containers, init containers, volumes, env, ports, volume mounts and image pull secrets are merged item
by item by their key (``name``; ``mountPath`` for mounts; ``containerPort`` for ports), so a Server can change one
container's image or add one env variable without repeating the rest. Maps merge key by key; any other value
(and any other list) in the Server replaces the ServerConfig's. A key set to ``null`` in the Server removes it.
Unknown fields are kept as they are: the objects stay plain JSON, never typed models that would drop fields the
client library does not know.
"""

from __future__ import annotations

import copy
from typing import Any

from controller.servers.errors import ServerSpecError

JsonObject = dict[str, Any]

# The key that names an item of each list that merges item by item, wherever the list appears in a PodSpec.
_LIST_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "tolerations": None,  # replaced whole, as a strategic merge does
}


def merge_pod_spec(base: JsonObject, over: JsonObject) -> JsonObject:
    """``over`` merged over ``base`` (neither is changed)."""
    return _merge_map(base, over, "spec.podSpec")


def _merge_map(base: JsonObject, over: JsonObject, where: str) -> JsonObject:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            merged.pop(key, None)
        elif key in merged and isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = _merge_map(merged[key], value, f"{where}.{key}")
        elif _LIST_KEYS.get(key) is not None and isinstance(merged.get(key), list) and isinstance(value, list):
            merged[key] = _merge_list(merged[key], value, str(_LIST_KEYS[key]), f"{where}.{key}")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_list(base: list[Any], over: list[Any], item_key: str, where: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in base]
    positions = {item.get(item_key): index for index, item in enumerate(merged) if isinstance(item, dict)}
    for item in over:
        if not isinstance(item, dict) or item.get(item_key) is None:
            raise ServerSpecError(f"{where}: every item must be an object with {item_key!r}")
        at = positions.get(item[item_key])
        if at is None:
            positions[item[item_key]] = len(merged)
            merged.append(copy.deepcopy(item))
        else:
            merged[at] = _merge_map(merged[at], item, f"{where}[{item[item_key]}]")
    return merged


def apply_image_overrides(pod: JsonObject, overrides: JsonObject) -> JsonObject:
    """``pod`` with each container named in ``overrides`` merged with the partial container given for it.

    Seldon's Server names its containers here (``agent``, ``rclone``): ``agent`` applies to the agent container,
    any other key to the container of that name. ``rclone`` is accepted and ignored: modelplane's agent fetches
    artifacts itself and its pods run no rclone. Any other name that is not a container of the pod is an error
    (a typo would otherwise silently run the old image)."""
    pod = copy.deepcopy(pod)
    containers = [c for c in [*pod.get("containers", []), *pod.get("initContainers", [])] if isinstance(c, dict)]
    by_name = {container.get("name"): container for container in containers}
    for name, partial in overrides.items():
        if name == "rclone":
            continue
        if not isinstance(partial, dict):
            raise ServerSpecError(f"spec.imageOverrides.{name} must be an object (a partial container)")
        target = by_name.get(name)
        if target is None:
            known = ", ".join(sorted(str(n) for n in by_name)) or "none"
            raise ServerSpecError(f"spec.imageOverrides.{name}: the pod has no container {name!r} (it has: {known})")
        target.update(_merge_map(target, {k: v for k, v in partial.items() if k != "name"}, f"imageOverrides.{name}"))
    return pod
