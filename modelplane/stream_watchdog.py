"""Ends server streams whose client has stopped taking messages: the subscriber lag.

Every server-streaming RPC of the scheduler (the status subscriptions, WatchRoutes, the control plane and
the one-shot status lists), and of the status relay (status_relay/), hands gRPC one message at a time and takes
the next only once gRPC has written it, so gRPC never holds more than one message for a stream; what is still to
come waits in the stream's source (an EventHub subscription coalesces it per key). A client that reads nothing
stops taking messages once its transport's flow-control window is full (a few KiB to a few MiB), and the write in
progress then never completes.

A stream with a write pending for longer than ``lag_seconds`` is dropped: its source is released at once
(the subscription's pending state is freed) and the call is set to end with RESOURCE_EXHAUSTED and a
message that says to subscribe again. The client gets that status after what it has still to read, as
HTTP/2 sends a call's status after its data; the stream's task ends then, or when the client goes away.
A stream waiting for its source (nothing to send) is never dropped, however long it waits.

One sweep every quarter of the lag (between 50 ms and 5 s) checks the streams in progress, so a stream
costs nothing per message beyond noting when its write started. No domain code here: this is the gRPC side.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc import aio

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_SUBSCRIBER_LAG_SECONDS = 30.0
_SUBSCRIBER_SHOWN = 100  # characters of a client-given subscriber name that go into logs and messages


@dataclass(eq=False)
class _Stream:
    context: aio.ServicerContext[Any, Any]
    rpc: str
    subscriber: str
    release: Callable[[str], None] | None
    writing_since: float | None = None  # the event loop's time when gRPC was handed the message it is writing
    dropped: bool = False


class StreamWatchdog:
    """Relays server streams and drops those whose client has taken no message for ``lag_seconds``."""

    def __init__(self, lag_seconds: float = DEFAULT_SUBSCRIBER_LAG_SECONDS, *, server: str = "scheduler") -> None:
        if not lag_seconds > 0:
            raise ValueError(f"the subscriber lag must be positive, got {lag_seconds}")
        self.lag_seconds = lag_seconds
        self.server = server  # who drops a stream, as its clients are told
        self._streams: set[_Stream] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.dropped: Counter[str] = Counter()  # rpc -> streams dropped for lagging, since start (for metrics)

    @property
    def streams(self) -> int:
        """Streams being relayed now (a dropped one is no longer counted)."""
        return len(self._streams)

    def lag_by_rpc(self, now: float) -> dict[str, tuple[int, float]]:
        """Per RPC, the streams being relayed and the longest time one of them has had a write pending (0 when
        none has): the subscribers' lag, for metrics. ``now`` is the event loop's time."""
        found: dict[str, tuple[int, float]] = {}
        for stream in list(self._streams):
            count, longest = found.get(stream.rpc, (0, 0.0))
            since = stream.writing_since
            found[stream.rpc] = (count + 1, max(longest, now - since if since is not None else 0.0))
        return found

    async def relay(
        self,
        context: aio.ServicerContext[Any, Any],
        source: AsyncIterator[T],
        *,
        rpc: str,
        subscriber: str = "",
        release: Callable[[str], None] | None = None,
    ) -> AsyncIterator[T]:
        """Yield ``source``'s items to gRPC, one at a time, until it ends or the stream is dropped.

        ``release(reason)``, if given, frees what the source still holds when the stream is dropped (for a
        subscription: ``Subscription.drop``). Use it as the whole of a streaming handler's output.
        """
        loop = asyncio.get_running_loop()
        stream = _Stream(context, rpc, subscriber[:_SUBSCRIBER_SHOWN], release)
        self._streams.add(stream)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_while_relaying(), name="stream-watchdog")
        try:
            async for item in source:
                stream.writing_since = loop.time()
                yield item  # gRPC writes it, and asks for the next item once the write has completed
                stream.writing_since = None
                if stream.dropped:
                    return  # the call ends with the status set when it was dropped
        finally:
            self._streams.discard(stream)

    async def _sweep_while_relaying(self) -> None:
        loop = asyncio.get_running_loop()
        interval = min(max(self.lag_seconds / 4, 0.05), 5.0)
        while self._streams:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            now = loop.time()
            if now - due > self.lag_seconds / 2:
                # The event loop itself was held up: writes that completed meanwhile may not have been seen yet.
                continue
            for stream in list(self._streams):
                since = stream.writing_since
                if since is not None and now - since > self.lag_seconds:
                    self._drop(stream, now - since)

    def _drop(self, stream: _Stream, waited: float) -> None:
        stream.dropped = True
        self._streams.discard(stream)
        self.dropped[stream.rpc] += 1
        reason = (
            f"this {stream.rpc} stream fell behind: its client took no message for {waited:.0f} s while one was "
            f"waiting (the limit is {self.lag_seconds:g} s), so the {self.server} dropped it; subscribe again to get "
            "the current state"
        )
        # Sent as the call's status once the message in progress is written (HTTP/2 keeps that order), or never,
        # if the client never reads again; either way the stream holds nothing more from now on.
        stream.context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
        stream.context.set_details(reason)
        if stream.release is not None:
            stream.release(reason)
        log.warning(
            "dropped the %s stream of %r (%s): its client took no message for %.1f s, the subscriber lag is %g s",
            stream.rpc,
            stream.subscriber,
            _peer(stream.context),
            waited,
            self.lag_seconds,
        )


def _peer(context: aio.ServicerContext[Any, Any]) -> str:
    try:
        return str(context.peer())
    except Exception:  # the call may be gone already; the peer is only for the log line
        return "unknown peer"
