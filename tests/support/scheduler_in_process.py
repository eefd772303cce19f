"""The scheduler's real servicers on a real ``grpc.aio`` server on an ephemeral loopback port, in this process.

Clients reach it over real gRPC exactly as they reach ``modelplane scheduler``; the test also holds the
``SchedulerCore``, so it can check the scheduler's invariants (``core.check_invariants()``) after each step
or plant a record no RPC could create. One port serves the Scheduler API, the RoutingService and the
AgentService.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from grpc import aio

from generated.mlops.agent.v1 import agent_pb2_grpc
from modelplane.addresses import Address
from modelplane.stream_watchdog import StreamWatchdog
from modelplane.transport import TransportSecurity, bind, new_server
from scheduler.agent_service import AgentService
from scheduler.core import CoreSettings, SchedulerCore
from scheduler.persistence import MemoryStateStore, StateStore
from scheduler.request_limits import RequestLimits
from scheduler.routing_service import RoutingService
from scheduler.scheduler_service import SchedulerService


@dataclass
class InProcessScheduler:
    core: SchedulerCore
    server: aio.Server
    listen: str

    def channel(self) -> aio.Channel:
        """A plaintext channel with gRPC's default limits (a 4 MB receive limit, like Seldon's clients)."""
        return aio.insecure_channel(self.listen)


@contextlib.asynccontextmanager
async def in_process_scheduler(
    store: StateStore | None = None,
    *,
    heartbeat_seconds: float = 5.0,
    sync_grace_seconds: float = 0.0,
    outer_interceptors: Callable[[SchedulerCore], Sequence[aio.ServerInterceptor]] = lambda core: (),
) -> AsyncIterator[InProcessScheduler]:
    """``outer_interceptors`` (given the core) run before the request limits, in their order."""
    core = SchedulerCore(store or MemoryStateStore(), CoreSettings(sync_grace_seconds=sync_grace_seconds))
    await core.start()
    server = new_server([*outer_interceptors(core), RequestLimits()])
    streams = StreamWatchdog()
    SchedulerService(core, streams).add_to(server)
    RoutingService(core, streams).add_to(server)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(core, heartbeat_seconds), server)
    port = bind(server, Address("127.0.0.1", 0), TransportSecurity())
    await server.start()
    try:
        yield InProcessScheduler(core, server, f"127.0.0.1:{port}")
    finally:
        try:
            await core.close()
        finally:
            await server.stop(None)
