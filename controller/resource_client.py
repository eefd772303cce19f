"""The controller's calls to the Kubernetes API for one kind, as JSON objects: list, watch, get, and the two
writes a controller makes (metadata.finalizers, and status through the status subresource).

Writes carry the resourceVersion they were computed from, so a write based on a stale read is refused with 409
(``ApiException.status``) instead of overwriting a newer change; callers re-read and decide again. The spec is
never written: the resource is the user's, with any fields we do not know kept as the API server keeps them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from kubernetes.aio import client as k8s
from kubernetes.aio.client.exceptions import ApiException

from controller.resource_kinds import JsonObject, ObjectKey, ResourceKind

__all__ = ["ApiException", "ResourceClient", "WatchExpiredError", "is_conflict", "is_gone", "is_not_found"]

MERGE_PATCH = "application/merge-patch+json"
# Longest a single watch request lasts: the API server ends it then (timeoutSeconds) and the watcher resumes from
# the last version it saw. The client gives up a little later, so a connection that died silently cannot hang.
WATCH_SECONDS = 300
_WATCH_CLIENT_MARGIN_SECONDS = 30.0
# A watch line longer than this is refused (an object is at most ~1.5 MiB in etcd; the margin is for JSON framing).
MAX_WATCH_LINE_BYTES = 4 * 1024 * 1024


class WatchExpiredError(Exception):
    """The watch's resourceVersion is too old (ERROR 410 Gone/Expired): list again."""


def is_conflict(error: ApiException) -> bool:
    return bool(error.status == 409)


def is_not_found(error: ApiException) -> bool:
    return bool(error.status == 404)


def is_gone(error: ApiException) -> bool:
    return bool(error.status == 410)


def _object(value: object, what: str) -> JsonObject:
    """The custom objects API answers ``object``: a JSON object, checked."""
    if not isinstance(value, dict):
        raise TypeError(f"the API server answered {what} with {type(value).__name__}, not an object")
    return value


class ResourceClient:
    """One kind's REST calls, in one namespace or all (``namespace`` None)."""

    def __init__(self, api_client: k8s.ApiClient, kind: ResourceKind) -> None:
        self.kind = kind
        self._api = k8s.CustomObjectsApi(api_client)

    async def list_objects(self, namespace: str | None) -> JsonObject:
        """The kind's objects and the list's resourceVersion (``metadata.resourceVersion``)."""
        kind = self.kind
        if namespace is None:
            answer = await self._api.list_cluster_custom_object(kind.group, kind.version, kind.plural)
        else:
            answer = await self._api.list_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural)
        return _object(answer, f"a list of {kind}")

    async def watch(self, namespace: str | None, resource_version: str) -> AsyncIterator[JsonObject]:
        """The watch events after ``resource_version`` (``{"type": ..., "object": ...}``) until the server ends the
        stream. Raises WatchExpiredError for ERROR 410, ApiException for other errors."""
        kind = self.kind
        arguments: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": WATCH_SECONDS,
            "_request_timeout": WATCH_SECONDS + _WATCH_CLIENT_MARGIN_SECONDS,
        }
        if namespace is None:
            response = await self._api.list_cluster_custom_object_without_preload_content(
                kind.group, kind.version, kind.plural, **arguments
            )
        else:
            response = await self._api.list_namespaced_custom_object_without_preload_content(
                kind.group, kind.version, namespace, kind.plural, **arguments
            )
        try:
            if response.status >= 400:
                raise ApiException(status=response.status, reason=response.reason)
            while line := await response.content.readline():
                if len(line) > MAX_WATCH_LINE_BYTES:
                    raise ValueError(f"a watch event of {kind} is larger than {MAX_WATCH_LINE_BYTES} bytes")
                if not line.strip():
                    continue
                event = _object(json.loads(line), f"a watch event of {kind}")
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if isinstance(status, dict) and status.get("code") == 410:
                        raise WatchExpiredError(str(status.get("message") or "resource version expired"))
                    raise ApiException(
                        status=int(status.get("code") or 500) if isinstance(status, dict) else 500,
                        reason=str(status.get("message") if isinstance(status, dict) else status),
                    )
                yield event
        finally:
            response.release()

    async def get(self, key: ObjectKey) -> JsonObject:
        kind = self.kind
        answer = await self._api.get_namespaced_custom_object(
            kind.group, kind.version, key.namespace, kind.plural, key.name
        )
        return _object(answer, f"a get of {kind} {key}")

    async def set_finalizers(self, obj: JsonObject, finalizers: list[str]) -> JsonObject:
        """Write ``metadata.finalizers`` of ``obj`` as read (409 when it changed since)."""
        kind, key = self.kind, ObjectKey.of(obj)
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": obj["metadata"]["resourceVersion"]}}
        answer = await self._api.patch_namespaced_custom_object(
            kind.group, kind.version, key.namespace, kind.plural, key.name, patch, _content_type=MERGE_PATCH
        )
        return _object(answer, f"a patch of {kind} {key}")

    async def write_status(self, obj: JsonObject, status: JsonObject) -> JsonObject:
        """Replace ``status`` of ``obj`` as read, through the status subresource (409 when it changed since)."""
        kind, key = self.kind, ObjectKey.of(obj)
        body = {
            "apiVersion": f"{kind.group}/{kind.version}",
            "kind": kind.kind,
            "metadata": {
                "name": key.name,
                "namespace": key.namespace,
                "resourceVersion": obj["metadata"]["resourceVersion"],
            },
            "status": status,
        }
        answer = await self._api.patch_namespaced_custom_object_status(
            kind.group, kind.version, key.namespace, kind.plural, key.name, body, _content_type=MERGE_PATCH
        )
        return _object(answer, f"a status write of {kind} {key}")
