"""Hostile and malformed directives (Hypothesis): whatever the lines, expressions or data, parsing and applying
either succeed or raise DirectiveError, never another exception; names survive quoting."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.data.directive_steps import Drop
from registry.data.directive_syntax import quote
from registry.data.directives import DirectiveError, parse_directives

DIRECTIVES = [
    "drop",
    "keep",
    "rename",
    "fill-null",
    "filter-rows",
    "set-column",
    "parse-as-number",
    "parse-as-category",
]
COLUMNS = ["price", "rooms", "city", "zip", "ghost", "x"]
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _houses() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "price": [100.0, np.nan, 250.0, -80.0, 0.0],
            "rooms": [3, 2, 5, 1, 0],
            "city": ["Paris", None, "Lyon", "", "Nice"],
            "zip": ["75001", " 1e3 ", "", None, "-0"],
        }
    )


def _parse_and_apply(lines: list[object], frame: pd.DataFrame | None = None) -> None:
    """Success or DirectiveError; anything else escapes and fails the test."""
    try:
        program = parse_directives(lines)
    except DirectiveError as error:
        assert str(error).startswith("directive")
        return
    try:
        result = program.apply(_houses() if frame is None else frame)
    except DirectiveError as error:
        assert str(error).startswith("directive")
        return
    assert isinstance(result, pd.DataFrame)


@PROPERTY
@given(st.lists(st.text(max_size=200), max_size=6))
def test_any_text_lines(lines: list[str]) -> None:
    _parse_and_apply(list(lines))


words = st.one_of(
    st.sampled_from(COLUMNS),
    st.text(max_size=12),
    st.sampled_from(['"', '""', '"a b"', '"unclosed', '\\"', '"a\\"b"', "#", "nan", "inf", "-1e400", "1e308"]),
)


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(DIRECTIVES), st.lists(words, max_size=5)), min_size=1, max_size=6))
def test_known_directives_with_arbitrary_arguments(lines: list[tuple[str, list[str]]]) -> None:
    _parse_and_apply([" ".join([name, *arguments]) for name, arguments in lines])


leaves = st.one_of(
    st.sampled_from([*COLUMNS, "True", "None", "__import__", "self", "1j", "'s'", "b'x'", "...", "1e400", "9" * 30]),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
FUNCTIONS = ["abs", "sqrt", "log", "log1p", "exp", "min", "max", "clip", "round", "where", "eval", "open", "getattr"]
OPERATORS = ["+", "-", "*", "/", "//", "%", "**", "==", "<", ">=", "and", "or", "@", "<<", "|", "^", "in", "is"]


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(children, st.sampled_from(OPERATORS), children).map(
            lambda parts: f"({parts[0]} {parts[1]} {parts[2]})"
        ),
        st.tuples(st.sampled_from(["-", "not ", "~", "+"]), children).map(lambda parts: f"{parts[0]}{parts[1]}"),
        st.tuples(st.sampled_from(FUNCTIONS), st.lists(children, max_size=4)).map(
            lambda parts: f"{parts[0]}({', '.join(parts[1])})"
        ),
        st.tuples(children, children, children).map(lambda parts: f"({parts[0]} if {parts[1]} else {parts[2]})"),
        st.tuples(children, st.sampled_from([".real", "[0]", ".__class__", "()", " for x in y", ":="])).map(
            lambda parts: f"{parts[0]}{parts[1]}"
        ),
        st.tuples(children, st.sampled_from(["round(", "clip(", "where(", "(", ")", ","])).map("".join),
    )


expressions = st.recursive(leaves, _combine, max_leaves=40)


@PROPERTY
@given(expressions, st.sampled_from(["filter-rows {}", "set-column y {}", "set-column price {}"]))
def test_hostile_expressions(expression: str, template: str) -> None:
    _parse_and_apply([template.format(expression)])


@PROPERTY
@given(st.sampled_from(["filter-rows ", "set-column y "]), st.integers(min_value=1, max_value=3000))
def test_deeply_nested_and_very_long_expressions(prefix: str, depth: int) -> None:
    _parse_and_apply([prefix + "(" * depth + "rooms" + ")" * depth])
    _parse_and_apply([prefix + " + ".join(["rooms"] * depth)])
    _parse_and_apply([prefix + "-" * depth + "rooms"])


@PROPERTY
@given(
    st.lists(st.one_of(st.none(), st.text(max_size=20), st.floats(), st.integers()), min_size=1, max_size=8),
    st.sampled_from(
        ["parse-as-number t", "parse-as-category t", "fill-null t 0", 'fill-null t "x"', "set-column y t * 2"]
    ),
)
def test_directives_over_arbitrary_values(values: list[object], line: str) -> None:
    _parse_and_apply(["parse-as-category t", line] if "t *" in line else [line], pd.DataFrame({"t": values}))


@PROPERTY
@given(st.lists(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text())), max_size=4))
def test_lines_that_are_not_text(lines: list[object]) -> None:
    if all(isinstance(line, str) for line in lines):
        return
    try:
        parse_directives(lines)
    except DirectiveError as error:
        assert "must be text" in str(error)
    else:
        raise AssertionError("a line that is not text was accepted")


names = st.text(
    st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters=["\x85", "\u2028", "\u2029"]),
    min_size=1,
    max_size=40,
).filter(lambda name: name.strip() != "" and name == name.strip())


@PROPERTY
@given(names)
def test_any_name_survives_quoting(name: str) -> None:
    program = parse_directives([f"drop {quote(name)}"])
    (step,) = program.steps
    assert step == Drop(1, (name,))
    assert parse_directives(program.lines) == program
