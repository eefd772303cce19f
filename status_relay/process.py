"""The relay process: its listener, its feeds from the scheduler, readiness and graceful shutdown.

Health (the standard gRPC health service): the process is SERVING once it listens; the Scheduler service is
SERVING only while every kind of status is current (a load balancer can send subscribers to relays that have a
snapshot), NOT_SERVING while any is connecting. Shutdown (SIGTERM or SIGINT): health turns NOT_SERVING, the
streams end (their clients subscribe again, elsewhere), calls get ``shutdown_grace_seconds``, the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from generated.mlops.scheduler import scheduler_pb2
from modelplane import __version__
from modelplane.addresses import Address
from modelplane.auth.access_check import AccessCheck
from modelplane.auth_flags import client_token
from modelplane.logs import with_fields
from modelplane.ready_file import write_ready_file
from modelplane.standard_services import HEALTH_SERVICE, Health, add_reflection
from modelplane.stream_watchdog import StreamWatchdog
from modelplane.transport import bind, http_server_ssl, new_server
from status_relay.relay_service import RelayService
from status_relay.settings import MAX_PENDING_KEYS, RelaySettings
from status_relay.status_cache import CacheState, StatusCache
from status_relay.status_kinds import KINDS
from status_relay.upstream import UpstreamFeed

log = logging.getLogger(__name__)

SCHEDULER_SERVICE = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name


@dataclass(frozen=True, slots=True)
class RelayServing:
    """What a running relay is: its bound address, its caches by subscribe RPC, and its servicer (for tests)."""

    address: Address
    caches: Mapping[str, StatusCache]
    service: RelayService
    metrics_address: Address | None = None  # where /metrics is served (--metrics-listen), if it is


async def serve(
    settings: RelaySettings, stop: asyncio.Event, serving: asyncio.Future[RelayServing] | None = None
) -> None:
    """Serve until ``stop`` is set. ``serving``, when given, learns what serves once the relay listens."""
    token = client_token(settings.token_file)
    caches = {kind.subscribe_rpc: StatusCache(kind, MAX_PENDING_KEYS, str(settings.scheduler)) for kind in KINDS}
    health = Health()
    server = new_server((), AccessCheck(settings.auth))
    add_reflection(server, [SCHEDULER_SERVICE, HEALTH_SERVICE])
    streams = StreamWatchdog(settings.subscriber_lag_seconds, server="status relay")
    service = RelayService(caches, streams, settings.max_subscribers)
    service.add_to(server)
    health.add_to(server)
    port = bind(server, settings.listen, settings.serving)
    address = Address(settings.listen.host, port)

    health_changes = asyncio.Event()

    def on_state() -> None:
        health_changes.set()

    feeds = [
        UpstreamFeed(cache, settings.scheduler, settings.security, token, settings.name, on_state=on_state)
        for cache in caches.values()
    ]
    await server.start()
    metrics_runner = None
    metrics_address: Address | None = None
    if settings.metrics_listen is not None:
        from modelplane.metrics_http import serve_metrics  # noqa: PLC0415 - aiohttp only when metrics are on
        from status_relay.relay_metrics import RelayMetrics  # noqa: PLC0415 - likewise (prometheus_client)

        metrics = RelayMetrics(feeds, service, streams)
        metrics_runner, metrics_address = await serve_metrics(
            settings.metrics_listen, metrics.registry, ssl_context=http_server_ssl(settings.serving)
        )
    await health.set_serving("")
    await health.set_not_serving(SCHEDULER_SERVICE)
    tasks = [asyncio.create_task(feed.run(), name=f"relay-{feed.cache.kind.name}") for feed in feeds]
    tasks.append(asyncio.create_task(_follow_health(caches.values(), health, health_changes), name="relay-health"))
    if settings.ready_file is not None:
        addresses = {"version": __version__, "listen": str(address)}
        if metrics_address is not None:
            addresses["metrics_listen"] = str(metrics_address)
        write_ready_file(settings.ready_file, addresses)
    if serving is not None and not serving.done():
        serving.set_result(RelayServing(address, caches, service, metrics_address))
    log.info(
        "status relay serving",
        extra=with_fields(version=__version__, listen=str(address), scheduler=str(settings.scheduler)),
    )
    try:
        await stop.wait()
        log.info("shutting down", extra=with_fields(grace_seconds=settings.shutdown_grace_seconds))
        await health.enter_graceful_shutdown()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for cache in caches.values():
            cache.hub.close()  # ends every stream: its client subscribes again (to another relay)
        await server.stop(settings.shutdown_grace_seconds)
        if metrics_runner is not None:
            await metrics_runner.cleanup()
    log.info("status relay stopped")


async def _follow_health(caches: Iterable[StatusCache], health: Health, changes: asyncio.Event) -> None:
    every = list(caches)
    serving = False
    while True:
        await changes.wait()
        changes.clear()
        now = all(cache.state is CacheState.CURRENT for cache in every)
        if now != serving:
            serving = now
            await (health.set_serving if now else health.set_not_serving)(SCHEDULER_SERVICE)


async def run(settings: RelaySettings) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await serve(settings, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
