"""Every error of the REST edge as JSON ``{"error": reason}`` with its status: the domain's (404 NotFound, 409
Conflict, LifecycleConflict among them, 400 InvalidInput, 503 Unavailable, 502 PortFailed), a body that fails its schema
(400, each field's problem named), aiohttp's own (404 no route, 405, 413 body over the limit), and anything
unexpected as a 500 that names nothing of our insides (its traceback goes to the log)."""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from modelplane.bounded_text import cut, one_line
from modelplane.inference_errors import UNREADABLE_BODY, unreadable_body_answer
from registry.errors import Conflict, InvalidInput, NotFound, PortFailed, RegistryError, Unavailable

log = logging.getLogger(__name__)

MAX_REASON_CHARS: Final = 1000
MAX_LISTED_PROBLEMS: Final = 10

STATUS_OF: Final[dict[type[RegistryError], int]] = {
    NotFound: 404,
    InvalidInput: 400,
    Conflict: 409,
    Unavailable: 503,
    PortFailed: 502,
}


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": cut(one_line(message), MAX_REASON_CHARS)}, status=status)


def describe_invalid(error: ValidationError) -> str:
    """One line naming each problem: ``field.path: what`` (the value itself is not echoed: it may be huge)."""
    problems = []
    for item in error.errors(include_url=False, include_input=False)[:MAX_LISTED_PROBLEMS]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        what = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{where}: {what}")
    more = error.error_count() - len(problems)
    return "invalid body: " + "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RegistryError as error:
        status = next((code for kind, code in STATUS_OF.items() if isinstance(error, kind)), 500)
        return error_response(status, error.message)
    except ValidationError as error:
        return error_response(400, describe_invalid(error))
    except UNREADABLE_BODY as error:  # a body aiohttp cannot read: bad gzip, a bad chunk
        return unreadable_body_answer(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = error_response(error.status, error.text or error.reason)
        if isinstance(error, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ",".join(sorted(error.allowed_methods))
        return response
    except Exception:
        log.exception("%s %s failed inside the registry", request.method, request.rel_url.path[:200])
        return error_response(500, "the registry failed on this request; its log says why")
