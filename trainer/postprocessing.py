"""The classification probability postprocessor: an ExpressionProgram over a model's class probabilities.

Variables an expression may read:

- ``p0`` .. ``p<N-1>``: the probability of each class, in the estimator's ``classes_`` order (the column
  order of ``predict_proba``, recorded as ``classes`` in metadata.json);
- ``p_<label>`` for each class label that makes a valid identifier that way (``p_setosa``, ``p_1``);
  labels that do not (spaces, dashes) are reachable through ``p<index>`` only;
- the program's ``initialization.constants`` (numeric or boolean);
- the outputs of expressions earlier in the topological order.

The program is checked when training: every output has an expression, ``dependency.depends_on`` names only
known names, the dependencies (declared, plus the outputs each expression actually reads) have no cycle, and
``topological_order`` (when given; computed when empty) lists every output once, each after what it depends
on. It is then evaluated over the test split's probabilities, so a program that fails on real numbers fails
the run. Like preprocessing, it is recorded in metadata.json, not inside the served artifact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from generated.mlops.training.v1 import training_pb2
from trainer.errors import ExpressionError
from trainer.expressions import FloatArray, ParsedExpression, Value, evaluate, parse_expression, primitive_number

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


def _label_variable(label: str) -> str | None:
    """``p_<label>`` when that is an identifier expressions can name, else None (see the module docstring)."""
    name = f"p_{label}"
    return name if name.isidentifier() else None


def probability_variables(classes: list[str]) -> list[str]:
    """The names the program may read for a model with these classes (see the module docstring)."""
    names = [f"p{index}" for index in range(len(classes))]
    names.extend(name for name in map(_label_variable, classes) if name is not None)
    return names


def compile_postprocessor(schema: training_pb2.ModelDesignSchema, classes: list[str]) -> PostprocessProgram | None:
    """The checked program, or None when the schema has no postprocessor."""
    if schema.postprocessor.WhichOneof("postprocessor_schema_is") is None:
        return None
    program = schema.postprocessor.probability_postprocessor_schema.program
    where = "postprocessor program"
    sources = dict(program.program.expressions)
    if not sources:
        raise ExpressionError(f"{where}: no expressions (program.expressions is empty)")
    if len(sources) > MAX_OUTPUTS:
        raise ExpressionError(f"{where}: {len(sources)} expressions; the limit is {MAX_OUTPUTS}")
    for name in sources:
        if not name.isidentifier():
            raise ExpressionError(f"{where}: output name {name!r} is not an identifier expressions could refer to")
    constants = {
        name: primitive_number(value, f"{where}: constant {name!r}")
        for name, value in program.initialization.constants.items()
    }
    inputs = set(probability_variables(classes)) | set(constants)
    clashes = sorted(set(sources) & inputs)
    if clashes:
        raise ExpressionError(f"{where}: outputs {clashes} shadow a probability variable or a constant")
    parsed = {name: parse_expression(text, f"{where} output {name!r}") for name, text in sources.items()}
    dependencies = _dependencies(program, parsed, inputs, where)
    order = _order(list(program.topological_order), dependencies, where)
    return PostprocessProgram(parsed, constants, order, {name: frozenset(d) for name, d in dependencies.items()})


def _dependencies(
    program: training_pb2.ExpressionProgram,
    parsed: dict[str, ParsedExpression],
    inputs: set[str],
    where: str,
) -> dict[str, set[str]]:
    """Output -> the outputs it depends on: the declared ones plus those its expression reads."""
    known = inputs | set(parsed)
    dependencies: dict[str, set[str]] = {name: set() for name in parsed}
    for name, declared in program.dependency.depends_on.items():
        if name not in parsed:
            raise ExpressionError(f"{where}: dependency.depends_on names {name!r}, which has no expression")
        unknown = sorted(set(declared.element) - known)
        if unknown:
            raise ExpressionError(f"{where}: output {name!r} depends on unknown name(s) {unknown}")
        dependencies[name].update(item for item in declared.element if item in parsed)
    for name, expression in parsed.items():
        unknown = sorted(expression.names - known)
        if unknown:
            raise expression.fail(
                f"unknown name(s) {unknown} (known: probabilities {sorted(inputs)}, outputs {sorted(parsed)})"
            )
        dependencies[name].update(expression.names & set(parsed))
    return dependencies


def _order(given: list[str], dependencies: dict[str, set[str]], where: str) -> tuple[str, ...]:
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


def run_postprocessor(
    program: PostprocessProgram, probabilities: FloatArray, classes: list[str]
) -> dict[str, FloatArray]:
    """Every output of the program over ``probabilities`` (rows x classes, in ``classes`` order)."""
    rows = int(probabilities.shape[0])
    variables: dict[str, Value] = dict(program.constants)
    for index, label in enumerate(classes):
        column = np.ascontiguousarray(probabilities[:, index], dtype=np.float64)
        variables[f"p{index}"] = column
        named = _label_variable(label)
        if named is not None:
            variables[named] = column
    results: dict[str, FloatArray] = {}
    for name in program.order:
        results[name] = evaluate(program.expressions[name], variables, rows)
        variables[name] = results[name]
    return results
