"""The V2 binary tensor data extension over REST (Triton's, which tritonclient uses by default), spoken at the
gateway's edge so that callers can use it whatever server answers.

A request in this form is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw
inputs, in the order of the inputs that carry a ``binary_data_size`` parameter (little-endian, row-major; BYTES
elements each with a 4-byte length). Outputs are wished binary by ``"binary_data": true`` on a requested output,
or for all outputs by the request parameter ``"binary_data_output": true``; such an answer is the JSON header
(each binary output with ``binary_data_size`` instead of ``data``), then the raw outputs, with the header's
length in ``Inference-Header-Content-Length``.

MLServer knows none of it, so the gateway never forwards it: :func:`read_request` turns a request into plain V2
JSON (the wishes taken out and kept), every server gets JSON, and :func:`write_response` packs the JSON answer
as wished. A plain JSON request with no such wish never comes here (see :func:`may_use_binary_data`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.edges.v2_grpc_tensors import (
    BASE64,
    CONTENT_TYPE,
    bytes_to_text,
    checked_shape,
    datatype_named,
    decode_raw,
    encode_raw,
    is_int,
    json_tensor,
    json_type,
    tensor_label,
)
from gateway.inference_types import InferenceError, JsonObject
from gateway.json_documents import JsonDocumentError, loads_bounded

HEADER_LENGTH: Final = "inference-header-content-length"  # lower case: the gateway's headers are
HEADER_LENGTH_NAME: Final = "Inference-Header-Content-Length"  # as Triton writes it in answers
BINARY_DATA_SIZE: Final = "binary_data_size"
BINARY_DATA: Final = "binary_data"
BINARY_DATA_OUTPUT: Final = "binary_data_output"
BINARY_CONTENT_TYPE: Final = "application/octet-stream"
_MARK: Final = BINARY_DATA.encode()
BAD_REQUEST: Final = 400
BAD_RESPONSE: Final = 502


def may_use_binary_data(body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether a request may use the extension: a binary body, or some ``binary_data`` wish in its JSON. A
    byte search, so that plain JSON requests (the common case) pass through untouched and unparsed here."""
    return HEADER_LENGTH in headers or _MARK in body


@dataclass(frozen=True, slots=True)
class BinaryWish:
    """Which outputs the caller wants binary: all of them (``binary_data_output``) but those it named with
    ``binary_data: false``, plus those it named with ``binary_data: true``."""

    all_outputs: bool
    named: Mapping[str, bool]

    def wants(self, output: str) -> bool:
        return self.named.get(output, self.all_outputs)

    @property
    def any(self) -> bool:
        return self.all_outputs or any(self.named.values())


