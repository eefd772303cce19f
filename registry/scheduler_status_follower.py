"""The ServingFollower port over the scheduler's gRPC API: what the scheduler serves of the names the registry
deployed, kept current in the registry's database for as long as the registry runs (registry/service/serving.py).

Each connection subscribes to SubscribeModelStatus first, then asks ModelStatus for every model: that answer ends,
so it is a complete picture (a followed name missing from it is not served), and a change made while it is read
still arrives on the subscription, read next. The names followed are read again every ``refresh_seconds`` (a model
deployed since), from the follower's own latest picture. When the scheduler goes away (the stream ends or fails, or
it cannot be reached) every followed name is recorded as unknown, with why, and the follower tries again after a backoff
(modelplane/backoff.py); a connection that gave a complete picture resets the backoff.

Bounded: the picture counts at most MAX_MODELS statuses (more: this connection is given up, the state unknown), each
message is under gRPC's receive limit, and a reason is cut to REASON_CHARS. Nothing here raises out of
``follow``: a failure of the sink (the database away) is logged and the connection tried again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import grpc

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.auth.client_token import ClientToken
from modelplane.backoff import Backoff
from modelplane.transport import TransportError, TransportSecurity, open_channel
from registry.ports import ServingReport, ServingSink, ServingState
from registry.scheduler_deployer import StatusStream
from registry.store.tables import REASON_CHARS  # what a reason column holds: more is cut here, before queueing

log = logging.getLogger(__name__)

SUBSCRIBER: Final = "modelplane-registry-follower"
MAX_MODELS: Final = 100_000
PICTURE_TIMEOUT_SECONDS: Final = 60.0
QUEUED: Final = 1000  # subscription messages read ahead of the database

_S = pb.ModelStatus.ModelState
STATES: Final[Mapping[int, ServingState]] = {
    _S.Value("ModelAvailable"): ServingState.AVAILABLE,
    _S.Value("ModelProgressing"): ServingState.PROGRESSING,
    _S.Value("ModelCreate"): ServingState.PROGRESSING,
    _S.Value("ModelStateUnknown"): ServingState.PROGRESSING,  # the scheduler has it, not yet placed
    _S.Value("ModelFailed"): ServingState.FAILED,
    _S.Value("ScheduleFailed"): ServingState.FAILED,
    _S.Value("ModelTerminateFailed"): ServingState.FAILED,
    _S.Value("ModelTerminating"): ServingState.NOT_SERVED,  # being unloaded: no longer the registry's to count on
    _S.Value("ModelTerminate"): ServingState.NOT_SERVED,
    _S.Value("ModelTerminated"): ServingState.NOT_SERVED,
    _S.Value("ModelScaledDown"): ServingState.NOT_SERVED,
}


class _ConnectionLostError(Exception):
    """This connection to the scheduler is over; the message says why."""


def report_of(message: pb.ModelStatusResponse) -> ServingReport:
    """The newest version's state, as the registry shows it (no version: not served)."""
    if not message.versions:
        return ServingReport(message.modelName, ServingState.NOT_SERVED, "the scheduler holds no version of it")
    status = message.versions[-1].state
    state = STATES.get(status.state, ServingState.PROGRESSING)
    shown = pb.ModelStatus.ModelState.Name(status.state) if status.state in STATES else str(status.state)
    reason = f"{shown}: {status.reason}" if status.reason else shown
    return ServingReport(message.modelName, state, reason[:REASON_CHARS])


