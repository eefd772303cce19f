"""The id of one inference request at the gateway: the caller's, when it sent a usable one, else a new one.

Whatever edge a request came by (REST, gRPC), the id is bound to the log context (modelplane/logs.py) for every line
about the request, goes to the replica as ``x-request-id`` (the agent's proxy logs it too, so one id finds the
request in both processes), and, over REST, comes back to the caller in the answer's ``x-request-id``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Final

from modelplane.auth.caller import current_caller, new_request_id
from modelplane.request_ids import is_usable_request_id

REQUEST_ID_HEADER: Final = "x-request-id"
# Seldon's own header names the request as well; a caller that sends both means the same request.
_CALLER_HEADERS: Final = (REQUEST_ID_HEADER, "seldon-request-id")


def take_request_id(headers: MutableMapping[str, str]) -> str:
    """The request's id, from ``headers`` (lower-case names) when the caller sent a usable one, else a new one;
    ``headers`` then carry it as ``x-request-id``, for the replica."""
    for name in _CALLER_HEADERS:
        given = headers.get(name)
        if given is not None and is_usable_request_id(given):
            headers[REQUEST_ID_HEADER] = given
            return given
    # The id the access check gave the request already (its caller's), when it gave one: no second one is made.
    assigned = current_caller().request_id or new_request_id()
    headers[REQUEST_ID_HEADER] = assigned
    return assigned
