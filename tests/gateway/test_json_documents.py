"""gateway.json_documents: the nesting depth is measured without recursion and agrees with a recursive
count on any JSON; too deep (for the parser, or past the limit) is refused; no body costs more than a pass
or two over it (a pre-scan whose cost grew with the square of the body's length let one 64 KB request hold
the gateway's event loop for 14 s)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.inference_router import parse_request
from gateway.inference_types import InferenceError
from gateway.json_documents import MAX_JSON_DEPTH, JsonDocumentError, dumps, loads_bounded, nesting_depth

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=40,
)


# Everything json.dumps writes: NaN and infinities, integers of any size, strings with lone surrogates.
any_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(blacklist_categories=())),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=40,
)


@given(any_json_values)
def test_dumps_writes_the_document_the_standard_library_writes(value: Any) -> None:
    """Read back, what dumps wrote is what json.dumps wrote: the same values, NaN and Infinity kept (orjson alone
    would write them as null), big integers exact."""
    assert json.dumps(json.loads(dumps(value))) == json.dumps(value)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    return 0


@given(json_values, st.booleans())
def test_the_depth_is_that_of_the_document(value: Any, ascii_only: bool) -> None:
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nesting_depth(value) == depth_of(value)
    assert loads_bounded(data) == value
    if depth_of(value) > 0:
        with pytest.raises(JsonDocumentError, match=f"the limit is {depth_of(value) - 1}"):
            loads_bounded(data, max_depth=depth_of(value) - 1)


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1, 1.0 and True are == in Python; NaN is not == itself)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_value(a[key], b[key]) for key in a)
    if isinstance(a, float) and a != a:  # noqa: PLR0124 - NaN
        return bool(b != b)  # noqa: PLR0124
    return bool(a == b)


any_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=40,
)


@given(any_json_values, st.booleans(), st.booleans())
def test_documents_read_exactly_as_the_standard_library_reads_them(value: Any, ascii_only: bool, spaced: bool) -> None:
    """orjson reads what it can, the standard library the rest (NaN, Infinity, integers past 64 bits, lone
    surrogates): the value is the standard library's, to the type of every number."""
    separators = (", ", ": ") if spaced else (",", ":")
    data = json.dumps(value, ensure_ascii=ascii_only, separators=separators).encode("utf-8", "surrogatepass")
    try:
        expected = json.loads(data)
    except ValueError:  # a lone surrogate written raw is not UTF-8: refused by both
        with pytest.raises(JsonDocumentError):
            loads_bounded(data)
        return
    assert same_value(loads_bounded(data), expected)


@pytest.mark.parametrize(
    "data",
    [b"-9223372036854775809", b"18446744073709551616", b'{"seed": 123456789012345678901234}', b"NaN", b"1e400",
     b'"\\ud800"', b"\xef\xbb\xbf[1]", '[1, "\u00e9"]'.encode("utf-16"), b"0.10000000000000000555111512312578"],
)  # fmt: skip
def test_what_orjson_reads_otherwise_or_not_at_all_reads_as_before(data: bytes) -> None:
    assert same_value(loads_bounded(data), json.loads(data))


def test_brackets_in_strings_and_escaped_quotes_are_text() -> None:
    data = b'{"a": "[[[[\\"]]]]", "b": ["\\\\", "{"]}'
    assert loads_bounded(data, max_depth=2) == {"a": '[[[["]]]]', "b": ["\\", "{"]}
    with pytest.raises(JsonDocumentError, match="the limit is 1"):
        loads_bounded(data, max_depth=1)


def test_the_measure_stops_past_the_limit() -> None:
    deep: list[object] = []
    for _ in range(500):
        deep = [deep]
    assert nesting_depth(deep) == 501
    assert nesting_depth(deep, stop_after=MAX_JSON_DEPTH) == MAX_JSON_DEPTH + 1


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"inputs": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}",
        b'[{"a": ' * 60_000,
        b"[" * 500 + b"]" * 500,  # within what the parser can follow, beyond the limit
    ],
)
def test_too_deep_is_refused_with_the_limit(data: bytes) -> None:
    with pytest.raises(JsonDocumentError, match=f"the limit is {MAX_JSON_DEPTH}"):
        loads_bounded(data)


def test_at_the_limit_it_parses() -> None:
    data = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert nesting_depth(json.loads(data)) == MAX_JSON_DEPTH
    assert isinstance(loads_bounded(data), list)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused_with_a_short_reason(data: bytes) -> None:
    try:
        loads_bounded(data)
    except JsonDocumentError as error:
        assert len(str(error)) <= 200


# Bodies whose strings never end, in the shapes that made a regular expression for JSON strings start over at
# every quote and scan to the end each time: quadratic, 14 s for 64 KB, so these 4 MB ones would take hours.
# Each is answered in one pass (the test's timeout, 120 s, is the guard).
ADVERSARIAL_BODY_CHARS = 4 * 1024 * 1024
UNENDING_STRINGS = {
    "a quote, then escaped quotes": b'"' + b'\\"' * (ADVERSARIAL_BODY_CHARS // 2),
    "escaped quotes ending in a backslash": b'"' + b'\\"' * (ADVERSARIAL_BODY_CHARS // 2) + b"\\",
    "brackets and escaped quotes in an array": b'["' + b'[\\"{' * (ADVERSARIAL_BODY_CHARS // 4),
    "a request whose id never ends": b'{"inputs": [], "id": "' + b'\\"' * (ADVERSARIAL_BODY_CHARS // 2),
}


@pytest.mark.parametrize("shape", list(UNENDING_STRINGS))
def test_a_large_body_of_unterminated_strings_is_refused_in_one_pass(shape: str) -> None:
    body = UNENDING_STRINGS[shape]
    assert len(body) >= ADVERSARIAL_BODY_CHARS
    with pytest.raises(JsonDocumentError, match=r"Unterminated string|Expecting"):
        loads_bounded(body)
    with pytest.raises(InferenceError) as raised:
        parse_request(body)
    assert raised.value.status == 400
    assert raised.value.message.startswith("request body is not valid JSON")
    assert len(raised.value.message) <= 300


def test_a_large_request_full_of_escaped_quotes_parses() -> None:
    quotes = '"' * (ADVERSARIAL_BODY_CHARS // 2)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [quotes]}]}).encode()
    request = parse_request(body)
    assert request["inputs"][0]["data"] == [quotes]
