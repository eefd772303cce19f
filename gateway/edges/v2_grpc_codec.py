"""Conversion between the V2 (Open Inference Protocol) gRPC messages and the V2 REST JSON form the
gateway routes in (gateway.inference_types).

Requests: ``ModelInferRequest`` -> JSON with :func:`decode_infer_request` (the gateway's gRPC edge), and
JSON -> ``ModelInferRequest`` with :func:`encode_infer_request` (clients, tests, a gRPC hop onwards).
Responses: JSON -> ``ModelInferResponse`` with :func:`encode_infer_response`, and back with
:func:`decode_infer_response`. Model metadata JSON -> ``ModelMetadataResponse`` with
:func:`encode_model_metadata`.

Tensor data in JSON is always written flat (row-major), which the protocol allows for every datatype;
nested JSON arrays are flattened on the way in. A tensor's elements travel in the typed field of
``InferTensorContents`` that matches its datatype, or packed little-endian in ``raw_*_contents``
(FP16 and BF16 only that way). BYTES elements are text in JSON: UTF-8 when they decode as such, else
base64 with the tensor parameter ``content_type: "base64"`` (MLServer's codec for binary data).

Malformed requests raise :class:`InferenceError` with status 400 and a message naming the tensor; a
response that cannot be expressed in protobuf raises status 502 (the model answered something wrong).
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.inference_types import InferenceError, JsonObject
from generated.inference.v2 import grpc_predict_v2_pb2 as pb

BAD_REQUEST: Final = 400
BAD_RESPONSE: Final = 502


@dataclass(frozen=True, slots=True)
class Datatype:
    """How one V2 datatype travels: its typed contents field (None: raw only), the numpy dtype of its
    raw little-endian form (None for BYTES, BF16 is handled by hand), and its element kind in JSON."""

    name: str
    field: str | None
    dtype: str | None
    kind: str  # "bool", "int", "float" or "bytes"


DATATYPES: Final[Mapping[str, Datatype]] = {
    d.name: d
    for d in (
        Datatype("BOOL", "bool_contents", "|b1", "bool"),
        Datatype("UINT8", "uint_contents", "|u1", "int"),
        Datatype("UINT16", "uint_contents", "<u2", "int"),
        Datatype("UINT32", "uint_contents", "<u4", "int"),
        Datatype("UINT64", "uint64_contents", "<u8", "int"),
        Datatype("INT8", "int_contents", "|i1", "int"),
        Datatype("INT16", "int_contents", "<i2", "int"),
        Datatype("INT32", "int_contents", "<i4", "int"),
        Datatype("INT64", "int64_contents", "<i8", "int"),
        Datatype("FP16", None, "<f2", "float"),
        Datatype("BF16", None, None, "float"),
        Datatype("FP32", "fp32_contents", "<f4", "float"),
        Datatype("FP64", "fp64_contents", "<f8", "float"),
        Datatype("BYTES", "bytes_contents", None, "bytes"),
    )
}
CONTENTS_FIELDS: Final = tuple(field.name for field in pb.InferTensorContents.DESCRIPTOR.fields)

# Request parameters of the V2 binary-data extension: a wish about the transport (raw output contents
# here), not something to forward to the model.
BINARY_OUTPUT_PARAMETER: Final = "binary_data_output"
BINARY_PARAMETER: Final = "binary_data"
CONTENT_TYPE: Final = "content_type"
BASE64: Final = "base64"

_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)
_BYTES_LENGTH = struct.Struct("<I")

ParameterMap = MutableMapping[str, pb.InferParameter]


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    """A ModelInferRequest in the gateway's terms."""

    model_name: str
    model_version: str | None  # None when the request left it empty
    body: JsonObject  # the V2 JSON request
    raw_output: bool  # answer with raw_output_contents (the client sent raw inputs or asked for binary data)


# -- parameters -----------------------------------------------------------------------------------------------


def parameters_to_json(parameters: Mapping[str, pb.InferParameter]) -> JsonObject:
    """A protobuf parameter map as JSON values (parameters with no value set are left out)."""
    out: JsonObject = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(parameter, choice)
    return out