@dataclass(frozen=True, slots=True)
class SchedulerStatusFollower:
    scheduler: Address
    security: TransportSecurity
    token: ClientToken | None = None
    initial_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 15.0
    refresh_seconds: float = 1.0  # how often the names the registry follows are read again

    async def follow(self, sink: ServingSink, stop: asyncio.Event) -> None:
        backoff = Backoff(self.initial_backoff_seconds, self.max_backoff_seconds)
        while not stop.is_set():
            why = await self._one_connection(sink, stop, backoff)
            if stop.is_set():
                return
            log.info("registry: following the scheduler at %s: %s; trying again", self.scheduler, why)
            try:
                await sink.unknown(f"cannot follow the scheduler at {self.scheduler}: {why}"[:REASON_CHARS])
            except Exception:  # the database away too: recorded at the next connection
                log.warning("registry: could not record the scheduler's state as unknown", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.next_jittered())

    async def _one_connection(self, sink: ServingSink, stop: asyncio.Event, backoff: Backoff) -> str:
        """Follow over one connection until it is lost (why) or ``stop``."""
        stopping = asyncio.ensure_future(stop.wait())
        following = asyncio.ensure_future(self._follow_connection(sink, backoff))
        try:
            await asyncio.wait({stopping, following}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopping, following):
                task.cancel()
            # Their outcomes are read below, not raised here (a lost connection is the following task's result).
            await asyncio.gather(stopping, following, return_exceptions=True)
        if not following.done() or following.cancelled():
            return "stopped"
        error = following.exception()
        if isinstance(error, _ConnectionLostError):
            return str(error)
        if error is not None:
            log.error("registry: following the scheduler failed", exc_info=error)
            return f"the follower failed: {type(error).__name__}"
        return "the scheduler closed its status stream"

    async def _follow_connection(self, sink: ServingSink, backoff: Backoff) -> None:
        try:
            async with open_channel(self.scheduler, self.security, self.token) as channel:
                stub = pb_grpc.SchedulerStub(channel)
                stream = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName=SUBSCRIBER))
                messages: asyncio.Queue[pb.ModelStatusResponse | BaseException | None] = asyncio.Queue(QUEUED)
                reading = asyncio.create_task(_read_into(stream, messages))
                try:
                    async with asyncio.timeout(PICTURE_TIMEOUT_SECONDS):
                        picture = await _picture(channel)
                    await self._follow(sink, picture, messages, backoff)
                finally:
                    reading.cancel()
                    stream.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reading
        except grpc.aio.AioRpcError as error:
            raise _ConnectionLostError(f"{error.code().name}: {error.details()}") from None
        except TransportError as error:
            raise _ConnectionLostError(str(error)) from None
        except TimeoutError:
            raise _ConnectionLostError(
                f"no complete answer to ModelStatus within {PICTURE_TIMEOUT_SECONDS:g} s"
            ) from None

    async def _follow(
        self,
        sink: ServingSink,
        latest: dict[str, ServingReport],
        messages: asyncio.Queue[pb.ModelStatusResponse | BaseException | None],
        backoff: Backoff,
    ) -> None:
        """Record the complete picture ``latest`` (every model the scheduler holds), then each change. Changes of
        names the registry does not follow are kept in ``latest`` only: a name deployed since (the registry records
        it after the scheduler has reported it available) is found at the next refresh of the followed names, with
        what the scheduler last said of it."""
        followed = await sink.followed()
        # Only names followed before the picture was taken are known not held by it: one deployed since may be
        # held now (its load arrives on the subscription, queued behind the picture).
        held = [latest[name] for name in followed if name in latest]
        await sink.record(held, not_served={name for name in followed if name not in latest})
        backoff.reset()  # a connection that gave a complete picture: the next loss starts the backoff over
        while True:
            try:
                message = await asyncio.wait_for(messages.get(), self.refresh_seconds)
            except TimeoutError:
                now_followed = await sink.followed()
                new = now_followed - followed
                followed = now_followed
                if new:
                    await sink.record([latest[name] for name in new if name in latest])
                continue
            if message is None:
                return  # the stream ended: the scheduler stopped
            if isinstance(message, BaseException):
                raise message
            report = report_of(message)
            if report.name not in latest and len(latest) >= MAX_MODELS:
                raise _ConnectionLostError(f"the scheduler holds more than {MAX_MODELS} models: not followed")
            latest[report.name] = report
            if report.name in followed:
                await sink.record([report])


async def _read_into(
    stream: StatusStream, messages: asyncio.Queue[pb.ModelStatusResponse | BaseException | None]
) -> None:
    """The subscription's messages into ``messages`` (bounded: a slow database holds the stream back), then None at
    its end, or the error that ended it."""
    try:
        while True:
            message = await stream.read()
            if not isinstance(message, pb.ModelStatusResponse):
                await messages.put(None)
                return
            await messages.put(message)
    except grpc.aio.AioRpcError as error:
        await messages.put(error)


async def _picture(channel: grpc.aio.Channel) -> dict[str, ServingReport]:
    """Every model the scheduler holds (bounded by MAX_MODELS), by name."""
    reports: dict[str, ServingReport] = {}
    async for message in pb_grpc.SchedulerStub(channel).ModelStatus(pb.ModelStatusRequest(subscriberName=SUBSCRIBER)):
        if len(reports) >= MAX_MODELS:
            raise _ConnectionLostError(f"the scheduler holds more than {MAX_MODELS} models: not followed")
        reports[message.modelName] = report_of(message)
    return reports
