"""Text of someone else's making, made fit to show: one printable line, cut to a limit. The one place for it.

Reasons a component reports (an agent's, a gateway's, a server's error), names quoted in errors, log fields: they
may hold megabytes, line feeds that forge a second log line, or control characters that break a status message. Every
process cuts them with these, so "at most N characters, on one line" means the same everywhere.
"""

from __future__ import annotations

import re

# The agent protocol's limit on a reason (agent.proto: ModelEvent.reason, ServerHealth.reason), which the scheduler
# stores reasons to: the agent cuts what it sends, the scheduler what it keeps.
MAX_REASON_CHARS = 1024

# Whitespace, and every character that does not belong on a line: C0/C1 controls, line and paragraph separators,
# lone surrogates (what undecodable bytes become).
_NOT_ON_A_LINE = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")


def one_line(text: str) -> str:
    """``text`` with every run of whitespace or control characters as one space, and no space at either end."""
    return _NOT_ON_A_LINE.sub(" ", text).strip()


def cut(text: str, limit: int) -> str:
    """At most ``limit`` characters of ``text``, the last three "..." when it was cut."""
    return text if len(text) <= limit else f"{text[: max(0, limit - 3)]}..."


def cut_saying_how_much(text: str, limit: int) -> str:
    """The first ``limit`` characters of ``text``, then how many more there were, when it was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"
