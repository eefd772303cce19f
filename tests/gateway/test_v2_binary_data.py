"""The binary tensor data extension's conversion (gateway/edges/v2_binary_data.py) against tritonclient's own
encoder and decoder: what the client writes reads back as the same tensors in JSON, and what the gateway writes
the client reads back as the same arrays, for every datatype the client sends."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http

from gateway.edges.v2_binary_data import BinaryWish, may_use_binary_data, read_request, write_response
from gateway.inference_types import InferenceError

ARRAYS: dict[str, Any] = {
    "FP32": np.asarray([[1.5, -2.0], [0.25, 3.0]], dtype=np.float32),
    "FP64": np.asarray([1e300, -0.5], dtype=np.float64),
    "FP16": np.asarray([0.5, 2.0, -1.0], dtype=np.float16),
    "INT8": np.asarray([-128, 127], dtype=np.int8),
    "INT64": np.asarray([[-(2**63)], [2**63 - 1]], dtype=np.int64),
    "UINT32": np.asarray([0, 2**32 - 1], dtype=np.uint32),
    "BOOL": np.asarray([True, False, True], dtype=np.bool_),
    "BYTES": np.asarray([b"caf\xc3\xa9", b"", b"x y"], dtype=np.object_),
}


def client_body(*inputs: triton_http.InferInput, outputs: list[Any] | None = None) -> tuple[bytes, dict[str, str]]:
    body, header_length = triton_http.InferenceServerClient.generate_request_body(list(inputs), outputs=outputs)
    headers = {} if header_length is None else {"inference-header-content-length": str(header_length)}
    return body, headers


def tensor(name: str, datatype: str, array: Any, binary: bool = True) -> triton_http.InferInput:
    given = triton_http.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=binary)
    return given


@pytest.mark.parametrize("datatype", sorted(ARRAYS))
def test_a_binary_request_reads_as_the_same_json_tensor(datatype: str) -> None:
    array = ARRAYS[datatype]
    body, headers = client_body(tensor("x", datatype, array))
    assert may_use_binary_data(body, headers)
    request, wish = read_request(body, headers)
    [read] = request["inputs"]
    assert "parameters" not in read  # binary_data_size is the transport's, not the model's
    expected = [v.decode() for v in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
    assert read["data"] == expected
    assert (read["shape"], read["datatype"]) == (list(array.shape), datatype)
    assert wish == BinaryWish(all_outputs=True, named={})  # no outputs named: tritonclient wants all binary
    assert "parameters" not in request


@pytest.mark.parametrize("datatype", sorted(ARRAYS))
def test_a_json_answer_packed_as_wished_reads_back_in_tritonclient(datatype: str) -> None:
    array = ARRAYS[datatype]
    data = [v.decode() for v in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
    answer = {
        "model_name": "m",
        "outputs": [
            {"name": "y", "shape": list(array.shape), "datatype": datatype, "data": data},
            {"name": "z", "shape": [1], "datatype": "INT32", "data": [7]},
        ],
    }
    body, header_length = write_response(answer, BinaryWish(all_outputs=False, named={"y": True}))
    result = triton_http.InferenceServerClient.parse_response_body(body, header_length=header_length)
    read = result.as_numpy("y")
    assert read.shape == array.shape
    assert read.ravel().tolist() == array.ravel().tolist()
    assert result.get_output("z")["data"] == [7]  # not wished binary: stays JSON


def test_non_utf8_bytes_travel_as_base64_and_come_back_whole() -> None:
    array = np.asarray([b"\xff\x00", b"ok"], dtype=np.object_)
    body, headers = client_body(tensor("x", "BYTES", array))
    request, _ = read_request(body, headers)
    [read] = request["inputs"]
    assert read["parameters"] == {"content_type": "base64"}
    answer = {"outputs": [{**read, "name": "y"}]}
    packed, header_length = write_response(answer, BinaryWish(all_outputs=True, named={}))
    result = triton_http.InferenceServerClient.parse_response_body(packed, header_length=header_length)
    assert result.as_numpy("y").tolist() == [b"\xff\x00", b"ok"]


def test_requested_outputs_say_which_are_binary() -> None:
    outputs = [triton_http.InferRequestedOutput("a", binary_data=True), triton_http.InferRequestedOutput("b", False)]
    body, headers = client_body(tensor("x", "FP32", ARRAYS["FP32"], binary=False), outputs=outputs)
    assert not headers  # JSON inputs: no binary part, but the wish is in the JSON
    assert may_use_binary_data(body, headers)
    request, wish = read_request(body, headers)
    assert request["outputs"] == [{"name": "a"}, {"name": "b"}]
    assert (wish.wants("a"), wish.wants("b"), wish.wants("c")) == (True, False, False)


def test_a_plain_json_request_is_not_looked_at() -> None:
    assert not may_use_binary_data(b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', {})


@pytest.mark.parametrize(
    ("header_length", "tail", "size", "reason"),
    [
        ("x", b"", 0, "whole number of bytes"),
        ("100000", b"", 0, "has only"),
        (None, b"\x00" * 8, 12, "12, but only 8 bytes"),
        (None, b"\x00" * 16, 12, "add up to 12"),
        (None, b"\x00" * 12, -1, "whole number of bytes"),
    ],
)
def test_a_body_that_cannot_be_read_is_a_400_that_says_why(
    header_length: str | None, tail: bytes, size: int, reason: str
) -> None:
    header = b'{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":%d}}]}' % size
    length = header_length if header_length is not None else str(len(header))
    with pytest.raises(InferenceError) as raised:
        read_request(header + tail, {"inference-header-content-length": length})
    assert raised.value.status == 400
    assert reason in raised.value.message


@pytest.mark.parametrize("parameters", [[1, 2], "text", 5, True])
def test_an_answer_whose_output_parameters_are_no_object_is_a_502_that_says_why(parameters: Any) -> None:
    # The answer is the model server's: a bad one is the server's fault (502 naming it), not a crash of the gateway.
    answer: dict[str, Any] = {
        "outputs": [{"name": "y", "shape": [1], "datatype": "FP32", "data": [1.0], "parameters": parameters}]
    }
    with pytest.raises(InferenceError) as raised:
        write_response(answer, BinaryWish(all_outputs=True, named={}))
    assert raised.value.status == 502
    assert "output 'y'" in raised.value.message
    assert "parameters" in raised.value.message
