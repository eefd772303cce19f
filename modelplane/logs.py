"""Structured logging for every modelplane process.

Each record carries the process's component name and, when set, the model, version and request
ids of the work in progress (from contextvars, so asyncio tasks keep their own). A record written while
a request is served also carries its caller's request id and identity (modelplane/auth/caller.py): the
request id its audit line has. Output is ``key=value`` text by default, or one JSON object per line
with ``json_output=True``.

Every record is bounded, whatever a caller sent or a component produced: the message is cut to
MAX_MESSAGE_CHARS, each field to MAX_FIELD_CHARS, a traceback to MAX_TRACEBACK_CHARS (its head and its
tail, where the error is), and the whole record to MAX_RECORD_CHARS; each cut says how much it left out.
In text output, control characters of the message and fields are escaped, so one record is one line
(a traceback follows on its own lines) and no caller can forge a line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from modelplane.auth.caller import current_caller
from modelplane.bounded_text import cut_saying_how_much

model_name: contextvars.ContextVar[str | None] = contextvars.ContextVar("model_name", default=None)
model_version: contextvars.ContextVar[int | None] = contextvars.ContextVar("model_version", default=None)
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_CONTEXT: dict[str, contextvars.ContextVar[Any]] = {
    "model": model_name,
    "version": model_version,
    "request_id": request_id,
}
LEVELS = ("debug", "info", "warning", "error")

MAX_MESSAGE_CHARS = 4096
MAX_FIELD_CHARS = 1024
MAX_TRACEBACK_CHARS = 16 * 1024
MAX_RECORD_CHARS = 32 * 1024
_ESCAPES = str.maketrans({code: f"\\x{code:02x}" for code in [*range(32), 127]} | {10: "\\n", 13: "\\r", 9: "\\t"})


def _cut_traceback(text: str) -> str:
    if len(text) <= MAX_TRACEBACK_CHARS:
        return text
    head = MAX_TRACEBACK_CHARS // 4
    tail = MAX_TRACEBACK_CHARS - head
    return f"{text[:head]}\n... ({len(text) - head - tail} characters left out) ...\n{text[-tail:]}"


def _bounded_field(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    return cut_saying_how_much(value if isinstance(value, str) else str(value), MAX_FIELD_CHARS)


def _fields(record: logging.LogRecord, component: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        # A process running several parts (``modelplane up``) names the part by its package.
        "component": component if component != "up" else record.name.split(".", 1)[0],
        "logger": record.name,
        "message": cut_saying_how_much(record.getMessage(), MAX_MESSAGE_CHARS),
    }
    for key, var in _CONTEXT.items():
        value = var.get()
        if value is not None:
            fields[key] = value
    caller = current_caller()
    if caller.request_id:
        fields.setdefault("request_id", _bounded_field(caller.request_id))
    if caller.identity:
        fields["caller"] = _bounded_field(caller.identity)
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        fields.update({str(key)[:100]: _bounded_field(value) for key, value in extra.items()})
    if record.exc_info:
        fields["error"] = _cut_traceback(logging.Formatter().formatException(record.exc_info))
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self._component = component

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self._component)
        line = json.dumps(fields, default=str)
        if len(line) <= MAX_RECORD_CHARS:
            return line
        # Too many fields: keep what says what happened, and that the rest was left out.
        kept: dict[str, Any] = {
            key: fields[key] for key in ("time", "level", "component", "logger", "message") if key in fields
        }
        kept["truncated"] = f"{len(line)} characters; fields left out"
        if "error" in fields:
            kept["error"] = cut_saying_how_much(str(fields["error"]), MAX_RECORD_CHARS // 2)
        return json.dumps(kept, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self._component = component

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self._component)
        message = str(fields.pop("message")).translate(_ESCAPES)
        head = f"{fields.pop('time')} {fields.pop('level'):<7} {fields.pop('component')}: {message}"
        fields.pop("logger")
        error = fields.pop("error", None)
        tail = " ".join(f"{key}={str(value).translate(_ESCAPES)}" for key, value in fields.items())
        text = cut_saying_how_much(f"{head} {tail}" if tail else head, MAX_RECORD_CHARS - MAX_TRACEBACK_CHARS - 100)
        return f"{text}\n{error}" if error else text


def configure(component: str, level: str = "info", *, json_output: bool = False) -> None:
    """Send the process's logs to stderr in the chosen format. Call once, at start-up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component) if json_output else TextFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def with_fields(**fields: Any) -> dict[str, Any]:
    """``log.info("...", extra=with_fields(port=9004))`` adds structured fields to one record."""
    return {"fields": fields}
