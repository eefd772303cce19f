"""The training algorithms modelplane offers and the hyper-parameters each accepts: one catalogue, owned here so
the trainer (trainer/run/algorithms.py, which pairs each name with its scikit-learn estimator) and the registry
(which refuses an unknown algorithm or hyper-parameter with a 400 when a model is created or trained, before any
run) read the same names, kinds and bounds.

- classification (binary and multiclass): logistic_regression, decision_tree, random_forest, gbdt;
- regression: linear_regression, decision_tree, random_forest, gbdt.

Each hyper-parameter has the HyperParamater kinds it accepts and bounds, so nothing reaches scikit-learn that could
make it run unbounded (n_jobs is not offered; sizes are capped) or that it would reject obscurely.

The registry names algorithms as people write them ("decision tree" is decision_tree: algorithm_name) and picks
the task from the experiment's ``outcomeType`` (is_regression); it writes hyper-parameters as JSON values, read
as the trainer's HyperParamater by hyper_parameter (the seed writes numbers as text: "maxBins": "3").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from generated.mlops.training.v1 import training_pb2
from modelplane.bounded_text import cut

HyperValue = str | bool | int | float | list[float] | list[str]
MAX_SEED = 2**32 - 1
INT32: Final = 2**31
MAX_SHOWN_VALUE_CHARS: Final = 100
# An experiment's outcomeType that makes its models regressions; any other (or none) is classification.
REGRESSION_TYPES: Final = frozenset({"double", "float", "long", "int", "integer", "number"})
_WHOLE: Final = re.compile(r"[+-]?\d{1,10}")
_NUMBER: Final = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?")


class HyperParameterError(ValueError):
    """A hyper-parameter the algorithm does not accept, or a value out of its kinds or bounds; the message names it."""


class UnknownAlgorithmError(ValueError):
    """An algorithm that is not in the catalogue for the task; the message names it and the known ones."""


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


CLASSIFIERS: Final[Mapping[str, Mapping[str, Param]]] = {
    "logistic_regression": _LOGISTIC,
    "decision_tree": {**_TREE_PARAMS, "criterion": _CLASSIFIER_CRITERIA, "class_weight": _CLASS_WEIGHT},
    "random_forest": {
        **_TREE_PARAMS,
        **_FOREST,
        "criterion": _CLASSIFIER_CRITERIA,
        "class_weight": Param(("str",), choices=("balanced", "balanced_subsample")),
    },
    "gbdt": {**_BOOSTING, "loss": Param(("str",), choices=("log_loss", "exponential"))},
}
REGRESSORS: Final[Mapping[str, Mapping[str, Param]]] = {
    "linear_regression": _LINEAR,
    "decision_tree": {**_TREE_PARAMS, "criterion": _REGRESSOR_CRITERIA},
    "random_forest": {**_TREE_PARAMS, **_FOREST, "criterion": _REGRESSOR_CRITERIA},
    "gbdt": {
        **_BOOSTING,
        "loss": Param(("str",), choices=("squared_error", "absolute_error", "huber", "quantile")),
        "alpha": Param(("flt",), 0.0, 1.0, low_inclusive=False),
    },
}


def algorithm_name(text: str) -> str:
    """The catalogue's name for an algorithm as written: case, spaces and dashes aside ("Decision tree")."""
    return re.sub(r"[\s-]+", "_", text.strip().lower())


def is_regression(outcome_type: str | None) -> bool:
    return (outcome_type or "").strip().lower() in REGRESSION_TYPES


def hyper_parameter(value: object) -> training_pb2.HyperParamater:
    """A JSON value as the trainer's HyperParamater: true/false a bool, a whole number an i32 (a float beyond it),
    a number a float; text that is a whole number an i32, numeric text a float, other text a string."""
    message = training_pb2.HyperParamater()
    if isinstance(value, bool):  # before int: a bool is an int
        message.bl = value
    elif isinstance(value, int) and -INT32 <= value < INT32:
        message.i32 = value
    elif isinstance(value, int | float):
        message.flt = float(value)
    elif isinstance(value, str) and _WHOLE.fullmatch(value.strip()) and -INT32 <= int(value) < INT32:
        message.i32 = int(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        message.flt = float(value)
    else:
        message.str = str(value)
    return message


def _shown(value: object) -> str:
    # A value is the caller's, of any length (a registry body, a training event): its message names it, briefly.
    return cut(repr(value), MAX_SHOWN_VALUE_CHARS)


def check_choice(
    algorithm: str, hyperparameters: Mapping[str, object], outcome_type: str | None, *, task_decided: bool = True
) -> None:
    """Refuse what no run could train: an algorithm unknown for the task (UnknownAlgorithmError), or a
    hyper-parameter it does not accept or a value out of its kinds and bounds (HyperParameterError). The task is
    ``outcome_type``'s (is_regression); with ``task_decided`` False (an experiment whose outcome type is not set
    yet) what either task would train passes."""
    tasks = (is_regression(outcome_type),) if task_decided else (False, True)
    name = algorithm_name(algorithm)
    catalogues = [(regression, (REGRESSORS if regression else CLASSIFIERS)) for regression in tasks]
    offered = [(regression, known[name]) for regression, known in catalogues if name in known]
    if not offered:
        known_names = "; ".join(
            f"{'regression' if regression else 'classification'}: {', '.join(known)}"
            for regression, known in catalogues
        )
        raise UnknownAlgorithmError(f"unknown algorithm {algorithm!r}; known for {known_names}")
    refusals: list[HyperParameterError] = []
    for regression, params in offered:
        group = "regression" if regression else "classification"
        try:
            for key, value in hyperparameters.items():
                check_hyper_parameter(f"{group}/{name}", params, key, hyper_parameter(value))
        except HyperParameterError as error:
            refusals.append(error)
        else:
            return
    raise refusals[0]


def check_hyper_parameter(
    algorithm: str, params: Mapping[str, Param], name: str, message: training_pb2.HyperParamater
) -> HyperValue:
    """The value of hyper-parameter ``name`` of ``algorithm`` (e.g. "multiclass/gbdt"), checked against ``params``."""
    param = params.get(name)
    if param is None:
        allowed = ", ".join(sorted(params)) or "none"
        raise HyperParameterError(f"hyper-parameter {name!r} is not accepted by {algorithm} (accepted: {allowed})")
    kind = message.WhichOneof("hyperparameter_is_oneof")
    where = f"hyper-parameter {name!r} of {algorithm}"
    if kind is None:
        raise HyperParameterError(f"{where} has no value; expected {param.describe()}")
    value: HyperValue = getattr(message, kind)
    if kind in ("fvector", "svector"):
        raise HyperParameterError(f"{where} got a {kind}; expected {param.describe()}")
    if kind == "i32" and "i32" not in param.kinds and "flt" in param.kinds:
        kind, value = "flt", float(message.i32)  # an integer is a fine float
    if kind not in param.kinds:
        raise HyperParameterError(f"{where} got {kind} {_shown(value)}; expected {param.describe()}")
    if kind == "str":
        assert isinstance(value, str)  # noqa: S101 -- the oneof kind says so
        if value not in param.choices:
            raise HyperParameterError(f"{where} got {_shown(value)}; expected {param.describe()}")
        return value
    if kind in ("i32", "flt"):
        _check_bounds(where, param, kind, float(value), param.describe())  # type: ignore[arg-type]
    return value


def _check_bounds(where: str, param: Param, kind: str, value: float, expected: str) -> None:
    low, high, low_inclusive = param.bounds(kind)
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        raise HyperParameterError(f"{where} got {value:g}; expected {expected}")
