"""A fake node agent that speaks ``mlops.agent.v1.AgentService.Session`` to a real scheduler over gRPC.

It plays one inference-server replica: registers (with the models it already holds), answers every
``ModelOperation`` at once (or fails chosen loads, or holds its answers back), sends heartbeats at the
interval the scheduler gave, can ask to drain, and records everything it received and sent. It can
stop cleanly (``close``), "crash" (``crash``: the stream is cancelled without a goodbye), "hang"
(``hang``: it stays connected but sends nothing), and reconnect to a scheduler at a new address,
re-registering with the models it still holds.

Every record carries a number from one counter shared by all agents in the process, so a test can
order what happened on different agents (e.g. "loaded on B before unloaded from A").

Loopback only: the scheduler under test listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from grpc import aio

from generated.mlops.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.support.waiting import wait_for

MiB = 1024 * 1024
PROTOCOL_VERSION = 1
Operation = agent_pb2.ModelOperation
Event = agent_pb2.ModelEvent
ModelKey = tuple[str, int]  # (model name, version)

_sequence = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Record:
    """One thing an agent saw or did. ``seq`` orders records across all agents of the process."""

    seq: int
    what: str  # load, unload (received); loaded, load_failed, unloaded (sent); drain_requested, drain_complete
    model: str = ""
    version: int = 0


class FakeGrpcAgent:
    def __init__(
        self,
        address: str,
        server: str = "mlserver",
        replica_idx: int = 0,
        *,
        shared: bool = True,
        capabilities: Iterable[str] = ("sklearn",),
        memory: int = 1000 * MiB,
        overcommit: int = 0,
        loaded: Iterable[tuple[str, int, int]] = (),
        fail_models: Mapping[str, str] | None = None,
        fail_uris: Mapping[str, str] | None = None,
        answering: bool = True,
        agent_id: str | None = None,
    ) -> None:
        self.address = address
        self.server = server
        self.replica_idx = replica_idx
        self.shared = shared
        self.capabilities = list(capabilities)
        self.memory = memory
        self.overcommit = overcommit
        self.agent_id = agent_id or f"{server}-{replica_idx}"
        # Models whose loads fail (by model name, or by artifact uri), with the reason the agent gives.
        self.fail_models: dict[str, str] = dict(fail_models or {})
        self.fail_uris: dict[str, str] = dict(fail_uris or {})
        # False: operations are recorded in ``unanswered`` but not answered (see ``answer_pending``).
        self.answering = answering
        # False: no heartbeats are sent (with ``answering`` False too, the agent is hung).
        self.heartbeating = True
        # Cleared by ``pause``: the agent stops reading (operations stay in transit) but keeps heartbeating.
        self._reading = asyncio.Event()
        self._reading.set()

        self.held: dict[ModelKey, int] = {(name, version): size for name, version, size in loaded}
        self.loads: Counter[ModelKey] = Counter()
        self.unloads: Counter[ModelKey] = Counter()
        self.operations: list[agent_pb2.ModelOperation] = []
        self.unanswered: list[agent_pb2.ModelOperation] = []
        self.timeline: list[Record] = []
        self.rejected: list[agent_pb2.EventRejected] = []
        self.drain_completes: list[agent_pb2.DrainComplete] = []
        self.heartbeats_received = 0
        self.accepted: agent_pb2.RegisterAccepted | None = None
        self.sessions = 0  # registrations the scheduler accepted
        self.end_code: grpc.StatusCode | None = None
        self.goodbye = ""  # the reason in the scheduler's SessionEnding, if it said goodbye
        self.end_details = ""

        self._channel: aio.Channel | None = None
        self._call: aio.StreamStreamCall[agent_pb2.SessionRequest, agent_pb2.SessionResponse] | None = None
        self._write_lock = asyncio.Lock()
        self._stop_heartbeats = asyncio.Event()
        self._ended = asyncio.Event()
        self._ended.set()  # not connected yet
        self._reader: asyncio.Task[None] | None = None
        self._heartbeater: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- life cycle

    @property
    def connected(self) -> bool:
        return not self._ended.is_set()

    @property
    def available_memory(self) -> int:
        return max(0, self.memory - sum(self.held.values()))

    def register_message(self) -> agent_pb2.SessionRequest:
        return agent_pb2.SessionRequest(
            register=agent_pb2.Register(
                protocol_version=PROTOCOL_VERSION,
                agent_id=self.agent_id,
                replica=agent_pb2.ReplicaConfig(
                    server_name=self.server,
                    replica_idx=self.replica_idx,
                    shared=self.shared,
                    server_kind=agent_pb2.SERVER_KIND_MLSERVER,
                    capabilities=self.capabilities,
                    total_memory_bytes=self.memory,
                    over_commit_percentage=self.overcommit,
                    endpoints=agent_pb2.InferenceEndpoints(
                        http_url=f"http://127.0.0.1:1/{self.server}/{self.replica_idx}",
                        grpc_target="127.0.0.1:1",
                    ),
                ),
                loaded_models=[
                    agent_pb2.LoadedModel(name=name, version=version, memory_bytes=size)
                    for (name, version), size in sorted(self.held.items())
                ],
                available_memory_bytes=self.available_memory,
            )
        )

    async def start(self, timeout: float = 20.0) -> agent_pb2.RegisterAccepted:
        """Open the session, register, and start answering. Raises AioRpcError if the scheduler refuses."""
        if self.connected:
            raise RuntimeError(f"agent {self.agent_id} is already connected")
        await self._teardown()
        self._channel = aio.insecure_channel(self.address)
        call = agent_pb2_grpc.AgentServiceStub(self._channel).Session(timeout=None)
        self._call = call
        try:
            async with asyncio.timeout(timeout):
                await call.write(self.register_message())
                first = await call.read()
        except BaseException:
            call.cancel()
            await self._channel.close()
            self._channel = self._call = None
            raise
        if not isinstance(first, agent_pb2.SessionResponse) or first.WhichOneof("message") != "register_accepted":
            call.cancel()
            await self._channel.close()
            self._channel = self._call = None
            raise AssertionError(f"scheduler did not accept the session of {self.agent_id}: {first!r}")
        self.accepted = first.register_accepted
        self.sessions += 1
        self.end_code, self.end_details = None, ""
        self._ended.clear()
        self._stop_heartbeats.clear()
        self._reading.set()
        self._reader = asyncio.create_task(self._read(call), name=f"{self.agent_id}-reader")
        self._heartbeater = asyncio.create_task(self._heartbeat(call), name=f"{self.agent_id}-heartbeat")
        return self.accepted

    async def reconnect(self, address: str | None = None, timeout: float = 20.0) -> agent_pb2.RegisterAccepted:
        """Start a new session (at ``address`` if given), re-registering with every model still held.

        An open session is crashed first, as a restarted agent process would leave it.
        """
        if self.connected:
            await self.crash()
        if address is not None:
            self.address = address
        return await self.start(timeout)

    async def close(self, timeout: float = 20.0) -> None:
        """End the session cleanly: stop heartbeats, half-close, and wait for the scheduler to end it."""
        if self._call is None:
            return
        self._reading.set()  # a paused agent must read on to see the end
        self._stop_heartbeats.set()
        if self._heartbeater is not None:
            await self._heartbeater
        async with self._write_lock:
            with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
                await self._call.done_writing()
        try:
            await asyncio.wait_for(self._ended.wait(), timeout)
        finally:
            await self._teardown()

    async def crash(self) -> None:
        """Cancel the stream without a goodbye, as a killed agent process would."""
        if self._call is not None:
            self._call.cancel()
        await self._teardown()

    def hang(self) -> None:
        """Stay connected but send nothing: no heartbeats, no answers (operations pile up unanswered)."""
        self.heartbeating = False
        self.answering = False

    def pause(self) -> None:
        """Stop reading from the scheduler (operations stay in transit, unseen) while still heartbeating."""
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    async def wait_ended(self, timeout: float = 20.0) -> None:
        await asyncio.wait_for(self._ended.wait(), timeout)

    async def _teardown(self) -> None:
        self._stop_heartbeats.set()
        for task in (self._heartbeater, self._reader):
            if task is not None and not task.done():
                task.cancel()
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._heartbeater = self._reader = None
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._call = None
        self._ended.set()

    # ----------------------------------------------------------------- what the agent sends

    async def _send(self, message: agent_pb2.SessionRequest) -> bool:
        """Write one message; False when the session is already over."""
        call = self._call
        if call is None:
            return False
        async with self._write_lock:
            try:
                await call.write(message)
            except (aio.AioRpcError, asyncio.InvalidStateError):
                return False
        return True

    async def drain(self) -> None:
        """Ask the scheduler to move this replica's models elsewhere."""
        self._note("drain_requested")
        if not await self._send(agent_pb2.SessionRequest(drain=agent_pb2.DrainRequest())):
            raise AssertionError(f"agent {self.agent_id} could not send DrainRequest: session over")

    async def send_event(self, event: agent_pb2.ModelEvent) -> None:
        """Send a scripted event as it is (e.g. a duplicate or a stale one), recorded as ``event``."""
        self._note("event", event.model_name, event.model_version)
        if not await self._send(agent_pb2.SessionRequest(event=event)):
            raise AssertionError(f"agent {self.agent_id} could not send an event: session over")

    async def send_server_health(self, health: agent_pb2.ServerHealth) -> None:
        """Say the replica's inference server stopped (or resumed) serving."""
        self._note("server_health")
        if not await self._send(agent_pb2.SessionRequest(server_health=health)):
            raise AssertionError(f"agent {self.agent_id} could not send ServerHealth: session over")

    async def wait_drain_complete(self, timeout: float = 20.0) -> agent_pb2.DrainComplete:
        await wait_for(lambda: bool(self.drain_completes), timeout, f"DrainComplete at {self.agent_id}")
        return self.drain_completes[0]

    async def answer_pending(self) -> None:
        """Answer every operation held back while ``answering`` was False (in the order received)."""
        pending, self.unanswered = self.unanswered, []
        for operation in pending:
            await self._answer(operation)

    async def _heartbeat(self, call: aio.StreamStreamCall[agent_pb2.SessionRequest, agent_pb2.SessionResponse]) -> None:
        assert self.accepted is not None
        interval = max(self.accepted.heartbeat_interval_ms, 10) / 1000
        while not self._stop_heartbeats.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_heartbeats.wait(), interval)
            if self._stop_heartbeats.is_set() or call.done():
                return
            if self.heartbeating:
                heartbeat = agent_pb2.Heartbeat(available_memory_bytes=self.available_memory)
                await self._send(agent_pb2.SessionRequest(heartbeat=heartbeat))

    # ----------------------------------------------------------------- what the agent receives

    async def _read(self, call: aio.StreamStreamCall[agent_pb2.SessionRequest, agent_pb2.SessionResponse]) -> None:
        try:
            while True:
                await self._reading.wait()
                message = await call.read()
                if not isinstance(message, agent_pb2.SessionResponse):  # EOF: the scheduler ended the session
                    self.end_code = await call.code()
                    self.end_details = await call.details() or ""
                    return
                # Paused while this read was pending: the message stays unseen until resumed, like those in transit.
                await self._reading.wait()
                await self._handle(message)
        except aio.AioRpcError as error:
            self.end_code, self.end_details = error.code(), error.details() or ""
        finally:
            self._stop_heartbeats.set()
            self._ended.set()

    async def _handle(self, message: agent_pb2.SessionResponse) -> None:
        kind = message.WhichOneof("message")
        if kind == "operation":
            operation = message.operation
            self.operations.append(operation)
            name, version = operation.model.meta.name, operation.version
            if operation.kind == Operation.KIND_LOAD:
                self.loads[(name, version)] += 1
                self._note("load", name, version)
            else:
                self.unloads[(name, version)] += 1
                self._note("unload", name, version)
            if self.answering:
                await self._answer(operation)
            else:
                self.unanswered.append(operation)
        elif kind == "heartbeat":
            self.heartbeats_received += 1
        elif kind == "drain_complete":
            self._note("drain_complete")
            self.drain_completes.append(message.drain_complete)
        elif kind == "event_rejected":
            self.rejected.append(message.event_rejected)
        elif kind == "session_ending":
            # As agent.proto asks: stop writing and half-close, then read the stream's status.
            self.goodbye = message.session_ending.reason
            self._stop_heartbeats.set()
            call = self._call
            if call is not None:
                async with self._write_lock:
                    with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
                        await call.done_writing()

    async def _answer(self, operation: agent_pb2.ModelOperation) -> None:
        name, version = operation.model.meta.name, operation.version
        event = Event(operation_id=operation.operation_id, model_name=name, model_version=version)
        if operation.kind == Operation.KIND_LOAD:
            reason = self.fail_models.get(name) or self.fail_uris.get(operation.model.modelSpec.uri)
            if reason is not None:
                event.kind, event.reason = Event.KIND_LOAD_FAILED, reason
                what = "load_failed"
            else:
                self.held[(name, version)] = operation.model.modelSpec.memoryBytes
                event.kind = Event.KIND_LOADED
                what = "loaded"
        else:
            self.held.pop((name, version), None)
            event.kind = Event.KIND_UNLOADED
            what = "unloaded"
        event.available_memory_bytes = self.available_memory
        self._note(what, name, version)
        await self._send(agent_pb2.SessionRequest(event=event))

    # ----------------------------------------------------------------- queries

    def _note(self, what: str, model: str = "", version: int = 0) -> None:
        self.timeline.append(Record(next(_sequence), what, model, version))

    def first(self, what: str, model: str = "", version: int = 0) -> Record:
        """The first record of ``what`` (for ``model``:``version`` when given); AssertionError if none."""
        for record in self.timeline:
            if record.what == what and (not model or (record.model, record.version) == (model, version)):
                return record
        raise AssertionError(f"agent {self.agent_id} has no {what} record for {model}:{version}")

    def holds(self, model: str, version: int = 1) -> bool:
        return (model, version) in self.held
