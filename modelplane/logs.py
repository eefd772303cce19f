"""Structured logging for every modelplane process.

Each record carries the process's component name and, when set, the model, version and request
ids of the work in progress (from contextvars, so asyncio tasks keep their own). Output is
``key=value`` text by default, or one JSON object per line with ``json_output=True``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

model_name: contextvars.ContextVar[str | None] = contextvars.ContextVar("model_name", default=None)
model_version: contextvars.ContextVar[int | None] = contextvars.ContextVar("model_version", default=None)
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_CONTEXT: dict[str, contextvars.ContextVar[Any]] = {
    "model": model_name,
    "version": model_version,
    "request_id": request_id,
}
LEVELS = ("debug", "info", "warning", "error")


def _fields(record: logging.LogRecord, component: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        # A process running several parts (``modelplane up``) names the part by its package.
        "component": component if component != "up" else record.name.split(".", 1)[0],
        "logger": record.name,
        "message": record.getMessage(),
    }
    for key, var in _CONTEXT.items():
        value = var.get()
        if value is not None:
            fields[key] = value
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        fields.update(extra)
    if record.exc_info:
        fields["error"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self._component = component

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self._component), default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self._component = component

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self._component)
        head = f"{fields.pop('time')} {fields.pop('level'):<7} {fields.pop('component')}: {fields.pop('message')}"
        fields.pop("logger")
        error = fields.pop("error", None)
        tail = " ".join(f"{key}={value}" for key, value in fields.items())
        text = f"{head} {tail}" if tail else head
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
