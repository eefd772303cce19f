"""Whole numbers written as text by someone outside (a flag, a URL path, a query, a header, a resource, a file
name, the environment): ASCII digits only, no sign, no spaces.

``str.isdigit`` is not the check: it also accepts superscripts and other scripts' digits (U+00B9, U+0661), and ``int``
refuses some of those, so a check with ``isdigit`` followed by ``int`` lets a ValueError through (a crash, or an
INTERNAL answer, where a clear refusal was due). Every reader of such text uses this module instead.
"""

from __future__ import annotations

__all__ = ["MAX_DIGITS", "is_whole_number", "parse_whole_number"]

# More digits than any count, size or version modelplane reads (a uint64 has 20): a longer text is refused before
# int() spends time on it.
MAX_DIGITS = 18


def is_whole_number(text: str, *, max_digits: int = MAX_DIGITS) -> bool:
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def parse_whole_number(text: str, *, max_digits: int = MAX_DIGITS) -> int | None:
    """``text`` as a whole number, or None when it is not one (empty, too long, or anything but ASCII digits)."""
    return int(text) if is_whole_number(text, max_digits=max_digits) else None
