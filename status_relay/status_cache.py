"""What the relay holds of one kind of status, and whether it is current.

One ``StatusCache`` per kind (status_kinds.py): the latest status the scheduler sent per key, as the bytes it sent,
and an EventHub (modelplane/event_hub.py) that fans them out with the scheduler's own rules: snapshot first, then
changes coalesced per key, bounded per subscriber. A state table, as the relay must never serve stale state as
current:

    state       what it means                                          subscribe      on entering it
    CONNECTING  no upstream stream, or one whose snapshot is not       refused        subscribers ended with
                complete yet                                           (NotCurrent)   UpstreamLost; cache emptied
    CURRENT     the upstream snapshot is complete and changes flow     served         -

    CONNECTING -> CURRENT   every key the scheduler listed after the subscription began has been received
                            (``listed``, then ``receive``), or it listed none; or ``settle``: the listed keys
                            stopped arriving (upstream.py's stall), i.e. the scheduler holds the rest back (after
                            a restart it shows a restored model once a replica reports it, or a server or
                            experiment was forgotten meanwhile): the cache then holds what the scheduler's own
                            stream shows, and the held-back keys come later as changes
    CURRENT -> CONNECTING   ``lost``: the upstream stream ended or failed (the scheduler stopped, a network fault,
                            the scheduler dropped the relay for lagging)
    CONNECTING -> CONNECTING ``lost`` again (each new upstream attempt starts from an empty cache)

Why the listing: the scheduler's subscription sends its snapshot with no end marker. The relay lists the same kind
once the scheduler has accepted the subscription (its response headers come after the subscriber is registered,
scheduler/status_codes.py), so every listed key is in that subscription's snapshot or was published to it since:
once each has arrived, the cache holds at least the state as listed, and everything after it comes as changes.

Forgotten keys: the scheduler forgets a server, or a stopped experiment after its TTL, without a status saying so.
While CURRENT the feed lists the kind again now and then (``begin_relist``, then ``relisted``): a cached key the
listing lacks, and that no status has brought since the listing began, is dropped, so that the cache (and a new
subscriber's snapshot) holds what the scheduler's own snapshot would, and memory does not grow with names that
come and go. Subscribers already served keep what they had, as the scheduler's own subscribers do.

Invariants (checked by ``check``): CURRENT has no keys awaited; CONNECTING has no subscribers; every cached key is
one the kind keeps in its snapshot. Domain code: no grpc here.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable

from modelplane.event_hub import EventHub, Subscription
from status_relay.status_kinds import StatusKind

__all__ = ["CacheState", "NotCurrent", "StatusCache", "UpstreamLost"]


class CacheState(enum.Enum):
    CONNECTING = "connecting"
    CURRENT = "current"


class UpstreamLost(Exception):  # noqa: N818 - named for what happened: subscribers end with it
    """The relay lost its stream from the scheduler: what it held is no longer known to be current."""


class NotCurrent(Exception):  # noqa: N818 - named for the state that refuses a subscriber
    """The relay has no complete, current snapshot of this kind yet: subscribe again shortly."""


class StatusCache:
    def __init__(self, kind: StatusKind, max_pending_keys: int, describe_upstream: str) -> None:
        self.kind = kind
        self.hub: EventHub[Hashable, bytes] = EventHub(max_pending_keys)
        self._values: dict[Hashable, bytes] = {}
        self._state = CacheState.CONNECTING
        self._seen: set[Hashable] = set()  # keys received since the upstream stream began (until CURRENT)
        self._awaited: set[Hashable] | None = None  # listed keys not received yet; None: not listed yet
        self._why = f"the relay is connecting to the scheduler at {describe_upstream}"
        self.changes = 0  # statuses received from the scheduler since start (for metrics and the benchmark)
        self.forgotten = 0  # cached keys dropped because the scheduler no longer lists them (for metrics)
        self._relisting: set[Hashable] | None = None  # keys received since a relist began; None: none going on

    @property
    def state(self) -> CacheState:
        return self._state

    @property
    def why_not_current(self) -> str:
        return self._why

    def __len__(self) -> int:
        return len(self._values)

    def subscribe(self, subscriber: str) -> Subscription[Hashable, bytes]:
        """A subscription whose snapshot is the cache as it is now, then every change. Raises NotCurrent unless
        CURRENT."""
        if self._state is not CacheState.CURRENT:
            raise NotCurrent(f"the {self.kind.name} statuses are not current: {self._why}; subscribe again shortly")
        values = self._values
        keys = (lambda: sorted(values)) if self.kind.sorted_snapshot else (lambda: list(values))  # type: ignore[type-var]
        return self.hub.subscribe(subscriber, keys, values.get)

    def began(self) -> None:
        """A new upstream stream was accepted by the scheduler: statuses from it follow."""
        self._forget()

    def receive(self, data: bytes) -> None:
        """One status from the upstream stream, as the bytes the scheduler sent."""
        kind = self.kind
        status = kind.parse(data)
        key = kind.key(status)
        self.changes += 1
        if kind.in_snapshot(key):
            if kind.final(status):
                self._values.pop(key, None)
            else:
                self._values[key] = data  # a known key keeps its place: the scheduler's order is first-come
        self.hub.publish(key, data)
        if self._relisting is not None:
            self._relisting.add(key)
        if self._awaited is not None:
            self._awaited.discard(key)
            self._maybe_current()
        else:
            self._seen.add(key)

    def listed(self, keys: Iterable[Hashable]) -> None:
        """The keys the scheduler listed after accepting the current upstream stream."""
        self._awaited = {key for key in keys if self.kind.in_snapshot(key)} - self._seen
        self._seen = set()
        self._maybe_current()

    def begin_relist(self) -> None:
        """A listing of the kind is about to be asked for (the module docstring's forgotten keys)."""
        self._relisting = set()

    def relisted(self, keys: Iterable[Hashable]) -> None:
        """The listing asked for since ``begin_relist``: drop cached keys it lacks that no status brought since."""
        received, self._relisting = self._relisting, None
        if received is None or self._state is not CacheState.CURRENT:
            return  # lost (and emptied) meanwhile: the next stream starts afresh
        listed = set(keys)
        for key in [key for key in self._values if key not in listed and key not in received]:
            del self._values[key]
            self.forgotten += 1

    def relisted_failed(self) -> None:
        """The listing asked for since ``begin_relist`` did not come: nothing is dropped."""
        self._relisting = None

    @property
    def awaited_count(self) -> int:
        """Listed keys not received yet (0 before the listing)."""
        return len(self._awaited) if self._awaited is not None else 0

    def settle(self) -> None:
        """The listed keys still awaited will not come for now (the module docstring's ``settle``): CURRENT."""
        if self._awaited is not None and self._state is CacheState.CONNECTING:
            self._awaited = set()
            self._maybe_current()

    def lost(self, reason: str) -> None:
        """The upstream stream ended: end every subscriber with UpstreamLost, forget every status."""
        self._why = reason
        self._state = CacheState.CONNECTING
        self.hub.fail_subscribers(
            UpstreamLost(
                f"the relay lost its {self.kind.subscribe_rpc} stream from the scheduler ({reason}); "
                "subscribe again for a fresh snapshot"
            )
        )
        self._forget()

    def check(self) -> None:
        """The invariants of the module docstring; raises AssertionError when one does not hold (for tests)."""
        if self._state is CacheState.CURRENT and self._awaited:
            raise AssertionError(f"{self.kind.name}: CURRENT while {len(self._awaited)} listed keys are awaited")
        if self._state is CacheState.CONNECTING and self.hub.subscriber_count:
            raise AssertionError(f"{self.kind.name}: {self.hub.subscriber_count} subscribers while CONNECTING")
        if not all(self.kind.in_snapshot(key) for key in self._values):
            raise AssertionError(f"{self.kind.name}: a key outside the snapshot is cached")

    def _forget(self) -> None:
        self._values = {}
        self._seen = set()
        self._awaited = None
        self._relisting = None

    def _maybe_current(self) -> None:
        if self._awaited is not None and not self._awaited and self._state is CacheState.CONNECTING:
            self._state = CacheState.CURRENT
            self._awaited = set()
