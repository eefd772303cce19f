"""Bookkeeping for at-least-once delivery with concurrent handling: which offset of a partition may be
committed, and which request ids were answered recently.

Both of modelplane's Kafka consumers (the gateway's bridge and the trainer's service) hand records to concurrent
tasks and commit by hand; both keep one :class:`OffsetTracker` per assigned partition (and a new one when a
partition is assigned again, so a task of the previous assignment cannot mark the new owner's offsets). The
commit itself goes through :func:`modelplane.kafka_membership.commit_only_as_a_member`."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Hashable


class OffsetTracker:
    """The records of one partition being handled, in any order of completion.

    Records finish out of order when several run at once; the committed offset must never pass a record whose
    answer is not yet produced, or a crash would lose it. So the committable position is the lowest offset still
    in flight, or one past the highest offset seen when nothing is in flight. A record whose handling did not
    complete (cancelled at shutdown, left for redelivery) is simply never marked done: it holds the position."""

    def __init__(self) -> None:
        self._in_flight: set[int] = set()
        self._highest_seen = -1
        self.committed = -1  # the last position committed for this partition (-1: none yet)
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, offset: int) -> None:
        self._in_flight.add(offset)
        self._highest_seen = max(self._highest_seen, offset)
        self._idle.clear()

    def done(self, offset: int) -> None:
        self._in_flight.discard(offset)
        if not self._in_flight:
            self._idle.set()

    def committable(self) -> int | None:
        """The offset to commit (Kafka's convention: the next record to read), or None before any record."""
        if self._in_flight:
            # Bounded by the bridge's in-flight limit, so a linear scan is cheaper than keeping a heap.
            return min(self._in_flight)
        return self._highest_seen + 1 if self._highest_seen >= 0 else None

    def to_commit(self) -> int | None:
        """The committable position when it is past the last one committed, else None (nothing new to commit)."""
        position = self.committable()
        return position if position is not None and position > self.committed else None

    def mark_committed(self, position: int) -> None:
        self.committed = max(self.committed, position)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def wait_idle(self) -> None:
        await self._idle.wait()


class RecentIds:
    """A bounded set remembering the most recently added keys (least recently added are forgotten first)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        self._capacity = capacity
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> None:
        if self._capacity == 0:
            return
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)
