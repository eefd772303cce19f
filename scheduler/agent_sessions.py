"""The scheduler's side of one agent session: an ordered outbox of messages to the agent."""

from __future__ import annotations

import asyncio
import itertools

from generated.mlops.agent.v1 import agent_pb2


class AgentSession:
    """Implements ``OperationSink``: the cluster queues operations here without awaiting; the session's
    stream writes them to the agent in the order they were queued."""

    _ids = itertools.count(1)

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.session_id = f"{agent_id}#{next(self._ids)}"
        self._outbox: asyncio.Queue[agent_pb2.SessionResponse | None] = asyncio.Queue()
        self._operation_ids = itertools.count(1)
        self.closed_reason: str | None = None

    def send(self, message: agent_pb2.SessionResponse) -> None:
        if self.closed_reason is None:
            self._outbox.put_nowait(message)

    def next_operation_id(self) -> int:
        return next(self._operation_ids)

    async def next_message(self) -> agent_pb2.SessionResponse | None:
        """The next message for the agent; None once the session is closed."""
        return await self._outbox.get()

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self._outbox.put_nowait(None)

    @property
    def pending(self) -> int:
        return self._outbox.qsize()
