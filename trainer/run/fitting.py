"""Training one model from a design schema and a dataset: preprocess, split, fit, evaluate, describe.

``train(schema, frame)`` is the whole of it and needs no files or network, so a benchmark can time it
beside a plain scikit-learn fit. The fitted estimator is a plain scikit-learn object fitted on a float64
array whose columns are the design inputs in their schema order (after preprocessing); that is exactly what
the served artifact takes. Preprocessing and postprocessing are recorded, not embedded (see preprocessing.py).

Splits (``criteria``; seed 002): ``test_fraction`` (default 0.2) of the rows, rounded up, are for testing.
Random: rows are permuted with ``numpy.random.default_rng(random_seed)`` and the first test rows of the
permutation are the test split. ``first_rows_for_training``: the first rows (in file order) train, the rest
test. Either way both splits have at least one row and training holds at least two classes. A split made before
the run (``test_rows``: the registry's, its training rows first, then its test rows) is used as given ("given").
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from google.protobuf import json_format

from generated.mlops.training.v1 import training_pb2
from modelplane.spec.training_algorithms import HyperValue
from servers.designed_model.postprocessing import probability_variables, run_postprocessor
from servers.designed_model.preprocessing import apply_preprocessor
from trainer.run.algorithms import Algorithm, select_algorithm
from trainer.run.dataset_checks import (
    ColumnPlan,
    check_dataset,
    class_labels,
    dataset_stats,
    numeric_columns,
    plan_columns,
)
from trainer.run.design import Design, Split, Task, read_design
from trainer.run.errors import AlgorithmError, DatasetError, DesignError
from trainer.run.metrics import classification_metrics, regression_metrics, select_metrics
from trainer.run.postprocessing import compile_postprocessor
from trainer.run.preprocessing import compile_preprocessor

MAX_WARNINGS = 20


@dataclass(frozen=True)
class SplitUsed:
    method: str  # "random" or "first_rows"
    test_fraction: float
    random_seed: int
    train_rows: int
    test_rows: int
    train_indices: npt.NDArray[np.int64] = field(repr=False)
    test_indices: npt.NDArray[np.int64] = field(repr=False)

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {
            "method": self.method,
            "test_fraction": self.test_fraction,
            "random_seed": self.random_seed,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
        }
        if self.method == "first_rows":
            described["train_row_range"] = [0, self.train_rows]  # half-open, in file order
        return described


@dataclass
class TrainedModel:
    estimator: Any  # the plain fitted scikit-learn estimator: the artifact
    algorithm: str  # e.g. "multiclass/logistic_regression"
    task: Task
    features: tuple[str, ...]  # the artifact's input columns, in order
    target: str
    classes: list[Any]  # classification: estimator.classes_ (predict_proba's column order); [] for regression
    hyper_parameters: dict[str, HyperValue]
    metrics: dict[str, float]
    metrics_skipped: dict[str, str]
    fitted_parameters: dict[str, object]  # JSON-ready
    split: SplitUsed
    dataset_stats: dict[str, object]
    preprocessing: list[dict[str, object]]
    postprocessing: dict[str, object] | None
    warnings: list[str]


def train(
    schema: training_pb2.ModelDesignSchema,
    frame: pd.DataFrame,
    origin: str = "dataset",
    *,
    test_rows: int | None = None,
) -> TrainedModel:
    """Train what ``schema`` describes on ``frame``; TrainingInputError subclasses name any bad input. With
    ``test_rows`` the split is given: the last ``test_rows`` rows are the test rows, the others train."""
    design = read_design(schema)
    steps = compile_preprocessor(schema)
    algorithm = select_algorithm(schema, design.task)
    metric_names = select_metrics(design.task, design.metrics)
    if design.task is Task.REGRESSION and schema.postprocessor.WhichOneof("postprocessor_schema_is") is not None:
        raise DesignError("postprocessor: a probability postprocessor needs a classification output, not regression")
    plan = plan_columns(design, steps)
    check_dataset(frame, plan, design.task, origin)
    stats = dataset_stats(frame, plan, design.task)
    rows = len(frame)
    processed = apply_preprocessor(steps, numeric_columns(frame, plan.raw_features), rows)
    features = np.column_stack([processed[name] for name in design.features]).astype(np.float64, copy=False)
    target = _target(frame, plan, design)
    split = split_rows(rows, design.split) if test_rows is None else given_split(rows, test_rows)
    train_y = target[split.train_indices]
    if design.task.is_classification and len(np.unique(train_y)) < 2:
        raise DatasetError(
            f"the training split holds a single class of {design.target!r} ({train_y[0]!r}); "
            "a classifier needs at least two (check the split or the dataset's order)"
        )
    estimator, fit_warnings = _fit(algorithm, design.split.random_seed, features[split.train_indices], train_y)
    test_x, test_y = features[split.test_indices], target[split.test_indices]
    predictions = np.asarray(estimator.predict(test_x))
    model = TrainedModel(
        estimator=estimator,
        algorithm=algorithm.spec.name,
        task=design.task,
        features=design.features,
        target=design.target,
        classes=[],
        hyper_parameters=dict(algorithm.hyper_parameters),
        metrics={},
        metrics_skipped={},
        fitted_parameters=fitted_parameters(estimator, design.features),
        split=split,
        dataset_stats=stats,
        preprocessing=[step.describe() for step in steps],
        postprocessing=None,
        warnings=fit_warnings,
    )
    if design.task is Task.REGRESSION:
        model.metrics, model.metrics_skipped = regression_metrics(
            metric_names, test_y.astype(np.float64), predictions.astype(np.float64)
        )
        return model
    classes = np.asarray(estimator.classes_)
    model.classes = classes.tolist()
    probabilities = np.asarray(estimator.predict_proba(test_x), dtype=np.float64)
    positive = _positive_class(design, classes) if design.task is Task.BINARY else None
    model.metrics, model.metrics_skipped = classification_metrics(
        metric_names, test_y, predictions, probabilities=probabilities, classes=classes, positive=positive
    )
    if positive is not None:
        model.fitted_parameters["positive_class"] = _json_label(positive)
    model.postprocessing = _postprocess(schema, probabilities, [str(label) for label in model.classes])
    return model


def _target(frame: pd.DataFrame, plan: ColumnPlan, design: Design) -> npt.NDArray[Any]:
    column = frame[plan.target]
    if not design.task.is_classification:
        return np.asarray(column.to_numpy(dtype=np.float64))
    labels = class_labels(column)
    found = sorted({str(label) for label in labels.tolist()})
    if design.task is Task.BINARY and len(found) != 2:
        raise DatasetError(
            f"binary classification needs exactly two classes in target column {design.target!r}; "
            f"found {len(found)}: {found[:10]}"
        )
    if design.task is Task.MULTICLASS:
        if len(found) < 2:
            raise DatasetError(f"target column {design.target!r} holds a single class: {found}")
        if design.class_dictionary:
            unexpected = sorted(set(found) - set(design.class_dictionary))
            if unexpected:
                raise DatasetError(
                    f"target column {design.target!r} holds classes not in output.classification_schema."
                    f"multi_class.class_dictionary: {unexpected[:10]} (dictionary: {list(design.class_dictionary)})"
                )
    return labels


def split_rows(rows: int, split: Split) -> SplitUsed:
    test_rows = math.ceil(rows * split.test_fraction - 1e-9)  # 150 * 0.2 is 30, even in floating point
    train_rows = rows - test_rows
    if train_rows < 1 or test_rows < 1:
        raise DatasetError(
            f"the dataset has {rows} rows: too few to split with test_fraction {split.test_fraction:g} "
            "(both splits need at least one row)"
        )
    if split.first_rows_for_training:
        order = np.arange(rows, dtype=np.int64)
        train_indices, test_indices = order[:train_rows], order[train_rows:]
    else:
        order = np.random.default_rng(split.random_seed).permutation(rows).astype(np.int64)
        test_indices, train_indices = np.sort(order[:test_rows]), np.sort(order[test_rows:])
    return SplitUsed(
        split.method, split.test_fraction, split.random_seed, train_rows, test_rows, train_indices, test_indices
    )


def given_split(rows: int, test_rows: int) -> SplitUsed:
    """A split made before the run: the first ``rows - test_rows`` rows train, the rest test."""
    train_rows = rows - test_rows
    if train_rows < 1 or test_rows < 1:
        raise DatasetError(f"the given split has {train_rows} training and {test_rows} test rows; each needs one")
    order = np.arange(rows, dtype=np.int64)
    return SplitUsed("given", test_rows / rows, 0, train_rows, test_rows, order[:train_rows], order[train_rows:])


def _fit(
    algorithm: Algorithm, seed: int, features: npt.NDArray[np.float64], target: npt.NDArray[Any]
) -> tuple[Any, list[str]]:
    estimator = algorithm.build(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator.fit(features, target)
        except (ValueError, TypeError) as exc:  # e.g. a solver that rejects a penalty, or a loss for two classes only
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AlgorithmError(
                f"{algorithm.spec.name} could not fit with hyper-parameters {algorithm.hyper_parameters}: {first}"
            ) from None
    messages = list(dict.fromkeys(f"{item.category.__name__}: {item.message}" for item in caught))
    return estimator, messages[:MAX_WARNINGS]


def _positive_class(design: Design, classes: npt.NDArray[Any]) -> Any:
    """The schema's ``positive`` label among the fitted classes (text or number match); else classes_[1]."""
    if not design.positive:
        return classes[1]
    for label in classes.tolist():
        if str(label) == design.positive or _same_number(label, design.positive):
            return label
    raise DesignError(
        f"output.classification_schema.binary.positive is {design.positive!r}, which is not a class of "
        f"target column {design.target!r} (classes: {[str(label) for label in classes.tolist()]})"
    )


