"""The agent's side of a drain (agent/scheduler_session.py) against a scheduler stand-in over real gRPC: a drain
waits only while there is a live session to carry it (issue 10, last item)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from grpc import aio

from agent.model_manager import ModelManager
from agent.scheduler_session import SchedulerSession
from generated.mlops.agent.v1 import agent_pb2, agent_pb2_grpc
from modelplane.addresses import Address
from modelplane.transport import TransportSecurity

DRAIN_TIMEOUT = 3600.0  # far beyond the test's own timeout: a drain that waited for it would fail the test


class _Scheduler(agent_pb2_grpc.AgentServiceServicer):
    """Accepts a registration; on a drain request, ends the session (as a scheduler that dies mid-drain does)
    or answers DrainComplete, as told."""

    def __init__(self, *, complete_drains: bool) -> None:
        self.complete_drains = complete_drains
        self.drains = 0

    async def Session(  # noqa: N802 - the gRPC method's name
        self, request_iterator: AsyncIterator[agent_pb2.SessionRequest], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[agent_pb2.SessionResponse]:
        await anext(aiter(request_iterator))  # the Register
        yield agent_pb2.SessionResponse(
            register_accepted=agent_pb2.RegisterAccepted(session_id="s", heartbeat_interval_ms=200)
        )
        async for request in request_iterator:
            if request.WhichOneof("message") == "drain":
                self.drains += 1
                if not self.complete_drains:
                    return
                yield agent_pb2.SessionResponse(drain_complete=agent_pb2.DrainComplete(unplaced_models=["m"]))
            else:
                yield agent_pb2.SessionResponse(heartbeat=agent_pb2.Heartbeat())


class _Manager:
    available_bytes = 0


@contextlib.asynccontextmanager
async def scheduler_and_session(scheduler: _Scheduler) -> AsyncIterator[SchedulerSession]:
    server = aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(scheduler, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    session = SchedulerSession(
        Address("127.0.0.1", port),
        TransportSecurity(insecure=True),
        agent_pb2.Register,
        cast(ModelManager, _Manager()),
        initial_backoff=0.05,
    )
    task = asyncio.create_task(session.run())
    try:
        async with asyncio.timeout(30):
            await session.connected.wait()
        yield session
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop(0)


@pytest.mark.timeout(60)
async def test_a_session_that_ends_during_the_drain_ends_the_wait() -> None:
    scheduler = _Scheduler(complete_drains=False)
    async with scheduler_and_session(scheduler) as session:
        outcome = await session.drain(DRAIN_TIMEOUT)
    assert scheduler.drains == 1
    assert outcome.unplaced is None
    assert outcome.why_not.startswith("the session with the scheduler ended during the drain")


@pytest.mark.timeout(60)
async def test_without_a_session_there_is_no_wait() -> None:
    scheduler = _Scheduler(complete_drains=True)
    async with scheduler_and_session(scheduler) as session:
        session.connected.clear()  # as between two sessions
        outcome = await session.drain(DRAIN_TIMEOUT)
        assert (outcome.unplaced, scheduler.drains) == (None, 0)
        assert outcome.why_not == "no session with the scheduler (it is down or unreachable)"


@pytest.mark.timeout(60)
async def test_a_completed_drain_reports_the_unplaced_models() -> None:
    scheduler = _Scheduler(complete_drains=True)
    async with scheduler_and_session(scheduler) as session:
        outcome = await session.drain(DRAIN_TIMEOUT)
    assert (outcome.unplaced, outcome.why_not) == (["m"], "")
