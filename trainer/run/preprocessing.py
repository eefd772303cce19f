"""The design schema's preprocessor, compiled from its protobuf: PreprocessorExpressions checked for training.

Evaluation lives in servers/designed_model/preprocessing.py, because the same steps run again inside the
inference server that serves the trained model (recorded in metadata.json, rebuilt there): a caller sends the
dataset's raw columns and the served model computes the design inputs itself.
"""

from __future__ import annotations

import numpy as np

from generated.mlops.training.v1 import training_pb2
from servers.designed_model.expressions import ExpressionError, parse_expression
from servers.designed_model.preprocessing import MAX_STEPS, PreprocessStep


def compile_preprocessor(schema: training_pb2.ModelDesignSchema) -> list[PreprocessStep]:
    """Parse and check every expression (no data needed); an empty list when the schema has none."""
    kind = schema.preprocessor.WhichOneof("preprocessor_is_one_of")
    if kind is None:
        return []
    items = schema.preprocessor.multivariate.preprocess
    if len(items) > MAX_STEPS:
        raise ExpressionError(f"preprocessor: {len(items)} expressions; the limit is {MAX_STEPS}")
    steps: list[PreprocessStep] = []
    for position, item in enumerate(items, start=1):
        output = item.output.strip()
        where = f"preprocessor expression {position}" + (f" (output {output!r})" if output else "")
        if not output:
            raise ExpressionError(f"{where}: the output column name is empty")
        constants = {
            name: primitive_number(value, f"{where}: constant {name!r}") for name, value in item.constants.items()
        }
        steps.append(PreprocessStep(output, parse_expression(item.expression, where), constants))
    return steps


def primitive_number(primitive: training_pb2.Primitive, where: str) -> float:
    """A numeric Primitive (a constant of an expression) as a float; strings and lists are errors."""
    kind = primitive.WhichOneof("primitive_is_one_of")
    if kind is None:
        raise ExpressionError(f"{where}: the constant has no value set")
    if kind in ("string_data", "list_data"):
        raise ExpressionError(f"{where}: only numeric or boolean constants are supported, not {kind}")
    value = float(getattr(primitive, kind))
    if not np.isfinite(value):
        raise ExpressionError(f"{where}: the constant is not a finite number ({value})")
    return value
