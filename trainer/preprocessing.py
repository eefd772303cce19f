"""The design schema's preprocessor: PreprocessorExpressions applied in order over the dataset's columns.

Each expression's ``output`` becomes a new column (or replaces one of that name); a later expression may
read an earlier output. Names an expression reads are, in this order: its own constants, earlier outputs,
then dataset columns. Those last ones are the columns the dataset must have (see ``input_columns``).

The served artifact is a plain scikit-learn estimator (MLServer's sklearn runtime loads it and cannot import
modelplane), so preprocessing is not inside it: it is recorded in metadata.json, and whoever calls the
model computes the design inputs first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from generated.mlops.training.v1 import training_pb2
from trainer.errors import ExpressionError
from trainer.expressions import FloatArray, ParsedExpression, Value, evaluate, parse_expression, primitive_number

MAX_STEPS = 256


@dataclass(frozen=True)
class PreprocessStep:
    output: str
    expression: ParsedExpression
    constants: dict[str, float]

    def describe(self) -> dict[str, object]:
        return {"output": self.output, "expression": self.expression.source, "constants": dict(self.constants)}


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


def input_columns(steps: list[PreprocessStep]) -> list[str]:
    """The dataset columns the expressions read (not constants, not earlier outputs), in first-use order."""
    produced: set[str] = set()
    needed: list[str] = []
    for step in steps:
        for name in sorted(step.expression.names):
            if name not in step.constants and name not in produced and name not in needed:
                needed.append(name)
        produced.add(step.output)
    return needed


def outputs(steps: list[PreprocessStep]) -> set[str]:
    return {step.output for step in steps}


def apply_preprocessor(
    steps: list[PreprocessStep], columns: Mapping[str, FloatArray], rows: int
) -> dict[str, FloatArray]:
    """The columns plus every step's output, evaluated in order."""
    result = dict(columns)
    for step in steps:
        variables: dict[str, Value] = {**result, **step.constants}
        result[step.output] = evaluate(step.expression, variables, rows)
    return result
