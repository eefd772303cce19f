"""gateway.json_documents: the nesting depth is measured without recursion and agrees with a recursive
count on any JSON; too deep is refused before the parser sees it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.json_documents import MAX_JSON_DEPTH, JsonDocumentError, loads_bounded, nesting_depth

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=40,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    return 0


@given(json_values, st.booleans())
def test_the_depth_is_that_of_the_document(value: Any, ascii_only: bool) -> None:
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nesting_depth(data) == depth_of(value)
    assert loads_bounded(data) == value


def test_brackets_in_strings_and_escaped_quotes_are_text() -> None:
    assert nesting_depth(b'{"a": "[[[[\\"]]]]", "b": ["\\\\", "{"]}') == 2


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"inputs": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}",
        b"[{" * 60_000,
    ],
)
def test_too_deep_is_refused_with_the_depth_and_the_limit(data: bytes) -> None:
    with pytest.raises(JsonDocumentError, match=f"the limit is {MAX_JSON_DEPTH}"):
        loads_bounded(data)


def test_at_the_limit_it_parses() -> None:
    data = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert nesting_depth(data) == MAX_JSON_DEPTH
    assert isinstance(loads_bounded(data), list)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused_with_a_short_reason(data: bytes) -> None:
    try:
        loads_bounded(data)
    except JsonDocumentError as error:
        assert len(str(error)) <= 200
