"""The controller process: watch Seldon's resources, reconcile each kind, follow the scheduler's control plane.

Wiring (one asyncio task each, all in one TaskGroup): per reconciled kind a ReconcileLoop (its workers and the
reconciler's own background task, e.g. a status stream) and one ResourceWatcher per watched namespace (or one for
all); the ControlPlaneFollower; the health listener when asked. It is ready (ready file, /readyz) once every kind
has been listed. SIGTERM/SIGINT stop it: the tasks are cancelled, the channel and the API client closed, exit 0.
Nothing is lost by stopping anywhere: the API server holds the resources, the scheduler what it was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from controller.control_plane import ControlPlaneFollower
from controller.health import start_health_listener
from controller.reconciling import ControllerContext, ReconcileLoop, ReconcilerFactory
from controller.resource_client import ResourceClient
from controller.resource_watcher import ResourceWatcher
from controller.scheduler_connection import SchedulerConnection
from controller.scheduler_kinds import ExperimentKind, ModelKind, PipelineKind
from controller.scheduler_resources import SchedulerResourceReconciler
from controller.servers.server_reconciler import SERVER_RECONCILERS
from controller.settings import ControllerSettings
from modelplane.kubernetes_api import kubernetes_client
from modelplane.ready_file import write_ready_file
from modelplane.signals import stop_on_signals

log = logging.getLogger(__name__)

# The reconcilers, one per kind. Add a kind's factory here (see controller/reconciling.py).
RECONCILERS: list[ReconcilerFactory] = [
    lambda context: SchedulerResourceReconciler(context, ModelKind()),
    lambda context: SchedulerResourceReconciler(context, PipelineKind()),
    lambda context: SchedulerResourceReconciler(context, ExperimentKind()),
    *SERVER_RECONCILERS,
]


class Controller:
    """The wired parts (built inside a running loop, with an open API client)."""

    def __init__(self, context: ControllerContext, factories: list[ReconcilerFactory]) -> None:
        self.context = context
        settings = context.settings
        self.watchers: list[ResourceWatcher] = []
        for factory in factories:
            reconciler = factory(context)
            kind = reconciler.kind
            loop = ReconcileLoop(reconciler, context.cache(kind))
            context.loops[kind] = loop
            client = ResourceClient(context.api_client, kind)
            for namespace in settings.namespaces or (None,):
                self.watchers.append(ResourceWatcher(client, loop.cache, namespace, loop.changed))
        self.control_plane = ControlPlaneFollower(context.scheduler, settings.name, self._resend, self.synced)

    def _resend(self, event: int) -> None:
        for loop in self.context.loops.values():
            if event in loop.reconciler.resend_on:
                loop.resend()

    async def synced(self) -> None:
        for watcher in self.watchers:
            await watcher.synced.wait()

    def not_ready(self) -> str | None:
        waiting = [watcher.where for watcher in self.watchers if not watcher.synced.is_set()]
        if waiting:
            return f"not listed yet: {', '.join(waiting)}"
        if not self.control_plane.connected:
            return f"no control-plane stream from the scheduler at {self.context.scheduler.address}"
        return None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for loop in self.context.loops.values():
                group.create_task(loop.run(), name=f"reconcile-{loop.reconciler.kind}")
            for watcher in self.watchers:
                group.create_task(watcher.run(), name=f"watch-{watcher.where}")
            group.create_task(self.control_plane.run(), name="control-plane")


async def run(
    settings: ControllerSettings,
    stop: asyncio.Event | None = None,
    factories: list[ReconcilerFactory] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or until ``stop`` is set, when the caller handles signals)."""
    if stop is None:
        stop = asyncio.Event()
        stop_on_signals(stop)
    scheduler = SchedulerConnection(settings.scheduler, settings.security, settings.token_file)
    health: web.AppRunner | None = None
    try:
        async with kubernetes_client(settings.kubernetes) as api_client:
            controller = Controller(
                ControllerContext(settings, api_client, scheduler), RECONCILERS if factories is None else factories
            )
            addresses: dict[str, str] = {"scheduler": str(settings.scheduler)}
            if settings.health_listen is not None:
                health, bound = await start_health_listener(
                    settings.health_listen, settings.serving, controller.not_ready
                )
                addresses["health_listen"] = str(bound)
            running = asyncio.create_task(controller.run(), name="controller")
            where = ", ".join(settings.namespaces) or "all namespaces"
            log.info("controller %s: watching %s; scheduler %s", settings.name, where, settings.scheduler)
            try:
                await _until_synced_or_stopped(controller, running, stop)
                if settings.ready_file is not None and not stop.is_set() and not running.done():
                    write_ready_file(settings.ready_file, addresses)
                await _until_stopped(running, stop)
                log.info("controller %s stopping", settings.name)
            finally:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
    finally:
        if health is not None:
            await health.cleanup()
        await scheduler.close()


async def _until_synced_or_stopped(controller: Controller, running: asyncio.Task[None], stop: asyncio.Event) -> None:
    synced = asyncio.create_task(controller.synced())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([synced, stopping, running], return_when=asyncio.FIRST_COMPLETED)
    finally:
        synced.cancel()
        stopping.cancel()


async def _until_stopped(running: asyncio.Task[None], stop: asyncio.Event) -> None:
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopping, running], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if running.done() and not running.cancelled():
        running.result()  # a part that failed for good stops the process with its error
