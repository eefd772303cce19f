"""What the scheduler keeps in its state store: the tables, reading a record back, and the write-behind.

Acknowledged changes (LoadModel, UnloadModel, ServerNotify, ...) are written by the façade before it answers
(``write``). Changes that follow from agents' events (a version dropped, a deleted model gone) are no
acknowledgements, so they need not block anything: the write-behind saves them in the background; lost on a
crash, they are recomputed after the restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence, Set
from typing import TypeVar

from modelplane.spec.errors import Unavailable
from scheduler.models.cluster import Cluster
from scheduler.persistence import Change, Delete, Put, StateStore, StateStoreError

log = logging.getLogger(__name__)

MODELS_TABLE = "models"
SERVERS_TABLE = "servers"
EXPERIMENTS_TABLE = "experiments"
PIPELINES_TABLE = "pipelines"

T = TypeVar("T")


async def write(store: StateStore, changes: Sequence[Change]) -> None:
    """Durable before acknowledged: raises Unavailable (and nothing is changed) when the store cannot save."""
    try:
        await store.apply(changes)
    except StateStoreError as error:
        raise Unavailable(f"the state store could not save the change, so it was not made: {error}") from None


def decode(decode: Callable[[str, bytes], T], table: str, key: str, data: bytes) -> T | None:
    try:
        return decode(key, data)
    except (ValueError, KeyError, TypeError) as error:
        # Kept in the store untouched, so a fixed version can still read it; skipped for now.
        log.error("cannot read stored %s record %r (%s); skipping it", table, key, error)
        return None


class WriteBehind:
    """The models, servers and removed pipelines whose stored records are behind the in-memory state."""

    def __init__(self, store: StateStore, cluster: Cluster) -> None:
        self._store = store
        self._cluster = cluster
        self._models: set[str] = set()
        self._servers: set[str] = set()
        self._pipelines_removed: set[str] = set()
        self._wake = asyncio.Event()

    def save(
        self,
        *,
        models: Set[str] = frozenset(),
        servers: Set[str] = frozenset(),
        pipelines_removed: Set[str] = frozenset(),
    ) -> None:
        """Save these models' and servers' records as they are when written, and delete these pipelines."""
        if not (models or servers or pipelines_removed):
            return
        self._models |= models
        self._servers |= servers
        self._pipelines_removed |= pipelines_removed
        self._wake.set()

    async def loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except StateStoreError:
                log.exception("could not save state changes; retrying in 1s")
                self._wake.set()
                await asyncio.sleep(1)

    async def flush(self) -> None:
        models, self._models = self._models, set()
        servers, self._servers = self._servers, set()
        pipelines, self._pipelines_removed = self._pipelines_removed, set()
        changes: list[Change] = [Delete(PIPELINES_TABLE, name) for name in sorted(pipelines)]
        for name in sorted(models):
            record = self._cluster.models.get(name)
            changes.append(Put(MODELS_TABLE, name, record.to_bytes()) if record else Delete(MODELS_TABLE, name))
        for name in sorted(servers):
            server = self._cluster.servers.get(name)
            if server is not None:
                changes.append(Put(SERVERS_TABLE, name, server.to_bytes()))
        if changes:
            try:
                await self._store.apply(changes)
            except StateStoreError:
                self._models |= models
                self._servers |= servers
                self._pipelines_removed |= pipelines
                raise
