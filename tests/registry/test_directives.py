"""registry/data/directives.py: the language directive by directive, the normalised text, and every error naming
its directive and position."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from registry.data.directives import MAX_DIRECTIVES, MAX_LINE_CHARS, DirectiveError, parse_directives


def _houses() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "price": [100.0, np.nan, 250.0, 80.0],
            "rooms": [3, 2, 5, 1],
            "city": ["Paris", None, "Lyon", "Nice"],
            "zip": ["75001", " 69002 ", "", None],
            "unit price": [1.0, 2.0, 3.0, 4.0],
        }
    )


def _apply(*lines: str) -> pd.DataFrame:
    return parse_directives(lines).apply(_houses())


def test_drop_and_keep() -> None:
    assert list(_apply("drop city zip").columns) == ["price", "rooms", "unit price"]
    assert list(_apply('keep "unit price" rooms').columns) == ["unit price", "rooms"]


def test_rename() -> None:
    renamed = _apply('rename "unit price" unit_price')
    assert list(renamed.columns) == ["price", "rooms", "city", "zip", "unit_price"]
    assert renamed["unit_price"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_fill_null_with_a_number_or_a_text() -> None:
    filled = _apply("fill-null price 0", 'fill-null city "somewhere else"', 'fill-null zip ""')
    assert filled["price"].tolist() == [100.0, 0.0, 250.0, 80.0]
    assert filled["city"].tolist() == ["Paris", "somewhere else", "Lyon", "Nice"]
    assert filled["zip"].tolist() == ["75001", " 69002 ", "", ""]


def test_filter_rows_keeps_the_rows_where_the_expression_holds() -> None:
    kept = _apply("filter-rows rooms >= 2 and rooms < 5")
    assert kept["rooms"].tolist() == [3, 2]
    assert list(kept.index) == [0, 1]  # the dataset's row labels are kept
    assert _apply("filter-rows price > 90")["price"].tolist() == [100.0, 250.0]  # a null compares false


def test_set_column_adds_or_replaces_a_column_of_numbers() -> None:
    table = _apply("fill-null price 0", "set-column per_room where(rooms > 0, price / rooms, 0)", "set-column rooms 1")
    assert table["per_room"].tolist() == pytest.approx([100 / 3, 0.0, 50.0, 80.0])
    assert table["rooms"].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_parse_as_number_and_as_category() -> None:
    table = _apply("parse-as-number zip", "parse-as-category rooms", "parse-as-category zip")
    assert table["rooms"].tolist() == ["3", "2", "5", "1"]
    assert table["zip"].tolist() == ["75001", "69002", None, None]  # blank stays missing; 75001.0 is "75001"
    assert _apply("parse-as-number rooms")["rooms"].dtype == np.float64


def test_directives_apply_in_order_and_leave_the_given_table_unchanged() -> None:
    houses = _houses()
    before = houses.copy()
    program = parse_directives(["parse-as-number zip", "fill-null zip -1", "set-column zip zip + 1", "drop city"])
    result = program.apply(houses)
    assert result["zip"].tolist() == [75002.0, 69003.0, 0.0, 0.0]
    pd.testing.assert_frame_equal(houses, before)


def test_the_normalised_lines_skip_comments_and_quote_only_what_needs_it() -> None:
    program = parse_directives(
        [
            "  drop\t  city   zip ",
            "",
            "# a comment",
            'rename "unit price" "price per \\"unit\\""',
            'fill-null "city" "a \\\\ b"',
            "filter-rows   rooms > 1  ",
            'set-column x  "unit price" if 1 else 0'.replace('"unit price"', "rooms"),
        ]
    )
    assert program.lines == (
        "drop city zip",
        'rename "unit price" "price per \\"unit\\""',
        'fill-null city "a \\\\ b"',
        "filter-rows rooms > 1",
        "set-column x rooms if 1 else 0",
    )
    assert parse_directives(program.lines).lines == program.lines  # normalised text parses to itself


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["drop city", "explode city"], "directive 2, character 1: unknown directive 'explode' (known: drop, keep"),
        (["Drop city"], "did you mean 'drop'?"),
        (["drop"], "directive 1, character 5: a column name is missing"),
        (["rename city"], "directive 1, character 12: the new name is missing"),
        (["rename a b c"], "directive 1, character 12: unexpected text after the rename directive's arguments"),
        (["fill-null price"], "the fill value is missing"),
        (["parse-as-number a b"], "unexpected text after the parse-as-number"),
        (["filter-rows"], "directive 1, character 12: an expression is missing"),
        (["set-column x"], "an expression is missing"),
        (['drop "city'], "directive 1, character 6: a quoted word is not closed"),
        (['drop "city"zip'], "directive 1, character 12: a quoted word must be followed by a space"),
        (['drop ci"ty'], "directive 1, character 8: a quote inside a column name"),
        (['drop "a\\nb"'], "directive 1, character 8: unknown escape"),
        (['drop ""'], "a column name is empty"),
        (["keep a b a"], "keep names 'a' twice"),
        (["drop city\nzip"], "directive 1, character 10: control character U+000A"),
        (["filter-rows rooms.__class__"], "directive 1, character 13: expression 'rooms.__class__': attribute access"),
        (["set-column x __import__('os')"], "function '__import__' not allowed"),
        (["set-column x 'text'"], "strings not allowed"),
        (["set-column x 2 ** 1000"], "exponent 1000 exceeds"),
        (["set-column x (" * 40 + "1" + ")" * 40], "directive 1, character 14: expression"),
        (["filter-rows rooms >"], "not a valid expression"),
        (["drop " + "x" * 300], "a column name is longer than 256 characters"),
        (["drop " + "x " * MAX_LINE_CHARS], f"longer than {MAX_LINE_CHARS} characters"),
        ([42], "directive 1: a directive must be text, not int"),
        (["drop a"] * (MAX_DIRECTIVES + 1), f"more than {MAX_DIRECTIVES} directives"),
    ],
)
def test_parse_errors_name_the_directive_and_where(lines: list[object], message: str) -> None:
    with pytest.raises(DirectiveError) as caught:
        parse_directives(lines)
    assert message in str(caught.value)


def test_a_single_string_is_not_a_list_of_directives() -> None:
    with pytest.raises(DirectiveError, match="directives must be a list of lines"):
        parse_directives("drop city")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["drop city", "drop city"], "directive 2: no column 'city' (the columns: 'price', 'rooms', 'zip'"),
        (["keep nothing"], "no column 'nothing'"),
        (["rename city rooms"], "cannot rename 'city' to 'rooms': that column exists"),
        (["fill-null price cheap"], "directive 1: column 'price' holds numbers; 'cheap' is not a finite number"),
        (["fill-null price inf"], "'inf' is not a finite number"),
        (["set-column x city + 1"], "column 'city' does not hold numbers (use parse-as-number first)"),
        (["set-column x ghost * 2"], "no column 'ghost'"),
        (["set-column x price + 1"], "gives a non-finite value (inf or nan) in 1 row(s), first at row 1"),
        (["set-column x log(rooms - 1)"], "non-finite value"),
        (["set-column x 2 ** (rooms * 20)"], "an exponent exceeds"),
        (["parse-as-number city"], "column 'city': 3 value(s) are not finite numbers, the first 'Paris' in row 0"),
        (["filter-rows price"], "non-finite value"),
    ],
)
def test_data_problems_name_the_directive(lines: list[str], message: str) -> None:
    program = parse_directives(lines)
    with pytest.raises(DirectiveError) as caught:
        program.apply(_houses())
    assert message in str(caught.value)
    assert caught.value.line == (2 if len(lines) == 2 else 1)
