"""The scheduler process: its gRPC servers, start-up, readiness and graceful shutdown.

Two listeners, so each can get its own network exposure and credentials:
- ``listen``: the Scheduler API for clients, controllers and gateways.
- ``agent_listen``: AgentService, for the agents of inference-server replicas.
Both also serve the standard gRPC health service and server reflection.

Shutdown (SIGTERM or SIGINT): health turns NOT_SERVING at once, new calls are refused, calls in
flight get ``shutdown_grace_seconds`` to finish, then both servers stop and the process exits 0.
A second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from grpc import aio

from generated.mlops.agent.v1 import agent_pb2, agent_pb2_grpc
from generated.mlops.routing.v1 import routing_pb2
from generated.mlops.scheduler import scheduler_pb2
from modelplane import __version__
from modelplane.addresses import Address
from modelplane.audit import AuditLog
from modelplane.auth.access_check import AccessCheck
from modelplane.auth.grpc_access import RefusalRecorder
from modelplane.logs import with_fields
from modelplane.ready_file import write_ready_file
from modelplane.standard_services import HEALTH_SERVICE, Health, add_reflection
from modelplane.stream_watchdog import StreamWatchdog
from modelplane.transport import bind, http_server_ssl, new_server
from scheduler import resource_versions
from scheduler.agent_service import AgentService
from scheduler.audit_interceptor import AccessRefusals, AuditInterceptor
from scheduler.core import CoreSettings, SchedulerCore
from scheduler.persistence import SqliteStateStore
from scheduler.request_limits import RequestLimits
from scheduler.routing_service import RoutingService
from scheduler.scheduler_metrics import SchedulerMetrics, TimedStore
from scheduler.scheduler_service import SchedulerService
from scheduler.settings import SchedulerSettings
from scheduler.state_dir import StateDir

if TYPE_CHECKING:  # imported where the metrics listener starts (_serve_metrics)
    from aiohttp import web

log = logging.getLogger(__name__)

SCHEDULER_SERVICE = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
ROUTING_SERVICE = routing_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name


class ShutdownRequest:
    """Counts stop signals: the first asks for a graceful stop, a second for an immediate one."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()

    def signal(self) -> None:
        if self.requested.is_set():
            self.forced.set()
        self.requested.set()


async def _listener(
    address: Address,
    settings: SchedulerSettings,
    services: list[str],
    access: AccessCheck,
    interceptors: Sequence[aio.ServerInterceptor] = (),
    *,
    record_refusal: RefusalRecorder | None = None,
) -> tuple[aio.Server, Address]:
    server = new_server(interceptors, access, record_refusal)
    add_reflection(server, services)
    port = bind(server, address, settings.security)
    return server, Address(address.host, port)


async def serve(
    settings: SchedulerSettings,
    shutdown: ShutdownRequest,
    serving: asyncio.Future[tuple[Address, Address]] | None = None,
    *,
    metrics_serving: asyncio.Future[Address] | None = None,
) -> None:
    """Serve until ``shutdown`` is requested, then stop gracefully. The state dir must be open.

    ``serving``, when given, gets the bound (API, agent) addresses once both listen; ``metrics_serving`` the
    metrics listener's, once it listens.
    """
    store = await SqliteStateStore.open(settings.state_dir)
    metrics = SchedulerMetrics()
    core = SchedulerCore(
        TimedStore(store, metrics.store_commit_seconds.observe),
        CoreSettings(
            sync_grace_seconds=settings.sync_grace_seconds,
            scale_down_idle_seconds=settings.scale_down_idle_seconds,
            stopped_experiment_ttl_seconds=settings.stopped_experiment_ttl_seconds,
            hold_unknown_models=settings.hold_unknown_models,
        ),
    )
    try:
        audit = settings.audit.open(settings.state_dir)
        try:
            await _restore(core)
            await _serve(settings, shutdown, core, audit, serving, metrics=metrics, metrics_serving=metrics_serving)
        finally:
            await core.close()
            audit.close()
    finally:
        await store.close()


# The cyclic collector's thresholds while serving (Python's default: 700, 10, 10). Under LoadModel each call and
# its agent round trip leave ~75 more tracked objects allocated than freed (measured: 1,060 young collections in
# 10,000 calls), some for good (the model's record) and ~5 in a reference cycle (grpc.aio's per-call lookup of an
# intercepted handler: its closure and HandlerCallDetails). With the default, a young collection ran every ~10
# calls and every tenth of them walked the middle generation too: 0.73 s of 13 s of CPU, 5-6 % (bench/README.md,
# "Issue 14: the LoadModel path's CPU"). With 10,000, most short-lived objects are freed by reference counting
# before a collection sees them and collections come ~30 times less often (0.17 s); the price is up to 10,000
# objects of cyclic garbage (a few MB) kept a little longer. Full collections still follow Python's own rule.
GC_THRESHOLDS = (10_000, 10, 10)


