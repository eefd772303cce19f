"""The servicer agents connect to: one AgentService.Session stream per inference-server replica.

See proto/mlops/agent/v1/agent.proto for the protocol. The stream's first message must be Register;
the scheduler answers RegisterAccepted, then relays operations from the replica's AgentSession outbox
while a reader task applies the agent's events. Either side hearing nothing for three heartbeat
intervals ends the session, and the replica is gone (its models are rescheduled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from grpc import aio

from generated.mlops.agent.v1 import agent_pb2, agent_pb2_grpc
from modelplane import logs
from modelplane.spec.errors import InvalidArgument, SchedulerError
from modelplane.spec.limits import (
    MAX_MEMORY_BYTES,
    MAX_NAME_CHARS,
    MAX_OVERCOMMIT_PERCENT,
    MAX_SERVER_REPLICAS,
    check_fields,
    shown,
)
from modelplane.spec.names import check_name
from scheduler.agent_sessions import AgentSession
from scheduler.core import SchedulerCore
from scheduler.models.cluster_state import ReplicaConfig
from scheduler.status_codes import abort

log = logging.getLogger(__name__)
Context = aio.ServicerContext[Any, Any]

PROTOCOL_VERSION = 1
# How long a session that ends waits for its agent to stop writing and half-close after SessionEnding.
SESSION_END_GRACE_SECONDS = 2.0
AGENT_CLOSED = "agent closed the session"
NO_MESSAGE_PREFIX = "no message from the agent for"
STREAM_ERROR_PREFIX = "stream error:"
# Replica indexes are 0..MAX_SERVER_REPLICAS-1, like the replica counts ServerNotify and models may ask for.
MAX_REPLICA_INDEX = MAX_SERVER_REPLICAS


def replica_config(register: agent_pb2.Register) -> ReplicaConfig:
    """Check a Register message; raise InvalidArgument saying what is wrong. Field lengths, characters and counts
    are modelplane/spec/limits.py's."""
    if register.protocol_version != PROTOCOL_VERSION:
        raise InvalidArgument(
            f"agent speaks protocol version {register.protocol_version}; this scheduler speaks {PROTOCOL_VERSION}"
        )
    check_fields(register, "register")
    replica = register.replica
    check_name(replica.server_name, "server")
    if replica.replica_idx >= MAX_REPLICA_INDEX:
        raise InvalidArgument(f"replica index {replica.replica_idx} is above the limit of {MAX_REPLICA_INDEX - 1}")
    if not 0 < replica.total_memory_bytes <= MAX_MEMORY_BYTES:
        raise InvalidArgument(f"total_memory_bytes {replica.total_memory_bytes} must be between 1 byte and 1 PiB")
    if replica.over_commit_percentage > MAX_OVERCOMMIT_PERCENT:
        raise InvalidArgument(
            f"over_commit_percentage {replica.over_commit_percentage} is above {MAX_OVERCOMMIT_PERCENT}"
        )
    for capability in replica.capabilities:
        if not capability or capability != capability.strip():
            raise InvalidArgument(
                f"capability {shown(capability)}: capabilities must be non-empty names without surrounding spaces"
            )
    _check_loaded(register.loaded_models)
    if register.HasField("server_health"):
        check_server_health(register.server_health)
    return ReplicaConfig(
        server=replica.server_name,
        index=replica.replica_idx,
        shared=replica.shared,
        capabilities=frozenset(replica.capabilities),
        total_memory=replica.total_memory_bytes,
        overcommit_percent=replica.over_commit_percentage,
        http_url=replica.endpoints.http_url,
        grpc_target=replica.endpoints.grpc_target,
        agent_id=register.agent_id or f"{replica.server_name}-{replica.replica_idx}",
    )


def _check_loaded(loaded: Sequence[agent_pb2.LoadedModel]) -> None:
    """Models an agent says its server holds (at registration, or when its server serves again)."""
    held_once: set[tuple[str, int]] = set()
    for held in loaded:
        check_name(held.name)
        if held.version < 1:
            raise InvalidArgument(f"loaded model {held.name!r} has version {held.version}; versions start at 1")
        if (held.name, held.version) in held_once:
            raise InvalidArgument(f"loaded model {held.name!r} version {held.version} is listed more than once")
        held_once.add((held.name, held.version))


