"""The agent's side of its session with the scheduler (AgentService.Session, see agent.proto).

The agent never gives up on the scheduler: when the stream ends (scheduler restart, network cut) it
reconnects with jittered exponential backoff and registers again, reporting every model it holds, so
a restarted scheduler finds them Available without a reload. Operations run concurrently across
models (the ModelManager serialises each model's own), and their events go back on the session
they came from; one whose session has ended is covered by the next registration.

A drain happens over a live session only: with no session, or when the session ends during the drain, there is
no scheduler to move the models, so waiting out the drain timeout would only delay the agent's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from agent.model_manager import ModelManager
from generated.mlops.agent.v1 import agent_pb2, agent_pb2_grpc
from modelplane.addresses import Address
from modelplane.auth.client_token import ClientToken
from modelplane.backoff import Backoff
from modelplane.transport import TransportSecurity, open_channel

log = logging.getLogger(__name__)
Request = agent_pb2.SessionRequest


class SessionEnded(Exception):  # noqa: N818 - it is what happened, not a failure of ours
    """The scheduler closed or lost the stream."""


class SchedulerSaidGoodbye(SessionEnded):
    """The scheduler's last message (SessionEnding): it ends the session, for the reason given."""


@dataclass(frozen=True, slots=True)
class DrainOutcome:
    """How a drain ended: ``unplaced`` (models that could not move) once the scheduler said it is complete,
    else None and ``why_not`` says why the agent stopped waiting."""

    unplaced: list[str] | None
    why_not: str = ""


class SchedulerSession:
    def __init__(
        self,
        scheduler: Address,
        security: TransportSecurity,
        register: Callable[[], agent_pb2.Register],
        manager: ModelManager,
        *,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
        token: ClientToken | None = None,
    ) -> None:
        self.scheduler = scheduler
        # Presented on every session (authorization: Bearer), when given: as the file holds it at each reconnection.
        self._token = token
        self.security = security
        self.register = register
        self.manager = manager
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.connected = asyncio.Event()
        self.sessions = 0  # how many sessions were accepted (reconnects + 1)
        self._outbox: asyncio.Queue[Request] | None = None
        self._drain_done: asyncio.Future[DrainOutcome] | None = None
        self._operations: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Keep a session open until cancelled."""
        backoff = Backoff(self.initial_backoff, self.max_backoff)
        while True:
            sessions_before = self.sessions
            why = "the agent is stopping"
            try:
                await self._session()
                why = "the scheduler closed the session"
            except asyncio.CancelledError:
                raise
            except (SessionEnded, grpc.aio.AioRpcError, ConnectionError, TimeoutError) as error:
                why = _describe(error)
                log.warning("scheduler session ended: %s", why)
            finally:
                self.connected.clear()
                self._outbox = None
                self._end_drain(f"the session with the scheduler ended during the drain ({why})")
            if self.sessions > sessions_before:
                backoff.reset()  # it worked for a while: start over from the shortest delay
            delay = backoff.next_jittered()
            log.info("reconnecting to the scheduler at %s in %.1fs", self.scheduler, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        async with open_channel(self.scheduler, self.security, self._token) as channel:
            call = agent_pb2_grpc.AgentServiceStub(channel).Session()
            await call.write(Request(register=self.register()))
            accepted = await call.read()
            if not isinstance(accepted, agent_pb2.SessionResponse) or not accepted.HasField("register_accepted"):
                raise SessionEnded("the scheduler did not accept the registration")
            interval = max(0.05, accepted.register_accepted.heartbeat_interval_ms / 1000)
            outbox: asyncio.Queue[Request] = asyncio.Queue()
            self._outbox = outbox
            self.sessions += 1
            self.connected.set()
            log.info(
                "registered with the scheduler", extra={"fields": {"session": accepted.register_accepted.session_id}}
            )
            writer = asyncio.create_task(self._write(call, outbox, interval))
            try:
                await self._read(call, interval)
            except SchedulerSaidGoodbye:
                # agent.proto: stop writing and half-close, so the stream ends with the scheduler's status (a write
                # into a stream the scheduler has finished would end it as INTERNAL instead).
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await writer
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call.done_writing()
                raise
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await writer
                call.cancel()

    async def _write(
        self,
        call: grpc.aio.StreamStreamCall[Request, agent_pb2.SessionResponse],
        outbox: asyncio.Queue[Request],
        interval: float,
    ) -> None:
        while True:
            try:
                async with asyncio.timeout(interval):
                    message = await outbox.get()
            except TimeoutError:
                message = Request(heartbeat=agent_pb2.Heartbeat(available_memory_bytes=self.manager.available_bytes))
            await call.write(message)

    async def _read(self, call: grpc.aio.StreamStreamCall[Request, agent_pb2.SessionResponse], interval: float) -> None:
        while True:
            try:
                async with asyncio.timeout(3 * interval):
                    message = await call.read()
            except TimeoutError:
                raise SessionEnded(f"no message from the scheduler for {3 * interval:g}s") from None
            if not isinstance(message, agent_pb2.SessionResponse):
                raise SessionEnded("the scheduler closed the session")
            kind = message.WhichOneof("message")
            if kind == "operation":
                task = asyncio.create_task(self._operate(message.operation))
                self._operations.add(task)
                task.add_done_callback(self._operations.discard)
            elif kind == "drain_complete":
                if self._drain_done is not None and not self._drain_done.done():
                    self._drain_done.set_result(DrainOutcome(list(message.drain_complete.unplaced_models)))
            elif kind == "session_ending":
                raise SchedulerSaidGoodbye(f"the scheduler ended the session: {message.session_ending.reason}")
            elif kind == "event_rejected":
                rejected = message.event_rejected
                log.warning(
                    "scheduler rejected our event for %s:%d: %s",
                    rejected.model_name,
                    rejected.model_version,
                    rejected.reason,
                )

    async def _operate(self, operation: agent_pb2.ModelOperation) -> None:
        outbox = self._outbox
        event = await self.manager.handle(operation)
        if outbox is not None and outbox is self._outbox:
            outbox.put_nowait(Request(event=event))
        else:
            log.info(
                "session changed while %s was handled; the next registration reports it", operation.model.meta.name
            )

    def report(self, message: Request) -> bool:
        """Send ``message`` (e.g. a ServerHealth) on the live session; False when there is none, and the
        next registration carries the news instead."""
        if self._outbox is None:
            return False
        self._outbox.put_nowait(message)
        return True

    async def drain(self, timeout: float) -> DrainOutcome:
        """Ask the scheduler to move our models away, and wait (up to ``timeout``) until it says that is done.

        Only over a live session: without one, or once it ends, nothing can move the models, so the
        outcome then says why the agent stopped waiting instead."""
        outbox = self._outbox
        if outbox is None or not self.connected.is_set():
            return DrainOutcome(None, "no session with the scheduler (it is down or unreachable)")
        done: asyncio.Future[DrainOutcome] = asyncio.get_running_loop().create_future()
        self._drain_done = done
        outbox.put_nowait(Request(drain=agent_pb2.DrainRequest()))
        try:
            async with asyncio.timeout(timeout):
                return await done
        except TimeoutError:
            return DrainOutcome(None, f"the scheduler did not complete the drain within {timeout:g}s")

    def _end_drain(self, why: str) -> None:
        if self._drain_done is not None and not self._drain_done.done():
            self._drain_done.set_result(DrainOutcome(None, why))


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error) or type(error).__name__
