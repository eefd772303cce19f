"""JSON from outside (request bodies, replicas' answers), parsed with a nesting limit.

Python's json parser recurses once per nesting level, so 100,000 ``[`` end in a RecursionError. The depth
is measured first, without recursion, and a document deeper than :data:`MAX_JSON_DEPTH` is refused before
the parser sees it. The limit is far beyond any V2 message (a tensor's data nests one level per dimension;
numpy allows 64 dimensions, the request adds three) and far below the interpreter's recursion limit, so code
that walks a document recursively afterwards (json.dumps, conversions) is safe too.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import numpy as np

MAX_JSON_DEPTH: Final = 100

# A JSON string (escapes included): its brackets are text, not structure.
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS: Final = bytes(byte for byte in range(256) if byte not in b"[]{}")
_OPENS: Final = np.zeros(256, dtype=bool)
_OPENS[[ord("["), ord("{")]] = True
_CHUNK: Final = 1 << 20  # brackets measured at a time, so the running sums stay small


class JsonDocumentError(ValueError):
    """The bytes are not a JSON document within the limits; the message says why, briefly."""


def nesting_depth(data: bytes) -> int:
    """How deep ``data``'s arrays and objects nest: the most brackets open at once outside strings."""
    brackets = np.frombuffer(_STRING.sub(b"", data).translate(None, _NOT_BRACKETS), dtype=np.uint8)
    deepest = depth = 0
    for start in range(0, len(brackets), _CHUNK):
        steps = np.where(_OPENS[brackets[start : start + _CHUNK]], 1, -1)
        running = np.cumsum(steps, dtype=np.int64) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


def loads_bounded(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``data`` parsed as UTF-8 JSON; raises JsonDocumentError when it is not JSON or nests too deep."""
    depth = nesting_depth(data)
    if depth > max_depth:
        raise JsonDocumentError(f"arrays and objects nest {depth} deep; the limit is {max_depth}")
    try:
        return json.loads(data)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, integers past Python's digit limit
        raise JsonDocumentError(str(error)[:200]) from None
