"""The agent process: its server, its inference proxy, its scheduler session, and a draining exit.

Start-up: the server (launched, or an existing one) must be ready; the agent takes over what the
server already holds; the proxy starts; then the agent registers and keeps its session.
SIGTERM/SIGINT: ask the scheduler to drain this replica, wait (bounded) until its models serve
elsewhere, take everything off the server, stop what was started, exit 0. A second signal skips the
wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from grpc import aio

from agent.artifacts import ArtifactStore
from agent.inference_proxy import InferenceProxy
from agent.model_manager import ModelManager
from agent.scheduler_session import SchedulerSession
from agent.server_choice import connect_server, launch_server
from agent.settings import AgentSettings
from generated.mlops.agent.v1 import agent_pb2
from modelplane.addresses import Address
from modelplane.ready_file import write_ready_file
from modelplane.signals import stop_on_signals
from modelplane.transport import TransportError, TransportSecurity, bind, new_server
from servers.adapter import InferenceServer
from servers.launch import LocalServer

log = logging.getLogger(__name__)
PROXY_SECURITY = TransportSecurity(insecure=True)
SERVER_KIND = {"mlserver": agent_pb2.SERVER_KIND_MLSERVER, "triton": agent_pb2.SERVER_KIND_TRITON}


@dataclass(frozen=True, slots=True)
class ProxyAddresses:
    http: Address
    grpc: Address


@contextlib.asynccontextmanager
async def inference_server(settings: AgentSettings) -> AsyncIterator[InferenceServer]:
    """The agent's server: launched here (and stopped on exit) or an existing one."""
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
        yield server
    finally:
        await server.close()
        if launched is not None:
            await launched.stop()


async def start_proxy(
    proxy: InferenceProxy, settings: AgentSettings
) -> tuple[web.AppRunner, aio.Server, ProxyAddresses]:
    runner = web.AppRunner(proxy.rest_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.proxy_http.host, settings.proxy_http.port)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise TransportError(f"cannot listen on {settings.proxy_http}: {error.strerror}") from None
    http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    grpc_server = new_server()
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
    )


async def run(
    settings: AgentSettings,
    stop: asyncio.Event | None = None,
    forced: asyncio.Event | None = None,
    registered: asyncio.Future[ProxyAddresses] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or until ``stop`` is set, when the caller handles signals)."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    if stop is None:
        stop, forced = asyncio.Event(), asyncio.Event()
        stop_on_signals(stop, forced)
    forced = forced or asyncio.Event()
    async with inference_server(settings) as server:
        artifacts = ArtifactStore(settings.cache_dir, secrets_dir=settings.secrets_dir, environ=os.environ)
        manager = ModelManager(
            server, artifacts, memory_bytes=settings.memory_bytes, overcommit_percent=settings.overcommit_percent
        )
        await manager.adopt_from_server()
        proxy = InferenceProxy(manager, server.http_url, server.grpc_target)
        runner, grpc_server, addresses = await start_proxy(proxy, settings)
        session = SchedulerSession(
            settings.scheduler, settings.security, lambda: register_message(settings, manager, addresses), manager
        )
        session_task = asyncio.create_task(session.run(), name="scheduler-session")
        try:
            await _announce(settings, session, addresses, stop)
            if registered is not None and not registered.done():
                registered.set_result(addresses)
            await stop.wait()
            log.info("stopping: asking the scheduler to drain this replica")
            drained = asyncio.create_task(session.drain(settings.drain_timeout_seconds))
            skipped = asyncio.create_task(forced.wait())
            await asyncio.wait([drained, skipped], return_when=asyncio.FIRST_COMPLETED)
            skipped.cancel()
            if drained.done() and drained.result() is not None:
                unplaced = drained.result()
                log.info("drained", extra={"fields": {"unplaced": unplaced or []}})
            else:
                drained.cancel()
                log.warning("leaving without a completed drain")
            await manager.unload_everything()
        finally:
            session_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session_task
            await grpc_server.stop(1)
            await proxy.close()
            await runner.cleanup()
    log.info("agent stopped")


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
