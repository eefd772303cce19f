"""The classification probability postprocessor, compiled from the design schema's ExpressionProgram.

The variables an expression may read are listed in servers/designed_model/postprocessing.py, which also runs
the program: inside the trainer over the test split's probabilities (so a program that fails on real numbers
fails the run), and again inside the inference server that serves the trained model, from metadata.json.

The program is checked here: every output has an expression, ``dependency.depends_on`` names only known
names, the dependencies (declared, plus the outputs each expression actually reads) have no cycle, and
``topological_order`` (when given; computed when empty) lists every output once, each after what it depends
on.
"""

from __future__ import annotations

from generated.mlops.training.v1 import training_pb2
from servers.designed_model.expressions import ExpressionError, ParsedExpression, parse_expression
from servers.designed_model.postprocessing import MAX_OUTPUTS, PostprocessProgram, checked_order, probability_variables
from trainer.run.preprocessing import primitive_number


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
    order = checked_order(list(program.topological_order), dependencies, where)
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
