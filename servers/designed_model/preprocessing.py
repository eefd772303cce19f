"""Applying a design schema's preprocessor: expressions evaluated in order over named numeric columns.

Each step's ``output`` becomes a new column (or replaces one of that name); a later step may read an earlier
output. Names a step reads are, in this order: its own constants, earlier outputs, then input columns. Those
last ones are the columns a caller must supply (see :func:`input_columns`).

The trainer compiles steps from the schema's protobuf (trainer/run/preprocessing.py) and records them in
metadata.json with :meth:`PreprocessStep.describe`; a served model rebuilds them with :func:`steps_from_record`.
Standard library and numpy only, relative imports only (see __init__.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .expressions import ExpressionError, FloatArray, ParsedExpression, Value, evaluate, parse_expression

MAX_STEPS = 256


@dataclass(frozen=True)
class PreprocessStep:
    output: str
    expression: ParsedExpression
    constants: dict[str, float]

    def describe(self) -> dict[str, object]:
        return {"output": self.output, "expression": self.expression.source, "constants": dict(self.constants)}


def input_columns(steps: Sequence[PreprocessStep]) -> list[str]:
    """The columns the expressions read (not constants, not earlier outputs), in first-use order."""
    produced: set[str] = set()
    needed: list[str] = []
    for step in steps:
        for name in sorted(step.expression.names):
            if name not in step.constants and name not in produced and name not in needed:
                needed.append(name)
        produced.add(step.output)
    return needed


def outputs(steps: Sequence[PreprocessStep]) -> set[str]:
    return {step.output for step in steps}


def raw_columns(steps: Sequence[PreprocessStep], features: tuple[str, ...]) -> list[str]:
    """The columns a dataset (or a request to the served model) must have: those the expressions read, then
    the design inputs (``features``) that no expression produces."""
    produced = outputs(steps)
    raw = input_columns(steps)
    raw.extend(name for name in features if name not in produced and name not in raw)
    return raw


def apply_preprocessor(
    steps: Sequence[PreprocessStep], columns: Mapping[str, FloatArray], rows: int
) -> dict[str, FloatArray]:
    """The columns plus every step's output, evaluated in order."""
    result = dict(columns)
    for step in steps:
        variables: dict[str, Value] = {**result, **step.constants}
        result[step.output] = evaluate(step.expression, variables, rows)
    return result


def steps_from_record(record: object) -> list[PreprocessStep]:
    """The steps recorded in metadata.json (a list of :meth:`PreprocessStep.describe`), parsed and checked
    again: the file is input like any other. Raises ExpressionError naming the step."""
    if not isinstance(record, list):
        raise ExpressionError(f"preprocessing: expected a list of steps, got {type(record).__name__}")
    if len(record) > MAX_STEPS:
        raise ExpressionError(f"preprocessing: {len(record)} steps; the limit is {MAX_STEPS}")
    steps: list[PreprocessStep] = []
    for position, item in enumerate(record, start=1):
        where = f"preprocessing step {position}"
        if not isinstance(item, dict):
            raise ExpressionError(f"{where}: expected an object, got {type(item).__name__}")
        output, source, constants = item.get("output"), item.get("expression"), item.get("constants", {})
        if not isinstance(output, str) or not output:
            raise ExpressionError(f"{where}: 'output' must be a non-empty string")
        steps.append(PreprocessStep(output, parse_expression(source, where), numeric_constants(constants, where)))
    return steps


def numeric_constants(record: object, where: str) -> dict[str, float]:
    """A recorded ``{name: number}`` map of constants, checked: names are text, values finite numbers."""
    if not isinstance(record, dict):
        raise ExpressionError(f"{where}: 'constants' must be an object, got {type(record).__name__}")
    constants: dict[str, float] = {}
    for name, value in record.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, int | float):
            raise ExpressionError(f"{where}: constant {name!r} must be a number")
        if not math.isfinite(value):
            raise ExpressionError(f"{where}: constant {name!r} is not finite")
        constants[name] = float(value)
    return constants
