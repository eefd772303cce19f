"""Which characters no accepted text may hold (modelplane/spec/limits.py): Unicode categories Cc, Zl, Zp and Cs, with
tab, newline and carriage return allowed where a text may hold lines. The check is one regular expression (a
restart checks millions of characters); here it is held to the categories' own definition, over any text."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from modelplane.spec import limits

REFUSED_CATEGORIES = ("Cc", "Zl", "Zp", "Cs")
any_text = st.text(st.characters(exclude_categories=[]))  # every code point, surrogates included


def first_refused(text: str, lines: bool) -> str | None:
    """The definition: the first character in a refused category (line breaks and tabs allowed in lines)."""
    for character in text:
        if lines and character in "\t\n\r":
            continue
        if unicodedata.category(character) in REFUSED_CATEGORIES:
            return character
    return None


@given(text=any_text, lines=st.booleans())
def test_the_refused_characters_are_those_of_the_refused_categories(text: str, lines: bool) -> None:
    assert limits._bad_character(text, lines) == first_refused(text, lines)


def test_every_code_point_is_judged_by_its_category() -> None:
    wrong = [
        hex(code_point)
        for code_point in range(0x110000)
        for lines in (False, True)
        if limits._bad_character(chr(code_point), lines) != first_refused(chr(code_point), lines)
    ]
    assert wrong == []
