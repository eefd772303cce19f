"""The scikit-learn estimator a design schema asks for, with checked hyper-parameters.

Supported (ModelAlgorithms oneof -> estimator):

- classification.binary / classification.multiclass: logistic_regression (LogisticRegression),
  decision_tree (DecisionTreeClassifier), random_forest (RandomForestClassifier), gbdt
  (GradientBoostingClassifier);
- regression: linear_regression (LinearRegression), decision_tree, random_forest, gbdt (the regressors).

Hyper-parameters are ``schema.hyper_parameter.hyper_parameter`` merged with the algorithm message's own
``hyper_parameters`` (the algorithm's own win). Each estimator takes a whitelist of names; each name has the
HyperParamater kinds it accepts and bounds, so nothing reaches scikit-learn that could make it run unbounded
(n_jobs is not offered; sizes are capped) or that it would reject obscurely. Estimators that take a
``random_state`` get ``criteria.random_seed`` unless the schema sets one, so a run is reproducible.
"""

from __future__ import annotations

import math
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
from trainer.run.design import Task
from trainer.run.errors import AlgorithmError

HyperValue = str | bool | int | float | list[float] | list[str]
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Param:
    """What one hyper-parameter accepts: HyperParamater kinds ("str", "bl", "i32", "flt"), bounds, choices.

    A float parameter also takes an i32 (``C = 1``); an int parameter never takes a float.
    """

    kinds: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    choices: tuple[str, ...] = ()
    float_low: float | None = None  # bounds for the float form, when a parameter takes both int and float
    float_high: float | None = None

    def bounds(self, kind: str) -> tuple[float | None, float | None, bool]:
        """``(low, high, low_inclusive)`` for the i32 or flt form of this parameter."""
        if kind == "flt" and self.float_low is not None:
            return self.float_low, self.float_high, False  # fractions of the samples must be above 0
        return self.low, self.high, self.low_inclusive or kind == "i32"

    def describe(self) -> str:
        parts = []
        if "i32" in self.kinds:
            parts.append(f"an integer (i32){_range(*self.bounds('i32'))}")
        if "flt" in self.kinds:
            parts.append(f"a number (flt){_range(*self.bounds('flt'))}")
        if "bl" in self.kinds:
            parts.append("a boolean (bl)")
        if "str" in self.kinds:
            parts.append(f"one of {list(self.choices)} (str)")
        return " or ".join(parts)


def _range(low: float | None, high: float | None, low_inclusive: bool) -> str:
    if low is None and high is None:
        return ""
    opening = "[" if low_inclusive else "("
    return f" in {opening}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"


_SEED = Param(("i32",), 0, MAX_SEED)
_NON_NEGATIVE = Param(("flt",), 0.0, 1e9)
_TREE_PARAMS: dict[str, Param] = {
    "max_depth": Param(("i32",), 1, 1_000),
    "min_samples_split": Param(("i32", "flt"), 2, 10_000_000, float_low=0.0, float_high=1.0),
    "min_samples_leaf": Param(("i32", "flt"), 1, 10_000_000, float_low=0.0, float_high=0.5),
    "max_features": Param(("i32", "flt", "str"), 1, 100_000, choices=("sqrt", "log2"), float_low=0.0, float_high=1.0),
    "max_leaf_nodes": Param(("i32",), 2, 10_000_000),
    "min_impurity_decrease": _NON_NEGATIVE,
    "ccp_alpha": _NON_NEGATIVE,
    "random_state": _SEED,
}
_CLASS_WEIGHT = Param(("str",), choices=("balanced",))
_CLASSIFIER_CRITERIA = Param(("str",), choices=("gini", "entropy", "log_loss"))
_REGRESSOR_CRITERIA = Param(("str",), choices=("squared_error", "friedman_mse", "absolute_error", "poisson"))
_N_ESTIMATORS = Param(("i32",), 1, 5_000)
_FOREST: dict[str, Param] = {  # on top of _TREE_PARAMS, for both random forests
    "n_estimators": _N_ESTIMATORS,
    "bootstrap": Param(("bl",)),
    "max_samples": Param(("i32", "flt"), 1, 10_000_000, float_low=0.0, float_high=1.0),
}
_BOOSTING: dict[str, Param] = {
    "n_estimators": _N_ESTIMATORS,
    "learning_rate": Param(("flt",), 0.0, 10.0, low_inclusive=False),
    "subsample": Param(("flt",), 0.0, 1.0, low_inclusive=False),
    "validation_fraction": Param(("flt",), 0.0, 1.0, low_inclusive=False),
    "n_iter_no_change": Param(("i32",), 1, 10_000),
    "tol": Param(("flt",), 0.0, 1.0, low_inclusive=False),
    **{name: spec for name, spec in _TREE_PARAMS.items() if name != "max_depth"},
    "max_depth": Param(("i32",), 1, 100),
}

