"""Keeps the Kafka bridge's topics in step with the routing table, off the routing stream's path.

``update_resources`` may wait for in-flight requests before the consumer group rebalances, so the table
listener only records the latest wanted sets and wakes one task that applies them, newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.kafka.bridge import KafkaBridge
from gateway.routing_table import RoutingTable

log = logging.getLogger(__name__)


class KafkaTopicsFollower:
    def __init__(self, bridge: KafkaBridge) -> None:
        self.bridge = bridge
        self._wanted: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self._applied: tuple[frozenset[str], frozenset[str]] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def on_table(self, table: RoutingTable) -> None:
        """Table listener: only models with a serving replica, and pipelines, get topics consumed."""
        models = frozenset(name for name, route in table.models.items() if route.versions)
        self._wanted = (models, frozenset(table.pipelines))
        if self._wanted != self._applied:
            self._wake.set()

    async def start(self) -> None:
        await self.bridge.start()
        self._task = asyncio.create_task(self._follow(), name="kafka-topics")

    async def _follow(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            wanted = self._wanted
            if wanted == self._applied:
                continue
            try:
                await self.bridge.update_resources(*wanted)
                self._applied = wanted
            except Exception:
                log.exception("could not update the Kafka topics the gateway consumes; retrying on the next change")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.bridge.stop()
