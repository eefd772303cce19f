"""Memory committed on one server replica, in checked integer arithmetic.

Invariants (checked by :meth:`MemoryLedger.check`, which tests run after every operation):
- ``used`` equals the sum of every commitment, and is never negative;
- each model version is committed at most once (re-committing is a no-op, releasing twice is a no-op),
  so a repeated or out-of-order event can never count memory twice or free it twice.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from modelplane.spec.errors import SchedulerError

# No real replica comes close; exceeding this means a bug or a hostile report, never a valid state.
MAX_BYTES = 1 << 62


class AccountingError(SchedulerError):
    """An operation would break the ledger's invariants. Raised instead of going negative or wrapping."""


def checked_add(a: int, b: int) -> int:
    if a < 0 or b < 0 or a + b > MAX_BYTES:
        raise AccountingError(f"memory sum {a} + {b} is out of range")
    return a + b


def checked_sub(a: int, b: int) -> int:
    if b < 0 or b > a:
        raise AccountingError(f"memory {a} - {b} would go negative")
    return a - b


class MemoryLedger:
    __slots__ = ("_commitments", "capacity", "on_change", "used")

    def __init__(self, capacity: int) -> None:
        if not 0 <= capacity <= MAX_BYTES:
            raise AccountingError(f"capacity {capacity} is out of range")
        self.capacity = capacity
        self.used = 0
        self._commitments: dict[Hashable, int] = {}
        # Called after every change of ``used``: the cluster keeps its replicas ordered by free memory with it.
        self.on_change: Callable[[], None] | None = None

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.used)

    def holds(self, key: Hashable) -> bool:
        return key in self._commitments

    def commit(self, key: Hashable, amount: int) -> None:
        if key in self._commitments:
            return
        self.used = checked_add(self.used, amount)
        self._commitments[key] = amount
        if self.on_change is not None:
            self.on_change()

    def release(self, key: Hashable) -> None:
        amount = self._commitments.pop(key, None)
        if amount is not None:
            self.used = checked_sub(self.used, amount)
            if self.on_change is not None:
                self.on_change()

    def check(self) -> None:
        total = sum(self._commitments.values())
        if self.used != total or self.used < 0:
            raise AccountingError(f"ledger says {self.used} bytes used but commitments add up to {total}")

    def __len__(self) -> int:
        return len(self._commitments)