def _same_number(label: object, text: str) -> bool:
    try:
        return isinstance(label, int | float) and float(text) == float(label)
    except ValueError:
        return False


def _json_label(label: Any) -> object:
    return label.item() if isinstance(label, np.generic) else label


def _postprocess(
    schema: training_pb2.ModelDesignSchema, probabilities: npt.NDArray[np.float64], classes: list[str]
) -> dict[str, object] | None:
    program = compile_postprocessor(schema, classes)
    if program is None:
        return None
    outputs = run_postprocessor(program, probabilities, classes)
    described = program.describe()
    described["variables"] = probability_variables(classes)
    described["test_outputs"] = {
        name: {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean())}
        for name, values in outputs.items()
    }
    return described


def logistic_parameters(estimator: Any) -> training_pb2.LogisticRegressionParameter | None:
    """The seed's LogisticRegressionParameter for a fitted LogisticRegression; None for other estimators."""
    if type(estimator).__name__ != "LogisticRegression":
        return None
    parameters = training_pb2.LogisticRegressionParameter(
        classes_=[str(label) for label in np.asarray(estimator.classes_).tolist()],
        coef_=np.asarray(estimator.coef_, dtype=np.float64).ravel(order="C").tolist(),
        intercept_=np.asarray(estimator.intercept_, dtype=np.float64).ravel().tolist(),
        n_features_in_=int(estimator.n_features_in_),
        n_iter_=[int(value) for value in np.asarray(estimator.n_iter_).ravel().tolist()],
    )
    return parameters


