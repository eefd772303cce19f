"""SessionClocks: when the scheduler sends an agent a heartbeat, and when it ends a silent session.

Driven on a fake clock: each case is a script of what happens when, and the test reads the times at which the
clocks queued heartbeats or closed the session. The rule (the agent's side ends a session after three silent
intervals, agent/scheduler_session.py): a heartbeat goes out one interval after the last message went out, so an
idle agent hears from the scheduler every interval, never less often.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Any, cast

from generated.mlops.agent.v1 import agent_pb2
from scheduler.agent_service import NO_MESSAGE_PREFIX, SessionClocks
from scheduler.agent_sessions import AgentSession

INTERVAL = 1.0


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Just what SessionClocks uses of a loop: time() and call_at(), run by hand in time order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, _Handle, Callable[[], None]]] = []
        self._count = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle()
        self._count += 1
        heapq.heappush(self._timers, (when, self._count, handle, callback))
        return handle

    def run_until(self, until: float) -> None:
        while self._timers and self._timers[0][0] <= until:
            when, _, handle, callback = heapq.heappop(self._timers)
            if not handle.cancelled:
                self.now = max(self.now, when)
                callback()
        self.now = until


class FakeSession:
    """An outbox whose writer takes each message ``write_delay`` seconds after it is queued."""

    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.outbox: list[agent_pb2.SessionResponse] = []
        self.heartbeats: list[float] = []
        self.closed: tuple[float, str] | None = None

    @property
    def pending(self) -> int:
        return len(self.outbox)

    def send(self, message: agent_pb2.SessionResponse) -> None:
        self.outbox.append(message)
        if message.HasField("heartbeat"):
            self.heartbeats.append(self.loop.now)

    def close(self, reason: str) -> None:
        self.closed = (self.loop.now, reason)


def clocks_on(loop: FakeLoop, session: FakeSession) -> SessionClocks:
    return SessionClocks(cast(AgentSession, session), INTERVAL, cast(asyncio.AbstractEventLoop, cast(Any, loop)))


def run_idle(loop: FakeLoop, session: FakeSession, clocks: SessionClocks, until: float, write_delay: float) -> None:
    """Advance to ``until`` in small steps; the writer takes what is queued ``write_delay`` after it was queued,
    as the session's stream does (clocks.sent() once a message is on its way)."""
    queued_at: float | None = None
    step = 0.005
    while loop.now < until:
        loop.run_until(round(loop.now + step, 6))
        if session.outbox and queued_at is None:
            queued_at = loop.now
        if queued_at is not None and loop.now >= queued_at + write_delay:
            session.outbox.clear()
            clocks.sent()
            queued_at = None
        clocks.heard()  # the agent keeps talking: only the heartbeats are looked at here


def test_an_idle_session_gets_a_heartbeat_every_interval() -> None:
    loop = FakeLoop()
    session = FakeSession(loop)
    clocks = clocks_on(loop, session)
    run_idle(loop, session, clocks, until=10.0, write_delay=0.01)
    gaps = [later - earlier for earlier, later in zip(session.heartbeats, session.heartbeats[1:], strict=False)]
    assert len(session.heartbeats) >= 9, session.heartbeats
    assert all(gap <= INTERVAL + 0.05 for gap in gaps), session.heartbeats


def test_a_heartbeat_follows_the_last_message_by_one_interval() -> None:
    loop = FakeLoop()
    session = FakeSession(loop)
    clocks = clocks_on(loop, session)
    loop.run_until(0.5)
    clocks.sent()  # an operation went to the agent at 0.5
    loop.run_until(1.49)
    assert session.heartbeats == []
    loop.run_until(1.51)
    assert session.heartbeats == [1.5]


def test_no_heartbeat_while_messages_wait_in_the_outbox() -> None:
    loop = FakeLoop()
    session = FakeSession(loop)
    clocks = clocks_on(loop, session)
    session.outbox.append(agent_pb2.SessionResponse())  # the writer is held (an agent that does not read)
    loop.run_until(5.0)
    assert session.heartbeats == []
    clocks.stop()


def test_three_silent_intervals_end_the_session_and_a_message_puts_it_off() -> None:
    loop = FakeLoop()
    session = FakeSession(loop)
    clocks = clocks_on(loop, session)
    loop.run_until(2.0)
    clocks.heard()
    loop.run_until(4.99)
    assert session.closed is None
    loop.run_until(5.01)
    assert session.closed == (5.0, f"{NO_MESSAGE_PREFIX} 3s")


def test_stop_cancels_both_timers() -> None:
    loop = FakeLoop()
    session = FakeSession(loop)
    clocks = clocks_on(loop, session)
    clocks.stop()
    loop.run_until(10.0)
    assert (session.heartbeats, session.closed) == ([], None)
