"""What an agent does when what it depends on dies (issue 10): its inference server (kill -9 of MLServer or
Triton, SIGSTOP of a server it only reaches by URL), or the scheduler while the agent is asked to stop.

Real components: the scheduler and agents as subprocesses, each agent with the server it launched (or one
started here), models from local folders, V2 inference through the agents' proxies. Every wait has a generous
bound that only guards against hangs; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable

import pytest

from tests.cluster_fixtures import WAIT, Cluster
from tests.real_components import AgentProcess

pytest_plugins = ["tests.real_components", "tests.cluster_fixtures"]

pytestmark = [pytest.mark.servers, pytest.mark.timeout(900)]  # the timeout is a hang guard only


async def until(check: Callable[[], Awaitable[bool]], what: str, diagnostics: Callable[[], str]) -> None:
    """Polls ``check`` until it holds (a hang guard, not a deadline the system must meet)."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT:g}s: {what}\n{diagnostics()}") from None


def exit_status(agent: AgentProcess) -> int | None:
    """The agent's exit status, waiting up to WAIT seconds (a hang guard); None if it is still running."""
    try:
        return agent.process.wait(WAIT)
    except subprocess.TimeoutExpired:
        return None


# -- SIGTERM while the scheduler is down (issue 10, last item) ------------------------------------------------


async def test_sigterm_with_the_scheduler_down_exits_without_waiting_for_a_drain(cluster: Cluster) -> None:
    scheduler = cluster.start_scheduler()
    # A drain timeout far beyond the hang guard: an agent that waited for it would fail the test.
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0, extra=("--drain-timeout=3600",)))
    os.kill(scheduler.process.pid, signal.SIGKILL)
    await asyncio.to_thread(scheduler.process.wait, 30)

    async def session_ended() -> bool:
        return "scheduler session ended" in agent.log()

    await until(session_ended, "the agent noticed the scheduler is gone", cluster.diagnostics)
    os.kill(agent.pid, signal.SIGTERM)
    status = await asyncio.to_thread(exit_status, agent)
    assert status == 0, f"exit status {status} (None: still waiting)\n{agent.diagnostics()}"
    assert "not draining: no session with the scheduler" in agent.log(), agent.diagnostics()
    assert not agent.server_pids(), "the agent stopped the server it launched"
