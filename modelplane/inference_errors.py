"""What an inference server's error answer means, and the part of it a caller may be told.

The agent's inference proxy (in front of its MLServer or Triton) and the gateway (in front of the agents'
proxies) both read V2 REST error answers with :func:`read_error_answer`. Measured on MLServer 1.7 and
Triton 2.51 (the requests of tests/e2e/test_gateway_errors.py):

* MLServer: a request its codecs refuse (e.g. two inputs for the ``np`` codec) is 400 ``{"error"}``; one its
  schema refuses (an unknown datatype, JSON it cannot parse, nesting past its depth limit) is 422 with
  FastAPI's ``{"detail": [{"loc", "msg"}]}``; whatever a model's code raises (data that does not fit the
  shape, strings for numbers, a feature count the model was not trained on, a 10 MB BYTES element, which
  it echoes back whole) is 500 with the Python traceback as text (the agent's launcher runs MLServer with
  ``debug``, which is how a failed load's reason is found).
* Triton: a shape, datatype or input name the model's config does not allow is 400 ``{"error"}``; a body
  it cannot read (data that does not fit the shape, strings for numbers, a negative dimension, JSON it
  cannot parse) is 500 ``{"error": "Unable to parse ..."}`` or ``"failed to parse the request JSON..."``.

Verdicts (each with the status to answer a caller with when it is the last word):

* INVALID: the request is at fault; another replica would say the same, so it is never retried. 4xx
  answers (but 404, 408, 429 and the authentication ones), keeping their status; Triton's parse failures
  and a traceback that ends in ``ValueError`` or ``TypeError`` (Python's exceptions for an argument of the
  wrong value or type, which numpy, scikit-learn and MLServer's codecs raise for shapes and datatypes that
  do not fit) become 400.
* NOT_HERE: 404, the model is not on this replica (it moved; the routing update is on its way).
* UNAVAILABLE: this replica cannot answer now (408, 429, 502, 503): another one may.
* TIMED_OUT: 504, the server took too long over this request; another replica would most likely take as
  long (the request is what is slow), so it is not retried.
* FAILED: the server failed on a request it took (any other 5xx, or the authentication 4xx, which are our
  configuration's fault): another replica may not, so it may be retried; 502 if none answers.

The reason is one line of at most :data:`MAX_REASON_CHARS` characters: the JSON ``error``, FastAPI's
details as ``where: what``, or a traceback's exception (type and message), with anything that looks like a
file path replaced by ``<path>``. The end of the server's answer is for the log only (:attr:`detail`, bounded).

An answer can be as large as the request it echoes (MLServer puts a 10 MB BYTES element into its exception's
message; a request may hold 64 MiB). The hops (modelplane/http_hop.py) keep only what the verdict needs, as they read
(:class:`ErrorBody`): the first :data:`KEPT_BYTES` (whether it is a traceback or JSON, and the start of a
JSON ``error``), the last :data:`KEPT_BYTES` (the detail for the log) and :data:`KEPT_BYTES` from the last
traceback frame on (the final exception's type and the start of its message, wherever they are); the rest
is dropped. A JSON answer cut that way is read for the start of its ``error`` or ``detail`` string only.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from modelplane.bounded_text import cut, one_line
from modelplane.inference_limits import MAX_REQUEST_BODY_BYTES

MAX_REASON_CHARS: Final = 300
MAX_DETAIL_CHARS: Final = 2000  # the end of a traceback, for the log
# An error answer is read up to this size (MLServer echoes a whole request in some, escaped); the rest is not.
MAX_ERROR_ANSWER_BYTES: Final = 2 * MAX_REQUEST_BODY_BYTES
# What is kept of an error answer, three times over (its head, its tail, from its last frame on): a final
# exception's message is cut to MAX_REASON_CHARS anyway, and 60 frames of a traceback fit in 16 KiB.
KEPT_BYTES: Final = 64 * 1024

_TRACEBACK: Final = "Traceback (most recent call last):"
_FRAME: Final = b'\n  File "'  # how each frame of a Python traceback starts
# The start of a JSON error answer cut short: its "error" (or "detail") string, as far as it was kept.
_LEADING_SAID: Final = re.compile(
    r'\s*\{\s*"(error|detail)"\s*:\s*"((?:[^"\\]|\\.){0,' + str(MAX_REASON_CHARS * 8) + "})"
)
_INVALID_EXCEPTIONS: Final = frozenset({"ValueError", "TypeError"})
_TRITON_PARSE_FAILURES: Final = ("Unable to parse", "failed to parse the request")
_NOT_OURS_TO_TELL: Final = frozenset({401, 403, 407})
# Two or more path segments not glued to a word (so "application/json" and a URL's path survive).
_PATH: Final = re.compile(r"(?<![\w.:/])~?(?:/[^\s/'\"()\[\]{}<>:,;|]+){2,}/?")

# The agent's proxy marks an answer with this header (value "1") when it means "my inference server is down or
# cannot be reached: no model here can answer now". The gateway skips the whole replica for those answers
# only: not for one model that could not be loaded (a plain 503), nor for one slow request (504).
SERVER_DOWN_HEADER: Final = "Modelplane-Server-Down"

# What aiohttp's server raises from request.read() for a body it cannot read (bad gzip, a broken chunk).
UNREADABLE_BODY: Final = (RequestPayloadError, HttpProcessingError)


class Verdict(enum.Enum):
    INVALID = "invalid"
    NOT_HERE = "not here"
    UNAVAILABLE = "unavailable"
    TIMED_OUT = "timed out"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """What a server's error answer means (see the module's docstring)."""

    verdict: Verdict
    status: int  # the status to answer a caller with
    reason: str  # safe to show a caller: one line, bounded, no paths, no traceback
    detail: str  # for the log only: the end of what the server said, bounded

    @property
    def retryable(self) -> bool:
        """Whether to try another replica: not for a request the server found invalid or took too long over."""
        return self.verdict not in (Verdict.INVALID, Verdict.TIMED_OUT)


class ErrorBody:
    """What is kept of an error answer as it is read (see the module's docstring): all of it when it is at
    most twice :data:`KEPT_BYTES`, else its head, its tail and the text from its last traceback frame on."""

    def __init__(self) -> None:
        self.size = 0  # bytes read
        self._head = bytearray()
        self._tail = bytearray()  # trimmed to its last KEPT_BYTES when it grows past twice that
        self._from_last_frame: bytearray | None = None
        self._carry = b""  # the end of what was read, where a frame's start may continue in the next chunk

    @classmethod
    def whole(cls, body: bytes) -> ErrorBody:
        kept = cls()
        kept.feed(body)
        return kept

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = KEPT_BYTES - len(self._head)
        self._head += chunk[:room]
        self._tail += chunk[room:] if room > 0 else chunk
        if len(self._tail) > 2 * KEPT_BYTES:
            del self._tail[:-KEPT_BYTES]
        searched = self._carry + chunk
        frame = searched.rfind(_FRAME)
        if frame >= 0:
            self._from_last_frame = bytearray(searched[frame : frame + KEPT_BYTES])
        elif self._from_last_frame is not None and len(self._from_last_frame) < KEPT_BYTES:
            self._from_last_frame += chunk[: KEPT_BYTES - len(self._from_last_frame)]
        self._carry = searched[-(len(_FRAME) - 1) :]

    @property
    def dropped(self) -> int:
        """How many bytes between the head and the tail were not kept."""
        return self.size - len(self._head) - min(len(self._tail), KEPT_BYTES)

    def text(self) -> str:
        """The answer as text: whole, or its head and tail around a note of what was left out."""
        if not self.dropped:
            return (self._head + self._tail).decode("utf-8", errors="replace")
        head = self._head.decode("utf-8", errors="replace")
        tail = self._tail[-KEPT_BYTES:].decode("utf-8", errors="replace")
        return f"{head}\n[{self.dropped} bytes left out]\n{tail}"

    def from_last_frame(self) -> str | None:
        """The text from the last traceback frame on (bounded), or None when there was no frame."""
        if self._from_last_frame is None:
            return None
        return self._from_last_frame.decode("utf-8", errors="replace")

    @property
    def kept_bytes(self) -> int:
        return len(self._head) + len(self._tail) + len(self._from_last_frame or b"")


def read_error_answer(status: int, body: bytes | ErrorBody) -> ErrorAnswer:
    """The verdict on a non-2xx V2 REST answer from MLServer, Triton or an agent's proxy."""
    kept = body if isinstance(body, ErrorBody) else ErrorBody.whole(body)
    text = kept.text()
    document = _json(text) if not kept.dropped else _leading_said(text)
    detail = text[-MAX_DETAIL_CHARS:]
    if _TRACEBACK in text[:200]:
        exception = _final_exception(kept.from_last_frame() or text)
        kind = exception.partition(":")[0].strip().rpartition(".")[2]
        reason = safe_reason(f"the model raised {exception}")
        if status == 500 and kind in _INVALID_EXCEPTIONS:
            return ErrorAnswer(Verdict.INVALID, 400, reason, detail)
        return ErrorAnswer(_verdict(status), _caller_status(status), reason, detail)
    reason = safe_reason(_said(document, text)) or f"HTTP {status}"
    said_error = document.get("error") if isinstance(document, dict) else None
    if status == 500 and isinstance(said_error, str) and said_error.startswith(_TRITON_PARSE_FAILURES):
        return ErrorAnswer(Verdict.INVALID, 400, reason, detail)
    return ErrorAnswer(_verdict(status), _caller_status(status), reason, detail)


def unreadable_body_answer(error: BaseException) -> web.Response:
    """The 400 for a request body aiohttp could not read (one of UNREADABLE_BODY). The connection is not
    kept: the rest of the body is unreadable too."""
    cause = error.__cause__ if isinstance(error.__cause__, HttpProcessingError) else error
    message = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
    response = web.json_response({"error": safe_reason(f"the request body could not be read: {message}")}, status=400)
    response.force_close()
    return response


def safe_reason(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` as one printable line of at most ``limit`` characters, file paths replaced by ``<path>``."""
    line = "".join(c if c.isprintable() else "?" for c in one_line(text[: limit * 8]))
    return cut(_PATH.sub("<path>", line), limit)


def _verdict(status: int) -> Verdict:
    if status == 404:
        return Verdict.NOT_HERE
    if status == 504:
        return Verdict.TIMED_OUT
    if status in (408, 429, 502, 503):
        return Verdict.UNAVAILABLE
    if 400 <= status < 500 and status not in _NOT_OURS_TO_TELL:
        return Verdict.INVALID
    return Verdict.FAILED


def _caller_status(status: int) -> int:
    verdict = _verdict(status)
    if verdict is Verdict.INVALID:
        return status
    if verdict is Verdict.NOT_HERE:
        return 404
    if verdict is Verdict.TIMED_OUT:
        return 504
    if verdict is Verdict.UNAVAILABLE:
        return 503
    return 502


def _json(text: str) -> Any:
    if not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _leading_said(text: str) -> dict[str, str] | None:
    """The start of the ``error`` (or ``detail``) string of a JSON answer cut short, as ``{name: start}``."""
    found = _LEADING_SAID.match(text)
    if found is None:
        return None
    escaped = found.group(2)
    try:
        said = json.loads(f'"{escaped}"')
    except ValueError:  # cut inside an escape
        said = escaped
    return {found.group(1): said}


def _said(document: Any, text: str) -> str:
    """What the server's answer says went wrong, in its own words."""
    if isinstance(document, dict):
        error = document.get("error")
        if isinstance(error, str):
            return error
        detail = document.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):  # FastAPI's validation errors
            return "; ".join(_validation_error(item) for item in detail[:3])
    if document is not None:
        return json.dumps(document)[: MAX_REASON_CHARS * 2]
    return text.strip().partition("\n")[0]


def _validation_error(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)[:MAX_REASON_CHARS]
    location = [str(part) for part in item.get("loc", []) if part != "body"]
    message = str(item.get("msg", "invalid"))
    context = item.get("ctx")
    if isinstance(context, dict) and isinstance(context.get("error"), str):
        message = f"{message} ({context['error']})"
    return f"{'.'.join(location) or 'body'}: {message}"


def _final_exception(traceback: str) -> str:
    """The exception that ended a Python traceback: what follows its last frame (a ``  File "..."`` line
    and the source and caret lines indented under it). Its message may run over several lines, some
    indented (numpy wraps long arrays), so the start is found from the frame, not from the indentation."""
    lines = traceback.rstrip().splitlines()
    start = 1 + max((index for index, line in enumerate(lines) if line.startswith('  File "')), default=0)
    while start < len(lines) and lines[start].startswith("    "):
        start += 1
    exception = " ".join(line.strip() for line in lines[start:])
    return exception or "an exception"


class CallerHttpErrors(logging.Filter):
    """aiohttp's server logs every request it cannot parse or decode (a malformed request line or header,
    a body that is not the gzip it says) at error level with a traceback, although the caller got its 400.
    This filter, on the ``aiohttp.server`` logger, makes each such record one info line without the
    traceback, so callers' mistakes cannot fill the log with tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, UNREADABLE_BODY):
            cause = error.__cause__ if isinstance(error.__cause__, HttpProcessingError) else error
            what = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
            said = record.getMessage()
            record.msg, record.args = "%s: %s", (said, safe_reason(f"{type(cause).__name__}: {what}"))
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


def quiet_caller_http_errors() -> None:
    """Install CallerHttpErrors on aiohttp's server logger (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(existing, CallerHttpErrors) for existing in server_log.filters):
        server_log.addFilter(CallerHttpErrors())
