"""gateway.edges.v2_grpc_codec: V2 gRPC messages <-> the V2 JSON form, round trips and malformed input."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.edges.v2_grpc_codec import (
    decode_infer_request,
    decode_infer_response,
    encode_infer_request,
    encode_infer_response,
    encode_model_metadata,
)
from gateway.edges.v2_grpc_tensors import DATATYPES
from gateway.inference_types import InferenceError, JsonObject
from generated.inference.v2 import grpc_predict_v2_pb2 as pb

# -- strategies -----------------------------------------------------------------------------------------------


def _bf16_value(bits: int) -> float:
    value: float = struct.unpack("<f", struct.pack("<I", bits << 16))[0]
    return value


ELEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "BOOL": st.booleans(),
    "UINT8": st.integers(0, 2**8 - 1),
    "UINT16": st.integers(0, 2**16 - 1),
    "UINT32": st.integers(0, 2**32 - 1),
    "UINT64": st.integers(0, 2**64 - 1),
    "INT8": st.integers(-(2**7), 2**7 - 1),
    "INT16": st.integers(-(2**15), 2**15 - 1),
    "INT32": st.integers(-(2**31), 2**31 - 1),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "FP16": st.floats(width=16, allow_nan=False),
    "BF16": st.integers(0, 0xFFFF).map(_bf16_value).filter(lambda value: not math.isnan(value)),
    "FP32": st.floats(width=32, allow_nan=False),
    "FP64": st.floats(allow_nan=False),
    "BYTES": st.text(max_size=8),
}
assert set(ELEMENTS) == set(DATATYPES)

NAMES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
PARAMETER_VALUES = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=8)
)
# binary_data_output / binary_data are transport wishes the codec takes out of the JSON.
PARAMETERS = st.dictionaries(
    NAMES.filter(lambda key: key not in ("binary_data_output", "binary_data")), PARAMETER_VALUES, max_size=3
)


def _nest(flat: list[Any], shape: list[int]) -> list[Any]:
    """Row-major nesting of flat data by shape (as many JSON clients send it)."""
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0]
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@st.composite
def tensors(draw: st.DrawFn, name: str) -> tuple[JsonObject, JsonObject]:
    """(a JSON tensor as a client may send it, the same tensor as the codec writes it: flat data)."""
    datatype = draw(st.sampled_from(sorted(DATATYPES)))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    data = draw(st.lists(ELEMENTS[datatype], min_size=math.prod(shape), max_size=math.prod(shape)))
    parameters = draw(PARAMETERS)
    nested = draw(st.booleans()) and all(shape)
    sent: JsonObject = {"name": name, "shape": shape, "datatype": datatype}
    written: JsonObject = {"name": name, "shape": shape, "datatype": datatype}
    if parameters:
        sent["parameters"] = written["parameters"] = parameters
    sent["data"] = _nest(data, shape) if nested else data
    written["data"] = data
    return sent, written


@st.composite
def requests(draw: st.DrawFn) -> tuple[JsonObject, JsonObject]:
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    pairs = [draw(tensors(name)) for name in names]
    sent: JsonObject = {}
    written: JsonObject = {}
    if draw(st.booleans()):
        sent["id"] = written["id"] = draw(NAMES)
    parameters = draw(PARAMETERS)
    if parameters:
        sent["parameters"] = written["parameters"] = parameters
    sent["inputs"] = [pair[0] for pair in pairs]
    written["inputs"] = [pair[1] for pair in pairs]
    outputs = draw(st.lists(st.fixed_dictionaries({"name": NAMES}, optional={"parameters": PARAMETERS}), max_size=2))
    outputs = [{k: v for k, v in output.items() if v != {}} for output in outputs]
    if outputs:
        sent["outputs"] = written["outputs"] = outputs
    return sent, written


def _over_the_wire(message: Any) -> Any:
    copy = type(message)()
    copy.ParseFromString(message.SerializeToString())
    return copy


def _bad(status: int, *words: str) -> Any:
    """pytest.raises for an InferenceError whose status and message are checked afterwards."""
    return _BadInput(status, words)


class _BadInput:
    def __init__(self, status: int, words: tuple[str, ...]) -> None:
        self.status, self.words = status, words

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> bool:
        assert isinstance(error, InferenceError), f"expected InferenceError, got {error!r}"
        assert error.status == self.status, error.message
        for word in self.words:
            assert word in error.message, error.message
        return True


# -- round trips -----------------------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.booleans(), st.one_of(st.none(), NAMES))
def test_a_json_request_survives_protobuf_and_back(
    pair: tuple[JsonObject, JsonObject], raw: bool, version: str | None
) -> None:
    sent, written = pair
    message = _over_the_wire(encode_infer_request("my-model", version, sent, raw=raw))
    needs_raw = any(DATATYPES[t["datatype"]].field is None for t in sent["inputs"])
    assert bool(message.raw_input_contents) == (raw or needs_raw)
    if message.raw_input_contents:
        assert not any(t.HasField("contents") and t.contents.ByteSize() for t in message.inputs)
    decoded = decode_infer_request(message)
    assert decoded.model_name == "my-model"
    assert decoded.model_version == version
    assert decoded.raw_output == (raw or needs_raw)
    assert decoded.body == written


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.booleans())
def test_a_json_response_survives_protobuf_and_back(pair: tuple[JsonObject, JsonObject], raw: bool) -> None:
    sent, written = pair
    body = {"model_name": "m", "model_version": "3", **{k: v for k, v in sent.items() if k != "outputs"}}
    body["outputs"] = body.pop("inputs")
    expected = {"model_name": "m", "model_version": "3", **{k: v for k, v in written.items() if k != "outputs"}}
    expected["outputs"] = expected.pop("inputs")
    message = _over_the_wire(encode_infer_response(body, model_name="ignored", raw=raw))
    assert decode_infer_response(message) == expected


def test_response_names_fall_back_to_the_request() -> None:
    message = encode_infer_response({"outputs": []}, model_name="iris", model_version="2")
    assert (message.model_name, message.model_version, message.id) == ("iris", "2", "")


# -- raw contents, built the way other clients build them -------------------------------------------------------

RAW_CASES = [
    ("BOOL", np.array([True, False, True], dtype="|b1")),
    ("UINT8", np.array([0, 7, 255], dtype="|u1")),
    ("UINT16", np.array([0, 65535, 3], dtype="<u2")),
    ("UINT32", np.array([2**32 - 1, 1, 0], dtype="<u4")),
    ("UINT64", np.array([2**64 - 1, 1, 0], dtype="<u8")),
    ("INT8", np.array([-128, 127, 0], dtype="|i1")),
    ("INT16", np.array([-(2**15), 2**15 - 1, 5], dtype="<i2")),
    ("INT32", np.array([-(2**31), 2**31 - 1, 5], dtype="<i4")),
    ("INT64", np.array([-(2**63), 2**63 - 1, 5], dtype="<i8")),
    ("FP16", np.array([0.5, -2.0, 65504.0], dtype="<f2")),
    ("FP32", np.array([0.25, -1.5, 3.0e38], dtype="<f4")),
    ("FP64", np.array([0.1, -1e300, 2.5], dtype="<f8")),
]


@pytest.mark.parametrize(("datatype", "array"), RAW_CASES, ids=[case[0] for case in RAW_CASES])
def test_raw_inputs_decode_per_datatype(datatype: str, array: np.ndarray[Any, Any]) -> None:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[array.tobytes()])
    request.inputs.add(name="x", datatype=datatype, shape=[1, 3])
    decoded = decode_infer_request(request)
    assert decoded.body["inputs"][0]["data"] == array.tolist()
    assert decoded.raw_output is True  # raw in, raw out


def test_raw_bf16_and_bytes_decode() -> None:
    bf16 = struct.pack("<HHH", 0x3F80, 0xC000, 0x7F80)  # 1.0, -2.0, +inf
    words = [b"hello", b"", "héllo".encode()]
    packed = b"".join(struct.pack("<I", len(word)) + word for word in words)
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[bf16, packed])
    request.inputs.add(name="b", datatype="BF16", shape=[3])
    request.inputs.add(name="s", datatype="BYTES", shape=[3])
    inputs = decode_infer_request(request).body["inputs"]
    assert inputs[0]["data"] == [1.0, -2.0, math.inf]
    assert inputs[1]["data"] == ["hello", "", "héllo"]


def test_bf16_encoding_rounds_to_nearest_even() -> None:
    # 1 + 2**-8 lies halfway between bf16 1.0 and 1 + 2**-7: ties go to the even one (1.0).
    message = encode_infer_request("m", None, {"inputs": [
        {"name": "b", "shape": [3], "datatype": "BF16", "data": [1 + 2**-8, 1 + 3 * 2**-8, 1.0]},
    ]})  # fmt: skip
    assert struct.unpack("<HHH", message.raw_input_contents[0]) == (0x3F80, 0x3F82, 0x3F80)


def test_bytes_that_are_not_utf8_travel_as_base64() -> None:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="img", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"\xff\xd8\xff", b"ok"])
    [decoded] = decode_infer_request(request).body["inputs"]
    assert decoded["parameters"] == {"content_type": "base64"}
    assert decoded["data"] == ["/9j/", "b2s="]


def test_binary_data_wishes_choose_raw_output_and_are_not_forwarded() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT32", shape=[1]).contents.int_contents.append(4)
    request.parameters["binary_data_output"].bool_param = True
    request.parameters["keep"].string_param = "me"
    wanted = request.outputs.add(name="y")
    wanted.parameters["binary_data"].bool_param = True
    decoded = decode_infer_request(request)
    assert decoded.raw_output is True
    assert decoded.body["parameters"] == {"keep": "me"}
    assert decoded.body["outputs"] == [{"name": "y"}]

    response = encode_infer_response(
        {"outputs": [{"name": "y", "shape": [2], "datatype": "INT32", "data": [1, -1]}]}, model_name="m", raw=True
    )
    assert list(response.raw_output_contents) == [struct.pack("<ii", 1, -1)]
    assert not response.outputs[0].HasField("contents")


def test_structured_response_parameters_travel_as_json_text() -> None:
    response = encode_infer_response(
        {"parameters": {"headers": {"x": "1"}, "n": 2**64 - 1, "none": None}, "outputs": []}, model_name="m"
    )
    assert response.parameters["headers"].string_param == '{"x":"1"}'
    assert response.parameters["n"].uint64_param == 2**64 - 1
    assert "none" not in response.parameters


def test_model_metadata() -> None:
    message = encode_model_metadata(
        {
            "name": "iris",
            "versions": ["1", 2],
            "platform": "sklearn",
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 4], "parameters": {"content_type": "np"}}],
            "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
            "parameters": {"content_type": "np"},
        },
        name="iris",
    )
    assert message.name == "iris"
    assert list(message.versions) == ["1", "2"]
    assert message.platform == "sklearn"
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [("x", "FP64", [-1, 4])]
    assert message.inputs[0].parameters["content_type"].string_param == "np"
    assert [(t.name, t.datatype, list(t.shape)) for t in message.outputs] == [("y", "INT64", [-1])]
    assert message.parameters["content_type"].string_param == "np"
    with _bad(502, "versions"):
        encode_model_metadata({"versions": "1"}, name="iris")
    with _bad(502, "shape"):
        encode_model_metadata({"inputs": [{"name": "x", "datatype": "FP32", "shape": "4"}]}, name="iris")


# -- malformed requests ---------------------------------------------------------------------------------------


def _one_input(datatype: str, shape: list[int], **contents: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return request


def test_contents_count_must_match_the_shape() -> None:
    with _bad(400, "input 'x'", "[2, 2]", "needs 4", "has 3"):
        decode_infer_request(_one_input("FP32", [2, 2], fp32_contents=[1, 2, 3]))


def test_unknown_datatype_is_refused() -> None:
    with _bad(400, "input 'x'", "'FP8'"):
        decode_infer_request(_one_input("FP8", [1], fp32_contents=[1]))


def test_contents_in_the_wrong_field_are_refused() -> None:
    with _bad(400, "input 'x'", "int64_contents", "fp32_contents"):
        decode_infer_request(_one_input("FP32", [1], int64_contents=[1]))
    with _bad(400, "input 'x'", "FP16", "raw"):
        decode_infer_request(_one_input("FP16", [1], fp32_contents=[1.0]))


def test_typed_values_out_of_the_datatype_range_are_refused() -> None:
    with _bad(400, "input 'x'", "300", "UINT8"):
        decode_infer_request(_one_input("UINT8", [1], uint_contents=[300]))
    with _bad(400, "input 'x'", "-129", "INT8"):
        decode_infer_request(_one_input("INT8", [2], int_contents=[0, -129]))


def test_raw_size_must_match_the_shape() -> None:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\x00" * 10])
    request.inputs.add(name="x", datatype="FP32", shape=[3])
    with _bad(400, "input 'x'", "10 bytes", "needs 12"):
        decode_infer_request(request)


def test_raw_bytes_elements_must_be_whole() -> None:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[struct.pack("<I", 9) + b"short"])
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    with _bad(400, "input 's'", "9 bytes"):
        decode_infer_request(request)
    request.raw_input_contents[0] = b"\x01\x00"
    with _bad(400, "input 's'", "4-byte length"):
        decode_infer_request(request)
    request.raw_input_contents[0] = struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b"
    with _bad(400, "input 's'", "more than the 1 elements"):
        decode_infer_request(request)


def test_raw_and_typed_contents_do_not_mix() -> None:
    request = _one_input("INT32", [1], int_contents=[1])
    request.raw_input_contents.append(struct.pack("<i", 1))
    with _bad(400, "input 'x'", "raw_input_contents"):
        decode_infer_request(request)


def test_raw_entries_must_match_the_inputs() -> None:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"", b""])
    request.inputs.add(name="x", datatype="INT32", shape=[0])
    with _bad(400, "2 entries for 1 inputs"):
        decode_infer_request(request)


def test_names_and_shapes_are_checked() -> None:
    with _bad(400, "model_name"):
        decode_infer_request(pb.ModelInferRequest())
    with _bad(400, "input #0", "no name"):
        decode_infer_request(pb.ModelInferRequest(model_name="m", inputs=[pb.ModelInferRequest.InferInputTensor()]))
    request = _one_input("INT32", [1], int_contents=[1])
    request.inputs.append(request.inputs[0])
    with _bad(400, "input 'x'", "twice"):
        decode_infer_request(request)
    with _bad(400, "input 'x'", "negative"):
        decode_infer_request(_one_input("INT32", [-1], int_contents=[1]))


def test_bytes_that_are_not_utf8_cannot_keep_another_content_type() -> None:
    request = _one_input("BYTES", [1], bytes_contents=[b"\xff"])
    request.inputs[0].parameters["content_type"].string_param = "str"
    with _bad(400, "input 'x'", "'str'"):
        decode_infer_request(request)


@pytest.mark.parametrize(
    ("tensor", "words"),
    [
        ({"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0]}, ("input 'x'", "needs 2")),
        ({"name": "x", "shape": [1], "datatype": "FP99", "data": [1.0]}, ("input 'x'", "'FP99'")),
        ({"name": "x", "shape": [1], "datatype": "INT32", "data": ["1"]}, ("input 'x'", "a string", "INT32")),
        ({"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}, ("input 'x'", "INT32")),
        ({"name": "x", "shape": [1], "datatype": "INT64", "data": [True]}, ("input 'x'", "a boolean")),
        ({"name": "x", "shape": [1], "datatype": "UINT8", "data": [256]}, ("input 'x'", "256", "UINT8")),
        ({"name": "x", "shape": "1", "datatype": "FP32", "data": [1.0]}, ("input 'x'", "shape")),
        ({"name": "x", "shape": [1], "datatype": "FP32"}, ("input 'x'", "no data")),
        ({"shape": [1], "datatype": "FP32", "data": [1.0]}, ("input #0", "no name")),
        ({"name": "x", "shape": [1], "datatype": "BYTES", "data": [3]}, ("input 'x'", "BYTES")),
    ],
)
def test_malformed_json_tensors_are_refused(tensor: JsonObject, words: tuple[str, ...]) -> None:
    for raw in (False, True):
        with _bad(400, *words):
            encode_infer_request("m", None, {"inputs": [tensor]}, raw=raw)


def test_a_malformed_model_response_is_a_bad_gateway() -> None:
    with _bad(502, "output 'y'", "needs 2"):
        encode_infer_response(
            {"outputs": [{"name": "y", "shape": [2], "datatype": "FP32", "data": [1.0]}]}, model_name="m"
        )
    with _bad(502, "outputs"):
        encode_infer_response({"outputs": {"y": 1}}, model_name="m")


# -- anything a client can send is answered, never crashes --------------------------------------------------

ANY_DATATYPE = st.one_of(st.sampled_from(sorted(DATATYPES)), st.text(max_size=5))
CONTENT_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=5),
}


@st.composite
def any_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=draw(st.text(max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.text(max_size=2)),
            datatype=draw(ANY_DATATYPE),
            shape=draw(st.lists(st.integers(-2, 2**62), max_size=3)),
        )
        for field in draw(st.lists(st.sampled_from(sorted(CONTENT_FIELDS)), max_size=2, unique=True)):
            getattr(tensor.contents, field).extend(draw(st.lists(CONTENT_FIELDS[field], max_size=4)))
    if draw(st.booleans()):
        request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=24), max_size=4)))
    return request


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(any_requests())
def test_any_request_is_decoded_or_refused_with_400(request: pb.ModelInferRequest) -> None:
    try:
        decoded = decode_infer_request(request)
    except InferenceError as error:
        assert error.status == 400
        return
    for tensor in decoded.body["inputs"]:
        assert len(tensor["data"]) == math.prod(tensor["shape"])
    # What was accepted encodes back to protobuf.
    encode_infer_request(decoded.model_name, decoded.model_version, decoded.body, raw=decoded.raw_output)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=3)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=10,
)
JSON_TENSORS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=3), JSON_VALUES),
        "shape": st.one_of(st.lists(st.integers(-1, 3), max_size=3), JSON_VALUES),
        "datatype": ANY_DATATYPE,
        "data": JSON_VALUES,
        "parameters": JSON_VALUES,
    },
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "id": JSON_VALUES,
            "parameters": JSON_VALUES,
            "inputs": st.one_of(st.lists(JSON_TENSORS, max_size=3), JSON_VALUES),
            "outputs": JSON_VALUES,
        },
    ),
    st.booleans(),
)
def test_any_json_request_is_encoded_or_refused_with_400(body: JsonObject, raw: bool) -> None:
    try:
        message = encode_infer_request("m", None, body, raw=raw)
    except InferenceError as error:
        assert error.status == 400
        return
    decode_infer_request(_over_the_wire(message))
