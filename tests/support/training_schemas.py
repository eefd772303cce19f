"""Builders of ModelDesignSchema protos and small deterministic datasets for the training tests.

Other test modules (trainer service, launchers, Kafka flow) build their schemas here, so the function
names and keyword arguments are stable: add new builders rather than change these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris

from generated.mlops.training.v1 import training_pb2

SKLEARN_VERSION = "1.9.1"

IRIS_FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
IRIS_TARGET = "species"
IRIS_CLASSES = ("setosa", "versicolor", "virginica")

BINARY_FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
BINARY_TARGET = "is_virginica"

REGRESSION_FEATURES = ("x1", "x2", "x3")
REGRESSION_TARGET = "y"
# y = 3*x1 - 2*x2 + 0.5*x3 + 1 + noise: a linear regression recovers these closely.
REGRESSION_COEFFICIENTS = (3.0, -2.0, 0.5)
REGRESSION_INTERCEPT = 1.0

HyperParameterValue = str | bool | float | int | Sequence[float] | Sequence[str]


def hyper_parameter(value: HyperParameterValue) -> training_pb2.HyperParamater:
    """One HyperParamater from a Python value: str, bool, int (i32), float (flt), list of floats or strs."""
    message = training_pb2.HyperParamater()
    if isinstance(value, bool):  # before int: bool is an int subclass
        message.bl = value
    elif isinstance(value, str):
        message.str = value
    elif isinstance(value, int):
        message.i32 = value
    elif isinstance(value, float):
        message.flt = value
    elif all(isinstance(item, str) for item in value):
        message.svector.element.extend(str(item) for item in value)
    else:
        message.fvector.element.extend(float(item) for item in value)
    return message


def hyper_parameters(values: Mapping[str, HyperParameterValue] | None) -> training_pb2.ModelHyperParameter:
    message = training_pb2.ModelHyperParameter()
    for name, value in (values or {}).items():
        message.hyper_parameter[name].CopyFrom(hyper_parameter(value))
    return message


def _base_schema(
    *,
    algorithm_token: str,
    algorithm: str,
    design_token: str,
    version: str,
    name: str,
    features: Sequence[str],
    test_fraction: float,
    random_seed: int,
    first_rows_for_training: bool,
    output_store_model: bool,
) -> training_pb2.ModelDesignSchema:
    schema = training_pb2.ModelDesignSchema()
    schema.design_token.value = design_token
    schema.producer_token.value = "tests"
    schema.version.version = version
    schema.metadata.name = name
    schema.metadata.description = f"test schema {name}"
    schema.input.input_type = training_pb2.MODEL_INPUT_MULTIVARIATE
    schema.input.multivariate.design_input.element.extend(features)
    schema.criteria.test_fraction = test_fraction
    schema.criteria.random_seed = random_seed
    schema.criteria.first_rows_for_training = first_rows_for_training
    schema.model_framework.model_framework.framework_type = training_pb2.MODEL_FRAMEWORK_SKLEARN
    schema.model_framework.model_framework.framework_version = SKLEARN_VERSION
    schema.model_framework.dependencies.name = "scikit-learn"
    schema.model_framework.dependencies.version = SKLEARN_VERSION
    schema.algorithm.algorithm_token.value = algorithm_token
    schema.model_framework.model_framework.framework_algorithm_name = algorithm
    if output_store_model:
        schema.output_store.model_store = True
    else:
        schema.output_store.inference_store = True
    return schema


# What an algorithm gets when a builder is given no hyper-parameters.
_DEFAULT_HYPER: dict[str, dict[str, HyperParameterValue]] = {
    "logistic_regression": {"max_iter": 500},
    "linear_regression": {},
}


CLASSIFIERS = ("logistic_regression", "decision_tree", "random_forest", "gbdt")
REGRESSORS = ("linear_regression", "decision_tree", "random_forest", "gbdt")


def _set_model(
    models: training_pb2.BinaryClassificationModels
    | training_pb2.MulticlassClassificationModels
    | training_pb2.RegressionModels,
    algorithm: str,
    known: tuple[str, ...],
    hyper: Mapping[str, HyperParameterValue] | None,
) -> None:
    """Select ``algorithm`` (one of ``known``, each a field of ``models``) with ``hyper`` (None: its default)."""
    if algorithm not in known:
        raise ValueError(f"unknown algorithm {algorithm!r} in a test builder (known: {known})")
    if hyper is None:
        hyper = _DEFAULT_HYPER.get(algorithm, {"random_state": 0})
    getattr(models, algorithm).hyper_parameters.CopyFrom(hyper_parameters(hyper))


def iris_multiclass_logistic(
    design_token: str = "iris-lr",  # noqa: S107 -- an identifier, not a password
    version: str = "1",
    *,
    algorithm: str = "logistic_regression",
    hyper: Mapping[str, HyperParameterValue] | None = None,
    features: Sequence[str] = IRIS_FEATURES,
    target: str = IRIS_TARGET,
    test_fraction: float = 0.2,
    random_seed: int = 7,
    first_rows_for_training: bool = False,
    output_store_model: bool = True,
) -> training_pb2.ModelDesignSchema:
    """Multiclass iris (three species, string labels) with logistic regression by default.

    ``algorithm`` picks another classifier: "decision_tree", "random_forest", "gbdt".
    ``hyper`` goes into the algorithm message's own hyper_parameters (default max_iter=500 for logistic regression).
    """
    schema = _base_schema(
        algorithm_token=f"multiclass-{algorithm}",
        algorithm=algorithm,
        design_token=design_token,
        version=version,
        name="iris-multiclass",
        features=features,
        test_fraction=test_fraction,
        random_seed=random_seed,
        first_rows_for_training=first_rows_for_training,
        output_store_model=output_store_model,
    )
    _set_model(schema.algorithm.classification.multiclass, algorithm, CLASSIFIERS, hyper)
    schema.output.design_output_type = training_pb2.OUTPUT_TYPE_CLASSIFICATION
    multi = schema.output.classification_schema.multi_class
    multi.target_variable.value = target
    multi.class_dictionary.element.extend(IRIS_CLASSES)
    return schema


def iris_binary(
    design_token: str = "iris-binary",  # noqa: S107 -- an identifier, not a password
    version: str = "1",
    *,
    algorithm: str = "logistic_regression",
    hyper: Mapping[str, HyperParameterValue] | None = None,
    features: Sequence[str] = BINARY_FEATURES,
    target: str = BINARY_TARGET,
    positive: str = "1",
    negative: str = "0",
    test_fraction: float = 0.25,
    random_seed: int = 11,
    first_rows_for_training: bool = False,
    output_store_model: bool = True,
) -> training_pb2.ModelDesignSchema:
    """Binary iris: is the flower virginica (target column ``is_virginica``, values 0/1; positive "1")."""
    schema = _base_schema(
        algorithm_token=f"binary-{algorithm}",
        algorithm=algorithm,
        design_token=design_token,
        version=version,
        name="iris-binary",
        features=features,
        test_fraction=test_fraction,
        random_seed=random_seed,
        first_rows_for_training=first_rows_for_training,
        output_store_model=output_store_model,
    )
    _set_model(schema.algorithm.classification.binary, algorithm, CLASSIFIERS, hyper)
    schema.output.design_output_type = training_pb2.OUTPUT_TYPE_CLASSIFICATION
    binary = schema.output.classification_schema.binary
    binary.target_variable.value = target
    binary.positive = positive
    binary.negative = negative
    return schema


def linear_regression(
    design_token: str = "linreg",  # noqa: S107 -- an identifier, not a password
    version: str = "1",
    *,
    algorithm: str = "linear_regression",
    hyper: Mapping[str, HyperParameterValue] | None = None,
    features: Sequence[str] = REGRESSION_FEATURES,
    target: str = REGRESSION_TARGET,
    test_fraction: float = 0.2,
    random_seed: int = 3,
    first_rows_for_training: bool = False,
    output_store_model: bool = True,
) -> training_pb2.ModelDesignSchema:
    """Regression on the synthetic ``write_regression_csv`` data, linear regression by default.

    ``algorithm`` picks another regressor: "decision_tree", "random_forest", "gbdt".
    """
    schema = _base_schema(
        algorithm_token=f"regression-{algorithm}",
        algorithm=algorithm,
        design_token=design_token,
        version=version,
        name="linear-regression",
        features=features,
        test_fraction=test_fraction,
        random_seed=random_seed,
        first_rows_for_training=first_rows_for_training,
        output_store_model=output_store_model,
    )
    _set_model(schema.algorithm.regression, algorithm, REGRESSORS, hyper)
    schema.output.design_output_type = training_pb2.OUTPUT_TYPE_REGRESSION
    schema.output.regression_schema.label_schema = target
    schema.output.regression_schema.inference_schema = "prediction"
    return schema


def add_preprocessor(
    schema: training_pb2.ModelDesignSchema,
    expression: str,
    output: str,
    constants: Mapping[str, float | int | str | bool] | None = None,
) -> training_pb2.ModelDesignSchema:
    """Append one PreprocessorExpression (in place; returns the schema for chaining)."""
    item = schema.preprocessor.multivariate.preprocess.add()
    item.expression = expression
    item.output = output
    for name, value in (constants or {}).items():
        primitive = item.constants[name]
        if isinstance(value, bool):
            primitive.boolean_data = value
        elif isinstance(value, int):
            primitive.sint64_data = value
        elif isinstance(value, float):
            primitive.double_data = value
        else:
            primitive.string_data = value
    return schema


def iris_designed() -> training_pb2.ModelDesignSchema:
    """Binary iris on two computed inputs (petal_area, wide) and one raw one, with a postprocessor over the
    probabilities (score, then flag from score)."""
    schema = iris_binary(features=("petal_area", "sepal_length", "wide"))
    add_preprocessor(schema, "petal_length * petal_width * scale", "petal_area", {"scale": 1.0})
    add_preprocessor(schema, "sepal_width > 3", "wide")
    program = schema.postprocessor.probability_postprocessor_schema.program
    program.program.expressions["score"] = "round(p_1 * 100)"
    program.program.expressions["flag"] = "1 if score >= threshold else 0"
    program.initialization.constants["threshold"].double_data = 50.0
    program.dependency.depends_on["flag"].element.append("score")
    program.topological_order.extend(["score", "flag"])
    return schema


def iris_frame() -> pd.DataFrame:
    """Iris (150 rows) with named feature columns, the species as strings and the binary target."""
    iris = load_iris()
    frame = pd.DataFrame(np.asarray(iris.data, dtype=np.float64), columns=list(IRIS_FEATURES))
    target = np.asarray(iris.target)
    frame[IRIS_TARGET] = [IRIS_CLASSES[int(label)] for label in target]
    frame[BINARY_TARGET] = (target == 2).astype(np.int64)
    return frame


def write_iris_csv(path: Path) -> Path:
    """Write iris as CSV (columns: IRIS_FEATURES, species, is_virginica). Returns the path."""
    iris_frame().to_csv(path, index=False)
    return path


def write_iris_parquet(path: Path) -> Path:
    iris_frame().to_parquet(path, index=False)
    return path


def regression_frame(rows: int = 200, seed: int = 5) -> pd.DataFrame:
    """Deterministic synthetic regression data: y = 3*x1 - 2*x2 + 0.5*x3 + 1 + small noise."""
    generator = np.random.default_rng(seed)
    features = generator.uniform(-5.0, 5.0, size=(rows, len(REGRESSION_FEATURES)))
    noise = generator.normal(0.0, 0.1, size=rows)
    target = features @ np.asarray(REGRESSION_COEFFICIENTS) + REGRESSION_INTERCEPT + noise
    frame = pd.DataFrame(features, columns=list(REGRESSION_FEATURES))
    frame[REGRESSION_TARGET] = target
    return frame


def write_regression_csv(path: Path, rows: int = 200, seed: int = 5) -> Path:
    regression_frame(rows, seed).to_csv(path, index=False)
    return path


def write_regression_parquet(path: Path, rows: int = 200, seed: int = 5) -> Path:
    regression_frame(rows, seed).to_parquet(path, index=False)
    return path
