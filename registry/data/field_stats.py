"""Per-field statistics of a split, train beside test (seed 002's ``stats``), each field with a train/test
similarity (histograms.py says which measure, and why).

A field is numeric when its column holds integers or floats (booleans and everything else are categorical, their
values compared as text). Numeric: ``numTotal`` (rows), ``numNull``, then over the non-null values ``numZero``,
``numNegative``, ``numPositive`` (infinities count as negative or positive), and over the finite ones ``mean``,
``min``, ``max`` and ``stddev`` (the sample standard deviation, n - 1; None below 2 values), None when there are
none. Categorical: ``numTotal``, ``numNull``, ``numEmpty`` (values that are empty or only whitespace), ``unique``
(distinct non-null values). ``to_json()`` gives exactly the seed's shape: ``{"field": ..., "numTotal": {"train":
.., "test": ..}, ..., "histo": [{"bin": .., "count": {"train": .., "test": ..}}], "similarity": ..}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from registry.data.column_kinds import is_numeric
from registry.data.histograms import HistogramBin, categorical_histogram, numeric_histogram, similarity

T = TypeVar("T")
FloatArray = npt.NDArray[np.float64]


class FieldStatsError(ValueError):
    """The split's tables cannot be described as asked (the outcome column is missing, say)."""


@dataclass(frozen=True)
class Pair(Generic[T]):
    train: T
    test: T

    def to_json(self) -> dict[str, T]:
        return {"train": self.train, "test": self.test}


@dataclass(frozen=True)
class NumericFieldStats:
    field: str
    num_total: Pair[int]
    num_null: Pair[int]
    mean: Pair[float | None]
    min: Pair[float | None]
    max: Pair[float | None]
    stddev: Pair[float | None]
    num_zero: Pair[int]
    num_negative: Pair[int]
    num_positive: Pair[int]
    histo: tuple[HistogramBin, ...]
    similarity: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "field": self.field,
            "numTotal": self.num_total.to_json(),
            "numNull": self.num_null.to_json(),
            "mean": self.mean.to_json(),
            "min": self.min.to_json(),
            "max": self.max.to_json(),
            "stddev": self.stddev.to_json(),
            "numZero": self.num_zero.to_json(),
            "numNegative": self.num_negative.to_json(),
            "numPositive": self.num_positive.to_json(),
            "histo": _histo_json(self.histo),
            "similarity": self.similarity,
        }


@dataclass(frozen=True)
class CategoricalFieldStats:
    field: str
    num_total: Pair[int]
    num_null: Pair[int]
    num_empty: Pair[int]
    unique: Pair[int]
    histo: tuple[HistogramBin, ...]
    similarity: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "field": self.field,
            "numTotal": self.num_total.to_json(),
            "numNull": self.num_null.to_json(),
            "numEmpty": self.num_empty.to_json(),
            "unique": self.unique.to_json(),
            "histo": _histo_json(self.histo),
            "similarity": self.similarity,
        }


FieldStats = NumericFieldStats | CategoricalFieldStats


def split_stats(train: pd.DataFrame, test: pd.DataFrame, outcome: str | None = None) -> list[FieldStats]:
    """One entry per column, the outcome's first (it must be a column when given), then in the table's order."""
    columns = [str(column) for column in train.columns]
    if columns != [str(column) for column in test.columns]:
        raise FieldStatsError("the train and test tables have different columns")
    if outcome is not None:
        if outcome not in columns:
            raise FieldStatsError(f"the outcome {outcome!r} is not a column of the split (after its directives)")
        columns = [outcome, *(column for column in columns if column != outcome)]
    return [_field_stats(column, train[column], test[column]) for column in columns]


def stats_to_json(stats: Sequence[FieldStats]) -> list[dict[str, object]]:
    return [field.to_json() for field in stats]


def _field_stats(name: str, train: pd.Series, test: pd.Series) -> FieldStats:
    if is_numeric(train) and is_numeric(test):
        return _numeric(name, _floats(train), _floats(test))
    return _categorical(name, train, test)


def _floats(series: pd.Series) -> FloatArray:
    return np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)


def _numeric(name: str, train: FloatArray, test: FloatArray) -> NumericFieldStats:
    train_finite, test_finite = train[np.isfinite(train)], test[np.isfinite(test)]
    histo = tuple(numeric_histogram(train_finite, test_finite))

    def pair(measure: Callable[[FloatArray], float | None]) -> Pair[float | None]:
        return Pair(measure(train_finite), measure(test_finite))

    def count(test_value: Callable[[FloatArray], npt.NDArray[np.bool_]]) -> Pair[int]:
        return Pair(int(np.count_nonzero(test_value(train))), int(np.count_nonzero(test_value(test))))

    return NumericFieldStats(
        field=name,
        num_total=Pair(int(train.size), int(test.size)),
        num_null=count(np.isnan),
        mean=pair(_mean),
        min=pair(_minimum),
        max=pair(_maximum),
        stddev=pair(_stddev),
        num_zero=count(lambda values: values == 0),  # NaN compares false: nulls are in none of these three
        num_negative=count(lambda values: values < 0),
        num_positive=count(lambda values: values > 0),
        histo=histo,
        similarity=similarity(histo, train.size - train_finite.size, test.size - test_finite.size),
    )


def _finite_or_none(value: np.floating | float) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None  # the sum of huge values can overflow


def _mean(values: FloatArray) -> float | None:
    if not values.size:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        return _finite_or_none(np.mean(values))


def _minimum(values: FloatArray) -> float | None:
    return float(np.min(values)) if values.size else None


def _maximum(values: FloatArray) -> float | None:
    return float(np.max(values)) if values.size else None


def _stddev(values: FloatArray) -> float | None:
    if values.size < 2:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        return _finite_or_none(np.std(values, ddof=1))


def _categorical(name: str, train: pd.Series, test: pd.Series) -> CategoricalFieldStats:
    train_text, test_text = _texts(train), _texts(test)
    histo = tuple(categorical_histogram(train_text, test_text))
    train_null, test_null = int(train.isna().sum()), int(test.isna().sum())
    return CategoricalFieldStats(
        field=name,
        num_total=Pair(len(train), len(test)),
        num_null=Pair(train_null, test_null),
        num_empty=Pair(_empty(train_text), _empty(test_text)),
        unique=Pair(int(train_text.nunique()), int(test_text.nunique())),
        histo=histo,
        similarity=similarity(histo, train_null, test_null),
    )


def _texts(series: pd.Series) -> pd.Series:
    return series[series.notna()].astype(str)


def _empty(texts: pd.Series) -> int:
    return int((texts.str.strip() == "").sum())


def _histo_json(histo: Sequence[HistogramBin]) -> list[dict[str, object]]:
    return [{"bin": item.label, "count": {"train": item.train, "test": item.test}} for item in histo]
