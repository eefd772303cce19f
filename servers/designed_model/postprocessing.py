"""Running a classification probability postprocessor: an expression program over class probabilities.

Variables an expression may read:

- ``p0`` .. ``p<N-1>``: the probability of each class, in the estimator's ``classes_`` order (the column
  order of ``predict_proba``, recorded as ``classes`` in metadata.json);
- ``p_<label>`` for each class label that makes a valid identifier that way (``p_setosa``, ``p_1``);
  labels that do not (spaces, dashes) are reachable through ``p<index>`` only;
- the program's constants (numeric);
- the outputs of expressions earlier in the program's order.

The trainer compiles and checks the program from the schema (trainer/postprocessing.py) and records it with
:meth:`PostprocessProgram.describe`; a served model rebuilds it with :func:`program_from_record`.
Standard library and numpy only, relative imports only (see __init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .expressions import ExpressionError, FloatArray, ParsedExpression, Value, evaluate, parse_expression
from .preprocessing import numeric_constants

MAX_OUTPUTS = 256


@dataclass(frozen=True)
class PostprocessProgram:
    expressions: dict[str, ParsedExpression]
    constants: dict[str, float]
    order: tuple[str, ...]
    dependencies: dict[str, frozenset[str]]

    def describe(self) -> dict[str, object]:
        return {
            "expressions": {name: parsed.source for name, parsed in self.expressions.items()},
            "constants": dict(self.constants),
            "topological_order": list(self.order),
            "depends_on": {name: sorted(names) for name, names in self.dependencies.items()},
        }


def label_variable(label: str) -> str | None:
    """``p_<label>`` when that is an identifier expressions can name, else None (see the module docstring)."""
    name = f"p_{label}"
    return name if name.isidentifier() else None


def probability_variables(classes: list[str]) -> list[str]:
    """The names the program may read for a model with these classes (see the module docstring)."""
    names = [f"p{index}" for index in range(len(classes))]
    names.extend(name for name in map(label_variable, classes) if name is not None)
    return names


def run_postprocessor(
    program: PostprocessProgram, probabilities: FloatArray, classes: list[str]
) -> dict[str, FloatArray]:
    """Every output of the program over ``probabilities`` (rows x classes, in ``classes`` order)."""
    rows = int(probabilities.shape[0])
    variables: dict[str, Value] = dict(program.constants)
    for index, label in enumerate(classes):
        column = np.ascontiguousarray(probabilities[:, index], dtype=np.float64)
        variables[f"p{index}"] = column
        named = label_variable(label)
        if named is not None:
            variables[named] = column
    results: dict[str, FloatArray] = {}
    for name in program.order:
        results[name] = evaluate(program.expressions[name], variables, rows)
        variables[name] = results[name]
    return results


def program_from_record(record: object) -> PostprocessProgram:
    """The program recorded in metadata.json, parsed again (the file is input like any other). The order must
    list every output once; a name an expression reads that is neither a probability, a constant nor an
    earlier output fails when the program runs, naming it."""
    where = "postprocessing"
    if not isinstance(record, dict):
        raise ExpressionError(f"{where}: expected an object, got {type(record).__name__}")
    sources, order = record.get("expressions"), record.get("topological_order")
    if not isinstance(sources, dict) or not sources or len(sources) > MAX_OUTPUTS:
        raise ExpressionError(f"{where}: 'expressions' must be an object of 1 to {MAX_OUTPUTS} expressions")
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(map(str, sources)):
        raise ExpressionError(f"{where}: 'topological_order' must list every output exactly once")
    parsed: dict[str, ParsedExpression] = {}
    for name, source in sources.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ExpressionError(f"{where}: output name {name!r} is not an identifier")
        parsed[name] = parse_expression(source, f"{where} output {name!r}")
    constants = numeric_constants(record.get("constants", {}), where)
    dependencies = {name: frozenset(expression.names & set(parsed)) for name, expression in parsed.items()}
    return PostprocessProgram(parsed, constants, tuple(order), dependencies)
