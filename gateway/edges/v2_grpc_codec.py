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

One tensor's elements (datatypes, typed and raw contents, the checks of a JSON tensor) are
:mod:`gateway.edges.v2_grpc_tensors`; this module assembles whole messages from them.

Malformed requests raise :class:`InferenceError` with status 400 and a message naming the tensor; a
response that cannot be expressed in protobuf raises status 502 (the model answered something wrong).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from gateway.edges.v2_grpc_tensors import (
    INT64_RANGE,
    UINT64_RANGE,
    bytes_to_text,
    checked_shape,
    contents_fields_set,
    datatype_named,
    decode_contents,
    decode_raw,
    encode_raw,
    fill_contents,
    is_int,
    json_tensor,
    json_type,
    tensor_label,
    tensor_list,
)
from gateway.inference_types import InferenceError, JsonObject
from generated.inference.v2 import grpc_predict_v2_pb2 as pb

BAD_REQUEST: Final = 400
BAD_RESPONSE: Final = 502


# Request parameters of the V2 binary-data extension: a wish about the transport (raw output contents
# here), not something to forward to the model.
BINARY_OUTPUT_PARAMETER: Final = "binary_data_output"
BINARY_PARAMETER: Final = "binary_data"


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
        raise InferenceError(status, f"{where}: parameters must be an object, not {json_type(parameters)}")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise InferenceError(status, f"{where}: parameter names must be strings")
        if value is not None:
            _set_parameter(target[key], key, value, where, status)


def _set_parameter(parameter: pb.InferParameter, key: str, value: Any, where: str, status: int) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        if INT64_RANGE[0] <= value <= INT64_RANGE[1]:
            parameter.int64_param = value
        elif UINT64_RANGE[0] <= value <= UINT64_RANGE[1]:
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
        where = tensor_label("input", tensor.name, index)
        if not tensor.name:
            raise InferenceError(BAD_REQUEST, f"{where} has no name")
        if tensor.name in seen:
            raise InferenceError(BAD_REQUEST, f"{where} appears twice")
        seen.add(tensor.name)
        datatype = datatype_named(tensor.datatype, where, BAD_REQUEST)
        shape = checked_shape(tensor.shape, where, BAD_REQUEST)
        parameters = parameters_to_json(tensor.parameters)
        if raw:
            if contents_fields_set(tensor.contents):
                raise InferenceError(
                    BAD_REQUEST, f"{where} has contents but the request uses raw_input_contents: use one form for all"
                )
            data = decode_raw(raw[index], datatype, shape, where, BAD_REQUEST)
        else:
            data = decode_contents(tensor.contents, datatype, shape, where, BAD_REQUEST)
        if datatype.kind == "bytes":
            data = bytes_to_text(data, parameters, where, BAD_REQUEST)
        entry: JsonObject = {"name": tensor.name, "shape": shape, "datatype": datatype.name}
        if parameters:
            entry["parameters"] = parameters
        entry["data"] = data
        inputs.append(entry)
    return inputs


# -- requests: JSON checked as the gRPC edge checks them ----------------------------------------------------


def check_infer_request(body: Mapping[str, Any]) -> None:
    """Hold a V2 JSON request (a REST body) to the checks a gRPC request gets by conversion: the id is a
    string (gateway.inference_router bounds it further), parameters are objects, every input has a name, a
    known datatype, a shape of non-negative integers and data whose elements fit both (integers within the
    datatype's range), and every requested output has a name. Raises InferenceError(400) naming the tensor;
    the model's own expectations are the model's to check."""
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InferenceError(BAD_REQUEST, f"the request id must be a string, not {json_type(request_id)}")
    _check_parameters(body.get("parameters"), "the request")
    names: set[str] = set()
    for index, given in enumerate(tensor_list(body.get("inputs"), "inputs", BAD_REQUEST)):
        tensor, datatype, _, values = json_tensor(given, "input", index, BAD_REQUEST)
        where = tensor_label("input", tensor["name"], index)
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
    for index, wanted in enumerate(tensor_list(outputs, "outputs", BAD_REQUEST)):
        name = wanted.get("name") if isinstance(wanted, Mapping) else None
        if not isinstance(name, str) or not name:
            raise InferenceError(BAD_REQUEST, f"requested output #{index} has no name")
        requested.append((name, wanted))
    return requested


def _check_parameters(parameters: Any, where: str) -> None:
    if parameters is not None and not isinstance(parameters, Mapping):
        raise InferenceError(BAD_REQUEST, f"{where}: parameters must be an object, not {json_type(parameters)}")


