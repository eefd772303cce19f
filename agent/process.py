"""The agent process: its server, its inference proxy, its scheduler session, and a draining exit.

Start-up: the server (launched, or an existing one) must be ready; the agent takes over what the
server already holds; the proxy starts; then the agent registers and keeps its session.
While it runs, the agent watches its server (agent/server_watch.py): when the server stops serving, the
model manager, the proxy and the scheduler learn of it at once; a launched server is restarted; once the
server serves again, the agent loads again what it held and tells the scheduler.
SIGTERM/SIGINT: ask the scheduler to drain this replica, wait (bounded) until its models serve
elsewhere, take everything off the server, stop what was started, exit 0. A second signal skips the
wait, and so does a scheduler that is not there: with no session, or when it ends during the drain,
nothing can move the models, so the agent does not wait out the drain timeout (the log says why).
The watch over the server and the session with the scheduler run for the agent's whole life and never end by
themselves. If one fails (a bug), the agent does not run on without it (unwatched, what it reports could be false;
without a session, nothing it does is known): it logs the error with its traceback, stops what it started and
ends with PartFailed (the command exits 1, and a supervisor starts it again); the scheduler sees the session
end and moves the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass

from aiohttp import web
from grpc import aio
from prometheus_client import CollectorRegistry

from agent.agent_metrics import AgentMetrics, HeldState
from agent.artifacts import ArtifactStore, ExtractLimits
from agent.artifacts.kubernetes_secrets import KubernetesSecrets
from agent.inference_proxy import InferenceProxy
from agent.model_manager import ModelManager
from agent.scheduler_session import SchedulerSession
from agent.server_choice import connect_server, launch_server
from agent.server_watch import ServerWatch, reason_text
from agent.settings import AgentSettings
from generated.mlops.agent.v1 import agent_pb2
from modelplane import logs
from modelplane.addresses import Address
from modelplane.auth.access_check import AccessCheck
from modelplane.auth.http_access import protect
from modelplane.auth_flags import client_token
from modelplane.http_site import serve_runner
from modelplane.kubernetes_api import kubernetes_client
from modelplane.metrics_http import add_metrics_route
from modelplane.ready_file import write_ready_file
from modelplane.signals import stop_on_signals
from modelplane.transport import TransportError, TransportSecurity, bind, new_server
from servers.adapter import InferenceServer
from servers.launch import LocalServer

log = logging.getLogger(__name__)
PROXY_SECURITY = TransportSecurity(insecure=True)
SERVER_KIND = {"mlserver": agent_pb2.SERVER_KIND_MLSERVER, "triton": agent_pb2.SERVER_KIND_TRITON}


class PartFailed(RuntimeError):  # noqa: N818 - it says what happened
    """A part of the agent that runs for its whole life (the server watch, the scheduler session) failed."""


@dataclass(frozen=True, slots=True)
class ProxyAddresses:
    http: Address
    grpc: Address


@contextlib.asynccontextmanager
async def inference_server(settings: AgentSettings) -> AsyncIterator[tuple[InferenceServer, LocalServer | None]]:
    """The agent's server (and its process when launched here, stopped on exit) or an existing one."""
    launched: LocalServer | None = None
    if settings.launch_server:
        launched = await launch_server(settings.server_kind, settings.work_dir / settings.server_kind)
        server = launched.adapter()
    elif settings.server_url is not None:
        server = connect_server(
            settings.server_kind, settings.server_url, settings.server_grpc or "", settings.models_dir
        )
    else:
        raise ValueError("an agent needs --server-url or --launch-server")
    try:
        yield server, launched
    finally:
        await server.close()
        if launched is not None:
            await launched.stop()  # the process running now: a restart replaces it


@contextlib.asynccontextmanager
async def storage_secrets(settings: AgentSettings) -> AsyncIterator[KubernetesSecrets | None]:
    """The reader of Kubernetes Secrets (--k8s-secrets), its API client open for the agent's life; else None."""
    if settings.kubernetes is None or settings.secrets_namespace is None:
        yield None
        return
    async with kubernetes_client(settings.kubernetes) as api:
        yield KubernetesSecrets(api, settings.secrets_namespace)


