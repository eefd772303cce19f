"""A publish/subscribe hub for status streams (SubscribeModelStatus, SubscribeServerStatus, ...).

The state owner calls ``hub.publish(key, value)`` whenever the status of ``key`` changes; each stream
handler holds a ``Subscription`` and forwards what it yields. Invariants:

* **Snapshot first.** A subscriber first receives the current state, then every later change. The keys
  of the current state are taken and the subscriber registered in one synchronous step, so no publish
  falls between them: nothing is missed and nothing is duplicated. The snapshot's values are rendered
  one by one as the subscriber reads them (a key published meanwhile is delivered with its published
  value instead, in its snapshot place), so a subscriber that reads nothing holds its snapshot's keys,
  never a copy of every value. For that to be the state at subscription or the latest published one, the
  state owner publishes every change before anything else runs, as it must anyway.
* **Coalescing.** A subscriber's queue holds at most one value per key, the latest. Publishing a key
  that is already pending replaces its value and keeps its place; keys are delivered in the order they
  first became pending. Statuses are state, not events: a reader needs the latest one, not the history.
* **Bounded.** A subscriber never holds more than ``max_pending_keys`` published values. One whose reader
  has stopped taking values is for whoever relays it to drop (``Subscription.drop``; the scheduler's stream
  watchdog does, after the subscriber lag). The bound is for one that reads, but more slowly than distinct
  keys are published: removed resources' final values stay pending under their own keys, so with churn
  under new names its keys are not limited by the state's size, and the bound caps what it holds. Size it
  to the most keys the state can have, so that a subscriber with every key of the largest state changed
  before it reads one still fits. One that would exceed it has fallen too far behind to catch up by
  coalescing: it is dropped, its pending values are freed, and its next read raises ``SubscriberLagged``
  so it can reconnect for a fresh snapshot. The snapshot does not count: it is the state's own keys,
  however many, and each value is rendered only when read.
* **Non-blocking publisher.** ``publish`` is synchronous and O(1) per subscriber: it never awaits, never
  starts a task, and a slow or stuck subscriber cannot delay the publisher or any other subscriber.
* **Encoded once.** A hub made with ``encode`` gives its subscribers each value also as bytes
  (``Subscription.encoded()``, for a stream that sends bytes as they are). A published value is one entry shared
  by every subscriber it is offered to; the first subscriber that takes it as bytes encodes it, the others get
  those same bytes. A snapshot value is rendered for one subscriber, so it is encoded for that one. A value is
  never encoded if no subscriber takes it as bytes (coalesced away, or read as a value).

The hub is not thread-safe: use it from its event loop's thread (from another thread, go through
``loop.call_soon_threadsafe``). Domain code: no grpc imports here. Shared by the scheduler (scheduler/publishing.py)
and the status relay (status_relay/), which fans out what it receives from the scheduler the same way.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Iterable
from types import TracebackType
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_MAX_PENDING_KEYS = 10_000


class _Entry(Generic[V]):
    """One value as subscribers hold it: published values are one entry shared by every subscriber they were offered
    to, so that its bytes, once encoded, are encoded for all of them."""

    __slots__ = ("data", "value")

    def __init__(self, value: V) -> None:
        self.value = value
        self.data: bytes | None = None


class SubscriberLagged(Exception):  # noqa: N818 - the name says what happened to the subscriber
    """The subscriber fell too far behind and was dropped; reconnect to get a fresh snapshot."""


class EventHubClosedError(RuntimeError):
    """The hub has been closed (the scheduler is shutting down); it accepts no new subscribers."""


class Subscription(Generic[K, V]):
    """One subscriber's view of an ``EventHub``: an async iterator of values, snapshot first.

    Created by ``EventHub.subscribe``. ``async for value in subscription`` yields values in the order
    their keys became pending (coalesced to the latest value per key) and finishes when the subscription
    or the hub is closed; ``async for data in subscription.encoded()`` yields the same values as bytes, from a
    hub made with ``encode``. Closing drops whatever is still pending: at shutdown a stale status is worth
    nothing and draining it would only hold the stream open. If the subscriber lagged (see
    ``EventHub``), reads raise ``SubscriberLagged`` instead. Use it as an async context manager so it is
    unregistered when the stream handler exits.
    """

    def __init__(
        self,
        hub: EventHub[K, V],
        name: str,
        snapshot: list[K],
        *,
        render: Callable[[K], V | None],
        accept: Callable[[K, V], bool] | None,
        max_pending_keys: int,
    ) -> None:
        self._hub = hub
        self._name = name
        # The keys of the state at subscription, in order, and how far they have been read. Values are rendered
        # when read: a subscriber that does not read keeps these references, not a message per key.
        self._snapshot = snapshot
        self._snapshot_read = 0
        self._render = render
        self._accept = accept
        self._max_pending_keys = max_pending_keys
        # OrderedDict rather than dict: popitem(last=False) is O(1), while taking the first key of a plain
        # dict that has had many front deletions scans over the deleted slots.
        self._pending: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._error: Exception | None = None

    @property
    def name(self) -> str:
        """Who is subscribed (for logs and metrics), as given to ``subscribe``."""
        return self._name

    @property
    def pending_count(self) -> int:
        """Keys waiting to be read: the unread part of the snapshot and the published values (at most the hub's
        ``max_pending_keys``). A snapshot key that was also published counts twice but is read once; a snapshot
        key whose state is gone, or that ``accept`` refuses, is not read at all."""
        return len(self._snapshot) - self._snapshot_read + len(self._pending)

    @property
    def closed(self) -> bool:
        """True once closed by ``close()``, by the hub's ``close()``, or because the subscriber lagged."""
        return self._closed

    def close(self) -> None:
        """Unregister and drop pending values. A read in progress, and every later one, ends the iteration.

        Idempotent. After a lag, reads keep raising ``SubscriberLagged``.
        """
        self._hub._unregister(self)
        self._end()

    def drop(self, reason: str) -> None:
        """Drop a subscriber whose reader has stopped taking values: unregister it, free what is pending,
        and make its reads raise ``SubscriberLagged(reason)`` (unless it had already ended)."""
        self._hub._unregister(self)
        if not self._closed:
            self._fail(SubscriberLagged(reason))

    def __aiter__(self) -> Subscription[K, V]:
        return self

    async def __anext__(self) -> V:
        return (await self._next()).value

    def encoded(self) -> AsyncIterator[bytes]:
        """The same values as this iterator, as the hub's ``encode`` gives them (module docstring: encoded once)."""
        encode = self._hub.encode
        if encode is None:
            raise TypeError("this hub has no encode: its values cannot be read as bytes")
        return _Encoded(self, encode)

    async def _next(self) -> _Entry[V]:
        while True:
            if self._error is not None:
                # A fresh traceback each time, rather than one that grows with every re-raise.
                raise self._error.with_traceback(None)
            if self._closed:
                raise StopAsyncIteration
            entry = self._take()
            if entry is not None:
                return entry
            if self.closed:  # rendering or filtering failed this subscriber just now
                continue
            self._wakeup.clear()
            await self._wakeup.wait()

    def _take(self) -> _Entry[V] | None:
        """The next entry to deliver, or None when nothing is pending: the snapshot first, then publishes."""
        while self._snapshot_read < len(self._snapshot):
            key = self._snapshot[self._snapshot_read]
            self._snapshot_read += 1
            if key in self._pending:
                return self._pending.pop(key)  # published since: the latest value, in its snapshot place
            try:
                value = self._render(key)
                if value is None or not self._accepts(key, value):
                    continue  # gone since (its removal was published), or filtered out
            except Exception as error:
                # Like a broken filter: a value that cannot be rendered fails this subscriber, nobody else.
                self._hub._unregister(self)
                self._fail(error)
                return None
            return _Entry(value)
        if self._snapshot:
            self._snapshot, self._snapshot_read = [], 0  # all read: let the keys go
        if self._pending:
            _key, entry = self._pending.popitem(last=False)
            return entry
        return None

    def _accepts(self, key: K, value: V) -> bool:
        return self._accept is None or self._accept(key, value)

    async def __aenter__(self) -> Subscription[K, V]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "failed" if self._error is not None else "closed" if self._closed else "open"
        return f"<Subscription {self._name!r} {state} pending={len(self._pending)}>"

    # The hub's side.

    def _offer(self, key: K, entry: _Entry[V]) -> bool:
        """Queue ``entry`` under ``key`` unless filtered out: O(1), never blocks.

        Returns False when this subscriber has failed (lagged, or its filter raised) or is closed, and
        must be dropped from the hub.
        """
        if self._closed:
            return False  # closed by a callback earlier in the same publish
        if self._accept is not None:
            try:
                accepted = self._accept(key, entry.value)
            except Exception as error:
                # A broken filter fails its own subscriber, never the publisher or the other subscribers.
                self._fail(error)
                return False
            if not accepted:
                return True
        if key in self._pending:
            self._pending[key] = entry  # assignment to an existing key keeps its place in the order
        elif len(self._pending) < self._max_pending_keys:
            self._pending[key] = entry
        else:
            self._fail(
                SubscriberLagged(
                    f"subscriber {self._name!r} fell behind by more than {self._max_pending_keys} distinct keys "
                    "and was dropped; reconnect to receive a fresh snapshot"
                )
            )
            return False
        self._wakeup.set()
        return True

    def _fail(self, error: Exception) -> None:
        self._error = error
        self._end()

    def _end(self) -> None:
        self._closed = True
        self._pending.clear()  # a dropped subscriber must not keep its backlog alive
        self._snapshot, self._snapshot_read = [], 0
        self._wakeup.set()  # let a blocked reader see the end