async def _restore(core: SchedulerCore) -> None:
    """Start the core (it restores every stored record) with Python's cyclic garbage collector off, collect once,
    then move what is left out of the collector's sight (gc.freeze). The records live as long as their models and
    hold no reference cycles (refcounting still frees them), but each full collection would walk all of them again:
    with 100,000 models that is a few tenths of a second on one core, ten times during the restore and more while
    agents re-register, with the event loop held up all the while. Then the collector runs with ``GC_THRESHOLDS``."""
    gc.disable()
    try:
        await core.start()
    finally:
        gc.enable()
    gc.collect()  # the little garbage the restore left, so none of it is kept for ever
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve(
    settings: SchedulerSettings,
    shutdown: ShutdownRequest,
    core: SchedulerCore,
    audit: AuditLog,
    serving: asyncio.Future[tuple[Address, Address]] | None,
    *,
    metrics: SchedulerMetrics,
    metrics_serving: asyncio.Future[Address] | None,
) -> None:
    health = Health()
    api_services = [SCHEDULER_SERVICE, ROUTING_SERVICE, HEALTH_SERVICE]
    agent_services = [AGENT_SERVICE, HEALTH_SERVICE]

    # Every mutation is audited, refusals by the field limits too (scheduler/audit_interceptor.py); every Scheduler
    # API and RoutingService request passes the field limits before its handler (modelplane/spec/limits.py).
    # One access check for both listeners: one policy, one token file (modelplane/auth).
    access = AccessCheck(settings.auth)
    audited = AuditInterceptor(audit, lambda resource: resource_versions.live_version(core, resource))
    api, api_address = await _listener(
        settings.listen,
        settings,
        api_services,
        access,
        [audited, RequestLimits()],
        record_refusal=AccessRefusals(audit),
    )
    streams = StreamWatchdog(settings.subscriber_lag_seconds)
    metrics.watch(core, streams)
    SchedulerService(core, streams, observe_load=metrics.load_model_seconds.observe).add_to(api)
    RoutingService(core, streams).add_to(api)
    health.add_to(api)

    agents, agent_address = await _listener(settings.agent_listen, settings, agent_services, access)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(core, settings.heartbeat_seconds), agents)
    health.add_to(agents)

    await api.start()
    await agents.start()
    for service in ("", SCHEDULER_SERVICE, AGENT_SERVICE):
        await health.set_serving(service)
    try:
        metrics_runner, metrics_address = await _serve_metrics(settings, metrics)
    except BaseException:
        await _stop_servers([api, agents], None)
        raise
    if metrics_serving is not None and not metrics_serving.done():
        metrics_serving.set_result(metrics_address)
    if settings.ready_file is not None:
        write_ready_file(
            settings.ready_file,
            {
                "version": __version__,
                "listen": str(api_address),
                "agent_listen": str(agent_address),
                "metrics_listen": str(metrics_address),
            },
        )
    if serving is not None and not serving.done():
        serving.set_result((api_address, agent_address))
    log.info(
        "scheduler serving",
        extra=with_fields(
            version=__version__,
            listen=str(api_address),
            agent_listen=str(agent_address),
            metrics_listen=str(metrics_address),
            state_dir=str(settings.state_dir),
            roles=str(settings.auth.policy_file) if settings.auth.policy_file is not None else "off",
        ),
    )

    await shutdown.requested.wait()
    log.info("shutting down", extra=with_fields(grace_seconds=settings.shutdown_grace_seconds))
    await health.enter_graceful_shutdown()
    await core.close()  # ends status streams; calls in flight may still finish within the grace period
    stopping = asyncio.create_task(_stop_servers([api, agents], settings.shutdown_grace_seconds))
    forced = asyncio.create_task(shutdown.forced.wait())
    await asyncio.wait([stopping, forced], return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        log.warning("second stop signal: cancelling calls in flight")
        await _stop_servers([api, agents], None)
        await stopping
    forced.cancel()
    await metrics_runner.cleanup()
    log.info("scheduler stopped")


async def _serve_metrics(settings: SchedulerSettings, metrics: SchedulerMetrics) -> tuple[web.AppRunner, Address]:
    """The metrics listener, started once the API serves: its HTTP stack (aiohttp, ~0.1 s of CPU to import) is not
    paid for before a restarted scheduler's first answer (tests/cli/test_command_imports.py pins that). Over TLS
    when the scheduler's listeners are (its certificate; a client CA asks Prometheus for one too)."""
    from modelplane.metrics_http import serve_metrics  # noqa: PLC0415 - see above

    return await serve_metrics(
        settings.metrics_listen, metrics.registry, ssl_context=http_server_ssl(settings.security)
    )


async def _stop_servers(servers: list[aio.Server], grace: float | None) -> None:
    await asyncio.gather(*(server.stop(grace) for server in servers))


def install_signal_handlers(shutdown: ShutdownRequest) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, shutdown.signal)

    def remove() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    return remove


async def run(settings: SchedulerSettings) -> None:
    """Open the state dir, serve until SIGTERM/SIGINT, stop gracefully. With leader election, stand by until
    elected first (scheduler/elected_process.py; it raises LeadershipLost when the Lease is lost)."""
    with StateDir(settings.state_dir):
        shutdown = ShutdownRequest()
        remove_handlers = install_signal_handlers(shutdown)
        try:
            if settings.leader_election is None:
                await serve(settings, shutdown)
            else:
                from scheduler.elected_process import serve_elected  # noqa: PLC0415 - it imports this module

                await serve_elected(settings, settings.leader_election, shutdown)
        finally:
            remove_handlers()