_LOGISTIC: dict[str, Param] = {
    "C": Param(("flt",), 0.0, 1e9, low_inclusive=False),
    "l1_ratio": Param(("flt",), 0.0, 1.0),
    "tol": Param(("flt",), 0.0, 1.0, low_inclusive=False),
    "fit_intercept": Param(("bl",)),
    "intercept_scaling": Param(("flt",), 0.0, 1e6, low_inclusive=False),
    "class_weight": _CLASS_WEIGHT,
    "solver": Param(("str",), choices=("lbfgs", "liblinear", "newton-cg", "newton-cholesky", "sag", "saga")),
    "max_iter": Param(("i32",), 1, 100_000),
    "random_state": _SEED,
}
_LINEAR: dict[str, Param] = {"fit_intercept": Param(("bl",)), "positive": Param(("bl",))}


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str  # e.g. "multiclass/logistic_regression"
    task: Task
    factory: Callable[..., Any]
    params: Mapping[str, Param]


def _classifiers(task: Task, group: str) -> dict[str, AlgorithmSpec]:
    return {
        "logistic_regression": AlgorithmSpec(f"{group}/logistic_regression", task, LogisticRegression, _LOGISTIC),
        "decision_tree": AlgorithmSpec(
            f"{group}/decision_tree",
            task,
            DecisionTreeClassifier,
            {**_TREE_PARAMS, "criterion": _CLASSIFIER_CRITERIA, "class_weight": _CLASS_WEIGHT},
        ),
        "random_forest": AlgorithmSpec(
            f"{group}/random_forest",
            task,
            RandomForestClassifier,
            {
                **_TREE_PARAMS,
                **_FOREST,
                "criterion": _CLASSIFIER_CRITERIA,
                "class_weight": Param(("str",), choices=("balanced", "balanced_subsample")),
            },
        ),
        "gbdt": AlgorithmSpec(
            f"{group}/gbdt",
            task,
            GradientBoostingClassifier,
            {**_BOOSTING, "loss": Param(("str",), choices=("log_loss", "exponential"))},
        ),
    }


_REGRESSORS: dict[str, AlgorithmSpec] = {
    "linear_regression": AlgorithmSpec("regression/linear_regression", Task.REGRESSION, LinearRegression, _LINEAR),
    "decision_tree": AlgorithmSpec(
        "regression/decision_tree",
        Task.REGRESSION,
        DecisionTreeRegressor,
        {**_TREE_PARAMS, "criterion": _REGRESSOR_CRITERIA},
    ),
    "random_forest": AlgorithmSpec(
        "regression/random_forest",
        Task.REGRESSION,
        RandomForestRegressor,
        {**_TREE_PARAMS, **_FOREST, "criterion": _REGRESSOR_CRITERIA},
    ),
    "gbdt": AlgorithmSpec(
        "regression/gbdt",
        Task.REGRESSION,
        GradientBoostingRegressor,
        {
            **_BOOSTING,
            "loss": Param(("str",), choices=("squared_error", "absolute_error", "huber", "quantile")),
            "alpha": Param(("flt",), 0.0, 1.0, low_inclusive=False),
        },
    ),
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
    param = spec.params.get(name)
    if param is None:
        allowed = ", ".join(sorted(spec.params)) or "none"
        raise AlgorithmError(f"hyper-parameter {name!r} is not accepted by {spec.name} (accepted: {allowed})")
    kind = message.WhichOneof("hyperparameter_is_oneof")
    where = f"hyper-parameter {name!r} of {spec.name}"
    if kind is None:
        raise AlgorithmError(f"{where} has no value; expected {param.describe()}")
    value: HyperValue = getattr(message, kind)
    if kind in ("fvector", "svector"):
        raise AlgorithmError(f"{where} got a {kind}; expected {param.describe()}")
    if kind == "i32" and "i32" not in param.kinds and "flt" in param.kinds:
        kind, value = "flt", float(message.i32)  # an integer is a fine float
    if kind not in param.kinds:
        raise AlgorithmError(f"{where} got {kind} {value!r}; expected {param.describe()}")
    if kind == "str":
        assert isinstance(value, str)  # noqa: S101 -- the oneof kind says so
        if value not in param.choices:
            raise AlgorithmError(f"{where} got {value!r}; expected {param.describe()}")
        return value
    if kind in ("i32", "flt"):
        _check_bounds(where, param, kind, float(value), param.describe())  # type: ignore[arg-type]
    return value


def _check_bounds(where: str, param: Param, kind: str, value: float, expected: str) -> None:
    low, high, low_inclusive = param.bounds(kind)
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        raise AlgorithmError(f"{where} got {value:g}; expected {expected}")