class _Encoded(Generic[K, V]):
    """A subscription's values as bytes (``Subscription.encoded``): a published entry is encoded by the first
    subscriber that takes it and kept on the entry for the others."""

    def __init__(self, subscription: Subscription[K, V], encode: Callable[[V], bytes]) -> None:
        self._subscription = subscription
        self._encode = encode

    def __aiter__(self) -> _Encoded[K, V]:
        return self

    async def __anext__(self) -> bytes:
        entry = await self._subscription._next()
        data = entry.data
        if data is None:
            data = entry.data = self._encode(entry.value)
        return data


class EventHub(Generic[K, V]):
    """Fans out ``(key, value)`` changes to subscribers, each with its own coalescing, bounded queue.

    See the module docstring for the invariants: snapshot first, coalescing per key in first-pending
    order, at most ``max_pending_keys`` published values pending per subscriber (beyond that the subscriber
    is dropped with ``SubscriberLagged``), a publisher that never blocks, and each published value encoded at
    most once, for every subscriber that reads bytes (``encode``: how a value becomes bytes, if it may).
    """

    def __init__(
        self, max_pending_keys: int = DEFAULT_MAX_PENDING_KEYS, *, encode: Callable[[V], bytes] | None = None
    ) -> None:
        if max_pending_keys < 1:
            raise ValueError(f"max_pending_keys must be at least 1, got {max_pending_keys}")
        self._max_pending_keys = max_pending_keys
        self.encode = encode
        # A dict used as an ordered set: subscribers are served in subscription order.
        self._subscribers: dict[Subscription[K, V], None] = {}
        self._closed = False

    @property
    def max_pending_keys(self) -> int:
        return self._max_pending_keys

    @property
    def subscriber_count(self) -> int:
        """Subscribers currently registered (closed and lagged ones are not counted)."""
        return len(self._subscribers)

    @property
    def closed(self) -> bool:
        return self._closed

    def pending_counts(self) -> list[int]:
        """How many values each subscriber has waiting (its queue depth), for metrics."""
        return [subscription.pending_count for subscription in tuple(self._subscribers)]

    def subscribe(
        self,
        name: str,
        keys: Callable[[], Iterable[K]],
        render: Callable[[K], V | None],
        accept: Callable[[K, V], bool] | None = None,
    ) -> Subscription[K, V]:
        """Register a subscriber whose first values are the current state of ``keys()``, followed by every
        later publish.

        ``keys`` must return the keys of the current state synchronously, in the order to deliver them; it
        is called here, and the subscriber is registered before any other code can run, so no publish is
        missed or delivered twice. ``render(key)`` gives a key's current value when the subscriber reads it
        (None: skip the key, its state is gone); a key published before it was read is delivered with the
        published value instead, in its snapshot place. If ``render`` raises, this subscriber is dropped and
        its next read raises that error. ``accept``, if given, decides which ``(key, value)`` pairs this
        subscriber receives, for the snapshot and for publishes alike; if it raises, likewise.

        The snapshot may have any number of keys: ``max_pending_keys`` bounds the published values only.

        Raises ``EventHubClosedError`` if the hub is closed.
        """
        if self._closed:
            raise EventHubClosedError(f"event hub is closed; cannot subscribe {name!r}")
        subscription = Subscription(
            self, name, list(keys()), render=render, accept=accept, max_pending_keys=self._max_pending_keys
        )
        # No await between taking the keys and this line: that is what makes the hand-over gapless.
        self._subscribers[subscription] = None
        return subscription

    def publish(self, key: K, value: V) -> None:
        """Queue ``value`` as the latest for ``key`` at every subscriber. Synchronous; never blocks.

        O(1) per subscriber. Subscribers that overflow their bound are dropped (``SubscriberLagged``);
        the others still receive this value. Publishing to a closed hub does nothing.
        """
        dropped: list[Subscription[K, V]] = []
        entry = _Entry(value)  # one for every subscriber: encoded once, by the first that reads it as bytes
        # Iterate over a copy: an ``accept`` callback may subscribe or close, which resizes the dict.
        for subscription in tuple(self._subscribers):
            if not subscription._offer(key, entry):
                dropped.append(subscription)
        for subscription in dropped:
            self._unregister(subscription)

    def fail_subscribers(self, error: Exception) -> None:
        """End every current subscription with ``error``: pending values are dropped and each one's next read
        raises it. The hub stays open for new subscribers. For a state owner whose state stopped being current
        (the status relay, when its source is lost): its subscribers must not go on as if nothing had happened."""
        subscriptions, self._subscribers = self._subscribers, {}
        for subscription in subscriptions:
            if not subscription.closed:
                subscription._fail(error)

    def close(self) -> None:
        """End every subscription (pending values are dropped, iterators finish) and refuse new ones.

        Idempotent. Subscribers that already lagged keep raising ``SubscriberLagged``.
        """
        self._closed = True
        subscriptions, self._subscribers = self._subscribers, {}
        for subscription in subscriptions:
            subscription._end()

    def _unregister(self, subscription: Subscription[K, V]) -> None:
        self._subscribers.pop(subscription, None)