def fill_parameters(target: ParameterMap, parameters: Any, where: str, status: int = BAD_REQUEST) -> None:
    """Write JSON parameters into a protobuf parameter map. bool, int (int64, else uint64), float and str
    map to their oneof field; None is left out; lists and objects (MLServer puts e.g. ``headers`` there)
    travel as JSON text in string_param, since the protobuf form has no structured value."""
    if parameters is None:
        return
    if not isinstance(parameters, Mapping):
        raise InferenceError(status, f"{where}: parameters must be an object, not {_json_type(parameters)}")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise InferenceError(status, f"{where}: parameter names must be strings")
        if value is not None:
            _set_parameter(target[key], key, value, where, status)


def _set_parameter(parameter: pb.InferParameter, key: str, value: Any, where: str, status: int) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            parameter.int64_param = value
        elif _UINT64[0] <= value <= _UINT64[1]:
            parameter.uint64_param = value
        else:
            raise InferenceError(status, f"{where}: parameter {key!r} is out of the 64-bit integer range")
    elif isinstance(value, float):
        parameter.double_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    else:
        try:
            parameter.string_param = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise InferenceError(status, f"{where}: parameter {key!r} is not JSON ({error})") from None


# -- requests: protobuf -> JSON ------------------------------------------------------------------------------


def decode_infer_request(request: pb.ModelInferRequest) -> DecodedRequest:
    """The V2 JSON form of a ModelInferRequest, validated. Raises InferenceError(400) naming the tensor."""
    if not request.model_name:
        raise InferenceError(BAD_REQUEST, "model_name is empty: name the model, experiment or pipeline to call")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InferenceError(
            BAD_REQUEST,
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: give one per input, in order",
        )
    body: JsonObject = {}
    if request.id:
        body["id"] = request.id
    parameters = parameters_to_json(request.parameters)
    raw_output = parameters.pop(BINARY_OUTPUT_PARAMETER, False) is True or bool(raw)
    if parameters:
        body["parameters"] = parameters
    body["inputs"] = _decode_inputs(request.inputs, raw)
    if request.outputs:
        outputs: list[JsonObject] = []
        for index, wanted in enumerate(request.outputs):
            if not wanted.name:
                raise InferenceError(BAD_REQUEST, f"requested output #{index} has no name")
            output: JsonObject = {"name": wanted.name}
            output_parameters = parameters_to_json(wanted.parameters)
            raw_output = output_parameters.pop(BINARY_PARAMETER, False) is True or raw_output
            if output_parameters:
                output["parameters"] = output_parameters
            outputs.append(output)
        body["outputs"] = outputs
    version = request.model_version or None
    return DecodedRequest(request.model_name, version, body, raw_output)


def _decode_inputs(tensors: Sequence[pb.ModelInferRequest.InferInputTensor], raw: list[bytes]) -> list[JsonObject]:
    inputs: list[JsonObject] = []
    seen: set[str] = set()
    for index, tensor in enumerate(tensors):
        where = _tensor_label("input", tensor.name, index)
        if not tensor.name:
            raise InferenceError(BAD_REQUEST, f"{where} has no name")
        if tensor.name in seen:
            raise InferenceError(BAD_REQUEST, f"{where} appears twice")
        seen.add(tensor.name)
        datatype = _datatype(tensor.datatype, where, BAD_REQUEST)
        shape = _shape(tensor.shape, where, BAD_REQUEST)
        parameters = parameters_to_json(tensor.parameters)
        if raw:
            if _contents_fields_set(tensor.contents):
                raise InferenceError(
                    BAD_REQUEST, f"{where} has contents but the request uses raw_input_contents: use one form for all"
                )
            data = decode_raw(raw[index], datatype, shape, where, BAD_REQUEST)
        else:
            data = decode_contents(tensor.contents, datatype, shape, where, BAD_REQUEST)
        if datatype.kind == "bytes":
            data = _bytes_to_text(data, parameters, where, BAD_REQUEST)
        entry: JsonObject = {"name": tensor.name, "shape": shape, "datatype": datatype.name}
        if parameters:
            entry["parameters"] = parameters
        entry["data"] = data
        inputs.append(entry)
    return inputs


