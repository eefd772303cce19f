"""The board and the browsers watching it: every change applied to the state goes to each connected browser's own
bounded queue, which keeps only the latest change of each object (the page shows state, not history: a browser that
reads late gets where things are now). A browser with ``max_queued`` objects' changes unsent is dropped (its
EventSource reconnects and gets a fresh snapshot), so a slow one never holds up the sources or the other browsers,
and never grows memory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from dashboard.board_state import BoardState, Change, JsonView, Kind

DEFAULT_MAX_QUEUED = 1000
DEFAULT_MAX_WATCHERS = 64


class TooManyWatchersError(Exception):
    """The page has as many open event streams as it serves."""


class Watcher:
    """One browser's event stream: the changes not yet sent, and whether it fell behind."""

    def __init__(self, max_queued: int) -> None:
        self._max_queued = max_queued
        self._queued: dict[tuple[Kind, str], Change] = {}  # in the order of each object's latest change
        self._ready = asyncio.Event()
        self.dropped = False

    def offer(self, change: Change) -> None:
        if self.dropped:
            return
        key = (change.kind, change.name)
        if self._queued.pop(key, None) is None and len(self._queued) >= self._max_queued:
            self.drop()
            return
        self._queued[key] = change
        self._ready.set()

    def drop(self) -> None:
        self.dropped = True
        self._queued.clear()
        self._ready.set()

    async def next_changes(self) -> list[Change]:
        """The changes queued since the last call (waits for one); empty once dropped."""
        await self._ready.wait()
        self._ready.clear()
        if self.dropped:
            return []
        changes = list(self._queued.values())
        self._queued.clear()
        return changes


class LiveBoard:
    def __init__(
        self,
        state: BoardState | None = None,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
    ) -> None:
        self.state = state or BoardState()
        self._max_queued = max_queued
        self._max_watchers = max_watchers
        self._watchers: set[Watcher] = set()
        self._closed = False

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def watch(self) -> tuple[JsonView, Watcher]:
        """A snapshot and the watcher that gets every change after it (nothing awaits between the two)."""
        if self._closed:
            raise TooManyWatchersError("the dashboard is stopping")
        if len(self._watchers) >= self._max_watchers:
            raise TooManyWatchersError(f"the dashboard serves at most {self._max_watchers} open pages")
        watcher = Watcher(self._max_queued)
        self._watchers.add(watcher)
        return self.state.snapshot(), watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close(self) -> None:
        """End every browser's stream (the dashboard is stopping) and take no new one."""
        self._closed = True
        for watcher in self._watchers:
            watcher.drop()
        self._watchers.clear()

    def put(self, kind: Kind, name: str, view: JsonView) -> None:
        self._send([self.state.put(kind, name, view)])

    def remove(self, kind: Kind, name: str) -> None:
        self._send([self.state.remove(kind, name)])

    def replace_all(self, kind: Kind, views: Mapping[str, JsonView]) -> None:
        self._send(self.state.replace_all(kind, views))

    def _send(self, changes: Iterable[Change | None]) -> None:
        for change in changes:
            if change is None:
                continue
            for watcher in list(self._watchers):
                watcher.offer(change)
                if watcher.dropped:
                    self._watchers.discard(watcher)