def check_server_health(health: agent_pb2.ServerHealth) -> None:
    """Check a ServerHealth message; raise InvalidArgument saying what is wrong. Its reason is an agent's words,
    never refused: the cluster stores it cleaned (limits.clean_reason)."""
    check_fields(health, "server_health")
    if not health.serving and health.loaded_models:
        raise InvalidArgument("a server that is not serving holds no loaded models")
    _check_loaded(health.loaded_models)


def server_down_reason(register: agent_pb2.Register) -> str | None:
    """Why the replica's server is not serving as its agent registers; None when it serves."""
    if register.HasField("server_health") and not register.server_health.serving:
        return register.server_health.reason or "its agent gave no reason"
    return None


def _agent_listens(reason: str) -> bool:
    """Whether an agent may still be there to hear why its session ends: not when it left, went silent or broke
    the stream itself."""
    return reason != AGENT_CLOSED and not reason.startswith((NO_MESSAGE_PREFIX, STREAM_ERROR_PREFIX))


class SessionClocks:
    """The two clocks of one session, each one timer re-armed per heartbeat interval rather than a timeout per
    message (a timer made and cancelled for every message read and every message written was ~2-3 % of the
    scheduler's CPU per LoadModel, bench/README.md): a heartbeat goes to the agent once the scheduler has sent
    nothing for ``interval`` (and nothing is waiting to go), and the session ends, ``NO_MESSAGE_PREFIX``, once
    nothing came from the agent for three intervals. ``sent`` and ``heard`` note the time of a message; each timer
    fires when its deadline as last known has passed, and goes back to sleep until the deadline as it is now."""

    def __init__(self, session: AgentSession, interval: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._session = session
        self._interval = interval
        self._silence = 3 * interval
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        now = self._loop.time()
        self._last_sent = now
        self._last_heard = now  # the Register message
        self._heartbeat = self._loop.call_at(now + interval, self._heartbeat_due)
        self._deaf = self._loop.call_at(now + self._silence, self._silence_due)

    def sent(self) -> None:
        self._last_sent = self._loop.time()

    def heard(self) -> None:
        self._last_heard = self._loop.time()

    def _heartbeat_due(self) -> None:
        now = self._loop.time()
        if now >= self._last_sent + self._interval and not self._session.pending:
            # Counted as sent when queued: one heartbeat waits in the outbox at most, even while gRPC holds the
            # writer (an agent not reading); an outbox with messages in it has something to send anyway.
            self._session.send(agent_pb2.SessionResponse(heartbeat=agent_pb2.Heartbeat()))
            self._last_sent = now
        # Due one interval after the last message went out (taken off the outbox later than queued, a heartbeat
        # moves _last_sent on): not one interval from now, which would leave an idle agent two intervals apart.
        due = self._last_sent + self._interval
        self._heartbeat = self._loop.call_at(due if due > now else now + self._interval, self._heartbeat_due)

    def _silence_due(self) -> None:
        now = self._loop.time()
        if now >= self._last_heard + self._silence:
            self._session.close(f"{NO_MESSAGE_PREFIX} {self._silence:g}s")
            return
        self._deaf = self._loop.call_at(self._last_heard + self._silence, self._silence_due)

    def stop(self) -> None:
        self._heartbeat.cancel()
        self._deaf.cancel()


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, core: SchedulerCore, heartbeat_interval_seconds: float = 5.0) -> None:
        self.core = core
        self.heartbeat = heartbeat_interval_seconds

    async def Session(
        self, request_iterator: AsyncIterator[agent_pb2.SessionRequest], context: Context
    ) -> AsyncIterator[agent_pb2.SessionResponse]:
        try:
            async with asyncio.timeout(3 * self.heartbeat):
                first = await anext(aiter(request_iterator))
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an agent session must start with a Register message")
        if first.WhichOneof("message") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an agent session must start with a Register message")
        try:
            config = replica_config(first.register)
            self.core.check_registration(config)
        except SchedulerError as error:
            await abort(context, error)
        session = AgentSession(config.agent_id)
        # For the session's whole task (the stream's, and its reader's, started below): every line names the replica.
        logs.bind(server=config.server, replica=config.index)
        yield agent_pb2.SessionResponse(
            register_accepted=agent_pb2.RegisterAccepted(
                session_id=session.session_id, heartbeat_interval_ms=int(self.heartbeat * 1000)
            )
        )
        self.core.agent_registered(
            config, first.register.loaded_models, session, server_down=server_down_reason(first.register)
        )
        log.info("agent connected", extra={"fields": {"server": config.server, "replica": config.index}})
        clocks = SessionClocks(session, self.heartbeat)
        reader = asyncio.create_task(self._read(request_iterator, config, session, clocks))
        try:
            while True:
                message = await session.next_message()
                if message is None:
                    break
                clocks.sent()
                yield message
            self.core.agent_gone(config, session)  # at once: the replica is gone, whatever the goodbye takes
            if session.closed_reason is not None and _agent_listens(session.closed_reason):
                # See agent.proto: the agent stops writing and half-closes, so it reads the status below rather
                # than gRPC's INTERNAL for a stream finished under its writes. Bounded: it may not listen.
                yield agent_pb2.SessionResponse(session_ending=agent_pb2.SessionEnding(reason=session.closed_reason))
                await asyncio.wait([reader], timeout=min(self.heartbeat, SESSION_END_GRACE_SECONDS))
        finally:
            clocks.stop()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self.core.agent_gone(config, session)
            log.info(
                "agent disconnected",
                extra={"fields": {"server": config.server, "replica": config.index, "why": session.closed_reason}},
            )
        if session.closed_reason and session.closed_reason != AGENT_CLOSED:
            await context.abort(grpc.StatusCode.UNAVAILABLE, session.closed_reason)

    async def _read(
        self,
        requests: AsyncIterator[agent_pb2.SessionRequest],
        config: ReplicaConfig,
        session: AgentSession,
        clocks: SessionClocks,
    ) -> None:
        iterator = aiter(requests)
        try:
            while True:
                request = await anext(iterator)  # silence for three intervals ends the session: SessionClocks
                clocks.heard()
                if session.closed_reason is not None:
                    continue  # the session is ending: what the agent still sends is dropped until it half-closes
                problem = self._apply(request, config, session)
                if problem is not None:
                    session.close(problem)
        except StopAsyncIteration:
            session.close(AGENT_CLOSED)
        except grpc.aio.AioRpcError as error:
            session.close(f"{STREAM_ERROR_PREFIX} {error.code().name}")
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("agent session reader failed")
            session.close(f"scheduler error: {error}")

    def _apply(self, request: agent_pb2.SessionRequest, config: ReplicaConfig, session: AgentSession) -> str | None:
        """Act on one message from the agent; returns why the session must end, or None."""
        kind = request.WhichOneof("message")
        if kind == "event":
            rejected = self.core.agent_event(config, session, request.event)
            if rejected is not None:
                log.warning("rejected agent event: %s", rejected)
                session.send(
                    agent_pb2.SessionResponse(
                        event_rejected=agent_pb2.EventRejected(
                            operation_id=request.event.operation_id,
                            model_name=request.event.model_name[:MAX_NAME_CHARS],
                            model_version=request.event.model_version,
                            reason=rejected,
                        )
                    )
                )
        elif kind == "heartbeat":
            # Liveness only: any message resets the read timeout. Memory is accounted by the scheduler's own
            # ledger, not the agent's report, so placement never races a report.
            pass
        elif kind == "drain":
            self.core.agent_drain(config, session)
        elif kind == "server_health":
            try:
                check_server_health(request.server_health)
            except SchedulerError as error:
                return f"invalid ServerHealth: {error}"
            self.core.agent_server_health(config, session, request.server_health)
        else:
            return f"unexpected {kind or 'empty'} message in an agent session"
        return None
