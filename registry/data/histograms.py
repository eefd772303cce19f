"""The shared train/test histograms of one field, and the similarity of the two distributions.

Numbers: ``NUMERIC_BINS`` equal-width bins over the union of the train and test ranges (finite values), labelled
``[low,high)``, the last one ``[low,high]`` so the maximum falls in it; edges are written with the fewest
significant digits (6 at least) that tell them apart. A field holding one value has the one bin ``[v,v]``; a
range only a few floats wide has fewer bins. Categories: the ``TOP_CATEGORIES`` most frequent values over train
and test together (ties by value), then one bin for all the rest, labelled ``other`` (``(other)`` and so on when
a kept value is itself ``other``).

Similarity: 1 - the Jensen-Shannon distance (base 2) between the train and the test distributions over these
bins, with one bin more for missing values (nulls, and infinite numbers). It is 1 for identical distributions and
0 for disjoint ones. Why this measure: it is symmetric (train and test play the same part), bounded in [0, 1]
without a scale to explain, and defined when a bin is empty on one side, which is common with few rows or rare
categories; KL divergence and the population stability index are unbounded there and need an arbitrary smoothing
constant. Counting missing values as a bin makes a split that sends most nulls to one side less similar. It is
None when one side has no rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

NUMERIC_BINS = 10
TOP_CATEGORIES = 10
OTHER = "other"


@dataclass(frozen=True)
class HistogramBin:
    label: str
    train: int
    test: int


def numeric_histogram(train: npt.NDArray[np.float64], test: npt.NDArray[np.float64]) -> list[HistogramBin]:
    """Bins over the finite values of both sides (the arrays hold finite values only)."""
    if not train.size and not test.size:
        return []
    low = float(min(np.min(train, initial=np.inf), np.min(test, initial=np.inf)))
    high = float(max(np.max(train, initial=-np.inf), np.max(test, initial=-np.inf)))
    if low == high:
        label = f"[{_number(low, 6)},{_number(high, 6)}]"
        return [HistogramBin(label, int(train.size), int(test.size))]
    steps = np.arange(NUMERIC_BINS + 1, dtype=np.float64) / NUMERIC_BINS
    edges = low * (1.0 - steps) + high * steps  # never high - low, which overflows for ranges past 1.8e308
    edges[-1] = high
    edges = np.unique(edges)  # fewer bins when the range is a few floats wide: labels stay distinct
    count = len(edges) - 1
    train_counts = _bin_counts(train, edges)
    test_counts = _bin_counts(test, edges)
    shown = _edge_labels([float(edge) for edge in edges])
    bins = []
    for index in range(count):
        closing = "]" if index == count - 1 else ")"
        label = f"[{shown[index]},{shown[index + 1]}{closing}"
        bins.append(HistogramBin(label, int(train_counts[index]), int(test_counts[index])))
    return bins


def _bin_counts(values: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    count = len(edges) - 1
    positions = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, count - 1)
    return np.bincount(positions, minlength=count).astype(np.int64)


def _edge_labels(edges: list[float]) -> list[str]:
    """The edges with the fewest significant digits, 6 at least, that tell them all apart (17 always do)."""
    for digits in range(6, 18):
        labels = [_number(edge, digits) for edge in edges]
        if len(set(labels)) == len(labels):
            return labels
    return [_number(edge, 17) for edge in edges]


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"


def categorical_histogram(train: pd.Series, test: pd.Series) -> list[HistogramBin]:
    """Top categories and the rest; the series hold the non-null values as text."""
    train_counts = train.value_counts(sort=False)
    test_counts = test.value_counts(sort=False)
    both = train_counts.add(test_counts, fill_value=0)
    ranked = sorted(both.items(), key=lambda item: (-item[1], str(item[0])))
    kept = [str(value) for value, _ in ranked[:TOP_CATEGORIES]]
    bins = [HistogramBin(value, int(train_counts.get(value, 0)), int(test_counts.get(value, 0))) for value in kept]
    if len(ranked) > TOP_CATEGORIES:
        rest_train = int(train_counts.sum()) - sum(item.train for item in bins)
        rest_test = int(test_counts.sum()) - sum(item.test for item in bins)
        label = OTHER
        while label in kept:
            label = f"({label})"
        bins.append(HistogramBin(label, rest_train, rest_test))
    return bins


def similarity(bins: Sequence[HistogramBin], train_missing: int, test_missing: int) -> float | None:
    """1 - the Jensen-Shannon distance (base 2) over the bins and a bin of missing values; None if a side is empty."""
    train = np.array([*(item.train for item in bins), train_missing], dtype=np.float64)
    test = np.array([*(item.test for item in bins), test_missing], dtype=np.float64)
    if train.sum() == 0 or test.sum() == 0:
        return None
    p = train / train.sum()
    q = test / test.sum()
    m = (p + q) / 2
    divergence = (_relative_entropy(p, m) + _relative_entropy(q, m)) / 2
    return float(1.0 - np.sqrt(min(max(divergence, 0.0), 1.0)))


def _relative_entropy(p: npt.NDArray[np.float64], m: npt.NDArray[np.float64]) -> float:
    present = p > 0  # 0 · log 0 = 0; where p > 0, m > 0 too
    return float(np.sum(p[present] * np.log2(p[present] / m[present])))
