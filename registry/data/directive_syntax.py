"""Reading one directive line: its words (bare, or double-quoted) and the rest of it (an expression), each with
the character position where it starts, so an error can say where. The language itself is in directives.py.

A bare word is a run of characters other than whitespace and ``"``. A quoted word is ``"..."`` in which ``\\"``
is a quote and ``\\\\`` a backslash (no other escapes); it must be followed by whitespace or the line's end.
"""

from __future__ import annotations

import re

MAX_WORD_CHARS = 256
_BARE = re.compile(r'[^\s"]+')


class DirectiveError(ValueError):
    """A directive that cannot be parsed or applied. ``line`` is its 1-based position in the list given (None when
    the list as a whole is wrong), ``column`` the 1-based character where the problem starts (when there is one)."""

    def __init__(self, line: int | None, reason: str, column: int | None = None) -> None:
        where = "directives" if line is None else f"directive {line}"
        if column is not None:
            where = f"{where}, character {column}"
        super().__init__(f"{where}: {reason}")
        self.line = line
        self.column = column
        self.reason = reason


class DirectiveLine:
    """A cursor over one line's text."""

    def __init__(self, text: str, number: int) -> None:
        self.text = text
        self.number = number
        self._position = 0

    def fail(self, reason: str, position: int | None = None) -> DirectiveError:
        return DirectiveError(self.number, reason, (self._position if position is None else position) + 1)

    def at_end(self) -> bool:
        self._skip_space()
        return self._position >= len(self.text)

    def word(self, what: str) -> str:
        """The next word; ``what`` names it in the error when there is none (e.g. "a column name")."""
        if self.at_end():
            raise self.fail(f"{what} is missing")
        start = self._position
        if self.text[start] == '"':
            word = self._quoted()
        else:
            match = _BARE.match(self.text, start)
            if match is None:  # unreachable: not at the end, not a quote, not a space
                raise self.fail(f"{what} is missing")
            self._position = match.end()
            if self._position < len(self.text) and self.text[self._position] == '"':
                raise self.fail(f"a quote inside {what}; quote the whole word", self._position)
            word = match.group()
        if not word:
            raise self.fail(f"{what} is empty", start)
        if len(word) > MAX_WORD_CHARS:
            raise self.fail(f"{what} is longer than {MAX_WORD_CHARS} characters", start)
        return word

    def value(self, what: str) -> str:
        """Like :meth:`word`, but an empty quoted word (``""``) is allowed."""
        if not self.at_end() and self.text.startswith('""', self._position):
            end = self._position + 2
            if end == len(self.text) or self.text[end].isspace():
                self._position = end
                return ""
        return self.word(what)

    def rest(self, what: str) -> tuple[str, int]:
        """Everything left on the line, stripped, and its 0-based start."""
        if self.at_end():
            raise self.fail(f"{what} is missing")
        start = self._position
        self._position = len(self.text)
        return self.text[start:].strip(), start

    def expect_end(self, directive: str) -> None:
        if not self.at_end():
            raise self.fail(f"unexpected text after the {directive} directive's arguments")

    def _skip_space(self) -> None:
        while self._position < len(self.text) and self.text[self._position].isspace():
            self._position += 1

    def _quoted(self) -> str:
        opening = self._position
        characters: list[str] = []
        position = opening + 1
        while position < len(self.text):
            character = self.text[position]
            if character == "\\":
                following = self.text[position + 1 : position + 2]
                if following not in ('"', "\\"):
                    raise self.fail('unknown escape in a quoted word (only \\" and \\\\)', position)
                characters.append(following)
                position += 2
                continue
            if character == '"':
                self._position = position + 1
                if self._position < len(self.text) and not self.text[self._position].isspace():
                    raise self.fail("a quoted word must be followed by a space", self._position)
                return "".join(characters)
            characters.append(character)
            position += 1
        raise self.fail("a quoted word is not closed", opening)


def quote(word: str) -> str:
    """``word`` as a directive writes it: bare when it can be, else quoted."""
    if _BARE.fullmatch(word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
