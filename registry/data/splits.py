"""Splitting a table into train and test rows (seed 002's split ``type`` and ``parameters.percent``).

- ``first``: the first rows are train, the rest test, in the table's order.
- ``random``: rows are drawn by a seeded generator, so the same table, percent and seed always give the same
  split. The draw is one 64-bit key per row from numpy's PCG64 bit generator (whose raw stream numpy keeps stable
  across releases, unlike ``Generator``'s methods), train being the rows with the smallest keys. Without a seed
  one is chosen, and returned with the split, so that split can be made again.

``percent`` is the train share, more than 0 and less than 100. Train gets round(rows * percent / 100) rows, at
least 1 and at most rows - 1: both sides hold a row. Both keep the table's row order and index labels.
"""

from __future__ import annotations

import enum
import math
import secrets
from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_SEED = 2**63 - 1


class SplitKind(enum.StrEnum):
    RANDOM = "random"
    FIRST = "first"


class SplitError(ValueError):
    """The split cannot be made as asked; the message says why (fit for a 400 or a split's failure reason)."""


@dataclass(frozen=True)
class SplitResult:
    train: pd.DataFrame
    test: pd.DataFrame
    seed: int | None  # the seed a random split used (given or chosen); None for ``first``


def split_frame(frame: pd.DataFrame, kind: SplitKind, percent: float, seed: int | None = None) -> SplitResult:
    kind = _kind(kind)
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 < percent < 100:
        raise SplitError(f"the split's percent must be a number more than 0 and less than 100, not {percent!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise SplitError(f"the split's seed must be a whole number from 0 to {MAX_SEED}, not {seed!r}")
    rows = len(frame)
    if rows < 2:
        raise SplitError(f"a split needs at least 2 rows; the data has {rows}")
    train_rows = min(max(math.floor(rows * percent / 100 + 0.5), 1), rows - 1)
    if kind is SplitKind.FIRST:
        return SplitResult(frame.iloc[:train_rows], frame.iloc[train_rows:], None)
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    keys = np.random.PCG64(seed).random_raw(rows)
    in_train = np.zeros(rows, dtype=bool)
    in_train[np.argsort(keys, kind="stable")[:train_rows]] = True
    return SplitResult(frame.iloc[np.flatnonzero(in_train)], frame.iloc[np.flatnonzero(~in_train)], seed)


def _kind(kind: object) -> SplitKind:
    try:
        return SplitKind(str(kind))
    except ValueError:
        known = ", ".join(item.value for item in SplitKind)
        raise SplitError(f"unknown split type {kind!r}; known: {known}") from None
