"""gateway.edges.v2_grpc_service over real grpc.aio on a loopback port, with in-process fake routing callables."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from gateway.edges.v2_grpc_service import (
    SERVICE_NAME,
    InferResult,
    V2InferenceService,
    add_v2_inference_service,
    grpc_code_for,
    request_headers,
    response_metadata,
)
from gateway.inference_types import InferenceError, JsonObject
from generated.inference.v2 import grpc_predict_v2_pb2 as pb
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.transport import TransportSecurity, bind, new_server

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeGateway:
    """Routing callables that record what they were given and answer what a test sets."""

    calls: list[tuple[str, str | None, JsonObject, Mapping[str, str]]] = field(default_factory=list)
    answer: JsonObject | InferResult | Exception | None = None
    ready_models: set[str] = field(default_factory=lambda: {"iris"})
    error: Exception | None = None  # raised by the readiness/metadata callables when set
    serving: bool = True

    async def infer(self, name: str, version: str | None, body: JsonObject, headers: Mapping[str, str]) -> Any:
        self.calls.append((name, version, body, dict(headers)))
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer is not None:
            return self.answer
        # Echo: one output per input, doubled numbers.
        outputs = [
            {
                "name": f"{t['name']}-out",
                "shape": t["shape"],
                "datatype": t["datatype"],
                "data": [2 * v for v in t["data"]],
            }
            for t in body["inputs"]
        ]
        return {"model_name": name, "id": body.get("id"), "outputs": outputs}

    async def model_ready(self, name: str, version: str | None) -> bool:
        if self.error is not None:
            raise self.error
        return name in self.ready_models

    async def model_metadata(self, name: str, version: str | None) -> JsonObject:
        if self.error is not None:
            raise self.error
        return {
            "name": name,
            "versions": [version or "1"],
            "platform": "sklearn",
            "inputs": [{"name": "predict", "datatype": "FP64", "shape": [-1, 4]}],
            "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}],
        }

    async def server_ready(self) -> bool:
        if self.error is not None:
            raise self.error
        return self.serving


@dataclass
class Edge:
    gateway: FakeGateway
    stub: pb_grpc.GRPCInferenceServiceAsyncStub


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    gateway = FakeGateway()
    service = V2InferenceService(
        infer=gateway.infer,
        model_ready=gateway.model_ready,
        model_metadata=gateway.model_metadata,
        server_ready=gateway.server_ready,
        server_version="9.9",
        extensions=("model_repository",),
    )
    server = new_server()
    add_v2_inference_service(server, service)
    port = bind(server, Address("127.0.0.1", 0), TransportSecurity(insecure=True))
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Edge(gateway, pb_grpc.GRPCInferenceServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(None)


def _request(name: str = "iris") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, id="req-1")
    tensor = request.inputs.add(name="predict", datatype="FP64", shape=[2, 2])
    tensor.contents.fp64_contents.extend([1.0, 2.0, 3.0, 4.5])
    return request


async def _code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


# -- health and metadata ------------------------------------------------------------------------------------


async def test_health_rpcs(edge: Edge) -> None:
    assert (await edge.stub.ServerLive(pb.ServerLiveRequest())).live is True
    assert (await edge.stub.ServerReady(pb.ServerReadyRequest())).ready is True
    edge.gateway.serving = False
    assert (await edge.stub.ServerReady(pb.ServerReadyRequest())).ready is False
    assert (await edge.stub.ModelReady(pb.ModelReadyRequest(name="iris"))).ready is True
    assert (await edge.stub.ModelReady(pb.ModelReadyRequest(name="other"))).ready is False
    metadata = await edge.stub.ServerMetadata(pb.ServerMetadataRequest())
    assert (metadata.name, metadata.version, list(metadata.extensions)) == ("modelplane", "9.9", ["model_repository"])


async def test_model_metadata(edge: Edge) -> None:
    answer = await edge.stub.ModelMetadata(pb.ModelMetadataRequest(name="iris", version="3"))
    assert (answer.name, list(answer.versions), answer.platform) == ("iris", ["3"], "sklearn")
    assert [(t.name, t.datatype, list(t.shape)) for t in answer.inputs] == [("predict", "FP64", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in answer.outputs] == [("predict", "INT64", [-1])]


async def test_unknown_model_and_failures_map_to_codes(edge: Edge) -> None:
    edge.gateway.error = InferenceError(404, "no model, experiment or pipeline named 'nope'")
    code, details = await _code_of(edge.stub.ModelReady(pb.ModelReadyRequest(name="nope")))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "no model, experiment or pipeline named 'nope'")
    code, _ = await _code_of(edge.stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    edge.gateway.error = InferenceError(503, "no routing table yet")
    code, _ = await _code_of(edge.stub.ServerReady(pb.ServerReadyRequest()))
    assert code == grpc.StatusCode.UNAVAILABLE
    code, _ = await _code_of(edge.stub.ModelReady(pb.ModelReadyRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# -- inference ------------------------------------------------------------------------------------------------


async def test_infer_converts_both_ways_and_passes_headers(edge: Edge) -> None:
    call = edge.stub.ModelInfer(_request(), metadata=(("x-tenant", "a"), ("seldon-model", "iris"), ("x-tenant", "b")))
    answer = await call
    [(name, version, body, headers)] = edge.gateway.calls
    assert (name, version) == ("iris", None)
    assert body == {
        "id": "req-1",
        "inputs": [{"name": "predict", "shape": [2, 2], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.5]}],
    }
    assert headers["x-tenant"] == "a, b"
    assert headers["seldon-model"] == "iris"
    assert (answer.model_name, answer.id) == ("iris", "req-1")
    [output] = answer.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("predict-out", "FP64", [2, 2])
    assert list(output.contents.fp64_contents) == [2.0, 4.0, 6.0, 9.0]
    assert not answer.raw_output_contents
    assert await call.initial_metadata() is not None


async def test_version_reaches_the_callable(edge: Edge) -> None:
    request = _request()
    request.model_version = "7"
    await edge.stub.ModelInfer(request)
    assert edge.gateway.calls[0][1] == "7"


async def test_raw_inputs_get_raw_outputs(edge: Edge) -> None:
    request = pb.ModelInferRequest(model_name="iris", raw_input_contents=[(5).to_bytes(4, "little", signed=True)])
    request.inputs.add(name="n", datatype="INT32", shape=[1])
    answer = await edge.stub.ModelInfer(request)
    assert edge.gateway.calls[0][2]["inputs"][0]["data"] == [5]
    assert list(answer.raw_output_contents) == [(10).to_bytes(4, "little", signed=True)]


async def test_response_headers_become_initial_metadata(edge: Edge) -> None:
    edge.gateway.answer = InferResult(
        {"model_name": "iris", "outputs": []},
        headers={"X-Seldon-Route": ":iris_1:", "content-type": "application/json", "bad key": "x"},
    )
    call = edge.stub.ModelInfer(_request())
    await call
    # Only the route: the HTTP content-type and the key gRPC cannot carry are left out.
    assert dict(await call.initial_metadata()) == {"x-seldon-route": ":iris_1:"}


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (404, grpc.StatusCode.NOT_FOUND),
        (501, grpc.StatusCode.UNIMPLEMENTED),
        (502, grpc.StatusCode.INTERNAL),
        (503, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
async def test_inference_errors_map_to_grpc_codes(edge: Edge, status: int, code: grpc.StatusCode) -> None:
    edge.gateway.answer = InferenceError(status, f"failed with {status}")
    assert await _code_of(edge.stub.ModelInfer(_request())) == (code, f"failed with {status}")


async def test_malformed_requests_never_reach_the_gateway(edge: Edge) -> None:
    request = _request()
    request.inputs[0].shape[:] = [3, 3]
    code, details = await _code_of(edge.stub.ModelInfer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'predict'" in details
    code, details = await _code_of(edge.stub.ModelInfer(_request(name="")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_name" in details
    assert edge.gateway.calls == []


async def test_a_malformed_model_answer_is_internal(edge: Edge) -> None:
    edge.gateway.answer = {"outputs": [{"name": "y", "shape": [3], "datatype": "FP32", "data": [1.0]}]}
    code, details = await _code_of(edge.stub.ModelInfer(_request()))
    assert code == grpc.StatusCode.INTERNAL
    assert "output 'y'" in details


async def test_an_unexpected_failure_is_internal_without_details(edge: Edge, caplog: pytest.LogCaptureFixture) -> None:
    edge.gateway.answer = RuntimeError("secret internals")
    with caplog.at_level(logging.ERROR, logger="gateway.edges.v2_grpc_service"):
        code, details = await _code_of(edge.stub.ModelInfer(_request()))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in details
    assert "secret internals" in caplog.text
    # The server keeps serving.
    edge.gateway.answer = None
    assert (await edge.stub.ModelInfer(_request())).model_name == "iris"


# -- pieces ---------------------------------------------------------------------------------------------------


def test_codes_for_other_statuses() -> None:
    assert grpc_code_for(418) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code_for(599) == grpc.StatusCode.INTERNAL
    assert grpc_code_for(302) == grpc.StatusCode.UNKNOWN
    assert grpc_code_for(429) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_header_conversion() -> None:
    assert request_headers((("A", "1"), ("trace-bin", b"\x00"), ("a", "2"))) == {"a": "1, 2"}
    assert request_headers(None) == {}
    assert response_metadata({"Grpc-Status": "0", "x-ok": "1", "x-bad": "caf\u00e9", "te": "trailers"}) == (
        ("x-ok", "1"),
    )
    # Keys and values are checked whole, not up to a final newline (which gRPC refuses in metadata).
    assert response_metadata({"x-value": "1\n", "x-key\n": "1", "x-fine": "2"}) == (("x-fine", "2"),)


def test_service_name_matches_the_proto() -> None:
    assert pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name == SERVICE_NAME


def test_the_generated_v2_modules_import_as_ordinary_packages() -> None:
    # scripts/gen_protos.py rewrites protoc's `from inference.v2 import ...` to the generated package.
    script = (
        "import generated.inference.v2.grpc_predict_v2_pb2_grpc as g, generated.inference.v2.grpc_predict_v2_pb2 as m;"
        "print(m.ModelInferRequest.__module__, g.GRPCInferenceServiceStub.__name__)"
    )
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["generated.inference.v2.grpc_predict_v2_pb2", "GRPCInferenceServiceStub"]
    text = (REPO / "generated" / "inference" / "v2" / "grpc_predict_v2_pb2_grpc.py").read_text()
    assert "\nfrom inference" not in text
