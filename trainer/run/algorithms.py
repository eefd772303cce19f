"""The scikit-learn estimator a design schema asks for, with checked hyper-parameters.

Supported (ModelAlgorithms oneof -> estimator):

- classification.binary / classification.multiclass: logistic_regression (LogisticRegression),
  decision_tree (DecisionTreeClassifier), random_forest (RandomForestClassifier), gbdt
  (GradientBoostingClassifier);
- regression: linear_regression (LinearRegression), decision_tree, random_forest, gbdt (the regressors).

Hyper-parameters are ``schema.hyper_parameter.hyper_parameter`` merged with the algorithm message's own
``hyper_parameters`` (the algorithm's own win). The names, and the hyper-parameters each accepts with their kinds
and bounds, are the catalogue's (modelplane/spec/training_algorithms.py, which the registry checks requests
against too); this module pairs each name with its estimator. Estimators that take a
``random_state`` get ``criteria.random_seed`` unless the schema sets one, so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from generated.mlops.training.v1 import training_pb2
from modelplane.spec.training_algorithms import (
    CLASSIFIERS,
    REGRESSORS,
    HyperParameterError,
    HyperValue,
    Param,
)
from modelplane.spec.training_algorithms import check_hyper_parameter as check_catalogued
from trainer.run.design import Task
from trainer.run.errors import AlgorithmError


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str  # e.g. "multiclass/logistic_regression"
    task: Task
    factory: Callable[..., Any]
    params: Mapping[str, Param]


_CLASSIFIER_ESTIMATORS: dict[str, Callable[..., Any]] = {
    "logistic_regression": LogisticRegression,
    "decision_tree": DecisionTreeClassifier,
    "random_forest": RandomForestClassifier,
    "gbdt": GradientBoostingClassifier,
}
_REGRESSOR_ESTIMATORS: dict[str, Callable[..., Any]] = {
    "linear_regression": LinearRegression,
    "decision_tree": DecisionTreeRegressor,
    "random_forest": RandomForestRegressor,
    "gbdt": GradientBoostingRegressor,
}


def _classifiers(task: Task, group: str) -> dict[str, AlgorithmSpec]:
    return {
        name: AlgorithmSpec(f"{group}/{name}", task, _CLASSIFIER_ESTIMATORS[name], params)
        for name, params in CLASSIFIERS.items()
    }


_REGRESSORS: dict[str, AlgorithmSpec] = {
    name: AlgorithmSpec(f"regression/{name}", Task.REGRESSION, _REGRESSOR_ESTIMATORS[name], params)
    for name, params in REGRESSORS.items()
}
_ALGORITHMS: dict[tuple[str, ...], dict[str, AlgorithmSpec]] = {
    ("classification", "binary"): _classifiers(Task.BINARY, "binary"),
    ("classification", "multiclass"): _classifiers(Task.MULTICLASS, "multiclass"),
    ("regression",): _REGRESSORS,
}


@dataclass(frozen=True)
class Algorithm:
    spec: AlgorithmSpec
    hyper_parameters: dict[str, HyperValue]  # as given (merged), before defaults such as random_state

    def build(self, random_seed: int) -> Any:
        """A fresh, unfitted estimator."""
        kwargs: dict[str, Any] = dict(self.hyper_parameters)
        if "random_state" in self.spec.params and "random_state" not in kwargs:
            kwargs["random_state"] = random_seed
        return self.spec.factory(**kwargs)


def select_algorithm(schema: training_pb2.ModelDesignSchema, task: Task) -> Algorithm:
    """The algorithm and its checked hyper-parameters; AlgorithmError names what is unset or wrong."""
    algorithms = schema.algorithm
    family = algorithms.WhichOneof("cortex_model_algorithm_is")
    if family is None:
        raise AlgorithmError("algorithm: no algorithm set (expected algorithm.classification or algorithm.regression)")
    if family == "classification":
        group = algorithms.classification.WhichOneof("classification_model_type_is")
        if group is None:
            raise AlgorithmError("algorithm.classification: neither binary nor multiclass is set")
        models: Any = getattr(algorithms.classification, group)
        key: tuple[str, ...] = (family, group)
        oneof = f"{group}_classification_model_sub_type_is"
    else:
        models = algorithms.regression
        key = (family,)
        oneof = "regression_model_sub_type_is"
    path = ".".join(("algorithm", *key))
    kind = models.WhichOneof(oneof)
    if kind is None:
        raise AlgorithmError(f"{path}: no model set (supported: {', '.join(_ALGORITHMS[key])})")
    spec = _ALGORITHMS[key].get(kind)
    if spec is None:  # a model the proto knows and this trainer does not
        raise AlgorithmError(f"{path}.{kind} is not supported (supported: {', '.join(_ALGORITHMS[key])})")
    if spec.task is not task:
        raise AlgorithmError(
            f"{path}.{kind} is a {spec.task.value} algorithm but the output schema is {task.value}; they must match"
        )
    merged = dict(schema.hyper_parameter.hyper_parameter)
    merged.update(getattr(models, kind).hyper_parameters.hyper_parameter)  # the algorithm's own win
    values = {name: check_hyper_parameter(spec, name, message) for name, message in sorted(merged.items())}
    return Algorithm(spec, values)


def check_hyper_parameter(spec: AlgorithmSpec, name: str, message: training_pb2.HyperParamater) -> HyperValue:
    try:
        return check_catalogued(spec.name, spec.params, name, message)
    except HyperParameterError as error:
        raise AlgorithmError(str(error)) from None
