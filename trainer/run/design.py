"""What training needs from a ModelDesignSchema: the task, the feature columns, the target, the split.

One place reads these fields, so every module agrees on them and a schema that lacks one fails with a
message naming the field.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass

from generated.mlops.training.v1 import training_pb2
from trainer.run.errors import DesignError

DEFAULT_TEST_FRACTION = 0.2
MAX_FEATURES = 10_000


class Task(enum.Enum):
    BINARY = "binary_classification"
    MULTICLASS = "multiclass_classification"
    REGRESSION = "regression"

    @property
    def is_classification(self) -> bool:
        return self is not Task.REGRESSION


@dataclass(frozen=True)
class Split:
    """How rows are split (seed 002): a random split with a seed, or the first rows for training."""

    test_fraction: float
    random_seed: int
    first_rows_for_training: bool

    @property
    def method(self) -> str:
        return "first_rows" if self.first_rows_for_training else "random"


@dataclass(frozen=True)
class Design:
    task: Task
    features: tuple[str, ...]  # design inputs, in the order the model (and the served artifact) takes them
    target: str
    positive: str  # binary: the positive label as text ("" when the schema gives none)
    class_dictionary: tuple[str, ...]  # multiclass: the classes the schema expects ("" entries dropped)
    split: Split
    metrics: tuple[str, ...]  # eval_criteria.metrics; empty means "the task's default metrics"


def read_design(schema: training_pb2.ModelDesignSchema) -> Design:
    """The task, features, target and split of ``schema``; DesignError names a missing or bad field."""
    task, target, positive, classes = _output(schema.output)
    return Design(
        task=task,
        features=_features(schema.input),
        target=target,
        positive=positive,
        class_dictionary=classes,
        split=_split(schema.criteria),
        metrics=tuple(metric.strip() for metric in schema.eval_criteria.metrics if metric.strip()),
    )


def _features(input_schema: training_pb2.ModelDesignInputSchema) -> tuple[str, ...]:
    kind = input_schema.WhichOneof("input_schema_is_one_of")
    if kind is None:
        raise DesignError("input: no input schema set (expected input.multivariate.design_input)")
    if kind != "multivariate":
        raise DesignError(f"input: {kind} input is not supported for training; only multivariate input is")
    features = tuple(input_schema.multivariate.design_input.element)
    if not features:
        raise DesignError("input.multivariate.design_input is empty: the model needs at least one feature column")
    if len(features) > MAX_FEATURES:
        raise DesignError(f"input.multivariate.design_input has {len(features)} columns; the limit is {MAX_FEATURES}")
    blank = [index for index, name in enumerate(features) if not name.strip()]
    if blank:
        raise DesignError(f"input.multivariate.design_input has empty column names at positions {blank}")
    duplicates = sorted(name for name, count in Counter(features).items() if count > 1)
    if duplicates:
        raise DesignError(f"input.multivariate.design_input names columns more than once: {duplicates}")
    return features


def _output(output: training_pb2.ModelDesignOutputSchema) -> tuple[Task, str, str, tuple[str, ...]]:
    kind = output.WhichOneof("output_is_one_of")
    if kind is None:
        raise DesignError("output: no output schema set (expected classification_schema or regression_schema)")
    if kind == "regression_schema":
        target = output.regression_schema.label_schema.strip()
        if not target:
            raise DesignError("output.regression_schema.label_schema (the target column) is empty")
        return Task.REGRESSION, target, "", ()
    if kind != "classification_schema":
        raise DesignError(f"output: {kind} is not supported for training; only classification and regression are")
    classification = output.classification_schema
    which = classification.WhichOneof("classification_output_schema_is_one_of")
    if which == "binary":
        target = classification.binary.target_variable.value.strip()
        if not target:
            raise DesignError("output.classification_schema.binary.target_variable (the target column) is empty")
        return Task.BINARY, target, classification.binary.positive.strip(), ()
    if which == "multi_class":
        target = classification.multi_class.target_variable.value.strip()
        if not target:
            raise DesignError("output.classification_schema.multi_class.target_variable (the target column) is empty")
        classes = tuple(item for item in classification.multi_class.class_dictionary.element if item)
        return Task.MULTICLASS, target, "", classes
    raise DesignError("output.classification_schema: neither binary nor multi_class is set")


def _split(criteria: training_pb2.ModelDesignCriteria) -> Split:
    # A float32 field: 0.2 arrives as 0.20000000298..., so keep the 7 digits float32 carries.
    fraction = float(f"{float(criteria.test_fraction):.7g}")
    if fraction == 0.0:  # proto3: unset reads as 0
        fraction = DEFAULT_TEST_FRACTION
    if not math.isfinite(fraction) or not 0.0 < fraction < 1.0:
        raise DesignError(f"criteria.test_fraction must be between 0 and 1 (exclusive), got {fraction}")
    seed = int(criteria.random_seed)
    if not 0 <= seed < 2**32:
        raise DesignError(f"criteria.random_seed must be within 0..{2**32 - 1}, got {seed}")
    return Split(fraction, seed, bool(criteria.first_rows_for_training))
