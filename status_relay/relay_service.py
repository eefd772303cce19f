"""The relay's Scheduler API servicer: the four status subscriptions, served from the relay's caches; every other
RPC of the service answers UNIMPLEMENTED and says to call the scheduler.

Thin, like the scheduler's: each stream is its cache's subscription relayed through the stream watchdog
(modelplane/stream_watchdog.py, the subscriber lag), as the scheduler relays its own (scheduler/status_codes.py),
and sent as the bytes the scheduler sent. Requests are checked against the Scheduler API's field limits
(modelplane/spec/limits.py) as the scheduler checks them. Codes:

- INVALID_ARGUMENT: a request field beyond its limits (e.g. a subscriber name too long or with control characters);
- RESOURCE_EXHAUSTED: the relay serves its --max-subscribers already, or a subscriber fell behind (as the scheduler);
- UNAVAILABLE: the relay has no current snapshot (connecting to the scheduler, or just lost it): subscribe again;
  a stream in progress ends with it when the relay loses its own stream from the scheduler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import grpc
from google.protobuf.message import Message
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.event_hub import SubscriberLagged
from modelplane.grpc_handlers import add_with_raw_responses
from modelplane.spec import limits
from modelplane.spec.errors import SchedulerError
from modelplane.stream_watchdog import StreamWatchdog
from status_relay.status_cache import NotCurrent, StatusCache, UpstreamLost
from status_relay.status_kinds import KINDS

Context = aio.ServicerContext[Any, Any]

SERVED = tuple(kind.subscribe_rpc for kind in KINDS)
_SERVICE = pb.DESCRIPTOR.services_by_name["Scheduler"]


class RelayService:
    """Serves SERVED from the caches; every other method of the Scheduler service is added below the class."""

    def __init__(self, caches: Mapping[str, StatusCache], streams: StreamWatchdog, max_subscribers: int) -> None:
        self._caches = caches  # by subscribe RPC
        self.streams = streams
        self.max_subscribers = max_subscribers
        self.subscribers = 0  # streams being served now, of every kind
        self.refused_full = 0  # subscribers refused because --max-subscribers were served (for metrics)

    def add_to(self, server: aio.Server) -> None:
        # The generated registration takes every method of the service from this object (those added below too).
        servicer = cast(pb_grpc.SchedulerServicer, self)
        add_with_raw_responses(pb_grpc.add_SchedulerServicer_to_server, servicer, server, SERVED)

    async def _serve(self, rpc: str, request: Message, context: Context) -> AsyncIterator[bytes]:
        try:
            limits.check_fields(request, request.DESCRIPTOR.name)
        except SchedulerError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if self.subscribers >= self.max_subscribers:
            self.refused_full += 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this status relay serves {self.max_subscribers} subscribers already (its --max-subscribers); "
                "subscribe to another relay, or later",
            )
        subscriber: str = getattr(request, "subscriberName", "")
        try:
            subscription = self._caches[rpc].subscribe(subscriber)
        except NotCurrent as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        self.subscribers += 1
        try:
            async with subscription:
                # Headers at once, as the scheduler sends them (scheduler/status_codes.py): the client knows it is
                # subscribed even while nothing changes. (A relay cannot follow a relay: it lists the kind with
                # the scheduler's one-shot RPCs, which a relay does not answer.)
                await context.send_initial_metadata(())
                async for data in self.streams.relay(
                    context, subscription, rpc=rpc, subscriber=subscriber, release=subscription.drop
                ):
                    yield data
        except UpstreamLost as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        except SubscriberLagged as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        finally:
            self.subscribers -= 1

    async def SubscribeModelStatus(  # bytes as the scheduler sent them: SERVED
        self, request: pb.ModelSubscriptionRequest, context: Context
    ) -> AsyncIterator[bytes]:
        async for data in self._serve("SubscribeModelStatus", request, context):
            yield data

    async def SubscribeServerStatus(  # bytes as the scheduler sent them: SERVED
        self, request: pb.ServerSubscriptionRequest, context: Context
    ) -> AsyncIterator[bytes]:
        async for data in self._serve("SubscribeServerStatus", request, context):
            yield data

    async def SubscribePipelineStatus(  # bytes as the scheduler sent them: SERVED
        self, request: pb.PipelineSubscriptionRequest, context: Context
    ) -> AsyncIterator[bytes]:
        async for data in self._serve("SubscribePipelineStatus", request, context):
            yield data

    async def SubscribeExperimentStatus(  # bytes as the scheduler sent them: SERVED
        self, request: pb.ExperimentSubscriptionRequest, context: Context
    ) -> AsyncIterator[bytes]:
        async for data in self._serve("SubscribeExperimentStatus", request, context):
            yield data


def _not_served(method: str) -> Any:
    message = (
        f"a status relay serves only {', '.join(SERVED)}; call {method} on the scheduler itself (the relay's "
        "--scheduler address)"
    )

    async def refuse(self: RelayService, request: Any, context: Context) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    refuse.__name__ = method
    return refuse


# Every other method of the service, unary or streaming: a coroutine handler that aborts serves either kind.
for _method in _SERVICE.methods:
    if _method.name not in SERVED:
        setattr(RelayService, _method.name, _not_served(_method.name))
