"""Domain errors to gRPC status codes: the one mapping every servicer uses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NoReturn, TypeVar

import grpc
from grpc import aio

from modelplane.event_hub import SubscriberLagged, Subscription
from modelplane.spec import errors
from modelplane.stream_watchdog import StreamWatchdog

log = logging.getLogger(__name__)
T = TypeVar("T")

CODES: dict[type[errors.SchedulerError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    # Seldon's clients treat FAILED_PRECONDITION as "do not retry"; we use it where Seldon does.
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.IllegalTransition: grpc.StatusCode.FAILED_PRECONDITION,
}


def code_for(error: errors.SchedulerError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in CODES:
            return CODES[kind]
    return grpc.StatusCode.INTERNAL


async def abort(context: aio.ServicerContext[Any, Any], error: errors.SchedulerError) -> NoReturn:
    await context.abort(code_for(error), str(error))


async def unary(context: aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]) -> T:
    """Run a unary handler's domain call, answering domain errors with their status code."""
    try:
        return await call()
    except errors.SchedulerError as error:
        await abort(context, error)


async def stream(
    context: aio.ServicerContext[Any, Any],
    source: AsyncIterator[T],
    streams: StreamWatchdog,
    *,
    rpc: str,
    subscriber: str = "",
    release: Callable[[str], None] | None = None,
) -> AsyncIterator[T]:
    """Relay a domain stream through the watchdog (see StreamWatchdog.relay), answering domain errors (and a
    subscriber that fell too far behind) with a status code."""
    try:
        async for item in streams.relay(context, source, rpc=rpc, subscriber=subscriber, release=release):
            yield item
    except errors.SchedulerError as error:
        await abort(context, error)
    except SubscriberLagged as error:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))


async def subscription(
    context: aio.ServicerContext[Any, Any],
    subscribed: Subscription[Any, Any],
    streams: StreamWatchdog,
    *,
    rpc: str,
    subscriber: str,
) -> AsyncIterator[bytes]:
    """Relay a subscription (``stream``) as the bytes of its messages, each serialised once for every subscriber
    (modelplane/event_hub.py); the method must send bytes as they are (``add_with_raw_responses``). One whose client
    stops reading is dropped and its backlog freed.

    The response headers go out at once, the subscriber being registered: a client that waits for them knows that
    every change from then on reaches it, even while there is nothing to send (the status relay lists the state
    then, status_relay/upstream.py)."""
    async with subscribed:
        await context.send_initial_metadata(())
        async for item in stream(
            context, subscribed.encoded(), streams, rpc=rpc, subscriber=subscriber, release=subscribed.drop
        ):
            yield item


async def stream_list(
    context: aio.ServicerContext[Any, Any],
    produce: Callable[[], Iterable[T]],
    streams: StreamWatchdog,
    *,
    rpc: str,
    subscriber: str = "",
) -> AsyncIterator[T]:
    """Relay a one-shot answer as a stream (``stream``), with domain errors as codes.

    ``produce`` may render lazily (an iterator): items are rendered one per message sent, so a client that stops
    reading holds one rendered item (and whatever the iterator keeps) until the stream is dropped.
    """

    async def each() -> AsyncIterator[T]:
        for item in produce():
            yield item

    async for item in stream(context, each(), streams, rpc=rpc, subscriber=subscriber):
        yield item