def decode_contents(
    contents: pb.InferTensorContents, datatype: Datatype, shape: Sequence[int], where: str, status: int
) -> list[Any]:
    """The elements of typed contents, checked against the datatype (the right field, no other, values in
    range) and the shape (the element count)."""
    stray = [name for name in _contents_fields_set(contents) if name != datatype.field]
    if stray:
        expected = datatype.field or "raw contents (it has no typed field)"
        raise InferenceError(
            status, f"{where} ({datatype.name}) has data in {', '.join(stray)}; {datatype.name} goes in {expected}"
        )
    if datatype.field is None and _element_count(shape):
        raise InferenceError(status, f"{where}: {datatype.name} has no typed contents field; send it in raw contents")
    values: list[Any] = list(getattr(contents, datatype.field)) if datatype.field else []
    _check_count(len(values), shape, where, status)
    if datatype.kind == "int" and values and datatype.dtype is not None:
        limits = np.iinfo(np.dtype(datatype.dtype))
        low, high = min(values), max(values)
        if low < limits.min or high > limits.max:
            bad = low if low < limits.min else high
            raise InferenceError(status, f"{where}: {bad} is out of range for {datatype.name}")
    return values


def decode_raw(data: bytes, datatype: Datatype, shape: Sequence[int], where: str, status: int) -> list[Any]:
    """The elements of one raw (little-endian, packed, row-major) tensor."""
    count = _element_count(shape)
    if datatype.kind == "bytes":
        return _split_raw_bytes(data, shape, where, status)
    width = 2 if datatype.name == "BF16" else np.dtype(datatype.dtype).itemsize
    if len(data) != count * width:
        raise InferenceError(
            status,
            f"{where}: raw contents hold {len(data)} bytes; "
            f"shape {list(shape)} of {datatype.name} needs {count * width}",
        )
    array: npt.NDArray[Any]
    if datatype.name == "BF16":
        array = (np.frombuffer(data, dtype="<u2").astype("<u4") << 16).view("<f4")
    elif datatype.name == "BOOL":
        array = np.frombuffer(data, dtype="|u1") != 0
    else:
        array = np.frombuffer(data, dtype=datatype.dtype)
    values: list[Any] = array.tolist()
    return values


def _split_raw_bytes(data: bytes, shape: Sequence[int], where: str, status: int) -> list[Any]:
    count = _element_count(shape)
    elements: list[Any] = []
    offset = 0
    while offset < len(data):
        if len(elements) == count:
            raise InferenceError(
                status, f"{where}: raw BYTES contents hold more than the {count} elements of {list(shape)}"
            )
        if offset + 4 > len(data):
            raise InferenceError(status, f"{where}: raw BYTES contents end inside an element's 4-byte length")
        (length,) = _BYTES_LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + length > len(data):
            raise InferenceError(
                status, f"{where}: raw BYTES element #{len(elements)} says {length} bytes but fewer remain"
            )
        elements.append(data[offset : offset + length])
        offset += length
    _check_count(len(elements), shape, where, status)
    return elements


def _bytes_to_text(data: list[Any], parameters: JsonObject, where: str, status: int) -> list[Any]:
    """BYTES elements as JSON strings: UTF-8 text, or base64 for all of them (marking the tensor's
    content_type, so MLServer's base64 codec hands the model the original bytes) when some element is
    not UTF-8. The other direction never decodes base64: text under content_type base64 is base64 text
    in both forms, which is what MLServer's codec expects in either transport."""
    try:
        return [bytes(element).decode("utf-8") for element in data]
    except UnicodeDecodeError:
        pass
    content_type = parameters.get(CONTENT_TYPE)
    if content_type is not None:
        raise InferenceError(
            status,
            f"{where}: BYTES that are not UTF-8 cannot travel in JSON with content_type {content_type!r}; "
            "leave content_type unset (they are then sent base64-encoded with content_type 'base64')",
        )
    parameters[CONTENT_TYPE] = BASE64
    return [base64.b64encode(bytes(element)).decode("ascii") for element in data]


