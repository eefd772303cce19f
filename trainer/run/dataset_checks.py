"""Checking a dataset against the design schema, and the statistics a run records about it (seeds 001/002).

The columns the model needs: the columns the preprocessor expressions read, the design inputs that no
expression produces, and the target. Missing columns fail together in one message; feature columns that are
not numeric (text in a CSV column, say) fail as mistyped, naming each column and an offending value.

Rows with empty values in a needed column fail the run, naming the columns and how many rows: dropping them
silently would train on a different dataset than the one the event names, and the metrics would not say so.
Columns the model does not need may hold anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from servers.designed_model.expressions import FloatArray
from servers.designed_model.preprocessing import PreprocessStep, outputs, raw_columns
from trainer.run.design import Design, Task
from trainer.run.errors import DatasetError, DesignError

MAX_CLASSES = 1_000
_MAX_NAMED = 20  # columns named in one message before "and N more"


@dataclass(frozen=True)
class ColumnPlan:
    raw_features: tuple[str, ...]  # dataset columns read as numbers (expression inputs, then design inputs)
    target: str


def plan_columns(design: Design, steps: list[PreprocessStep]) -> ColumnPlan:
    produced = outputs(steps)
    raw = raw_columns(steps, design.features)
    if design.target in design.features:
        raise DesignError(f"the target column {design.target!r} is also a design input (feature)")
    if design.target in raw:
        raise DesignError(f"the target column {design.target!r} is read by a preprocessor expression")
    if design.target in produced:
        raise DesignError(f"the target column {design.target!r} is overwritten by a preprocessor expression")
    return ColumnPlan(tuple(raw), design.target)


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMED])
    return shown if len(items) <= _MAX_NAMED else f"{shown} and {len(items) - _MAX_NAMED} more"


def check_dataset(frame: pd.DataFrame, plan: ColumnPlan, task: Task, origin: str) -> None:
    """Raise a DatasetError naming every missing, mistyped or incomplete column the model needs."""
    present = set(frame.columns)
    needed = [*plan.raw_features, plan.target]
    missing = [name for name in needed if name not in present]
    if missing:
        available = sorted(present)
        raise DatasetError(
            f"dataset {origin} lacks the column(s) the model needs: {_names(missing)} "
            f"(it has: {_names([str(name) for name in available])})"
        )
    incomplete = [f"{name} ({int(frame[name].isna().sum())} rows)" for name in needed if frame[name].isna().any()]
    if incomplete:
        raise DatasetError(f"dataset {origin} has empty values in needed column(s): {_names(incomplete)}")
    numeric = [*plan.raw_features] + ([plan.target] if task is Task.REGRESSION else [])
    mistyped = [_describe_mistyped(frame[name], name) for name in numeric if not _is_numeric(frame[name])]
    if mistyped:
        raise DatasetError(f"dataset {origin} has mistyped column(s), expected numbers: {_names(mistyped)}")
    infinite = [name for name in numeric if not np.isfinite(frame[name].to_numpy(dtype=np.float64)).all()]
    if infinite:
        raise DatasetError(f"dataset {origin} has infinite values in column(s): {_names(infinite)}")
    if task.is_classification:
        classes = pd.Series(class_labels(frame[plan.target])).nunique()  # as labels: lists in Parquet hash as text
        if classes > MAX_CLASSES:
            raise DatasetError(
                f"the target column {plan.target!r} has {classes} distinct values; the limit is {MAX_CLASSES}"
            )


def _is_numeric(column: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(column.dtype)) and not pd.api.types.is_complex_dtype(column.dtype)


def _describe_mistyped(column: pd.Series, name: str) -> str:
    if column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
        converted = pd.to_numeric(column, errors="coerce")
        bad = column[converted.isna()]
        if len(bad):
            return f"{name} (has {bad.iloc[0]!r} at row {bad.index[0]})"
    return f"{name} (type {column.dtype})"


def numeric_columns(frame: pd.DataFrame, names: tuple[str, ...]) -> dict[str, FloatArray]:
    """The named (checked) columns as float64 arrays."""
    return {name: frame[name].to_numpy(dtype=np.float64) for name in names}


def class_labels(column: pd.Series) -> npt.NDArray[Any]:  # labels may be numbers or text
    """Classification targets: numbers kept as numbers, anything else as text (so classes_ is uniform)."""
    if _is_numeric(column) and not pd.api.types.is_bool_dtype(column.dtype):
        return np.asarray(column.to_numpy())
    return np.asarray(column.astype(str).to_numpy())


def dataset_stats(frame: pd.DataFrame, plan: ColumnPlan, task: Task) -> dict[str, object]:
    """Samples, per-feature nulls/min/max/mean, and target class counts (classification) or range (regression).

    The features' nulls are 0 whenever the run gets this far (check_dataset refuses empty values in the columns
    the model reads); ``nulls_by_column`` counts them in every column that has any, the unread ones included."""
    features: dict[str, dict[str, float | int]] = {}
    for name in plan.raw_features:
        values = frame[name].to_numpy(dtype=np.float64)
        features[name] = {
            "nulls": int(frame[name].isna().sum()),
            "min": float(np.min(values)),
            "max": float(np.max(values)),
            "mean": float(np.mean(values)),
        }
    nulls = frame.isna().sum()
    stats: dict[str, object] = {
        "samples": len(frame),
        "columns": len(frame.columns),
        "nulls_by_column": {str(name): int(count) for name, count in nulls.items() if count},
        "features": features,
        "target": plan.target,
    }
    if task.is_classification:
        counts = pd.Series(class_labels(frame[plan.target])).value_counts(sort=False)
        stats["class_counts"] = {str(label): int(count) for label, count in sorted(counts.items(), key=_label_key)}
    else:
        target = frame[plan.target].to_numpy(dtype=np.float64)
        stats["target_stats"] = {
            "min": float(np.min(target)),
            "max": float(np.max(target)),
            "mean": float(np.mean(target)),
        }
    return stats


def _label_key(item: tuple[object, int]) -> str:
    return str(item[0])
