"""The Kubernetes objects a Server owns (its StatefulSet and headless Service): read, created, replaced.

StatefulSets go through the custom-objects API with group ``apps`` (the same REST paths as the typed AppsV1Api,
``/apis/apps/v1/namespaces/NS/statefulsets``) so they stay plain JSON both ways: a pod field newer than the client
library survives. The Service holds only standard fields and goes through the typed CoreV1Api.

Idempotent: the object carries a hash of what the controller wants of it (an annotation); an object whose hash
matches is not written again, so reconciling a Server that did not change writes nothing. A replace carries
the resourceVersion it read (409 when the object changed since: the reconcile is tried again). Fields others
keep on the object (labels and annotations added by other tools, the status) are kept.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from kubernetes.aio import client as k8s
from kubernetes.aio.client.exceptions import ApiException

from controller.resource_kinds import ResourceKind

JsonObject = dict[str, Any]

STATEFUL_SETS = ResourceKind("apps", "v1", "statefulsets", "StatefulSet")
HASH_ANNOTATION = "modelplane/desired-hash"


def desired_hash(obj: JsonObject) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def _annotations(obj: JsonObject) -> dict[str, str]:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return annotations if isinstance(annotations, dict) else {}


def _object(value: object) -> JsonObject:
    if not isinstance(value, dict):
        raise TypeError(f"the API server answered with {type(value).__name__}, not an object")
    return value


def merged_for_write(existing: JsonObject | None, desired: JsonObject, extra_annotations: dict[str, str]) -> JsonObject:
    """``desired`` with the hash annotation and, from ``existing``, what others keep on the object."""
    body = copy.deepcopy(desired)
    metadata = body.setdefault("metadata", {})
    annotations = {**_annotations(existing or {}), **metadata.get("annotations", {}), **extra_annotations}
    annotations[HASH_ANNOTATION] = desired_hash(desired)
    metadata["annotations"] = annotations
    if existing is not None:
        old = existing.get("metadata") or {}
        metadata["labels"] = {**(old.get("labels") or {}), **metadata.get("labels", {})}
        metadata["resourceVersion"] = old.get("resourceVersion")
    return body


def up_to_date(existing: JsonObject, desired: JsonObject, extra_annotations: dict[str, str]) -> bool:
    annotations = _annotations(existing)
    return annotations.get(HASH_ANNOTATION) == desired_hash(desired) and all(
        annotations.get(key) == value for key, value in extra_annotations.items()
    )


class Workloads:
    """A Server's StatefulSet and Service in the API server."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._api_client = api_client
        self._custom = k8s.CustomObjectsApi(api_client)
        self._core = k8s.CoreV1Api(api_client)

    async def stateful_set(self, namespace: str, name: str) -> JsonObject | None:
        kind = STATEFUL_SETS
        try:
            answer = await self._custom.get_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return _object(answer)

    async def apply_stateful_set(
        self, existing: JsonObject | None, desired: JsonObject, extra_annotations: dict[str, str]
    ) -> JsonObject:
        """Create ``desired``, or replace ``existing`` with it unless it is up to date. Returns what is stored."""
        kind = STATEFUL_SETS
        namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        if existing is not None and up_to_date(existing, desired, extra_annotations):
            return existing
        body = merged_for_write(existing, desired, extra_annotations)
        if existing is None:
            answer = await self._custom.create_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, body
            )
        else:
            answer = await self._custom.replace_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name, body
            )
        return _object(answer)

    async def apply_service(self, desired: JsonObject) -> None:
        """Create the Service, or replace it when it is not what ``desired`` says (its clusterIP is kept)."""
        namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        try:
            found = await self._core.read_namespaced_service(name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            body = merged_for_write(None, desired, {})
            await self._core.create_namespaced_service(namespace, _service_model(body))
            return
        existing = _object(self._api_client.sanitize_for_serialization(found))  # type: ignore[no-untyped-call]
        if up_to_date(existing, desired, {}):
            return
        body = merged_for_write(existing, desired, {})
        await self._core.replace_namespaced_service(name, namespace, _service_model(body))


def _service_model(body: JsonObject) -> k8s.V1Service:
    service = k8s.V1Service.from_dict(body)
    if service is None:
        raise TypeError("the Service could not be made from its JSON")
    return service