# -- requests: JSON checked as the gRPC edge checks them ----------------------------------------------------


def check_infer_request(body: Mapping[str, Any]) -> None:
    """Hold a V2 JSON request (a REST body) to the checks a gRPC request gets by conversion: the id is a
    string (gateway.inference_router bounds it further), parameters are objects, every input has a name, a
    known datatype, a shape of non-negative integers and data whose elements fit both (integers within the
    datatype's range), and every requested output has a name. Raises InferenceError(400) naming the tensor;
    the model's own expectations are the model's to check."""
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InferenceError(BAD_REQUEST, f"the request id must be a string, not {_json_type(request_id)}")
    _check_parameters(body.get("parameters"), "the request")
    names: set[str] = set()
    for index, given in enumerate(_tensor_list(body.get("inputs"), "inputs", BAD_REQUEST)):
        tensor, datatype, _, values = _json_tensor(given, "input", index, BAD_REQUEST)
        where = _tensor_label("input", tensor["name"], index)
        if tensor["name"] in names:
            raise InferenceError(BAD_REQUEST, f"{where} appears twice")
        names.add(tensor["name"])
        _check_parameters(tensor.get("parameters"), where)
        if datatype.kind == "int" and values and datatype.dtype is not None:
            limits = np.iinfo(np.dtype(datatype.dtype))
            for value in (min(values), max(values)):
                if not limits.min <= value <= limits.max:
                    raise InferenceError(BAD_REQUEST, f"{where}: {value} is out of range for {datatype.name}")
    for name, wanted in _requested_outputs(body):
        _check_parameters(wanted.get("parameters"), f"requested output {name!r}")


