"""What the gateway's Kafka records hold, decoded and encoded without touching a broker.

Input record (on ``<prefix>.<ns>.{model|pipeline}.<name>.inputs``):
- value: a V2 inference request, either as JSON in UTF-8 (``{"id"?, "parameters"?, "inputs": [...],
  "outputs"?}``) or as the V2 gRPC ``ModelInferRequest`` protobuf, the form Seldon's own producers send.
  A value is protobuf when the ``content-type`` header says ``application/x-protobuf`` (or
  ``application/protobuf``), or when it does not start with ``{`` and parses as a ModelInferRequest.
- key: anything; copied to the answer so a keyed consumer sees request and answer on matching partitions.
- headers: ``seldon-request-id`` or ``x-request-id`` name the request; every header whose name and value are
  UTF-8 is passed to the model or pipeline as a request header (names lower-cased).

The request id is the first usable of: header ``seldon-request-id``, header ``x-request-id``, the JSON's
``"id"``, and finally ``<topic>-<partition>-<offset>`` (unique per record, so a redelivered record keeps it).
A usable id is a string of 1..256 characters without control characters; anything else is skipped.

Answer record (on the matching ``.outputs`` topic): value = the V2 response in the request's form (JSON,
its ``"id"`` set to the request id when the model left it out; or a ``ModelInferResponse``), same key,
headers ``x-request-id`` and ``content-type`` (``application/json`` or ``application/x-protobuf``).

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

from google.protobuf.message import DecodeError

from gateway.edges.v2_grpc_codec import decode_infer_request, encode_infer_response
from gateway.inference_types import MAX_REQUEST_ID_CHARS, InferenceError, JsonObject
from gateway.kafka.topics import Resource
from generated.inference.v2 import grpc_predict_v2_pb2 as v2_pb

REQUEST_ID_HEADERS = ("seldon-request-id", "x-request-id")
ANSWER_REQUEST_ID_HEADER = "x-request-id"
CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = "application/json"
PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
PROTOBUF_CONTENT_TYPES = frozenset({PROTOBUF_CONTENT_TYPE, "application/protobuf"})

# Record headers as the client hands them over; checked item by item, since producers may send anything.
Headers = Sequence[tuple[Any, Any]]


@dataclass(frozen=True)
class DecodedRequest:
    request_id: str
    body: JsonObject
    headers: dict[str, str]
    protobuf: bool = False  # the request came as a ModelInferRequest: answer with a ModelInferResponse


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
    content_type = readable.get(CONTENT_TYPE_HEADER, "").split(";")[0].strip().lower()
    forced = content_type in PROTOBUF_CONTENT_TYPES
    if forced or value.lstrip()[:1] != b"{":
        decoded = _decode_protobuf(value, readable, header_id, fallback_id, forced=forced)
        if decoded is not None:
            return decoded
    try:
        body = json.loads(value.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError and integers beyond Python's digit limit; RecursionError deep nesting.
        raise MalformedRecordError(
            fallback_id,
            400,
            "the record's value is not a V2 inference request (UTF-8 JSON, or a ModelInferRequest protobuf): "
            f"{str(error)[:200]}",
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


def _decode_protobuf(
    value: bytes, readable: dict[str, str], header_id: str | None, fallback_id: str, *, forced: bool
) -> DecodedRequest | None:
    """A ModelInferRequest value as a DecodedRequest; None when it is not one and the header did not insist."""
    try:
        message = v2_pb.ModelInferRequest.FromString(value)
    except (DecodeError, RecursionError) as error:
        if forced:
            raise MalformedRecordError(fallback_id, 400, f"the value is not a ModelInferRequest: {error}") from None
        return None
    if not message.inputs and not forced:
        return None  # not a request, whatever protobuf's lenient parser made of the bytes
    try:
        body = decode_infer_request(message).body
    except InferenceError as error:
        raise MalformedRecordError(header_id or fallback_id, error.status, error.message) from None
    request_id = header_id or usable_request_id(message.id) or fallback_id
    readable[ANSWER_REQUEST_ID_HEADER] = request_id
    readable.pop(CONTENT_TYPE_HEADER, None)
    return DecodedRequest(request_id, body, readable, protobuf=True)


def answer_headers(request_id: str, *, protobuf: bool = False) -> list[tuple[str, bytes]]:
    content_type = PROTOBUF_CONTENT_TYPE if protobuf else JSON_CONTENT_TYPE
    return [
        (ANSWER_REQUEST_ID_HEADER, request_id.encode("utf-8")),
        (CONTENT_TYPE_HEADER, content_type.encode("ascii")),
    ]


def encode_response(response: Mapping[str, Any], request_id: str, *, protobuf: bool = False) -> bytes:
    """The answer's value. Raises InferenceError(502) when the model's response cannot be written as JSON
    (NaN, or a value of a type JSON lacks) or as a ModelInferResponse."""
    body = dict(response)
    body.setdefault("id", request_id)
    if protobuf:
        name = str(body.get("model_name", ""))
        version = body.get("model_version")
        message = encode_infer_response(body, model_name=name, model_version=str(version) if version else None)
        return message.SerializeToString()
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