async def start_proxy(
    proxy: InferenceProxy, settings: AgentSettings, metrics: CollectorRegistry | None = None
) -> tuple[web.AppRunner, aio.Server, ProxyAddresses]:
    """The proxy's REST and gRPC listeners; the REST one also serves ``metrics`` as /metrics (the agent's own)."""
    access = AccessCheck(settings.auth)
    app = proxy.rest_app()
    if metrics is not None:
        add_metrics_route(app, metrics)
    runner = web.AppRunner(protect(app, access), access_log=None)
    http_port = (await serve_runner(runner, settings.proxy_http)).port
    grpc_server = new_server(access=access)
    grpc_server.add_generic_rpc_handlers((proxy.grpc_handler(),))
    try:
        # Plaintext, like the proxy's REST side (it always was): the server factory refuses a port in use.
        grpc_port = bind(grpc_server, settings.proxy_grpc, PROXY_SECURITY)
    except TransportError:
        await runner.cleanup()
        raise
    await grpc_server.start()
    advertised = ProxyAddresses(
        Address(settings.advertise_host, http_port), Address(settings.advertise_host, grpc_port)
    )
    return runner, grpc_server, advertised


def register_message(settings: AgentSettings, manager: ModelManager, proxy: ProxyAddresses) -> agent_pb2.Register:
    return agent_pb2.Register(
        protocol_version=1,
        agent_id=f"{os.uname().nodename}-{os.getpid()}-{settings.server_name}-{settings.replica_idx}",
        replica=agent_pb2.ReplicaConfig(
            server_name=settings.server_name,
            replica_idx=settings.replica_idx,
            shared=settings.shared,
            server_kind=SERVER_KIND[settings.server_kind],
            capabilities=sorted(settings.capabilities),
            total_memory_bytes=settings.memory_bytes,
            over_commit_percentage=settings.overcommit_percent,
            endpoints=agent_pb2.InferenceEndpoints(http_url=f"http://{proxy.http}", grpc_target=str(proxy.grpc)),
        ),
        loaded_models=manager.held(),
        available_memory_bytes=manager.available_bytes,
        server_health=_health(manager) if manager.down_reason is not None else None,
    )


def _health(manager: ModelManager) -> agent_pb2.ServerHealth:
    if manager.down_reason is not None:
        return agent_pb2.ServerHealth(serving=False, reason=reason_text(manager.down_reason))
    return agent_pb2.ServerHealth(serving=True, loaded_models=manager.held())


class HealthRelay:
    """What the agent does when its server stops or resumes serving (the watch's ``on_down``/``on_up``)."""

    def __init__(self, manager: ModelManager, proxy: InferenceProxy, session: SchedulerSession) -> None:
        self.manager = manager
        self.proxy = proxy
        self.session = session

    def down(self, reason: str) -> None:
        # The report goes out before the failed operations' events: the scheduler hears the cause first.
        self.manager.server_down(reason)
        self.session.report(agent_pb2.SessionRequest(server_health=_health(self.manager)))

    async def up(self) -> None:
        await self.manager.server_back()
        self.proxy.reconnect()
        self.session.report(agent_pb2.SessionRequest(server_health=_health(self.manager)))


