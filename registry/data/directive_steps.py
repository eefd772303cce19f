"""What each directive does to a table (directives.py parses them and documents the language).

Every step takes a DataFrame and returns a new one (columns are replaced, never written into, so the caller's
table is left as it was) and raises DirectiveError naming its line for a problem in the data: a column that is not
there, a value that is not a number, an expression that gives no finite value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from registry.data.column_kinds import is_numeric
from registry.data.directive_syntax import DirectiveError, quote
from servers.designed_model.expressions import ExpressionError, ParsedExpression, evaluate

_SHOWN_COLUMNS = 20
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Drop:
    line: int
    columns: tuple[str, ...]

    def text(self) -> str:
        return " ".join(["drop", *map(quote, self.columns)])

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        _require(frame, self.columns, self.line)
        return frame.drop(columns=list(self.columns))


@dataclass(frozen=True)
class Keep:
    line: int
    columns: tuple[str, ...]

    def text(self) -> str:
        return " ".join(["keep", *map(quote, self.columns)])

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        _require(frame, self.columns, self.line)
        return frame[list(self.columns)]


@dataclass(frozen=True)
class Rename:
    line: int
    old: str
    new: str

    def text(self) -> str:
        return f"rename {quote(self.old)} {quote(self.new)}"

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        _require(frame, (self.old,), self.line)
        if self.new != self.old and self.new in frame.columns:
            raise DirectiveError(self.line, f"cannot rename {self.old!r} to {self.new!r}: that column exists")
        return frame.rename(columns={self.old: self.new})


@dataclass(frozen=True)
class FillNull:
    line: int
    column: str
    value: str

    def text(self) -> str:
        return f"fill-null {quote(self.column)} {quote(self.value)}"

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        _require(frame, (self.column,), self.line)
        series = frame[self.column]
        fill: float | str = self.value
        if is_numeric(series):
            number = _finite_number(self.value)
            if number is None:
                raise DirectiveError(
                    self.line, f"column {self.column!r} holds numbers; {self.value!r} is not a finite number"
                )
            fill = number
        else:
            series = series.astype(object)
        return frame.assign(**{self.column: series.fillna(fill)})


@dataclass(frozen=True)
class FilterRows:
    line: int
    expression: ParsedExpression

    def text(self) -> str:
        return f"filter-rows {self.expression.source.strip()}"

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        keep = _evaluate(self.expression, frame, self.line) != 0.0
        return frame[keep]


@dataclass(frozen=True)
class SetColumn:
    line: int
    column: str
    expression: ParsedExpression

    def text(self) -> str:
        return f"set-column {quote(self.column)} {self.expression.source.strip()}"

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        values = _evaluate(self.expression, frame, self.line)
        return frame.assign(**{self.column: pd.Series(values, index=frame.index, dtype=np.float64)})


@dataclass(frozen=True)
class ParseAsNumber:
    line: int
    column: str

    def text(self) -> str:
        return f"parse-as-number {quote(self.column)}"

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        _require(frame, (self.column,), self.line)
        series = frame[self.column]
        if is_numeric(series):
            return frame.assign(**{self.column: series.astype(np.float64)})
        texts = series.map(lambda value: None if _is_null(value) else str(value).strip())
        numbers = texts.map(lambda text: None if text is None or text == "" else _finite_number(text))
        bad = texts.notna() & (texts != "") & numbers.isna()
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            value = str(texts.iloc[first])
            shown = value if len(value) <= 40 else f"{value[:37]}..."
            raise DirectiveError(
                self.line,
                f"column {self.column!r}: {int(bad.sum())} value(s) are not finite numbers, "
                f"the first {shown!r} in row {first}",
            )
        return frame.assign(**{self.column: numbers.astype(np.float64)})


@dataclass(frozen=True)
class ParseAsCategory:
    line: int
    column: str

    def text(self) -> str:
        return f"parse-as-category {quote(self.column)}"

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        _require(frame, (self.column,), self.line)
        categories = frame[self.column].map(_category, na_action="ignore").astype(object)
        return frame.assign(**{self.column: categories.where(categories.notna(), None)})


Step = Drop | Keep | Rename | FillNull | FilterRows | SetColumn | ParseAsNumber | ParseAsCategory


def _require(frame: pd.DataFrame, columns: Sequence[str], line: int) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        shown = ", ".join(repr(str(column)) for column in list(frame.columns)[:_SHOWN_COLUMNS])
        more = " ..." if len(frame.columns) > _SHOWN_COLUMNS else ""
        names = ", ".join(repr(column) for column in missing)
        raise DirectiveError(line, f"no column {names} (the columns: {shown or 'none'}{more})")


def _evaluate(expression: ParsedExpression, frame: pd.DataFrame, line: int) -> FloatArray:
    variables: dict[str, FloatArray] = {}
    for name in sorted(expression.names):
        if name not in frame.columns:
            _require(frame, (name,), line)
        series = frame[name]
        if not is_numeric(series):
            raise DirectiveError(line, f"column {name!r} does not hold numbers (use parse-as-number first)")
        variables[name] = np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    try:
        return evaluate(expression, variables, len(frame))
    except ExpressionError as exc:
        raise DirectiveError(line, str(exc)) from None


def _finite_number(text: str) -> float | None:
    try:
        number = float(text)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _is_null(value: object) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _category(value: object) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))  # 3.0 read from a column with nulls is the category "3"
    return str(value)
