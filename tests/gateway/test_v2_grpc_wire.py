"""Wire compatibility of proto/inference/v2/grpc_predict_v2.proto with the servers and clients it must
talk to: field by field against MLServer's and Triton's own generated V2 protos (read in their venvs),
and by calling a real MLServer (directly and through the gateway's gRPC edge) and a real Triton with
our messages.

Marked ``servers``: it uses the MLServer and Triton venvs (created on first use, see servers/launch).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from grpc import aio

from gateway.edges.v2_grpc_codec import decode_infer_response, encode_infer_request
from gateway.edges.v2_grpc_service import InferResult, V2InferenceService, add_v2_inference_service
from gateway.inference_types import InferenceError, JsonObject
from generated.inference.v2 import grpc_predict_v2_pb2 as pb
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.transport import TransportSecurity, bind, new_server
from servers.adapter import ModelFiles
from servers.launch import LocalServer, launch_mlserver, launch_triton, server_venv
from tests.support.iris_sample import train_iris_sample
from tests.support.local_servers import stopped_at_exit
from tests.support.triton_models import write_doubler

pytestmark = [pytest.mark.servers, pytest.mark.timeout(900)]  # a first run builds the venvs

REPO = Path(__file__).resolve().parents[2]

# Prints {message full name: {field name: [number, type, repeated, message type]}} for a generated module.
DUMP_FIELDS = r"""
import importlib, json, sys
module = importlib.import_module(sys.argv[1])
found = {}
def repeated(f):  # protobuf 7 dropped FieldDescriptor.label
    return f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
def walk(message):
    found[message.full_name] = {
        f.name: [f.number, f.type, repeated(f), f.message_type.full_name if f.message_type else None]
        for f in message.fields
    }
    for nested in message.nested_types:
        walk(nested)
for message in module.DESCRIPTOR.message_types_by_name.values():
    walk(message)
services = {s.full_name: {m.name: [m.input_type.full_name, m.output_type.full_name] for m in s.methods}
            for s in module.DESCRIPTOR.services_by_name.values()}
print(json.dumps({"messages": found, "services": services}))
"""

# Fields we define that a server's proto lacks, on purpose (see the .proto's comments).
EXTRAS = {
    "mlserver": {"inference.InferParameter": {"double_param", "uint64_param"}},
    "triton": {
        "inference.ModelMetadataResponse": {"parameters"},
        "inference.ModelMetadataResponse.TensorMetadata": {"parameters"},
    },
}
THEIR_MODULES = {"mlserver": "mlserver.grpc.dataplane_pb2", "triton": "tritonclient.grpc.service_pb2"}


def _fields(python: Path | str, module: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(python), "-c", DUMP_FIELDS, module], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


@pytest.mark.parametrize("server", ["mlserver", "triton"])
def test_every_field_matches_the_servers_own_proto(server: str) -> None:
    ours = _fields(REPO / ".venv" / "bin" / "python", "generated.inference.v2.grpc_predict_v2_pb2")
    theirs = _fields(server_venv(server) / "bin" / "python", THEIR_MODULES[server])
    extras = EXTRAS[server]
    for message, fields in ours["messages"].items():
        if message.endswith(".ParametersEntry") and message.rsplit(".", 1)[0] in extras:
            continue  # the map entry of an extra parameters field
        assert message in theirs["messages"], f"{server} has no {message}"
        their_fields = theirs["messages"][message]
        for name, spec in fields.items():
            if name in extras.get(message, set()):
                assert name not in their_fields
                continue
            assert their_fields.get(name) == spec, f"{message}.{name}: ours {spec}, {server} {their_fields.get(name)}"
    ours_service = ours["services"]["inference.GRPCInferenceService"]
    theirs_service = theirs["services"]["inference.GRPCInferenceService"]
    assert {rpc: theirs_service[rpc] for rpc in ours_service} == ours_service


# -- a real MLServer ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    server: LocalServer
    name: str  # the name MLServer serves the model under
    request: JsonObject  # a V2 JSON request for two flowers
    expected: list[int]  # the classes the model predicts for them


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """MLServer with samples/train_iris.py's model loaded as iris_1 (trained by the MLServer venv)."""
    venv = server_venv("mlserver")
    out = tmp_path_factory.mktemp("train")
    printed = train_iris_sample(out)
    artifact = tmp_path_factory.mktemp("iris")
    (artifact / "model.joblib").write_bytes((out / "model.joblib").read_bytes())
    server = asyncio.run(launch_mlserver(tmp_path_factory.mktemp("mlserver"), venv=venv))

    async def load() -> None:
        adapter = server.adapter(load_timeout=120)
        try:
            await adapter.place_files(ModelFiles("iris", 1, artifact, frozenset({"sklearn"})))
            await adapter.load("iris_1")
        finally:
            await adapter.close()

    with stopped_at_exit(server):
        asyncio.run(load())
        yield Served(server, "iris_1", printed["request"], printed["expected"])