def read_request(body: bytes, headers: Mapping[str, str]) -> tuple[JsonObject, BinaryWish]:
    """The request as plain V2 JSON (binary inputs turned into ``data``; the extension's parameters taken
    out), and the caller's wish for the answer. Raises InferenceError(400) saying what is wrong."""
    header_length = _header_length(headers.get(HEADER_LENGTH), len(body))
    header, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        document: Any = loads_bounded(header)
    except JsonDocumentError as error:
        where = "request body" if header_length is None else f"the request's JSON header ({header_length} bytes)"
        raise InferenceError(BAD_REQUEST, f"{where} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InferenceError(BAD_REQUEST, "request body must be a JSON object (a V2 inference request)")
    used = _fill_binary_inputs(document, binary)
    if used != len(binary):
        raise InferenceError(
            BAD_REQUEST,
            f"the request carries {len(binary)} bytes of binary data after its JSON header, but its inputs' "
            f"{BINARY_DATA_SIZE} parameters add up to {used}",
        )
    return document, _take_wish(document)


def _header_length(text: str | None, body_length: int) -> int | None:
    if text is None:
        return None
    length = int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else None
    if length is None:
        raise InferenceError(BAD_REQUEST, f"{HEADER_LENGTH_NAME} must be a whole number of bytes, not {text[:40]!r}")
    if length > body_length:
        raise InferenceError(
            BAD_REQUEST, f"{HEADER_LENGTH_NAME} says {length} bytes of JSON, but the body has only {body_length}"
        )
    return length


def _fill_binary_inputs(request: JsonObject, binary: bytes) -> int:
    """Give each input with a binary_data_size its elements from ``binary`` (in order); returns the bytes used."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        return 0  # the router's checks say what is wrong with it
    offset = 0
    for index, tensor in enumerate(inputs):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or BINARY_DATA_SIZE not in parameters:
            continue
        where = tensor_label("input", tensor.get("name"), index)
        size = parameters.pop(BINARY_DATA_SIZE)
        if not is_int(size) or size < 0:
            raise InferenceError(BAD_REQUEST, f"{where}: {BINARY_DATA_SIZE} must be a whole number of bytes")
        if "data" in tensor:
            raise InferenceError(BAD_REQUEST, f"{where} has both 'data' and {BINARY_DATA_SIZE}: send it one way")
        if offset + size > len(binary):
            raise InferenceError(
                BAD_REQUEST,
                f"{where}: {BINARY_DATA_SIZE} is {size}, but only {len(binary) - offset} bytes of binary data are left",
            )
        raw_datatype, raw_shape = tensor.get("datatype"), tensor.get("shape")
        if not isinstance(raw_datatype, str):
            raise InferenceError(BAD_REQUEST, f"{where} has no datatype")
        if not isinstance(raw_shape, list) or not all(is_int(dim) for dim in raw_shape):
            raise InferenceError(BAD_REQUEST, f"{where}: shape must be a list of integers")
        datatype = datatype_named(raw_datatype, where, BAD_REQUEST)
        shape = checked_shape(raw_shape, where, BAD_REQUEST)
        data = decode_raw(binary[offset : offset + size], datatype, shape, where, BAD_REQUEST)
        if datatype.kind == "bytes":
            data = bytes_to_text(data, parameters, where, BAD_REQUEST)
        if not parameters:
            del tensor["parameters"]
        tensor["data"] = data
        offset += size
    return offset


def _take_wish(request: JsonObject) -> BinaryWish:
    """The caller's wish for binary outputs, taken out of the request (it concerns the transport, not the model;
    a server that knows the extension would otherwise answer in it)."""
    all_outputs = _pop_flag(request.get("parameters"), BINARY_DATA_OUTPUT, "the request")
    named: dict[str, bool] = {}
    outputs = request.get("outputs")
    for index, wanted in enumerate(outputs if isinstance(outputs, list) else ()):
        if isinstance(wanted, dict) and isinstance(wanted.get("name"), str):
            where = tensor_label("requested output", wanted["name"], index)
            flag = _pop_flag(wanted.get("parameters"), BINARY_DATA, where)
            if flag is not None:
                named[wanted["name"]] = flag
            if wanted.get("parameters") == {}:
                del wanted["parameters"]
    if request.get("parameters") == {}:
        del request["parameters"]
    return BinaryWish(bool(all_outputs), named)


def _pop_flag(parameters: Any, key: str, where: str) -> bool | None:
    if not isinstance(parameters, dict) or key not in parameters:
        return None
    value = parameters.pop(key)
    if not isinstance(value, bool):
        raise InferenceError(BAD_REQUEST, f"{where}: parameter {key!r} must be true or false, not {json_type(value)}")
    return value


def write_response(response: JsonObject, wish: BinaryWish) -> tuple[bytes, int]:
    """The answer with the wished outputs in binary: (body, length of its JSON header). Raises
    InferenceError(502) for an answer whose outputs are not valid tensors."""
    outputs = response.get("outputs")
    if not isinstance(outputs, list):
        raise InferenceError(BAD_RESPONSE, f"the model's answer has outputs {json_type(outputs)}, not a list")
    chunks: list[bytes] = []
    for index, output in enumerate(outputs):
        if not (isinstance(output, dict) and isinstance(output.get("name"), str) and wish.wants(output["name"])):
            continue
        entry, datatype, _, values = json_tensor(output, "output", index, BAD_RESPONSE)
        where = tensor_label("output", output["name"], index)
        given = entry.get("parameters")
        if given is not None and not isinstance(given, Mapping):
            raise InferenceError(BAD_RESPONSE, f"{where}: parameters must be an object, not {json_type(given)}")
        parameters = dict(given or {})
        if datatype.kind == "bytes" and parameters.get(CONTENT_TYPE) == BASE64:
            values = [_unbase64(value, where) for value in values]
            del parameters[CONTENT_TYPE]
        raw = encode_raw(values, datatype, where, BAD_RESPONSE)
        parameters[BINARY_DATA_SIZE] = len(raw)
        output["parameters"] = parameters
        del output["data"]
        chunks.append(raw)
    header = json.dumps(response, separators=(",", ":")).encode()
    return b"".join([header, *chunks]), len(header)


def _unbase64(value: Any, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InferenceError(BAD_RESPONSE, f"{where}: a base64 BYTES element is not valid base64") from None
