"""JSON from outside (request bodies, replicas' answers), parsed with a nesting limit.

Python's json parser recurses once per nesting level: 100,000 ``[`` end in a RecursionError, which is
refused here like any document deeper than :data:`MAX_JSON_DEPTH`. A document the parser could read is then
measured level by level, without recursion, and refused when it nests deeper than the limit. The limit is
far beyond any V2 message (a tensor's data nests one level per dimension; numpy allows 64 dimensions, the
request adds three) and far below the interpreter's recursion limit, so code that walks a document
recursively afterwards (json.dumps, conversions) is safe too.

Both steps are linear in the body's length: the parser reads it once, the measure visits each array and
object once and skips a long list of numbers or strings in one C-level pass (a pre-scan of the bytes
with a regular expression for strings, used before, started over at every quote of a string that never
ended: 64 KB of ``\\"`` held the event loop for 14 s). A level of nothing but arrays (the rows of a tensor)
is passed over whole in C, however many rows it has.

The parser is orjson where it reads the document exactly as the standard library's would (5-10x faster on
tensors of numbers, bench/README.md), else the standard library's, which decides what is accepted and says
why not. What orjson refuses (``NaN``, ``1e400``, lone surrogates, a byte order mark, UTF-16, nesting past its
own limit, anything malformed) is parsed again by ``json.loads``, so every error keeps its wording; and a
document with a run of 19 or more digits goes to ``json.loads`` at once, because orjson reads an integer past
64 bits as a float where the standard library keeps it exact (no double is written with more than 17
significant digits, so tensors of floats keep the fast path).
"""

from __future__ import annotations

import json
import re
from itertools import chain
from typing import Any, Final

import orjson

MAX_JSON_DEPTH: Final = 100

# Digits enough for an integer that may not fit in 64 bits (2**63 has 19).
_LONG_DIGITS: Final = re.compile(rb"[0-9]{19}")

_CONTAINERS: Final = frozenset({list, dict})


class JsonDocumentError(ValueError):
    """The bytes are not a JSON document within the limits; the message says why, briefly."""


def nesting_depth(document: Any, *, stop_after: int | None = None) -> int:
    """How deep ``document``'s (a parsed JSON value's) arrays and objects nest; with ``stop_after``, a
    depth past it is reported as ``stop_after + 1`` without looking deeper."""
    depth = 0
    level = [document] if type(document) in _CONTAINERS else []
    while level:
        depth += 1
        if stop_after is not None and depth > stop_after:
            return depth
        if type(level[0]) is list and set(map(type, level)) == {list}:
            below = set(map(type, chain.from_iterable(level)))  # every child of the level, in C
            if below.isdisjoint(_CONTAINERS):
                return depth
            if below == {list}:
                level = list(chain.from_iterable(level))
                continue
        deeper: list[Any] = []
        for container in level:
            children = container.values() if type(container) is dict else container
            # map(type) runs in C: a list of a million numbers is passed over without a Python-level step each.
            kinds = set(map(type, children))
            if kinds <= _CONTAINERS:
                deeper.extend(children)  # only arrays and objects (a tensor's rows): taken whole, in C
            elif not kinds.isdisjoint(_CONTAINERS):
                deeper.extend(child for child in children if type(child) in _CONTAINERS)
        level = deeper
    return depth


def loads_bounded(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``data`` parsed as JSON; raises JsonDocumentError when it is not JSON or nests too deep."""
    too_deep = f"arrays and objects nest deeper than {max_depth}; the limit is {max_depth}"
    if _LONG_DIGITS.search(data) is not None:
        document = _standard_loads(data, too_deep)
    else:
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            document = _standard_loads(data, too_deep)
    # Each level of nesting opens with a "[" or "{": a document with no more of them than the limit (a string
    # holding some only adds to the count) cannot nest past it, and is not walked (most messages, counted in C).
    if data.count(b"[") + data.count(b"{") > max_depth and nesting_depth(document, stop_after=max_depth) > max_depth:
        raise JsonDocumentError(too_deep)
    return document


def dumps(document: Any) -> bytes:
    """A document made of JSON values (as :func:`loads_bounded` gives, and strings, numbers, lists and dicts
    built from them) as JSON bytes: what ``json.dumps(document).encode()`` writes, as a JSON document, written
    by orjson where that is the same (compact and UTF-8 rather than spaced and ``\\u``-escaped; 5-10x faster).
    Written by the standard library instead: what orjson refuses (an integer past 64 bits, a lone surrogate, a
    key that is not a string), and any output holding ``null``, because orjson writes NaN and +-Infinity (which
    a request may carry: the standard library reads them) as ``null`` where the standard library keeps them."""
    try:
        data = orjson.dumps(document)
    except orjson.JSONEncodeError:
        return json.dumps(document).encode()
    if b"null" in data:
        return json.dumps(document).encode()
    return data


def _standard_loads(data: bytes, too_deep: str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise JsonDocumentError(too_deep) from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, integers past Python's digit limit
        raise JsonDocumentError(str(error)[:200]) from None