def fitted_parameters(estimator: Any, features: tuple[str, ...]) -> dict[str, object]:
    """A small JSON-ready summary of what was fitted."""
    summary: dict[str, object] = {
        "estimator": type(estimator).__name__,
        "n_features_in_": int(estimator.n_features_in_),
    }
    logistic = logistic_parameters(estimator)
    if logistic is not None:
        summary["logistic_regression"] = json_format.MessageToDict(logistic, preserving_proto_field_name=True)
        summary["coef_shape"] = list(np.asarray(estimator.coef_).shape)
    if hasattr(estimator, "coef_") and logistic is None:  # linear regression
        summary["coef_"] = np.asarray(estimator.coef_, dtype=np.float64).ravel().tolist()
        summary["intercept_"] = float(np.asarray(estimator.intercept_, dtype=np.float64).ravel()[0])
    if hasattr(estimator, "feature_importances_"):
        importances = np.asarray(estimator.feature_importances_, dtype=np.float64).tolist()
        summary["feature_importances_"] = dict(zip(features, importances, strict=True))
    if hasattr(estimator, "get_depth"):
        summary["depth"] = int(estimator.get_depth())
        summary["n_leaves"] = int(estimator.get_n_leaves())
    if hasattr(estimator, "estimators_") and hasattr(estimator, "n_estimators"):
        summary["n_estimators"] = int(estimator.n_estimators)
    if hasattr(estimator, "n_estimators_"):
        summary["n_estimators_"] = int(estimator.n_estimators_)
    if hasattr(estimator, "classes_"):
        summary["classes_"] = [_json_label(label) for label in np.asarray(estimator.classes_).tolist()]
    return summary
