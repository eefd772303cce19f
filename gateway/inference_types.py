"""The shapes every part of the gateway shares: V2 (Open Inference Protocol) messages in their JSON form,
the error every routing step raises, and the callables that route one request.

Requests and responses travel through the gateway in the V2 REST JSON form (``{"id", "parameters",
"inputs": [{"name", "shape", "datatype", "parameters", "data"}], "outputs": [...]}``); the gRPC adapter
converts at its edge, so routing, experiments and pipelines are written once, transport-agnostic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from modelplane import request_ids

JsonObject = dict[str, Any]

# A request's id (a V2 request's "id", a Kafka record's x-request-id or key) is at most this long (the rule the
# agent's proxy shares).
MAX_REQUEST_ID_CHARS: Final = request_ids.MAX_REQUEST_ID_CHARS


class InferenceError(Exception):
    """A request that could not be answered. ``status`` is the HTTP status the REST adapter answers with
    (400 malformed, 404 unknown model/pipeline, 503 nothing available, 502 a replica or step failed,
    504 timeout); the gRPC and Kafka adapters map it to their own codes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# Infer one model by name (the gateway resolves the name to a replica, with experiments applied):
# (model name, V2 request JSON, request headers) -> V2 response JSON. Raises InferenceError.
ModelCaller = Callable[[str, JsonObject, Mapping[str, str]], Awaitable[JsonObject]]
