"""Structured logging for every modelplane process.

Each record carries the process's component name and the ids of the work in progress: the log context, one
contextvar (so asyncio tasks keep their own, and a task started inside a piece of work inherits its ids). A record
written while a request is served also carries its caller's request id and identity (modelplane/auth/caller.py): the
request id its audit line has, unless the work bound its own (the gateway's, received or assigned). Output is
``key=value`` text by default, or one JSON object per line with ``json_output=True`` (``--log-json``).

The context's keys are the same in every process, declared once here (:class:`LogContext`):

=============  =====================================================================================================
key            what it names; who binds it
=============  =====================================================================================================
model          a model by its public name (scheduler RPCs, reconciler, agent load/unload, gateway, agent proxy)
version        that model's version, a whole number (scheduler, agent)
pipeline       a pipeline (scheduler RPCs and state changes, gateway pipeline requests)
experiment     an experiment (scheduler RPCs and state changes, gateway requests routed by one)
request_id     one request: the gateway's ``x-request-id`` (received or assigned, and passed to the agent, which
               logs it too), a Kafka record's, a served RPC's (the caller's, as its audit line says)
server         an inference server (scheduler agent sessions, the agent itself)
replica        that server's replica index, a whole number
run_id         a training run (trainer, per event it runs)
=============  =====================================================================================================

Binding is cheap (one contextvar set of a small dict per piece of work); nothing is formatted unless a record is
emitted at an enabled level.

Every record is bounded, whatever a caller sent or a component produced: the message is cut to
MAX_MESSAGE_CHARS, each field to MAX_FIELD_CHARS, a traceback to MAX_TRACEBACK_CHARS (its head and its
tail, where the error is), and the whole record to MAX_RECORD_CHARS; each cut says how much it left out.
In text output, control characters of the message and fields are escaped, so one record is one line
(a traceback follows on its own lines) and no caller can forge a line.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TypedDict, Unpack

from modelplane.auth.caller import current_caller
from modelplane.bounded_text import cut_saying_how_much


class LogContext(TypedDict, total=False):
    """The ids a piece of work binds (the module docstring says what each names); the same keys in every process."""

    model: str
    version: int
    pipeline: str
    experiment: str
    request_id: str
    server: str
    replica: int
    run_id: str


CONTEXT_KEYS = tuple(LogContext.__annotations__)
_NOTHING_BOUND = LogContext()  # never changed: every binding makes a new dict
_context: contextvars.ContextVar[LogContext] = contextvars.ContextVar("modelplane_log_context", default=_NOTHING_BOUND)


def bind(**ids: Unpack[LogContext]) -> contextvars.Token[LogContext]:
    """Add ``ids`` to the log context of the current task (and of the tasks it starts) until :func:`unbind`.
    For work whose end is not one block; otherwise use :func:`bound`."""
    return _context.set({**_context.get(), **ids})


def unbind(token: contextvars.Token[LogContext]) -> None:
    # Left in another context than the one it was bound in (ValueError): an async generator closed by another task;
    # that context never had these ids, and the generator's own ends with its task.
    with contextlib.suppress(ValueError):
        _context.reset(token)


class _Bound:
    """The block of :func:`bound` (a class, not a generator: it is entered once per request on the data path)."""

    __slots__ = ("_ids", "_token")

    def __init__(self, ids: LogContext) -> None:
        self._ids = ids

    def __enter__(self) -> None:
        self._token = _context.set({**_context.get(), **self._ids})

    def __exit__(self, *_: object) -> None:
        unbind(self._token)


def bound(**ids: Unpack[LogContext]) -> _Bound:
    """``with bound(model=...):`` every record logged inside carries ``ids`` (besides what was bound already)."""
    return _Bound(ids)


def bound_ids() -> LogContext:
    """What is bound now (read only: bind to change it)."""
    return _context.get()


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
    for key, value in _context.get().items():
        fields[key] = _bounded_field(value)
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