async def run(
    settings: AgentSettings,
    stop: asyncio.Event | None = None,
    forced: asyncio.Event | None = None,
    registered: asyncio.Future[ProxyAddresses] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or until ``stop`` is set, when the caller handles signals)."""
    # Every line of this agent names its replica: bound before any task starts, so each inherits it.
    logs.bind(server=settings.server_name, replica=settings.replica_idx)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    if stop is None:
        stop, forced = asyncio.Event(), asyncio.Event()
        stop_on_signals(stop, forced)
    forced = forced or asyncio.Event()
    async with inference_server(settings) as (server, launched), storage_secrets(settings) as secret_reader:
        limits = ExtractLimits(max_total_bytes=settings.max_model_disk_bytes, max_ratio=settings.max_compression_ratio)
        artifacts = ArtifactStore(
            settings.cache_dir,
            secrets_dir=settings.secrets_dir,
            environ=os.environ,
            limits=limits,
            cache_limit_bytes=settings.max_cache_disk_bytes,
            secret_reader=secret_reader,
        )
        metrics = AgentMetrics()
        manager = ModelManager(
            server,
            artifacts,
            memory_bytes=settings.memory_bytes,
            overcommit_percent=settings.overcommit_percent,
            metrics=metrics,
        )
        await manager.adopt_from_server()
        proxy = InferenceProxy(
            manager, server.http_url, server.grpc_target, triton_extensions=settings.server_kind == "triton"
        )
        runner, grpc_server, addresses = await start_proxy(proxy, settings, metrics.registry)
        session = SchedulerSession(
            settings.scheduler,
            settings.security,
            lambda: register_message(settings, manager, addresses),
            manager,
            token=client_token(settings.token_file),
        )
        relay = HealthRelay(manager, proxy, session)
        watch = ServerWatch(server, launched, settings.watch, on_down=relay.down, on_up=relay.up, busy=manager.busy)
        proxy.on_unreachable = watch.probe_now
        metrics.watch(
            HeldState(
                held_models=manager.models.values,
                capacity_bytes=lambda: manager.memory_bytes,
                cache_bytes=lambda: artifacts.cache_bytes,
                server_restarts=lambda: watch.restarts,
                serving=lambda: manager.down_reason is None,
            )
        )
        session_task = asyncio.create_task(session.run(), name="scheduler-session")
        watch_task = asyncio.create_task(watch.run(), name="server-watch")
        try:
            serving = _serve(settings, session, addresses, stop, forced=forced, registered=registered)
            await _until_stopped((watch_task, session_task), serving)
            await _cancel(watch_task)  # nothing is restarted once the models are taken off
            await manager.unload_everything()
        finally:
            await _cancel(watch_task)
            await _cancel(session_task)
            await grpc_server.stop(1)
            await proxy.close()
            await runner.cleanup()
    log.info("agent stopped")


async def _serve(
    settings: AgentSettings,
    session: SchedulerSession,
    addresses: ProxyAddresses,
    stop: asyncio.Event,
    *,
    forced: asyncio.Event,
    registered: asyncio.Future[ProxyAddresses] | None,
) -> None:
    """The agent's running life: announce itself, serve until asked to stop, then drain."""
    await _announce(settings, session, addresses, stop)
    if registered is not None and not registered.done():
        registered.set_result(addresses)
    await stop.wait()
    await _drain(session, settings.drain_timeout_seconds, forced)


async def _until_stopped(parts: tuple[asyncio.Task[None], ...], serving: Coroutine[None, None, None]) -> None:
    """Run ``serving`` until it returns (the agent was asked to stop). ``parts`` never end by themselves: when one
    does first, it failed, and PartFailed says so (see the module docstring)."""
    serve_task = asyncio.create_task(serving, name="serving")
    try:
        await asyncio.wait({serve_task, *parts}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not serve_task.done():
            serve_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serve_task
    for part in parts:
        if part.done():
            error = part.exception() if not part.cancelled() else None
            log.error("%s failed: stopping the agent rather than run on without it", part.get_name(), exc_info=error)
            raise PartFailed(f"the agent's {part.get_name()} failed: {error!r}") from error
    serve_task.result()


async def _cancel(task: asyncio.Task[None]) -> None:
    """End ``task``. One that ended by itself was dealt with where it ended (_until_stopped)."""
    if task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _drain(session: SchedulerSession, timeout: float, forced: asyncio.Event) -> None:
    """Ask the scheduler to drain this replica; wait until it is done, the session is gone, or a second signal."""
    if not session.connected.is_set():
        log.warning("stopping, not draining: no session with the scheduler, so nothing can move the models")
        return
    log.info("stopping: asking the scheduler to drain this replica")
    drained = asyncio.create_task(session.drain(timeout))
    skipped = asyncio.create_task(forced.wait())
    await asyncio.wait([drained, skipped], return_when=asyncio.FIRST_COMPLETED)
    skipped.cancel()
    if not drained.done():
        drained.cancel()
        log.warning("leaving without a completed drain: a second signal said not to wait")
        return
    outcome = drained.result()
    if outcome.unplaced is not None:
        log.info("drained", extra={"fields": {"unplaced": outcome.unplaced}})
    else:
        log.warning("leaving without a completed drain: %s", outcome.why_not)


async def _announce(
    settings: AgentSettings, session: SchedulerSession, proxy: ProxyAddresses, stop: asyncio.Event
) -> None:
    """Log where the proxy listens, and write the ready file once the first registration is accepted."""
    log.info("inference proxy listening", extra={"fields": {"http": str(proxy.http), "grpc": str(proxy.grpc)}})
    connected = asyncio.create_task(session.connected.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([connected, stopping], return_when=asyncio.FIRST_COMPLETED)
    connected.cancel()
    stopping.cancel()
    if session.connected.is_set() and settings.ready_file is not None:
        write_ready_file(settings.ready_file, {"http": str(proxy.http), "grpc": str(proxy.grpc)})
