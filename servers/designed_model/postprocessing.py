"""Running a classification probability postprocessor: an expression program over class probabilities.

Variables an expression may read:

- ``p0`` .. ``p<N-1>``: the probability of each class, in the estimator's ``classes_`` order (the column
  order of ``predict_proba``, recorded as ``classes`` in metadata.json);
- ``p_<label>`` for each class label that makes a valid identifier that way (``p_setosa``, ``p_1``);
  labels that do not (spaces, dashes) are reachable through ``p<index>`` only;
- the program's constants (numeric);
- the outputs of expressions earlier in the program's order.

The trainer compiles and checks the program from the schema (trainer/run/postprocessing.py) and records it with
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


def program_from_record(record: object, classes: list[str]) -> PostprocessProgram:
    """The program recorded in metadata.json for a model with these classes, parsed and checked again (the file
    is input like any other): every name an expression reads is a probability, a constant or an output, and
    the order lists every output once, each after what it reads."""
    where = "postprocessing"
    if not isinstance(record, dict):
        raise ExpressionError(f"{where}: expected an object, got {type(record).__name__}")
    sources, order = record.get("expressions"), record.get("topological_order")
    if not isinstance(sources, dict) or not sources or len(sources) > MAX_OUTPUTS:
        raise ExpressionError(f"{where}: 'expressions' must be an object of 1 to {MAX_OUTPUTS} expressions")
    if not isinstance(order, list) or not order or not all(isinstance(name, str) for name in order):
        raise ExpressionError(f"{where}: 'topological_order' must be a non-empty list of output names")
    parsed: dict[str, ParsedExpression] = {}
    for name, source in sources.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ExpressionError(f"{where}: output name {name!r} is not an identifier")
        parsed[name] = parse_expression(source, f"{where} output {name!r}")
    constants = numeric_constants(record.get("constants", {}), where)
    known = set(probability_variables(classes)) | set(constants) | set(parsed)
    for expression in parsed.values():
        unknown = sorted(expression.names - known)
        if unknown:
            raise expression.fail(f"unknown name(s) {unknown}")
    dependencies = {name: set(expression.names & set(parsed)) for name, expression in parsed.items()}
    checked = checked_order(order, dependencies, where)
    return PostprocessProgram(parsed, constants, checked, {name: frozenset(d) for name, d in dependencies.items()})


def checked_order(given: list[str], dependencies: dict[str, set[str]], where: str) -> tuple[str, ...]:
    """``given`` when it lists every output once, each after what it depends on; computed when empty."""
    computed = _topological(dependencies, where)
    if not given:
        return computed
    unknown = sorted(set(given) - set(dependencies))
    if unknown:
        raise ExpressionError(f"{where}: topological_order names {unknown}, which have no expression")
    repeated = sorted({name for name in given if given.count(name) > 1})
    if repeated:
        raise ExpressionError(f"{where}: topological_order lists {repeated} more than once")
    missing = sorted(set(dependencies) - set(given))
    if missing:
        raise ExpressionError(f"{where}: topological_order leaves out {missing}")
    position = {name: index for index, name in enumerate(given)}
    for name in given:
        late = sorted(dep for dep in dependencies[name] if position[dep] > position[name])
        if late:
            raise ExpressionError(f"{where}: topological_order puts {name!r} before what it depends on: {late}")
    return tuple(given)


def _topological(dependencies: dict[str, set[str]], where: str) -> tuple[str, ...]:
    """Kahn's algorithm, ties broken by name so the order is deterministic; a cycle is an error naming it."""
    remaining = {name: set(deps) for name, deps in dependencies.items()}
    order: list[str] = []
    while remaining:
        ready = sorted(name for name, deps in remaining.items() if not deps)
        if not ready:
            raise ExpressionError(f"{where}: the dependencies form a cycle among {sorted(remaining)}")
        for name in ready:
            order.append(name)
            del remaining[name]
        for deps in remaining.values():
            deps.difference_update(ready)
    return tuple(order)
