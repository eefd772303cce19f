"""The gateway process: the routing stream from the scheduler, V2 REST (and gRPC) inference, Kafka.

Stateless: everything it routes by comes from the scheduler's WatchRoutes stream, so any number of
gateways can run side by side and a restarted one rebuilds its table from the stream. It reports
itself ready (/v2/health/ready, the ready file) once it has its first complete table. SIGTERM/SIGINT
stop it: listeners close, requests in flight finish (up to a grace), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiohttp import web
from grpc import aio

from gateway.edges.grpc_edge import v2_grpc_service
from gateway.edges.rest_app import build_app
from gateway.edges.v2_grpc_service import add_v2_inference_service
from gateway.gateway_metrics import GatewayMetrics
from gateway.inference_router import InferenceRouter
from gateway.kafka.bridge import KafkaBridge
from gateway.kafka.settings import KafkaBridgeSettings
from gateway.kafka.wiring import KafkaTopicsFollower
from gateway.pipelines.runner import PipelineRunner
from gateway.replica_client import ReplicaClient
from gateway.route_watcher import RouteWatcher
from gateway.routing_table import RoutingTable
from gateway.settings import GatewaySettings
from modelplane.addresses import Address
from modelplane.auth.access_check import AccessCheck
from modelplane.auth.http_access import protect
from modelplane.auth_flags import client_token
from modelplane.http_site import serve_runner
from modelplane.ready_file import write_ready_file
from modelplane.signals import stop_on_signals
from modelplane.transport import TransportSecurity, bind, http_server_ssl, new_server, open_channel

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 10.0


async def _start_rest(
    app: web.Application, address: Address, security: TransportSecurity
) -> tuple[web.AppRunner, Address]:
    context = http_server_ssl(security)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    return runner, await serve_runner(runner, address, context)


async def _first_table(watcher: RouteWatcher, stop: asyncio.Event) -> bool:
    """Wait for the first complete routing table (True) or for ``stop`` (False)."""
    synced = asyncio.create_task(watcher.synced.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([synced, stopping], return_when=asyncio.FIRST_COMPLETED)
    synced.cancel()
    stopping.cancel()
    return watcher.synced.is_set()


async def _start_grpc(
    listen: Address, router: InferenceRouter, watcher: RouteWatcher, security: TransportSecurity, access: AccessCheck
) -> tuple[aio.Server, Address]:
    server = new_server(access=access)
    add_v2_inference_service(server, v2_grpc_service(router, watcher.synced.is_set))
    port = bind(server, listen, security)
    await server.start()
    return server, Address(listen.host, port)


def _kafka_follower(settings: GatewaySettings, router: InferenceRouter) -> KafkaTopicsFollower | None:
    if not settings.kafka_bootstrap:
        return None
    bridge_settings = KafkaBridgeSettings(
        bootstrap_servers=settings.kafka_bootstrap,
        topic_prefix=settings.kafka_topic_prefix,
        namespace=settings.kafka_namespace,
        group_id=settings.kafka_group,
    )
    return KafkaTopicsFollower(KafkaBridge(bridge_settings, router.call_model, router.call_pipeline))


@dataclass
class _Gateway:
    """The gateway's parts, wired: the routing table's watcher feeds the router, pipelines and Kafka."""

    client: ReplicaClient
    router: InferenceRouter
    watcher: RouteWatcher
    kafka: KafkaTopicsFollower | None
    metrics: GatewayMetrics

    @classmethod
    def wire(cls, settings: GatewaySettings) -> _Gateway:
        metrics = GatewayMetrics()
        # Read again when their files change (the kubelet rotates ServiceAccount tokens), at each call.
        token = client_token(settings.token_file)
        agent_token = client_token(settings.agent_token_file) if settings.agent_token_file is not None else None

        def connect() -> aio.Channel:
            # Each new channel reads the TLS files again (the watcher makes one per reconnection).
            return open_channel(settings.scheduler, settings.security, token)

        client = ReplicaClient(
            token=agent_token,
            max_attempts=settings.max_attempts,
            timeout_seconds=settings.request_timeout_seconds,
            on_eject=lambda endpoint, _seconds, _reason: metrics.ejection(endpoint.key),
        )
        router = InferenceRouter(lambda: watcher.table, client, metrics, stale_reason=lambda: watcher.stale_reason)
        pipelines = PipelineRunner(
            lambda: watcher.table, router.call_model, settings.pipeline_timeout_seconds, metrics.pipeline_step
        )
        router.pipelines = pipelines
        kafka = _kafka_follower(settings, router)
        if kafka is not None:
            metrics.watch_kafka_lag(kafka.bridge.lag)

        def on_table(table: RoutingTable) -> None:
            pipelines.forget_missing(table)
            if kafka is not None:
                kafka.on_table(table)

        watcher = RouteWatcher(connect, settings.name, check_pipeline=pipelines.check, on_table=on_table)
        return cls(client, router, watcher, kafka, metrics)

    async def close(self) -> None:
        await self.router.close()
        await self.client.close()
        await self.watcher.close()


async def run(
    settings: GatewaySettings,
    stop: asyncio.Event | None = None,
    serving: asyncio.Future[Address] | None = None,
    grpc_serving: asyncio.Future[Address] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or until ``stop`` is set, when the caller handles signals).

    ``serving`` (for ``modelplane up``) gets the REST address once the first routing table is in;
    ``grpc_serving`` the gRPC address (with ``settings.grpc_listen``) once that edge serves, before then.
    """
    if stop is None:
        stop = asyncio.Event()
        stop_on_signals(stop)
    access = AccessCheck(settings.auth)
    parts = _Gateway.wire(settings)
    app = protect(build_app(parts.router, parts.metrics, parts.watcher.synced.is_set), access)
    try:
        runner, rest_address = await _start_rest(app, settings.listen, settings.serving)
    except BaseException:
        await parts.close()
        raise
    watching = asyncio.create_task(parts.watcher.run(), name="route-watcher")
    log.info("gateway %s: V2 REST on %s; routing table from %s", settings.name, rest_address, settings.scheduler)
    grpc_server: aio.Server | None = None
    addresses = {"listen": str(rest_address)}
    try:
        if parts.kafka is not None:
            await parts.kafka.start()
            log.info("gateway %s: Kafka topics from %s", settings.name, settings.kafka_bootstrap)
        if settings.grpc_listen is not None:
            grpc_server, grpc_address = await _start_grpc(
                settings.grpc_listen, parts.router, parts.watcher, settings.serving, access
            )
            addresses["grpc_listen"] = str(grpc_address)
            if grpc_serving is not None and not grpc_serving.done():
                grpc_serving.set_result(grpc_address)
            log.info("gateway %s: V2 gRPC on %s", settings.name, grpc_address)
        if await _first_table(parts.watcher, stop):
            if settings.ready_file is not None:
                write_ready_file(settings.ready_file, addresses)
            if serving is not None and not serving.done():
                serving.set_result(rest_address)
        await stop.wait()
        log.info("gateway %s stopping", settings.name)
    finally:
        if parts.kafka is not None:
            await parts.kafka.stop()
        if grpc_server is not None:
            await grpc_server.stop(SHUTDOWN_GRACE_SECONDS)
        await runner.cleanup()
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await parts.close()
