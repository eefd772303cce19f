"""A Server and its ServerConfig (JSON objects as the API server returns them) -> its StatefulSet and headless
Service, as plain JSON objects ready for the ``kubernetes.aio`` client.

Plain JSON, not the client's typed models: a PodSpec from a ServerConfig may hold fields newer than the
client library, and a typed model would drop them without a word (the issue: unknown fields are kept).

- Names: the StatefulSet and the Service are named after the Server, so pod ``<server>-<N>`` is replica N
  and resolves as ``<server>-<N>.<server>.<namespace>.svc``. A Server's name is a DNS label of at most 52
  characters (a StatefulSet's pods carry a ``controller-revision-hash`` label of its name plus 11 characters,
  and labels hold 63), and the scheduler's server names are DNS labels too.
- The pod: the ServerConfig's ``podSpec`` with the Server's ``podSpec`` merged over it (pod_merge.py), then
  the agent container completed or made (agent_container.py), then ``imageOverrides``.
- Volumes: the ServerConfig's ``volumeClaimTemplates`` become the StatefulSet's (one claim per pod; a pod
  volume of the same name is dropped, the claim takes its place), else the pod's own volumes (emptyDir).
- Replicas: ``spec.replicas`` (default 1), brought within ``minReplicas``..``maxReplicas``.
- Owner: the Server (controller reference), so deleting the Server deletes what was made for it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from controller.servers.agent_container import AgentDefaults, AgentPorts, capabilities_for, complete_agent
from controller.servers.errors import ServerSpecError
from controller.servers.pod_merge import apply_image_overrides, merge_pod_spec
from modelplane.spec.errors import InvalidArgument
from modelplane.spec.names import check_name

JsonObject = dict[str, Any]

SERVER_API_VERSION = "mlops.seldon.io/v1alpha1"
MAX_SERVER_NAME = 52
# The agent's --replica-idx takes 0..9999: a pod's ordinal must fit.
MAX_REPLICAS = 10_000
SERVER_LABEL = "mlops.seldon.io/server"
MANAGED_BY = "modelplane-controller"


@dataclass(frozen=True)
class ServerObjects:
    stateful_set: JsonObject
    service: JsonObject
    replicas: int
    ports: AgentPorts


def selector_labels(server_name: str) -> dict[str, str]:
    """The labels that pick a Server's pods (the StatefulSet's selector, which can never change afterwards)."""
    return {"app.kubernetes.io/name": "modelplane-server", SERVER_LABEL: server_name}


def object_labels(server_name: str) -> dict[str, str]:
    return {**selector_labels(server_name), "app.kubernetes.io/managed-by": MANAGED_BY}


def _count(spec: JsonObject, field: str) -> int | None:
    value = spec.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPLICAS:
        raise ServerSpecError(f"spec.{field} must be a whole number from 0 to {MAX_REPLICAS}, not {value!r}")
    return value


@dataclass(frozen=True)
class ReplicaBounds:
    minimum: int
    maximum: int

    def clamp(self, replicas: int) -> int:
        return max(self.minimum, min(self.maximum, replicas))


def replica_bounds(server: JsonObject) -> ReplicaBounds:
    spec = _spec(server, "Server")
    minimum = _count(spec, "minReplicas")
    maximum = _count(spec, "maxReplicas")
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ServerSpecError(f"spec.minReplicas ({minimum}) is more than spec.maxReplicas ({maximum})")
    return ReplicaBounds(minimum or 0, MAX_REPLICAS if maximum is None else maximum)


def desired_replicas(server: JsonObject) -> int:
    """``spec.replicas`` (default 1) within ``minReplicas``..``maxReplicas``."""
    replicas = _count(_spec(server, "Server"), "replicas")
    return replica_bounds(server).clamp(1 if replicas is None else replicas)


def server_name_of(server: JsonObject) -> str:
    name = (server.get("metadata") or {}).get("name")
    if not isinstance(name, str):
        raise ServerSpecError("the Server has no metadata.name")
    try:
        check_name(name, "server")
    except InvalidArgument as error:
        raise ServerSpecError(str(error)) from None
    if len(name) > MAX_SERVER_NAME:
        raise ServerSpecError(
            f"server name {name[:20]!r}... is {len(name)} characters long; a Server's StatefulSet allows "
            f"{MAX_SERVER_NAME} (its pods' controller-revision-hash label adds 11)"
        )
    return name


def _spec(obj: JsonObject, kind: str) -> JsonObject:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise ServerSpecError(f"the {kind} has no spec")
    return spec


def _object(value: object, where: str) -> JsonObject:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ServerSpecError(f"{where} must be an object")
    return value


def _string_list(value: object, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ServerSpecError(f"{where} must be a list of strings")
    return list(value)


def _claim_templates(config_spec: JsonObject) -> list[JsonObject]:
    templates = config_spec.get("volumeClaimTemplates") or []
    if not isinstance(templates, list):
        raise ServerSpecError("ServerConfig spec.volumeClaimTemplates must be a list")
    claims: list[JsonObject] = []
    for index, template in enumerate(templates):
        if not isinstance(template, dict):
            raise ServerSpecError(f"ServerConfig spec.volumeClaimTemplates[{index}] must be an object")
        # Seldon's ServerConfig gives {name, spec}; a full PVC object ({metadata: {name}, spec}) is taken too.
        name = template.get("name") or (template.get("metadata") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise ServerSpecError(f"ServerConfig spec.volumeClaimTemplates[{index}] has no name")
        claim = {k: copy.deepcopy(v) for k, v in template.items() if k != "name"}
        claim["metadata"] = {**_object(claim.get("metadata"), "volumeClaimTemplates[].metadata"), "name": name}
        claims.append(claim)
    return claims


def owner_reference(server: JsonObject) -> JsonObject:
    metadata = server.get("metadata") or {}
    if not metadata.get("uid"):
        raise ServerSpecError("the Server has no metadata.uid (it must come from the API server)")
    return {
        "apiVersion": SERVER_API_VERSION,
        "kind": "Server",
        "name": metadata["name"],
        "uid": metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_server_objects(server: JsonObject, server_config: JsonObject, defaults: AgentDefaults) -> ServerObjects:
    """The StatefulSet and headless Service for ``server`` of ``server_config``. Raises ServerSpecError."""
    name = server_name_of(server)
    namespace = (server.get("metadata") or {}).get("namespace") or "default"
    spec = _spec(server, "Server")
    config_spec = _spec(server_config, "ServerConfig")
    config_name = (server_config.get("metadata") or {}).get("name")
    if spec.get("serverConfig") != config_name:
        raise ServerSpecError(f"spec.serverConfig is {spec.get('serverConfig')!r}, not {config_name!r}")
    claims = _claim_templates(config_spec)
    claim_names = [claim["metadata"]["name"] for claim in claims]
    pod = merge_pod_spec(
        _object(config_spec.get("podSpec"), "ServerConfig spec.podSpec"), _object(spec.get("podSpec"), "spec.podSpec")
    )
    agent = next((c for c in pod.get("containers") or [] if isinstance(c, dict) and c.get("name") == "agent"), {})
    capabilities = capabilities_for(
        agent,
        _string_list(spec.get("capabilities"), "spec.capabilities"),
        _string_list(spec.get("extraCapabilities"), "spec.extraCapabilities"),
    )
    pod, ports = complete_agent(
        pod, server_name=name, capabilities=capabilities, claim_names=claim_names, defaults=defaults
    )
    # After the agent is made, so an override of the agent's image applies to a made agent too.
    pod = apply_image_overrides(pod, _object(spec.get("imageOverrides"), "spec.imageOverrides"))
    if claims:
        pod["volumes"] = [
            v for v in pod.get("volumes") or [] if not (isinstance(v, dict) and v.get("name") in claim_names)
        ]
    replicas = desired_replicas(server)
    labels = object_labels(name)
    metadata = {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner_reference(server)]}
    stateful_set: JsonObject = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": copy.deepcopy(metadata),
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            # Pods start and stop together rather than one by one: replicas are independent of each other
            # (each agent registers its own), and a scale-down is drained by the controller before it is made.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(name)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }
    if claims:
        stateful_set["spec"]["volumeClaimTemplates"] = claims
    retention = spec.get("statefulSetPersistentVolumeClaimRetentionPolicy")
    if retention is not None:
        stateful_set["spec"]["persistentVolumeClaimRetentionPolicy"] = copy.deepcopy(
            _object(retention, "spec.statefulSetPersistentVolumeClaimRetentionPolicy")
        )
    service: JsonObject = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": copy.deepcopy(metadata),
        "spec": {
            "clusterIP": "None",
            # An agent registers (and the scheduler routes to it) before its pod is Ready.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(name),
            "ports": [
                {"name": "proxy-http", "port": ports.http, "targetPort": ports.http, "protocol": "TCP"},
                {"name": "proxy-grpc", "port": ports.grpc, "targetPort": ports.grpc, "protocol": "TCP"},
            ],
        },
    }
    return ServerObjects(stateful_set, service, replicas, ports)
