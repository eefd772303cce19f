"""How a kind's reconciler plugs into the controller, and the loop that drives it.

A reconciler owns one kind (``Reconciler.kind``): the process watches that kind, and the loop hands the
reconciler each changed object's latest version, keyed by namespace/name, one key at a time per key (never two
reconciles of one object at once; bursts coalesce). An exception from ``reconcile`` means "not done": the key
is tried again after a jittered backoff that grows per key and resets when a reconcile succeeds. A reconciler
must therefore be idempotent (it is also called again for every object when the scheduler asks for them:
``resend``).

To add a kind: write a class with the ``Reconciler`` members and add its factory to ``process.RECONCILERS``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kubernetes.aio import client as k8s

from controller.backoff import Backoff
from controller.resource_kinds import JsonObject, ObjectKey, ResourceKind
from controller.resource_watcher import ResourceCache
from controller.scheduler_connection import SchedulerConnection
from controller.settings import ControllerSettings
from controller.work_queue import KeyedWorkQueue

log = logging.getLogger(__name__)

# A ControlPlaneResponse.Event value (SEND_MODELS, ...): the scheduler asks for every resource of a kind again.
ControlPlaneEvent = int


class Reconciler(Protocol):
    """One kind's reconciler (see the module's docstring)."""

    @property
    def kind(self) -> ResourceKind: ...

    @property
    def resend_on(self) -> frozenset[ControlPlaneEvent]:
        """The SubscribeControlPlane events that ask for every object of this kind again (none for a kind the
        scheduler does not hold)."""
        ...

    async def reconcile(self, key: ObjectKey, resource: JsonObject | None) -> None:
        """Make the world match ``resource``, the latest version the watcher has (None: it no longer exists).
        Raise to be called again later (with backoff)."""
        ...

    def forget_sent(self) -> None:
        """The scheduler asked for every object again: what it was told before no longer counts, so the next
        reconcile of each object tells it again."""
        ...

    async def run(self) -> None:
        """Background work of the reconciler (e.g. following a status stream), until cancelled."""
        ...


@dataclass
class ControllerContext:
    """What a reconciler may use: the settings, the API client, the scheduler, every watched kind's cache, and a
    way to queue another object (of any watched kind) for reconciling."""

    settings: ControllerSettings
    api_client: k8s.ApiClient
    scheduler: SchedulerConnection
    caches: dict[ResourceKind, ResourceCache] = field(default_factory=dict)
    loops: dict[ResourceKind, ReconcileLoop] = field(default_factory=dict)

    def cache(self, kind: ResourceKind) -> ResourceCache:
        if kind not in self.caches:
            self.caches[kind] = ResourceCache(kind)
        return self.caches[kind]

    def requeue(self, kind: ResourceKind, key: ObjectKey) -> None:
        loop = self.loops.get(kind)
        if loop is not None:
            loop.queue.add(key)


ReconcilerFactory = Callable[[ControllerContext], Reconciler]


class ReconcileLoop:
    """Hands ``reconciler`` the keys its kind's watchers report, ``workers`` at a time, with per-key backoff."""

    def __init__(self, reconciler: Reconciler, cache: ResourceCache, *, workers: int = 4) -> None:
        self.reconciler = reconciler
        self.cache = cache
        self.queue = KeyedWorkQueue()
        self._workers = workers
        self._backoffs: dict[ObjectKey, Backoff] = {}

    def changed(self, key: ObjectKey) -> None:
        """A watcher's listener: ``key``'s object changed or went away."""
        self.queue.add(key)

    def resend(self) -> None:
        """Reconcile every cached object again, telling the scheduler even what it was told before."""
        self.reconciler.forget_sent()
        for key in self.cache.keys():  # noqa: SIM118 - a sorted copy: not a dict
            self.queue.add_now(key)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.reconciler.run(), name=f"{self.reconciler.kind}-background")
                for index in range(self._workers):
                    group.create_task(self._work(), name=f"{self.reconciler.kind}-worker-{index}")
        finally:
            self.queue.close()

    async def _work(self) -> None:
        kind = self.reconciler.kind
        while True:
            key = await self.queue.get()
            try:
                await self.reconciler.reconcile(key, self.cache.get(key))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure of one object is retried; the loop goes on
                delay = self._backoffs.setdefault(key, Backoff(initial=0.5, maximum=60.0)).next_delay()
                log.warning("reconciling %s %s failed (%s); again in %.1fs", kind.kind, key, _describe(error), delay)
                self.queue.add_after(key, delay)
            else:
                self._backoffs.pop(key, None)
            finally:
                self.queue.done(key)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 300 else f"{text[:297]}..."
