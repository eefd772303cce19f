"""The directives language: how a data scientist prepares a dataset before it is split (seed 002's
``directives``), one directive per line, applied in order to the whole table.

=====================================  ===========================================================================
``drop COLUMN [COLUMN ...]``           remove these columns
``keep COLUMN [COLUMN ...]``           keep only these columns, in this order
``rename OLD NEW``                     rename a column (NEW must not exist)
``fill-null COLUMN VALUE``             replace missing values; VALUE is a number for a column of numbers
``filter-rows EXPRESSION``             keep the rows where the expression is true (not 0)
``set-column COLUMN EXPRESSION``       set (or add) a column of numbers from an expression
``parse-as-number COLUMN``             read a column's values as numbers (blank stays missing)
``parse-as-category COLUMN``           read a column's values as categories (text; 3.0 becomes ``3``)
=====================================  ===========================================================================

Words: a column name or value is a bare word (no spaces, no ``"``) or a double-quoted one, ``"unit price"``, in
which ``\\"`` is a quote and ``\\\\`` a backslash; ``""`` is the empty value. Directive names are lower case.
Blank lines and lines starting with ``#`` are ignored (and left out of the normalised program).

Expressions are the trainer's safe expressions (servers/designed_model/expressions.py: numbers, column names,
``+ - * / // % **``, comparisons, ``and or not``, ``a if c else b``, abs, sqrt, log, log1p, exp, min, max, clip,
round, where), never Python's eval: every expression is checked against a whitelist, and bounded in size, depth
and exponents, when the directives are parsed. They read columns of numbers by name (so only columns whose names
are identifiers can appear in them); a missing value in a column makes the rows it touches non-finite, which is an
error: ``fill-null`` it first. Comparisons give 1 or 0, e.g. ``filter-rows age >= 18 and income > 0`` or
``set-column ratio where(debt > 0, income / debt, 0)``.

Errors: :func:`parse_directives` raises a DirectiveError naming the line (its 1-based position in the list) and the
character where the problem is: an unknown directive (with the known ones), a missing or extra argument, a bad
quote, a rejected expression, a line or program over the limits. :meth:`DirectiveProgram.apply` raises one naming
the line for a problem the data shows: a missing column, a value that is not a number, a non-finite result; rows
are counted from 0, in the table as the directives before left it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from registry.data.directive_steps import (
    Drop,
    FillNull,
    FilterRows,
    Keep,
    ParseAsCategory,
    ParseAsNumber,
    Rename,
    SetColumn,
    Step,
)
from registry.data.directive_syntax import DirectiveError, DirectiveLine
from servers.designed_model.expressions import ExpressionError, ParsedExpression, parse_expression

__all__ = ["MAX_DIRECTIVES", "MAX_LINE_CHARS", "DirectiveError", "DirectiveProgram", "parse_directives"]

MAX_DIRECTIVES = 256
MAX_LINE_CHARS = 4_096
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a tab is a space; anything else would hide text


@dataclass(frozen=True)
class DirectiveProgram:
    steps: tuple[Step, ...]

    @property
    def lines(self) -> tuple[str, ...]:
        """The program as normalised text: one directive a line, single spaces, names quoted only when needed."""
        return tuple(step.text() for step in self.steps)

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A new table with every step applied in order; ``frame`` is left unchanged."""
        result = frame.copy(deep=False)
        for step in self.steps:
            result = step.apply(result)
        return result


def parse_directives(lines: Sequence[object]) -> DirectiveProgram:
    """Parse and check a program; DirectiveError names the first problem and where it is."""
    if isinstance(lines, str | bytes) or not isinstance(lines, Sequence):
        raise DirectiveError(None, "directives must be a list of lines, one directive each")
    if len(lines) > MAX_DIRECTIVES:
        raise DirectiveError(MAX_DIRECTIVES + 1, f"more than {MAX_DIRECTIVES} directives (the limit)")
    steps = []
    for number, text in enumerate(lines, start=1):
        step = _parse_line(text, number)
        if step is not None:
            steps.append(step)
    return DirectiveProgram(tuple(steps))


def _parse_line(text: object, number: int) -> Step | None:
    if not isinstance(text, str):
        raise DirectiveError(number, f"a directive must be text, not {type(text).__name__}")
    if len(text) > MAX_LINE_CHARS:
        raise DirectiveError(number, f"longer than {MAX_LINE_CHARS} characters ({len(text)})")
    control = _CONTROL.search(text)
    if control is not None:
        code = ord(control.group())
        raise DirectiveError(number, f"control character U+{code:04X} (one directive a line)", control.start() + 1)
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    line = DirectiveLine(text, number)
    name = line.word("the directive")
    parser = _PARSERS.get(name)
    if parser is None:
        close = difflib.get_close_matches(name.lower(), _PARSERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(_PARSERS)
        raise line.fail(f"unknown directive {name!r} (known: {known}){hint}", text.index(name[0]))
    return parser(line, name)


def _columns(line: DirectiveLine, name: str) -> tuple[str, ...]:
    columns = [line.word("a column name")]
    while not line.at_end():
        columns.append(line.word("a column name"))
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if repeated:
        raise DirectiveError(line.number, f"{name} names {repeated[0]!r} twice")
    return tuple(columns)


def _drop(line: DirectiveLine, name: str) -> Step:
    return Drop(line.number, _columns(line, name))


def _keep(line: DirectiveLine, name: str) -> Step:
    return Keep(line.number, _columns(line, name))


def _rename(line: DirectiveLine, name: str) -> Step:
    old = line.word("the column to rename")
    new = line.word("the new name")
    line.expect_end(name)
    return Rename(line.number, old, new)


def _fill_null(line: DirectiveLine, name: str) -> Step:
    column = line.word("a column name")
    value = line.value("the fill value")
    line.expect_end(name)
    return FillNull(line.number, column, value)


def _filter_rows(line: DirectiveLine, _name: str) -> Step:
    return FilterRows(line.number, _expression(line))


def _set_column(line: DirectiveLine, _name: str) -> Step:
    column = line.word("a column name")
    return SetColumn(line.number, column, _expression(line))


def _parse_as_number(line: DirectiveLine, name: str) -> Step:
    column = line.word("a column name")
    line.expect_end(name)
    return ParseAsNumber(line.number, column)


def _parse_as_category(line: DirectiveLine, name: str) -> Step:
    column = line.word("a column name")
    line.expect_end(name)
    return ParseAsCategory(line.number, column)


def _expression(line: DirectiveLine) -> ParsedExpression:
    source, start = line.rest("an expression")
    try:
        return parse_expression(source, "expression")
    except ExpressionError as exc:
        raise line.fail(str(exc), start) from None


_PARSERS: dict[str, Callable[[DirectiveLine, str], Step]] = {
    "drop": _drop,
    "keep": _keep,
    "rename": _rename,
    "fill-null": _fill_null,
    "filter-rows": _filter_rows,
    "set-column": _set_column,
    "parse-as-number": _parse_as_number,
    "parse-as-category": _parse_as_category,
}
