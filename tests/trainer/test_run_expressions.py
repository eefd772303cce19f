"""The safe expression evaluator, the preprocessor and the probability postprocessor."""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generated.mlops.training.v1 import training_pb2
from servers.designed_model.expressions import MAX_DEPTH, MAX_EXPRESSION_CHARS, evaluate, parse_expression
from servers.designed_model.postprocessing import probability_variables, run_postprocessor
from servers.designed_model.preprocessing import apply_preprocessor, input_columns
from tests.support import training_schemas as schemas
from trainer.run.errors import ExpressionError
from trainer.run.postprocessing import compile_postprocessor
from trainer.run.preprocessing import compile_preprocessor

A = np.array([1.0, 2.0, 3.0])
B = np.array([4.0, 0.5, -1.0])
VARIABLES: dict[str, Any] = {"a": A, "b": B, "k": 2.0}


def run(source: str, variables: dict[str, Any] | None = None) -> np.ndarray[Any, np.dtype[np.float64]]:
    return evaluate(parse_expression(source, "test"), VARIABLES if variables is None else variables, 3)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a + b * k", A + B * 2),
        ("a - b / 2", A - B / 2),
        ("a // 2 + a % 2", A // 2 + A % 2),
        ("a ** 2", A**2),
        ("-a", -A),
        ("+a", A),
        ("a > 1", (A > 1).astype(float)),
        ("1 < a <= 2", ((A > 1) & (A <= 2)).astype(float)),
        ("a == 2 or b < 0", ((A == 2) | (B < 0)).astype(float)),
        ("a != 2 and b > 0", ((A != 2) & (B > 0)).astype(float)),
        ("not (a > 1)", (A <= 1).astype(float)),
        ("a if b > 0 else -a", np.where(B > 0, A, -A)),
        ("abs(b)", np.abs(B)),
        ("sqrt(a)", np.sqrt(A)),
        ("log(a)", np.log(A)),
        ("log1p(a)", np.log1p(A)),
        ("exp(b)", np.exp(B)),
        ("min(a, b, 1.5)", np.minimum(np.minimum(A, B), 1.5)),
        ("max(a, b)", np.maximum(A, B)),
        ("clip(b, 0, 1)", np.clip(B, 0, 1)),
        ("round(b * 1.26, 1)", np.round(B * 1.26, 1)),
        ("round(a / 3)", np.round(A / 3)),
        ("where(a > 1, a, 0)", np.where(A > 1, A, 0)),
        ("k", np.full(3, 2.0)),
        ("7", np.full(3, 7.0)),
        ("True + 1", np.full(3, 2.0)),
    ],
)
def test_the_language(source: str, expected: np.ndarray[Any, np.dtype[np.float64]]) -> None:
    result = run(source)
    assert result.dtype == np.float64
    assert result.shape == (3,)
    np.testing.assert_allclose(result, expected)


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("__import__('os')", "function '__import__' not allowed"),
        ("__import__('os').system('true')", "attribute access not allowed"),
        ("a.__class__", "attribute access not allowed"),
        ("a[0]", "subscripts not allowed"),
        ("(lambda: 1)()", "not allowed"),
        ("lambda: 1", "lambdas not allowed"),
        ("[x for x in a]", "comprehensions not allowed"),
        ("(x for x in a)", "comprehensions not allowed"),
        ("(y := 1)", "assignment expressions"),
        ("'text'", "strings not allowed"),
        ("b'x'", "strings not allowed"),
        ("1j", "complex constants not allowed"),
        ("None", "NoneType constants not allowed"),
        ("[1, 2]", "lists not allowed"),
        ("(1, 2)", "tuples not allowed"),
        ("{1: 2}", "dicts not allowed"),
        ("a @ b", "the @ operator not allowed"),
        ("a & b", "bitwise operators not allowed"),
        ("~a", "bitwise operators not allowed"),
        ("a in b", "'in' comparisons not allowed"),
        ("a is b", "'is' comparisons not allowed"),
        ("f'{a}'", "f-strings not allowed"),
        ("open('x')", "function 'open' not allowed"),
        ("eval('1')", "function 'eval' not allowed"),
        ("abs(a, b)", "abs() takes 1 arguments, got 2"),
        ("min(a)", "min() takes 2 or more arguments, got 1"),
        ("clip(a, low=0, high=1)", "keyword arguments not allowed"),
        ("abs(*a)", "starred arguments not allowed"),
        ("round(a, b)", "round()'s digits must be a constant integer"),
        ("round(a, 99)", "round()'s digits must be a constant integer"),
        ("a ** 65", "exponent 65 exceeds"),
        ("a ** -100", "exponent -100 exceeds"),
        ("a +", "not a valid expression"),
        ("x = 1", "not a valid expression"),
        ("import os", "not a valid expression"),
        ("", "the expression is empty"),
        ("   ", "the expression is empty"),
        ("a\x00", "null bytes"),
        ("9" * 40, "too large"),
        ("max(" + ", ".join(["a"] * 300) + ")", "too large"),
        ("a" + " + a" * 300, "nested deeper"),
        ("-" * (MAX_DEPTH + 2) + "a", "nested deeper"),
        ("a" * (MAX_EXPRESSION_CHARS + 1), "longer than"),
    ],
)
def test_rejected_constructs_are_named(source: str, named: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(source, "preprocessor expression 1 (output 'x')")
    assert named in str(caught.value)
    assert "preprocessor expression 1 (output 'x')" in str(caught.value)


@pytest.mark.parametrize(
    ("source", "variables", "named"),
    [
        ("a / 0", VARIABLES, "non-finite value (inf or nan) in 3 row(s), first at row 0"),
        ("log(b)", VARIABLES, "non-finite value (inf or nan) in 1 row(s), first at row 2"),
        ("sqrt(b)", VARIABLES, "first at row 2"),
        ("a ** b", {"a": A, "b": np.array([1.0, 100.0, 1.0])}, "an exponent exceeds"),
        ("a + nothing", VARIABLES, "unknown name(s) 'nothing'"),
        ("exp(a * 1000)", VARIABLES, "non-finite"),
        ("1e999", VARIABLES, "non-finite"),
    ],
)
def test_evaluation_errors_name_the_expression(source: str, variables: dict[str, Any], named: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        run(source, variables)
    assert named in str(caught.value)
    assert repr(source) in str(caught.value)


# --- hypothesis: nothing gets past the checker, nothing crashes beyond ExpressionError -------------------------

_CALLED: list[str] = []


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make eval, exec and imports of dangerous modules record any call, so a test proves none ran.

    (compile, getattr and ordinary imports are not wired: ast.parse and numpy use them legitimately.)
    """
    _CALLED.clear()
    original_import = builtins.__import__

    def guarded_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".", maxsplit=1)[0] in {"os", "subprocess", "shutil", "socket", "sys"}:
            _CALLED.append(f"import {name}")
        return original_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded_import)
    for name in ("eval", "exec"):
        original: Callable[..., Any] = getattr(builtins, name)

        def wrapper(*args: Any, _name: str = name, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
            _CALLED.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(builtins, name, wrapper)
    return _CALLED


def test_the_tripwires_are_armed(tripwires: list[str]) -> None:
    __import__("os")
    assert tripwires == ["import os"]
    assert builtins.eval.__name__ == "wrapper"
    assert builtins.exec.__name__ == "wrapper"


def _check_safe(source: str) -> None:
    try:
        parsed = parse_expression(source, "fuzz")
    except ExpressionError as exc:
        assert "fuzz" in str(exc)
        return
    # Whatever parsed reads only names and calls only whitelisted functions.
    for node in ast.walk(parsed.tree):
        assert not isinstance(node, ast.Attribute | ast.Subscript | ast.Lambda | ast.comprehension)
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            assert node.func.id in {"abs", "sqrt", "log", "log1p", "exp", "min", "max", "clip", "round", "where"}
    variables = {name: np.linspace(-2.0, 2.0, 3) for name in parsed.names}
    try:
        result = evaluate(parsed, variables, 3)
    except ExpressionError:
        return
    assert result.shape == (3,)
    assert np.isfinite(result).all()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_random_text_never_escapes(tripwires: list[str], source: str) -> None:
    tripwires.clear()  # only what happens inside the evaluator counts (hypothesis itself uses exec)
    _check_safe(source)
    assert tripwires == []


_ATOMS = st.sampled_from(
    ["a", "b", "1", "2.5", "0", "-1", "x", "__import__", "os", "'s'", "None", "True", "1e308", "()", "[]"]
)


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(
        children,
        st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "<", "==", "and", "or", "if 1 else", "@", "&"]),
        children,
    ).map(lambda parts: f"({parts[0]} {parts[1]} {parts[2]})")
    call = st.tuples(
        st.sampled_from(["abs", "sqrt", "log", "min", "max", "clip", "round", "where", "exec", "getattr", "type"]),
        st.lists(children, min_size=0, max_size=3),
    ).map(lambda parts: f"{parts[0]}({', '.join(parts[1])})")
    other = st.tuples(children, st.sampled_from([".__class__", "[0]", ".real"])).map("".join)
    prefixed = st.tuples(st.sampled_from(["-", "not ", "~", "lambda: "]), children).map("".join)
    comprehension = children.map(lambda inner: f"[{inner} for a in b]")
    return st.one_of(binary, call, other, prefixed, comprehension)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(_ATOMS, _extend, max_leaves=12))
def test_random_expression_trees_never_escape(tripwires: list[str], source: str) -> None:
    tripwires.clear()  # only what happens inside the evaluator counts (hypothesis itself uses exec)
    _check_safe(source)
    assert tripwires == []


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=3000))
def test_deep_nesting_is_refused_not_a_crash(depth: int) -> None:
    for source in ("(" * depth + "a" + ")" * depth, "-" * depth + "a", "abs(" * depth + "a" + ")" * depth):
        try:
            parse_expression(source, "deep")
        except ExpressionError as exc:
            assert "deep" in str(exc)
        else:
            # Parentheses add no syntax nodes; nested operators and calls beyond the limit must be refused.
            assert source.startswith("(") or depth <= MAX_DEPTH, f"depth {depth} was accepted"


# --- preprocessing ---------------------------------------------------------------------------------------------


def test_preprocessor_steps_chain_and_read_their_constants() -> None:
    schema = schemas.iris_multiclass_logistic()
    schemas.add_preprocessor(schema, "petal_length * petal_width", "area")
    schemas.add_preprocessor(schema, "area * scale + offset", "scaled", {"scale": 2, "offset": 0.5})
    schemas.add_preprocessor(schema, "scaled > limit", "big", {"limit": True})
    steps = compile_preprocessor(schema)
    assert input_columns(steps) == ["petal_length", "petal_width"]
    columns = {"petal_length": np.array([1.0, 2.0]), "petal_width": np.array([3.0, 0.5])}
    result = apply_preprocessor(steps, columns, 2)
    np.testing.assert_allclose(result["area"], [3.0, 1.0])
    np.testing.assert_allclose(result["scaled"], [6.5, 2.5])
    np.testing.assert_allclose(result["big"], [1.0, 1.0])


@pytest.mark.parametrize(
    ("expression", "output", "constants", "named"),
    [
        ("a + 1", "", {}, "output column name is empty"),
        ("a + c", "x", {"c": "text"}, "constant 'c': only numeric or boolean constants"),
        ("a.b", "x", {}, "preprocessor expression 1 (output 'x')"),
    ],
)
def test_preprocessor_errors_name_the_step(expression: str, output: str, constants: dict[str, Any], named: str) -> None:
    schema = schemas.iris_multiclass_logistic()
    schemas.add_preprocessor(schema, expression, output, constants)
    with pytest.raises(ExpressionError) as caught:
        compile_preprocessor(schema)
    assert named in str(caught.value)


# --- postprocessing -------------------------------------------------------------------------------------------


def _program_schema(
    expressions: dict[str, str],
    depends_on: dict[str, list[str]] | None = None,
    order: list[str] | None = None,
    constants: dict[str, float] | None = None,
) -> training_pb2.ModelDesignSchema:
    schema = schemas.iris_multiclass_logistic()
    program = schema.postprocessor.probability_postprocessor_schema.program
    for name, text in expressions.items():
        program.program.expressions[name] = text
    for name, names in (depends_on or {}).items():
        program.dependency.depends_on[name].element.extend(names)
    program.topological_order.extend(order or [])
    for name, value in (constants or {}).items():
        program.initialization.constants[name].double_data = value
    return schema


CLASSES = ["setosa", "versicolor", "virginica"]
PROBABILITIES = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])


def test_postprocessor_variables_and_order() -> None:
    assert probability_variables(["a b", "1", "ok"]) == ["p0", "p1", "p2", "p_1", "p_ok"]
    schema = _program_schema(
        {"best": "max(p0, p1, p2)", "confident": "best > cut", "rest": "1 - p_setosa"},
        depends_on={"confident": ["best"]},
        constants={"cut": 0.65},
    )
    program = compile_postprocessor(schema, CLASSES)
    assert program is not None
    assert program.order == ("best", "rest", "confident")  # computed: dependencies first, then by name
    outputs = run_postprocessor(program, PROBABILITIES, CLASSES)
    np.testing.assert_allclose(outputs["best"], [0.7, 0.6])
    np.testing.assert_allclose(outputs["confident"], [1.0, 0.0])
    np.testing.assert_allclose(outputs["rest"], [0.3, 0.9])


def test_a_given_topological_order_is_kept_when_valid() -> None:
    schema = _program_schema({"x": "p0", "y": "x * 2"}, order=["x", "y"])
    program = compile_postprocessor(schema, CLASSES)
    assert program is not None
    assert program.order == ("x", "y")


@pytest.mark.parametrize(
    ("expressions", "depends_on", "order", "named"),
    [
        ({"x": "y + 1", "y": "x + 1"}, {}, [], "cycle among ['x', 'y']"),
        ({"x": "p0"}, {"x": ["ghost"]}, [], "depends on unknown name(s) ['ghost']"),
        ({"x": "p0"}, {"nobody": ["p0"]}, [], "names 'nobody', which has no expression"),
        ({"x": "p0", "y": "x"}, {}, ["y", "x"], "puts 'y' before what it depends on: ['x']"),
        ({"x": "p0", "y": "p1"}, {}, ["x"], "leaves out ['y']"),
        ({"x": "p0"}, {}, ["x", "x"], "more than once"),
        ({"x": "p0"}, {}, ["x", "z"], "names ['z'], which have no expression"),
        ({"x": "p7"}, {}, [], "unknown name(s) ['p7']"),
        ({"p0": "p1"}, {}, [], "shadow a probability variable"),
        ({"bad name": "p1"}, {}, [], "not an identifier"),
        ({"x": "p0.real"}, {}, [], "attribute access not allowed"),
    ],
)
def test_postprocessor_program_errors(
    expressions: dict[str, str], depends_on: dict[str, list[str]], order: list[str], named: str
) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_postprocessor(_program_schema(expressions, depends_on, order), CLASSES)
    assert named in str(caught.value)
    assert "postprocessor program" in str(caught.value)


def test_no_postprocessor_is_none() -> None:
    assert compile_postprocessor(schemas.iris_multiclass_logistic(), CLASSES) is None
    with pytest.raises(ExpressionError, match="no expressions"):
        compile_postprocessor(_program_schema({}), CLASSES)
