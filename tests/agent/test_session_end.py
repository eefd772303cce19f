"""The agent's side of a session the scheduler ends (agent/scheduler_session.py against the real scheduler servicers
over real gRPC): the agent hears why, even while it is writing (agent.proto's SessionEnding)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

import pytest

from agent.model_manager import ModelManager
from agent.scheduler_session import SchedulerSession
from modelplane.addresses import Address
from modelplane.transport import TransportSecurity
from tests.support.grpc_agent import FakeGrpcAgent
from tests.support.scheduler_in_process import in_process_scheduler
from tests.support.waiting import wait_for


class _Manager:
    available_bytes = 0


@pytest.mark.timeout(60)
async def test_an_agent_replaced_while_heartbeating_hears_the_schedulers_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Heartbeats every 20 ms: the agent is nearly always writing when its session ends.
    async with in_process_scheduler(heartbeat_seconds=0.02) as running:
        host, port = running.listen.rsplit(":", 1)
        register = FakeGrpcAgent(running.listen, agent_id="real-agent").register_message().register
        session = SchedulerSession(
            Address(host, int(port)),
            TransportSecurity(insecure=True),
            lambda: register,
            cast(ModelManager, _Manager()),
            initial_backoff=5.0,  # no reconnect (and so no ping-pong with the newer registration) within the test
        )
        task = asyncio.create_task(session.run())
        newer = FakeGrpcAgent(running.listen, agent_id="newer")
        try:
            async with asyncio.timeout(30):
                await session.connected.wait()
            with caplog.at_level(logging.WARNING, logger="agent.scheduler_session"):
                await newer.start()
                await wait_for(lambda: not session.connected.is_set(), what="the replaced session to end")
                await wait_for(lambda: "scheduler session ended" in caplog.text, what="the agent's log line")
            assert "the scheduler ended the session: replaced by a newer registration" in caplog.text
            assert "INTERNAL" not in caplog.text
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await newer.close()
