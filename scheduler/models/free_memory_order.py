"""One server's replicas that can take a new model, most free memory first: what placement asks for on every
LoadModel, answered without looking at every replica.

A binary heap of ``(-free bytes, replica index, stamp)`` with lazy deletion. ``update`` gives a replica a new
entry (a new stamp) whenever its free memory or whether it may take models changes; the entry it had goes stale
and is dropped when it comes to the top, or when stale entries outnumber live ones (the heap is then rebuilt from
the live ones, so it never holds more than about twice the replicas). Choosing k replicas pops entries until k are
accepted or the next has too little memory, then pushes the live ones back: O((k + s) log n) for n replicas, where
s are the replicas skipped because the caller refused them or their entry was stale.

Invariants (``check`` verifies them; ``SchedulerCore.check_invariants`` calls it with what the cluster says):
- each replica that may take models has exactly one live entry, holding its current free memory; no other
  replica has a live entry;
- an entry is live exactly when its stamp is the replica's current stamp (``_live``), so a stale entry is never
  chosen, whatever order entries come out in;
- the heap holds every live entry (plus stale ones) and obeys the heap property.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from scheduler.invariants import require

# A rebuild is due once the heap holds this many entries more than twice the live ones.
_STALE_SLACK = 64


class ReplicasByFreeMemory:
    __slots__ = ("_heap", "_live", "_stamps")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int]] = []  # (-free bytes, replica index, stamp)
        self._live: dict[int, tuple[int, int]] = {}  # replica index -> (stamp, free bytes) of its live entry
        self._stamps = 0

    def __len__(self) -> int:
        """Replicas that may take models."""
        return len(self._live)

    def update(self, index: int, free: int | None) -> None:
        """Replica ``index`` now has ``free`` bytes free and may take models, or may not (``free`` None)."""
        live = self._live.get(index)
        if free is None:
            if live is not None:
                del self._live[index]  # its entry is stale from now on
            return
        if live is not None and live[1] == free:
            return
        self._stamps += 1
        self._live[index] = (self._stamps, free)
        heapq.heappush(self._heap, (-free, index, self._stamps))
        if len(self._heap) > 2 * len(self._live) + _STALE_SLACK:
            self._heap = [(-bytes_free, i, stamp) for i, (stamp, bytes_free) in self._live.items()]
            heapq.heapify(self._heap)

    def take(self, wanted: int, least_free: int, accept: Callable[[int], bool]) -> list[int]:
        """Up to ``wanted`` replica indexes, most free memory first (the lowest index among equals), each with at
        least ``least_free`` bytes free and accepted by ``accept``. Nothing changes but the stale entries met."""
        chosen: list[int] = []
        popped: list[tuple[int, int, int]] = []
        heap = self._heap
        try:
            while heap and len(chosen) < wanted:
                negative_free, index, stamp = heap[0]
                live = self._live.get(index)
                if live is None or live[0] != stamp:
                    heapq.heappop(heap)  # stale: gone for good
                    continue
                if -negative_free < least_free:
                    break  # every entry below has less free memory still
                popped.append(heapq.heappop(heap))
                if accept(index):
                    chosen.append(index)
        finally:
            for entry in popped:
                heapq.heappush(heap, entry)
        return chosen

    def check(self, expected: dict[int, int]) -> None:
        """Raise InvariantError unless the live entries are exactly ``expected`` (replica index -> free bytes, for
        every replica that may take models) and the heap holds each of them."""
        live = {index: free for index, (_stamp, free) in self._live.items()}
        require(
            live == expected, f"replicas by free memory hold {sorted(live.items())}, not {sorted(expected.items())}"
        )
        in_heap = {(index, stamp) for _free, index, stamp in self._heap}
        for index, (stamp, free) in self._live.items():
            require((index, stamp) in in_heap, f"replica {index}'s live entry ({free} bytes free) is not in the heap")
        for position in range(1, len(self._heap)):
            require(self._heap[(position - 1) // 2] <= self._heap[position], "the free-memory heap is out of order")