@pytest.fixture
async def mlserver_stub(served: Served) -> AsyncIterator[pb_grpc.GRPCInferenceServiceAsyncStub]:
    async with aio.insecure_channel(served.server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


async def test_mlserver_answers_our_messages(
    served: Served, mlserver_stub: pb_grpc.GRPCInferenceServiceAsyncStub
) -> None:
    assert (await mlserver_stub.ServerLive(pb.ServerLiveRequest(), timeout=30)).live
    assert (await mlserver_stub.ServerReady(pb.ServerReadyRequest(), timeout=30)).ready
    assert (await mlserver_stub.ModelReady(pb.ModelReadyRequest(name=served.name), timeout=30)).ready
    server_metadata = await mlserver_stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30)
    assert server_metadata.name == "mlserver"
    metadata = await mlserver_stub.ModelMetadata(pb.ModelMetadataRequest(name=served.name), timeout=30)
    # The sample's model declares no versions, platform or signature: MLServer answers just the name.
    assert metadata == pb.ModelMetadataResponse(name=served.name)


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
async def test_mlserver_infers_from_our_request(
    served: Served, mlserver_stub: pb_grpc.GRPCInferenceServiceAsyncStub, raw: bool
) -> None:
    request = encode_infer_request(served.name, None, {"id": "wire-1", **served.request}, raw=raw)
    assert bool(request.raw_input_contents) == raw
    answer = await mlserver_stub.ModelInfer(request, timeout=30)
    body = decode_infer_response(answer)
    assert body["id"] == "wire-1"
    assert body["model_name"] == served.name
    [output] = body["outputs"]
    assert output["datatype"] == "INT64"
    assert output["shape"][0] == 2
    assert output["data"] == served.expected


# -- the gateway's gRPC edge in front of the same MLServer, over its REST API -----------------------------


@pytest.fixture
async def edge_stub(served: Served) -> AsyncIterator[pb_grpc.GRPCInferenceServiceAsyncStub]:
    """V2InferenceService whose callables forward the V2 JSON to MLServer's REST API, as the gateway's
    router does; a route header comes back for every answer."""
    base = served.server.http_url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def infer(name: str, version: str | None, body: JsonObject, headers: Mapping[str, str]) -> InferResult:
            async with session.post(f"{base}/v2/models/{name}/infer", json=body) as response:
                answer: JsonObject = await response.json()
                if response.status != 200:
                    raise InferenceError(response.status, str(answer.get("error", answer)))
            return InferResult(answer, {"x-modelplane-route": f"{name}@{headers.get('x-tenant', '-')}"})

        async def model_ready(name: str, version: str | None) -> bool:
            async with session.get(f"{base}/v2/models/{name}/ready") as response:
                return response.status == 200

        async def model_metadata(name: str, version: str | None) -> JsonObject:
            async with session.get(f"{base}/v2/models/{name}") as response:
                answer: JsonObject = await response.json()
                if response.status != 200:
                    raise InferenceError(response.status, str(answer.get("error", answer)))
                return answer

        async def server_ready() -> bool:
            async with session.get(f"{base}/v2/health/ready") as response:
                return response.status == 200

        service = V2InferenceService(
            infer=infer, model_ready=model_ready, model_metadata=model_metadata, server_ready=server_ready
        )
        server = new_server()
        add_v2_inference_service(server, service)
        port = bind(server, Address("127.0.0.1", 0), TransportSecurity(insecure=True))
        await server.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield pb_grpc.GRPCInferenceServiceStub(channel)
        finally:
            await server.stop(None)


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
async def test_the_edge_serves_mlserver_over_grpc(
    served: Served, edge_stub: pb_grpc.GRPCInferenceServiceAsyncStub, raw: bool
) -> None:
    assert (await edge_stub.ServerReady(pb.ServerReadyRequest(), timeout=30)).ready
    assert (await edge_stub.ModelReady(pb.ModelReadyRequest(name=served.name), timeout=30)).ready
    metadata = await edge_stub.ModelMetadata(pb.ModelMetadataRequest(name=served.name), timeout=30)
    assert metadata.name == served.name
    request = encode_infer_request(served.name, None, {"id": "edge-1", **served.request}, raw=raw)
    call = edge_stub.ModelInfer(request, timeout=30, metadata=(("x-tenant", "t1"),))
    answer = await call
    assert dict(await call.initial_metadata())["x-modelplane-route"] == f"{served.name}@t1"
    assert bool(answer.raw_output_contents) == raw  # raw in, raw out
    body = decode_infer_response(answer)
    assert body["id"] == "edge-1"
    assert body["outputs"][0]["data"] == served.expected


async def test_the_edge_reports_mlservers_not_found(
    served: Served, edge_stub: pb_grpc.GRPCInferenceServiceAsyncStub
) -> None:
    request = encode_infer_request("no-such-model", None, served.request)
    with pytest.raises(aio.AioRpcError) as caught:
        await edge_stub.ModelInfer(request, timeout=30)
    assert caught.value.code().name == "NOT_FOUND"


# -- a real Triton -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """Triton with the test doubler (OUTPUT0 = INPUT0 * 2, FP32) loaded as doubler_1."""
    artifact = write_doubler(tmp_path_factory.mktemp("doubler") / "doubler")
    server = asyncio.run(launch_triton(tmp_path_factory.mktemp("triton"), venv=server_venv("triton")))

    async def load() -> None:
        adapter = server.adapter(load_timeout=120)
        try:
            await adapter.place_files(ModelFiles("doubler", 1, artifact))
            await adapter.load("doubler_1")
        finally:
            await adapter.close()

    with stopped_at_exit(server):
        asyncio.run(load())
        yield server


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
async def test_triton_infers_from_our_request(triton: LocalServer, raw: bool) -> None:
    body = {"id": "t-1", "inputs": [{"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": [1.0, 2.5, -3.0]}]}
    async with aio.insecure_channel(triton.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="doubler_1"), timeout=30)).ready
        metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name="doubler_1"), timeout=30)
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("INPUT0", "FP32", [-1])]
        answer = await stub.ModelInfer(encode_infer_request("doubler_1", None, body, raw=raw), timeout=30)
    decoded = decode_infer_response(answer)
    assert decoded["id"] == "t-1"
    assert decoded["outputs"] == [{"name": "OUTPUT0", "shape": [3], "datatype": "FP32", "data": [2.0, 5.0, -6.0]}]
