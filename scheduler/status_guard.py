"""One bad record never breaks a status stream: every status message is built through ``guarded``.

A record that cannot be rendered (a number out of a proto field's range, a message past the 4 MiB a default client
accepts, any bug) is reported as that resource's own error status, and logged once; the stream, and every other
resource's status, go on. Records are checked where they are accepted (modelplane/spec/limits.py), so this is the net
under those checks, not a substitute for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from modelplane.bounded_text import cut
from modelplane.spec import limits

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

# (kind, name, error) already logged, so a status asked for in a loop does not flood the log; bounded.
_reported: set[tuple[str, str, str]] = set()
_MAX_REPORTED = 1000


def safe_name(name: str) -> str:
    """``name`` as a fallback status may carry it, whatever it holds."""
    return limits.clean_reason(name, limits.MAX_NAME_CHARS)


def guarded(
    kind: str,
    name: str,
    build: Callable[[], M],
    fallback: Callable[[str], M],
    max_bytes: int = limits.MAX_STATUS_BYTES,
) -> M:
    """``build()``, checked to fit ``max_bytes`` (a default client's limit); else ``fallback(reason)``, the
    resource's error status."""
    try:
        message = build()
        size = message.ByteSize()
        if size > max_bytes:
            raise ValueError(f"its message would be {size} bytes, more than a client accepts ({max_bytes})")
        return message
    except Exception as error:
        _report(kind, name, error)
        reason = f"the scheduler cannot report this {kind}'s status ({cut(str(error), 200)}); see its log"
        return fallback(limits.clean_reason(reason))


def _report(kind: str, name: str, error: Exception) -> None:
    key = (kind, name[:100], str(error)[:200])
    if key in _reported:
        return
    if len(_reported) >= _MAX_REPORTED:
        _reported.clear()
    _reported.add(key)
    log.error("cannot render the status of %s %s", kind, limits.shown(name), exc_info=error)
