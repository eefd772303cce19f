"""Evaluation metrics on the test split.

Classification: accuracy, precision, recall, f1 (binary: of the positive class; multiclass: macro averages,
0 where a class is never predicted), roc_auc (binary: of the positive class's probability; multiclass:
one-vs-rest, macro). Regression: rmse, mae, r2. ``eval_criteria.metrics`` picks a subset; an unknown name
is an error. A metric that is undefined on this test split (ROC AUC when the test rows hold one class, r2
with one row) is left out and its reason recorded, rather than failing a model that trained fine.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn import metrics as sk

from trainer.run.design import Task
from trainer.run.errors import DesignError

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION_METRICS = ("rmse", "mae", "r2")


def select_metrics(task: Task, requested: tuple[str, ...]) -> tuple[str, ...]:
    available = CLASSIFICATION_METRICS if task.is_classification else REGRESSION_METRICS
    if not requested:
        return available
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise DesignError(f"eval_criteria.metrics: unknown metric(s) {unknown} for {task.value} (known: {available})")
    return tuple(dict.fromkeys(requested))


def classification_metrics(
    names: tuple[str, ...],
    y_true: npt.NDArray[Any],
    y_pred: npt.NDArray[Any],
    *,
    probabilities: npt.NDArray[np.float64] | None,
    classes: npt.NDArray[Any],
    positive: object | None,
) -> tuple[dict[str, float], dict[str, str]]:
    """``(metrics, skipped)``; ``positive`` is the positive class for binary tasks, None for multiclass."""
    averaging: dict[str, Any] = (
        {"average": "binary", "pos_label": positive}
        if positive is not None
        else {"average": "macro", "labels": classes}
    )
    computed: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            if name == "accuracy":
                value = sk.accuracy_score(y_true, y_pred)
            elif name == "precision":
                value = sk.precision_score(y_true, y_pred, zero_division=0, **averaging)
            elif name == "recall":
                value = sk.recall_score(y_true, y_pred, zero_division=0, **averaging)
            elif name == "f1":
                value = sk.f1_score(y_true, y_pred, zero_division=0, **averaging)
            else:
                value = _roc_auc(y_true, probabilities, classes, positive)
        except ValueError as exc:
            skipped[name] = str(exc).splitlines()[0]
            continue
        _record(computed, skipped, name, value)
    return computed, skipped


def _roc_auc(
    y_true: npt.NDArray[Any], probabilities: npt.NDArray[np.float64] | None, classes: npt.NDArray[Any], positive: object
) -> float:
    if probabilities is None:
        raise ValueError("the estimator gives no class probabilities")
    present = set(np.unique(y_true).tolist())
    if len(present) < 2:
        raise ValueError("the test split holds a single class, so ROC AUC is undefined")
    if positive is not None:
        column = list(classes).index(positive)
        return float(sk.roc_auc_score(np.asarray(y_true == positive), probabilities[:, column]))
    if present != set(classes.tolist()):
        raise ValueError("the test split lacks some classes, so one-vs-rest ROC AUC is undefined")
    return float(sk.roc_auc_score(y_true, probabilities, multi_class="ovr", average="macro", labels=classes))


def regression_metrics(
    names: tuple[str, ...], y_true: npt.NDArray[np.float64], y_pred: npt.NDArray[np.float64]
) -> tuple[dict[str, float], dict[str, str]]:
    computed: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name == "rmse":
            value = math.sqrt(float(sk.mean_squared_error(y_true, y_pred)))
        elif name == "mae":
            value = float(sk.mean_absolute_error(y_true, y_pred))
        elif len(y_true) < 2:
            skipped[name] = "r2 needs at least two test rows"
            continue
        else:
            value = float(sk.r2_score(y_true, y_pred))
        _record(computed, skipped, name, value)
    return computed, skipped


def _record(computed: dict[str, float], skipped: dict[str, str], name: str, value: object) -> None:
    number = float(value)  # type: ignore[arg-type]  # sklearn returns numpy floats
    if math.isfinite(number):
        computed[name] = number
    else:
        skipped[name] = f"not a finite number ({number})"
