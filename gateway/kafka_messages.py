"""What the gateway's Kafka records hold, decoded and encoded without touching a broker.

Input record (on ``<prefix>.<ns>.{model|pipeline}.<name>.inputs``):
- value: a V2 inference request as JSON in UTF-8 (``{"id"?, "parameters"?, "inputs": [...], "outputs"?}``).
  Seldon's own producers may send the gRPC ``ModelInferRequest`` protobuf; that form is NOT supported here
  (the repository carries no generated V2 dataplane protos): such a value is answered on the errors topic
  with status 400 and a message saying to send JSON.
- key: anything; copied to the answer so a keyed consumer sees request and answer on matching partitions.
- headers: ``seldon-request-id`` or ``x-request-id`` name the request; every header whose name and value are
  UTF-8 is passed to the model or pipeline as a request header (names lower-cased).

The request id is the first usable of: header ``seldon-request-id``, header ``x-request-id``, the JSON's
``"id"``, and finally ``<topic>-<partition>-<offset>`` (unique per record, so a redelivered record keeps it).
A usable id is a string of 1..256 characters without control characters; anything else is skipped.

Answer record (on the matching ``.outputs`` topic): value = the V2 response JSON (its ``"id"`` set to the
request id when the model left it out), same key, headers ``x-request-id`` and
``content-type: application/json``.

Error record (on the errors topic, nothing on ``.outputs``): value = JSON
``{"request_id", "kind", "name", "status", "message", "topic", "partition", "offset"}`` where ``status`` is the
HTTP-style status of :class:`gateway.inference_types.InferenceError` (400 malformed, 404 unknown, 413 too large,
502/503/504 upstream); same key and headers as an answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.inference_types import InferenceError, JsonObject
from gateway.kafka_topics import Resource

REQUEST_ID_HEADERS = ("seldon-request-id", "x-request-id")
ANSWER_REQUEST_ID_HEADER = "x-request-id"
CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = "application/json"
MAX_REQUEST_ID_CHARS = 256

# Record headers as the client hands them over; checked item by item, since producers may send anything.
Headers = Sequence[tuple[Any, Any]]


@dataclass(frozen=True)
class DecodedRequest:
    request_id: str
    body: JsonObject
    headers: dict[str, str]


class MalformedRecordError(InferenceError):
    """A record that is not a request the gateway can run; it carries the id it will be answered under."""

    def __init__(self, request_id: str, status: int, message: str) -> None:
        super().__init__(status, message)
        self.request_id = request_id


def usable_request_id(candidate: object) -> str | None:
    """``candidate`` when it can name a request (a short string without control characters), else None."""
    if not isinstance(candidate, str) or not 0 < len(candidate) <= MAX_REQUEST_ID_CHARS:
        return None
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in candidate):
        return None
    return candidate


def text_headers(headers: Headers) -> dict[str, str]:
    """The record's headers readable as text, names lower-cased (HTTP-style). Later duplicates win."""
    readable: dict[str, str] = {}
    for name, value in headers:
        if not isinstance(name, str) or not isinstance(value, bytes | bytearray):
            continue
        try:
            readable[name.lower()] = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            continue
    return readable


def _reject_constant(name: str) -> Any:
    # json accepts NaN and Infinity by default; they are not JSON, and could not be echoed back as JSON.
    raise ValueError(f"{name} is not valid JSON")


def decode_request(
    value: bytes | None,
    headers: Headers,
    *,
    topic: str,
    partition: int,
    offset: int,
    max_value_bytes: int,
) -> DecodedRequest:
    """Decode one input record or raise :class:`MalformedRecordError` (with the id to answer under). Never raises
    anything else, whatever the bytes."""
    readable = text_headers(headers)
    header_id = next(
        (found for name in REQUEST_ID_HEADERS if (found := usable_request_id(readable.get(name))) is not None), None
    )
    fallback_id = header_id or f"{topic}-{partition}-{offset}"
    if value is None:
        raise MalformedRecordError(fallback_id, 400, "the record has no value: expected a V2 inference request as JSON")
    if len(value) > max_value_bytes:
        raise MalformedRecordError(
            fallback_id, 413, f"the record's value is {len(value)} bytes, more than the limit of {max_value_bytes}"
        )
    try:
        body = json.loads(value.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError and integers beyond Python's digit limit; RecursionError deep nesting.
        raise MalformedRecordError(
            fallback_id,
            400,
            "the record's value is not a V2 inference request in UTF-8 JSON (protobuf ModelInferRequest values "
            f"are not supported): {str(error)[:200]}",
        ) from None
    if not isinstance(body, dict):
        raise MalformedRecordError(
            fallback_id, 400, f"a V2 inference request is a JSON object, not {type(body).__name__}"
        )
    if "inputs" in body and not isinstance(body["inputs"], list):
        raise MalformedRecordError(fallback_id, 400, '"inputs" of a V2 inference request must be a list')
    request_id = header_id or usable_request_id(body.get("id")) or fallback_id
    readable[ANSWER_REQUEST_ID_HEADER] = request_id
    return DecodedRequest(request_id, body, readable)


def answer_headers(request_id: str) -> list[tuple[str, bytes]]:
    return [
        (ANSWER_REQUEST_ID_HEADER, request_id.encode("utf-8")),
        (CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE.encode("ascii")),
    ]


def encode_response(response: Mapping[str, Any], request_id: str) -> bytes:
    """The answer's value. Raises InferenceError(502) when the model's response cannot be written as JSON
    (NaN, or a value of a type JSON lacks)."""
    body = dict(response)
    body.setdefault("id", request_id)
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as error:
        raise InferenceError(502, f"the response cannot be written as JSON: {str(error)[:200]}") from None


def encode_error(
    *, request_id: str, resource: Resource, status: int, message: str, topic: str, partition: int, offset: int
) -> bytes:
    return json.dumps(
        {
            "request_id": request_id,
            "kind": str(resource.kind),
            "name": resource.name,
            "status": status,
            "message": message,
            "topic": topic,
            "partition": partition,
            "offset": offset,
        },
        separators=(",", ":"),
    ).encode("utf-8")
