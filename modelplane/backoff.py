"""Exponential backoff for retry loops: the first wait is ``initial`` seconds, each further one twice the last, never
more than ``maximum``; ``reset()`` starts over (after a connection that lasted, say).

Used by the loops that wait for infrastructure to come back (brokers, Redis, the scheduler). Loops whose failure
count is state of its own (a restart attempt numbered in a message, a retry budget, an ejection count) compute the
delay from that count instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial: float
    maximum: float
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.initial

    def next(self) -> float:
        """The wait before the next try; the one after it doubles (up to ``maximum``)."""
        delay = self.current
        self.current = min(self.current * 2, self.maximum)
        return delay

    def next_jittered(self) -> float:
        """:meth:`next`, shortened at random to 50-100%: many clients retrying one server do not arrive together."""
        return self.next() * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        self.current = self.initial