def _requested_outputs(body: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The request's ``outputs`` as (name, the output's object); raises InferenceError(400) for one without a name."""
    outputs = body.get("outputs")
    if outputs is None:
        return []
    requested = []
    for index, wanted in enumerate(_tensor_list(outputs, "outputs", BAD_REQUEST)):
        name = wanted.get("name") if isinstance(wanted, Mapping) else None
        if not isinstance(name, str) or not name:
            raise InferenceError(BAD_REQUEST, f"requested output #{index} has no name")
        requested.append((name, wanted))
    return requested


def _check_parameters(parameters: Any, where: str) -> None:
    if parameters is not None and not isinstance(parameters, Mapping):
        raise InferenceError(BAD_REQUEST, f"{where}: parameters must be an object, not {_json_type(parameters)}")


# -- requests: JSON -> protobuf ------------------------------------------------------------------------------


def encode_infer_request(
    model_name: str, model_version: str | None, body: Mapping[str, Any], *, raw: bool = False
) -> pb.ModelInferRequest:
    """A ModelInferRequest from V2 JSON; with ``raw`` the inputs travel in raw_input_contents (FP16/BF16
    inputs force it). Raises InferenceError(400) naming the tensor."""
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version or "")
    if not isinstance(body, Mapping):
        raise InferenceError(BAD_REQUEST, f"the request must be an object, not {_json_type(body)}")
    request_id = body.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise InferenceError(BAD_REQUEST, "the request id must be a string")
        request.id = request_id
    fill_parameters(request.parameters, body.get("parameters"), "the request")
    inputs = _tensor_list(body.get("inputs"), "inputs", BAD_REQUEST)
    tensors = [_json_tensor(entry, "input", index, BAD_REQUEST) for index, entry in enumerate(inputs)]
    use_raw = raw or any(datatype.field is None for _, datatype, _, _ in tensors)
    for entry, datatype, shape, values in tensors:
        tensor = request.inputs.add(name=entry["name"], datatype=datatype.name, shape=shape)
        where = _tensor_label("input", entry["name"], len(request.inputs) - 1)
        fill_parameters(tensor.parameters, entry.get("parameters"), where)
        if use_raw:
            request.raw_input_contents.append(encode_raw(values, datatype, where, BAD_REQUEST))
        else:
            _fill_contents(tensor.contents, values, datatype, where, BAD_REQUEST)
    for name, wanted in _requested_outputs(body):
        output = request.outputs.add(name=name)
        fill_parameters(output.parameters, wanted.get("parameters"), f"requested output {name!r}")
    return request


# -- responses ----------------------------------------------------------------------------------------------


def encode_infer_response(
    body: Mapping[str, Any], *, model_name: str, model_version: str | None = None, raw: bool = False
) -> pb.ModelInferResponse:
    """A ModelInferResponse from the V2 JSON response a model (or pipeline) gave. ``model_name`` and
    ``model_version`` fill in what the body leaves out. With ``raw`` (or any FP16/BF16 output) every
    output travels in raw_output_contents. Raises InferenceError(502) when the body is not a valid
    response."""
    if not isinstance(body, Mapping):
        raise InferenceError(BAD_RESPONSE, f"the model's response is {_json_type(body)}, not an object")
    response = pb.ModelInferResponse(
        model_name=_optional_str(body, "model_name") or model_name,
        model_version=_optional_str(body, "model_version") or model_version or "",
        id=_optional_str(body, "id") or "",
    )
    fill_parameters(response.parameters, body.get("parameters"), "the model's response", BAD_RESPONSE)
    outputs = _tensor_list(body.get("outputs", []), "outputs", BAD_RESPONSE)
    tensors = [_json_tensor(entry, "output", index, BAD_RESPONSE) for index, entry in enumerate(outputs)]
    use_raw = raw or any(datatype.field is None for _, datatype, _, _ in tensors)
    for entry, datatype, shape, values in tensors:
        tensor = response.outputs.add(name=entry["name"], datatype=datatype.name, shape=shape)
        where = _tensor_label("output", entry["name"], len(response.outputs) - 1)
        fill_parameters(tensor.parameters, entry.get("parameters"), where, BAD_RESPONSE)
        if use_raw:
            response.raw_output_contents.append(encode_raw(values, datatype, where, BAD_RESPONSE))
        else:
            _fill_contents(tensor.contents, values, datatype, where, BAD_RESPONSE)
    return response


def decode_infer_response(response: pb.ModelInferResponse) -> JsonObject:
    """The V2 JSON form of a ModelInferResponse (typed or raw contents). Raises InferenceError(502)."""
    raw = list(response.raw_output_contents)
    if raw and len(raw) != len(response.outputs):
        raise InferenceError(
            BAD_RESPONSE, f"raw_output_contents has {len(raw)} entries for {len(response.outputs)} outputs"
        )
    outputs: list[JsonObject] = []
    for index, tensor in enumerate(response.outputs):
        where = _tensor_label("output", tensor.name, index)
        datatype = _datatype(tensor.datatype, where, BAD_RESPONSE)
        shape = _shape(tensor.shape, where, BAD_RESPONSE)
        if raw:
            data = decode_raw(raw[index], datatype, shape, where, BAD_RESPONSE)
        else:
            data = decode_contents(tensor.contents, datatype, shape, where, BAD_RESPONSE)
        parameters = parameters_to_json(tensor.parameters)
        if datatype.kind == "bytes":
            data = _bytes_to_text(data, parameters, where, BAD_RESPONSE)
        entry: JsonObject = {"name": tensor.name, "shape": shape, "datatype": datatype.name}
        if parameters:
            entry["parameters"] = parameters
        entry["data"] = data
        outputs.append(entry)
    body: JsonObject = {"model_name": response.model_name}
    if response.model_version:
        body["model_version"] = response.model_version
    if response.id:
        body["id"] = response.id
    parameters = parameters_to_json(response.parameters)
    if parameters:
        body["parameters"] = parameters
    body["outputs"] = outputs
    return body


# -- metadata -----------------------------------------------------------------------------------------------


def encode_model_metadata(body: Mapping[str, Any], *, name: str) -> pb.ModelMetadataResponse:
    """A ModelMetadataResponse from V2 metadata JSON (name, versions, platform, inputs, outputs,
    parameters). Raises InferenceError(502) when the JSON does not fit."""
    if not isinstance(body, Mapping):
        raise InferenceError(BAD_RESPONSE, f"model metadata is {_json_type(body)}, not an object")
    where = f"metadata of {name!r}"
    versions = body.get("versions") or []
    if not isinstance(versions, list) or not all(isinstance(v, str | int) for v in versions):
        raise InferenceError(BAD_RESPONSE, f"{where}: versions must be a list of strings")
    response = pb.ModelMetadataResponse(
        name=_optional_str(body, "name") or name,
        versions=[str(version) for version in versions],
        platform=_optional_str(body, "platform") or "",
    )
    fill_parameters(response.parameters, body.get("parameters"), where, BAD_RESPONSE)
    for key, target in (("inputs", response.inputs), ("outputs", response.outputs)):
        for index, entry in enumerate(_tensor_list(body.get(key) or [], f"{where}: {key}", BAD_RESPONSE)):
            label = f"{where}: {key[:-1]} #{index}"
            tensor_name, datatype = entry.get("name"), entry.get("datatype")
            shape = entry.get("shape", [])
            if not isinstance(tensor_name, str) or not isinstance(datatype, str):
                raise InferenceError(BAD_RESPONSE, f"{label} needs a name and a datatype")
            if not isinstance(shape, list) or not all(_is_int(dim) for dim in shape):
                raise InferenceError(BAD_RESPONSE, f"{label} ({tensor_name!r}): shape must be a list of integers")
            tensor = target.add(name=tensor_name, datatype=datatype, shape=shape)
            fill_parameters(tensor.parameters, entry.get("parameters"), label, BAD_RESPONSE)
    return response


# -- shared pieces ------------------------------------------------------------------------------------------


def encode_raw(values: Sequence[Any], datatype: Datatype, where: str, status: int) -> bytes:
    """Elements (already checked against the datatype) packed little-endian, row-major."""
    if datatype.kind == "bytes":
        return b"".join(_BYTES_LENGTH.pack(len(item)) + item for item in (_as_bytes(v, where, status) for v in values))
    try:
        if datatype.name == "BF16":
            bits = np.asarray(values, dtype="<f4").view("<u4").astype(np.uint64)
            # Round to nearest, ties to even, on the 16 bits that are kept.
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            nan = np.isnan(np.asarray(values, dtype="<f4"))
            rounded = np.where(nan, (bits >> 16) | 0x40, rounded)
            return bytes(rounded.astype("<u2").tobytes())
        with np.errstate(over="ignore"):  # FP16 overflow becomes infinity, as a cast does
            return bytes(np.asarray(values, dtype=datatype.dtype).tobytes())
    except (OverflowError, ValueError, TypeError) as error:
        raise InferenceError(status, f"{where}: data does not fit {datatype.name} ({error})") from None


def _fill_contents(
    contents: pb.InferTensorContents, values: Sequence[Any], datatype: Datatype, where: str, status: int
) -> None:
    assert datatype.field is not None  # noqa: S101 -- callers send field-less datatypes raw
    if datatype.kind == "bytes":
        contents.bytes_contents.extend(_as_bytes(v, where, status) for v in values)
        return
    if datatype.kind == "int" and values and datatype.dtype is not None:
        limits = np.iinfo(np.dtype(datatype.dtype))
        for value in (min(values), max(values)):
            if not limits.min <= value <= limits.max:
                raise InferenceError(status, f"{where}: {value} is out of range for {datatype.name}")
    try:
        getattr(contents, datatype.field).extend(values)
    except (TypeError, ValueError) as error:
        raise InferenceError(status, f"{where}: data does not fit {datatype.name} ({error})") from None


def _json_tensor(
    entry: Any, role: str, index: int, status: int
) -> tuple[Mapping[str, Any], Datatype, list[int], list[Any]]:
    """A JSON tensor checked: name, datatype, shape, and flat data matching both."""
    if not isinstance(entry, Mapping):
        raise InferenceError(status, f"{role} #{index} must be an object, not {_json_type(entry)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InferenceError(status, f"{role} #{index} has no name")
    where = _tensor_label(role, name, index)
    raw_datatype = entry.get("datatype")
    if not isinstance(raw_datatype, str):
        raise InferenceError(status, f"{where} has no datatype")
    datatype = _datatype(raw_datatype, where, status)
    raw_shape = entry.get("shape")
    if not isinstance(raw_shape, list) or not all(_is_int(dim) for dim in raw_shape):
        raise InferenceError(status, f"{where}: shape must be a list of integers")
    shape = _shape(raw_shape, where, status)
    values = _flatten(entry.get("data"), where, status)
    _check_count(len(values), shape, where, status)
    _check_kinds(values, datatype, where, status)
    return entry, datatype, shape, values


# The JSON element types each kind of datatype takes (bool is not an int here, whatever Python says).
_KIND_TYPES: Final[Mapping[str, frozenset[type]]] = {
    "bool": frozenset({bool}),
    "int": frozenset({int}),
    "float": frozenset({int, float}),
    "bytes": frozenset({str, bytes}),
}


def _check_kinds(values: Sequence[Any], datatype: Datatype, where: str, status: int) -> None:
    if set(map(type, values)) <= _KIND_TYPES[datatype.kind]:
        return  # the common case, checked at C speed; the loop below finds the element to name
    for position, value in enumerate(values):
        if datatype.kind == "bool":
            ok = isinstance(value, bool)
        elif datatype.kind == "int":
            ok = _is_int(value)
        elif datatype.kind == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str | bytes)
        if not ok:
            raise InferenceError(
                status, f"{where}: element #{position} is {_json_type(value)}, not a {datatype.name} value"
            )


def _flatten(data: Any, where: str, status: int) -> list[Any]:
    """Row-major elements of flat or nested JSON data, without recursion (depth is the client's choice)."""
    if data is None:
        raise InferenceError(status, f"{where} has no data")
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack: list[Iterable[Any]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _datatype(name: str, where: str, status: int) -> Datatype:
    datatype = DATATYPES.get(name)
    if datatype is None:
        known = ", ".join(DATATYPES)
        raise InferenceError(status, f"{where} has unknown datatype {name!r}; known: {known}")
    return datatype


def _shape(shape: Iterable[int], where: str, status: int) -> list[int]:
    dims = [int(dim) for dim in shape]
    if any(dim < 0 for dim in dims):
        raise InferenceError(status, f"{where}: shape {dims} has a negative dimension")
    if any(dim > _INT64[1] for dim in dims):
        raise InferenceError(status, f"{where}: shape {dims} has a dimension beyond the int64 range")
    return dims


def _element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _check_count(count: int, shape: Sequence[int], where: str, status: int) -> None:
    expected = _element_count(shape)
    if count != expected:
        raise InferenceError(status, f"{where}: shape {list(shape)} needs {expected} elements, the data has {count}")


def _contents_fields_set(contents: pb.InferTensorContents) -> list[str]:
    return [name for name in CONTENTS_FIELDS if len(getattr(contents, name))]


def _tensor_list(value: Any, what: str, status: int) -> list[Any]:
    if not isinstance(value, list):
        raise InferenceError(status, f"{what} must be a list, not {_json_type(value)}")
    return value


def _tensor_label(role: str, name: str, index: int) -> str:
    return f"{role} {name!r}" if name else f"{role} #{index}"


def _as_bytes(value: Any, where: str, status: int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise InferenceError(status, f"{where}: a BYTES element is not valid Unicode text") from None
    raise InferenceError(status, f"{where}: BYTES elements must be strings, not {_json_type(value)}")


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InferenceError(BAD_RESPONSE, f"{key} in the model's answer is {_json_type(value)}, not a string")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
