"""Jittered exponential backoff, one object per thing that retries (a watch, a stream, a resource)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """``next_delay()`` grows from ``initial`` to ``maximum`` seconds, doubling, with jitter; ``reset()`` after a
    success. The jitter (50-100% of the step) keeps many retrying clients from arriving together."""

    initial: float = 0.2
    maximum: float = 30.0
    _step: float = 0.0

    def next_delay(self) -> float:
        self._step = self.initial if self._step == 0.0 else min(self.maximum, self._step * 2)
        return self._step * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        self._step = 0.0
