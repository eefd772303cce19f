"""registry/data/splits.py: random splits reproducible by seed, first splits in order, bad parameters refused."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from registry.data.splits import MAX_SEED, SplitError, SplitKind, split_frame


def _frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"row": np.arange(rows), "value": np.arange(rows) * 1.5})


@pytest.mark.parametrize(
    ("rows", "percent", "train_rows"), [(10, 80, 8), (10, 75, 8), (3, 50, 2), (7, 1, 1), (7, 99, 6)]
)
def test_random_splits_partition_the_rows_in_the_asked_proportion(rows: int, percent: float, train_rows: int) -> None:
    frame = _frame(rows)
    result = split_frame(frame, SplitKind.RANDOM, percent, seed=11)
    assert len(result.train) == train_rows
    assert sorted([*result.train["row"], *result.test["row"]]) == list(range(rows))
    assert set(result.train.index).isdisjoint(result.test.index)
    assert result.train["row"].is_monotonic_increasing  # the table's order is kept on each side
    assert result.test["row"].is_monotonic_increasing
    pd.testing.assert_frame_equal(result.train, frame.loc[result.train.index])


def test_the_same_seed_gives_the_same_split_and_another_seed_another() -> None:
    frame = _frame(200)
    first = split_frame(frame, SplitKind.RANDOM, 80, seed=42)
    again = split_frame(frame.copy(), "random", 80.0, seed=42)  # type: ignore[arg-type]  # text, as JSON gives it
    other = split_frame(frame, SplitKind.RANDOM, 80, seed=43)
    assert first.seed == again.seed == 42
    assert list(first.train.index) == list(again.train.index)
    assert list(first.train.index) != list(other.train.index)


def test_a_seeded_split_is_the_documented_pcg64_draw() -> None:
    """Pinned: the split is numpy's PCG64 raw stream (kept stable across numpy releases), so a recorded split can be
    made again after an upgrade. Train is the rows with the smallest keys."""
    keys = np.random.PCG64(7).random_raw(10)
    expected = sorted(np.argsort(keys, kind="stable")[:8].tolist())
    result = split_frame(_frame(10), SplitKind.RANDOM, 80, seed=7)
    assert result.train["row"].tolist() == expected == [0, 2, 3, 4, 6, 7, 8, 9]


def test_without_a_seed_one_is_chosen_and_returned_so_the_split_can_be_made_again() -> None:
    frame = _frame(50)
    chosen = split_frame(frame, SplitKind.RANDOM, 60, seed=None)
    assert chosen.seed is not None
    assert 0 <= chosen.seed <= MAX_SEED
    again = split_frame(frame, SplitKind.RANDOM, 60, seed=chosen.seed)
    assert list(again.train.index) == list(chosen.train.index)


def test_a_first_split_takes_the_leading_rows() -> None:
    frame = _frame(10)
    result = split_frame(frame, SplitKind.FIRST, 70, seed=None)
    assert result.train["row"].tolist() == list(range(7))
    assert result.test["row"].tolist() == [7, 8, 9]
    assert result.seed is None


@pytest.mark.parametrize(
    ("kind", "percent", "seed", "reason"),
    [
        ("random", 0, 1, "percent must be a number more than 0 and less than 100"),
        ("random", 100, 1, "percent must be"),
        ("random", -5, 1, "percent must be"),
        ("random", math.nan, 1, "percent must be"),
        ("random", math.inf, 1, "percent must be"),
        ("random", True, 1, "percent must be"),
        ("random", "80", 1, "percent must be"),
        ("random", 80, -1, "seed must be a whole number from 0"),
        ("random", 80, MAX_SEED + 1, "seed must be"),
        ("random", 80, True, "seed must be"),
        ("random", 80, 1.5, "seed must be"),
        ("stratified", 80, 1, "unknown split type 'stratified'; known: random, first"),
    ],
)
def test_bad_split_parameters_are_refused(kind: str, percent: object, seed: object, reason: str) -> None:
    with pytest.raises(SplitError) as caught:
        split_frame(_frame(10), kind, percent, seed)  # type: ignore[arg-type]  # as a JSON body may hold them
    assert reason in str(caught.value)


@pytest.mark.parametrize("rows", [0, 1])
def test_a_table_of_fewer_than_two_rows_cannot_be_split(rows: int) -> None:
    with pytest.raises(SplitError, match=f"at least 2 rows; the data has {rows}"):
        split_frame(_frame(rows), SplitKind.FIRST, 50)
