"""Keeps a cache of one kind's objects current from the Kubernetes API and says which keys changed.

The loop, one asyncio task per kind and namespace (or one for all namespaces):
- list, replace this watcher's part of the cache with the list, and report every key whose object differs
  (a new resourceVersion) or is gone;
- watch from the list's resourceVersion, applying ADDED/MODIFIED/DELETED and remembering each event's version
  (BOOKMARKs move the version only);
- when the server ends the stream (its timeout, a restart, ``close_watches``) watch again from the last version;
  when the version has expired (ERROR 410) list again, which also catches deletions missed in between;
- on any other error back off (jittered, growing) and list again.
``synced`` is set after the first list: until then the cache is not a view of the cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from controller.backoff import Backoff
from controller.resource_client import ApiException, ResourceClient, WatchExpiredError
from controller.resource_kinds import JsonObject, ObjectKey, ResourceKind

log = logging.getLogger(__name__)

KeyListener = Callable[[ObjectKey], None]


class ResourceCache:
    """The latest version of every watched object of one kind, by key. Filled only by its watchers."""

    def __init__(self, kind: ResourceKind) -> None:
        self.kind = kind
        self._objects: dict[ObjectKey, JsonObject] = {}

    def get(self, key: ObjectKey) -> JsonObject | None:
        return self._objects.get(key)

    def keys(self) -> list[ObjectKey]:
        return sorted(self._objects)

    def values(self) -> Iterator[JsonObject]:
        return iter(list(self._objects.values()))

    def __len__(self) -> int:
        return len(self._objects)

    def _store(self, key: ObjectKey, obj: JsonObject | None) -> bool:
        """Store (or drop, for None) ``key``'s object; True if that changed what the cache holds."""
        old = self._objects.get(key)
        if obj is None:
            return self._objects.pop(key, None) is not None
        self._objects[key] = obj
        return old is None or _version(old) != _version(obj)

    def _keys_in(self, namespace: str | None) -> set[ObjectKey]:
        return {key for key in self._objects if namespace is None or key.namespace == namespace}


def _version(obj: JsonObject) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class ResourceWatcher:
    """Fills ``cache`` with the objects of its kind in ``namespace`` (None: every namespace) and calls
    ``on_change(key)`` for each key whose object changed or went away."""

    def __init__(
        self,
        client: ResourceClient,
        cache: ResourceCache,
        namespace: str | None,
        on_change: KeyListener,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._client = client
        self._cache = cache
        self._namespace = namespace
        self._on_change = on_change
        self._backoff = backoff or Backoff(initial=0.2, maximum=10.0)
        self.synced = asyncio.Event()
        self.lists = 0  # how many times it listed (a relist after 410 shows here)

    @property
    def where(self) -> str:
        return f"{self._cache.kind} in {self._namespace or 'all namespaces'}"

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            try:
                version = await self._relist()
                while True:
                    version, events = await self._follow(version)
                    if not events:
                        # A stream that ended without an event: do not ask again in a tight loop.
                        await asyncio.sleep(self._backoff.next_delay())
            except WatchExpiredError as expired:
                log.info("watch of %s expired (%s): listing again", self.where, expired)
                continue
            except asyncio.CancelledError:
                raise
            except (ApiException, OSError, TimeoutError, ValueError, TypeError) as error:
                # ValueError/TypeError: an answer that is not the JSON we expect. Asking again is all we can do.
                delay = self._backoff.next_delay()
                log.warning("watching %s failed (%s); again in %.1fs", self.where, _describe(error), delay)
                await asyncio.sleep(delay)

    async def _relist(self) -> str:
        listed = await self._client.list_objects(self._namespace)
        items = listed.get("items") or []
        if not isinstance(items, list):
            raise TypeError(f"the list of {self.where} has no items list")
        seen: set[ObjectKey] = set()
        changed: list[ObjectKey] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            key = ObjectKey.of(item)
            seen.add(key)
            if self._cache._store(key, item):
                changed.append(key)
        for key in self._cache._keys_in(self._namespace) - seen:
            self._cache._store(key, None)
            changed.append(key)
        self.lists += 1
        self.synced.set()
        self._backoff.reset()
        for key in changed:
            self._on_change(key)
        version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
        log.debug("listed %d %s; watching from %s", len(seen), self.where, version)
        return version

    async def _follow(self, version: str) -> tuple[str, int]:
        """Apply the watch's events from ``version`` until the stream ends: the last version seen, and how many
        events came."""
        events = 0
        async for event in self._client.watch(self._namespace, version):
            events += 1
            kind, obj = event.get("type"), event.get("object")
            if not isinstance(obj, dict):
                continue
            version = _version(obj) or version
            if kind == "BOOKMARK":
                continue
            key = ObjectKey.of(obj)
            if kind == "DELETED":
                changed = self._cache._store(key, None)
            elif kind in ("ADDED", "MODIFIED"):
                changed = self._cache._store(key, obj)
            else:
                log.warning("watch of %s sent an event of type %r; ignored", self.where, kind)
                continue
            self._backoff.reset()
            if changed:
                self._on_change(key)
        return version, events


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