# -- requests: JSON -> protobuf ------------------------------------------------------------------------------


def encode_infer_request(
    model_name: str, model_version: str | None, body: Mapping[str, Any], *, raw: bool = False
) -> pb.ModelInferRequest:
    """A ModelInferRequest from V2 JSON; with ``raw`` the inputs travel in raw_input_contents (FP16/BF16
    inputs force it). Raises InferenceError(400) naming the tensor."""
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version or "")
    if not isinstance(body, Mapping):
        raise InferenceError(BAD_REQUEST, f"the request must be an object, not {json_type(body)}")
    request_id = body.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise InferenceError(BAD_REQUEST, "the request id must be a string")
        request.id = request_id
    fill_parameters(request.parameters, body.get("parameters"), "the request")
    inputs = tensor_list(body.get("inputs"), "inputs", BAD_REQUEST)
    tensors = [json_tensor(entry, "input", index, BAD_REQUEST) for index, entry in enumerate(inputs)]
    use_raw = raw or any(datatype.field is None for _, datatype, _, _ in tensors)
    for entry, datatype, shape, values in tensors:
        tensor = request.inputs.add(name=entry["name"], datatype=datatype.name, shape=shape)
        where = tensor_label("input", entry["name"], len(request.inputs) - 1)
        fill_parameters(tensor.parameters, entry.get("parameters"), where)
        if use_raw:
            request.raw_input_contents.append(encode_raw(values, datatype, where, BAD_REQUEST))
        else:
            fill_contents(tensor.contents, values, datatype, where, BAD_REQUEST)
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
        raise InferenceError(BAD_RESPONSE, f"the model's response is {json_type(body)}, not an object")
    response = pb.ModelInferResponse(
        model_name=_optional_str(body, "model_name") or model_name,
        model_version=_optional_str(body, "model_version") or model_version or "",
        id=_optional_str(body, "id") or "",
    )
    fill_parameters(response.parameters, body.get("parameters"), "the model's response", BAD_RESPONSE)
    outputs = tensor_list(body.get("outputs", []), "outputs", BAD_RESPONSE)
    tensors = [json_tensor(entry, "output", index, BAD_RESPONSE) for index, entry in enumerate(outputs)]
    use_raw = raw or any(datatype.field is None for _, datatype, _, _ in tensors)
    for entry, datatype, shape, values in tensors:
        tensor = response.outputs.add(name=entry["name"], datatype=datatype.name, shape=shape)
        where = tensor_label("output", entry["name"], len(response.outputs) - 1)
        fill_parameters(tensor.parameters, entry.get("parameters"), where, BAD_RESPONSE)
        if use_raw:
            response.raw_output_contents.append(encode_raw(values, datatype, where, BAD_RESPONSE))
        else:
            fill_contents(tensor.contents, values, datatype, where, BAD_RESPONSE)
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
        where = tensor_label("output", tensor.name, index)
        datatype = datatype_named(tensor.datatype, where, BAD_RESPONSE)
        shape = checked_shape(tensor.shape, where, BAD_RESPONSE)
        if raw:
            data = decode_raw(raw[index], datatype, shape, where, BAD_RESPONSE)
        else:
            data = decode_contents(tensor.contents, datatype, shape, where, BAD_RESPONSE)
        parameters = parameters_to_json(tensor.parameters)
        if datatype.kind == "bytes":
            data = bytes_to_text(data, parameters, where, BAD_RESPONSE)
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
        raise InferenceError(BAD_RESPONSE, f"model metadata is {json_type(body)}, not an object")
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
        for index, entry in enumerate(tensor_list(body.get(key) or [], f"{where}: {key}", BAD_RESPONSE)):
            label = f"{where}: {key[:-1]} #{index}"
            tensor_name, datatype = entry.get("name"), entry.get("datatype")
            shape = entry.get("shape", [])
            if not isinstance(tensor_name, str) or not isinstance(datatype, str):
                raise InferenceError(BAD_RESPONSE, f"{label} needs a name and a datatype")
            if not isinstance(shape, list) or not all(is_int(dim) for dim in shape):
                raise InferenceError(BAD_RESPONSE, f"{label} ({tensor_name!r}): shape must be a list of integers")
            tensor = target.add(name=tensor_name, datatype=datatype, shape=shape)
            fill_parameters(tensor.parameters, entry.get("parameters"), label, BAD_RESPONSE)
    return response


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InferenceError(BAD_RESPONSE, f"{key} in the model's answer is {json_type(value)}, not a string")
    return value
