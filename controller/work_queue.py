"""Which objects of one kind need reconciling: keys, not objects, so a burst of changes to one object coalesces into
one reconcile of its latest version (the reconciler reads the object from the watcher's cache when it gets to it).

Rules (as client-go's work queue): a key is queued at most once; a key is never handed to two workers at once
(a change while it is being reconciled queues it again once the worker is done); a key waiting for a retry's
backoff is not taken earlier by an ordinary change (``add``), only by ``add_now`` (the scheduler asked for every
resource again, so waiting out an old failure's backoff makes no sense).
"""

from __future__ import annotations

import asyncio
from collections import deque

from controller.resource_kinds import ObjectKey


class KeyedWorkQueue:
    def __init__(self) -> None:
        self._ready: deque[ObjectKey] = deque()
        self._queued: set[ObjectKey] = set()  # in _ready
        self._active: set[ObjectKey] = set()  # handed to a worker, not done yet
        self._dirty: set[ObjectKey] = set()  # changed while active: queue again when done
        self._delayed: dict[ObjectKey, asyncio.TimerHandle] = {}
        self._nonempty = asyncio.Event()  # set whenever _ready may hold a key

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, key: ObjectKey) -> None:
        if key in self._delayed:
            return  # the retry takes the latest version when its time comes
        self._add(key)

    def add_now(self, key: ObjectKey) -> None:
        delayed = self._delayed.pop(key, None)
        if delayed is not None:
            delayed.cancel()
        self._add(key)

    def add_after(self, key: ObjectKey, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds (a retry); an earlier retry already waiting is kept."""
        if key in self._delayed:
            return
        loop = asyncio.get_running_loop()
        self._delayed[key] = loop.call_later(delay, self._retry_due, key)

    def _retry_due(self, key: ObjectKey) -> None:
        self._delayed.pop(key, None)
        self._add(key)

    def _add(self, key: ObjectKey) -> None:
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._ready.append(key)
        self._nonempty.set()

    async def get(self) -> ObjectKey:
        """The next key to reconcile; the caller must call ``done(key)`` after."""
        while not self._ready:
            self._nonempty.clear()
            await self._nonempty.wait()
        key = self._ready.popleft()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: ObjectKey) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self._add(key)

    def close(self) -> None:
        for handle in self._delayed.values():
            handle.cancel()
        self._delayed.clear()
