"""What the scheduler's invariant checks raise (tests call ``SchedulerCore.check_invariants`` after each step)."""

from __future__ import annotations


class InvariantError(AssertionError):
    """The scheduler's state breaks one of its invariants: a bug, never a caller's mistake."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantError(message)
