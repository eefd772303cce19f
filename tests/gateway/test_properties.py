"""Hypothesis against a live `modelplane gateway` process (issue 10): a scheduler, an agent with a real
MLServer serving iris, an experiment over it and a one-step pipeline, and the gateway's REST and gRPC
edges as callers reach them.

For any request (REST: any method, path, headers, content type, body, nesting and size, sent as raw HTTP;
gRPC: any ModelInferRequest fields, any metadata, and bytes that are no message at all):

* only a documented status comes back, never a 500 (REST) or INTERNAL/UNKNOWN (gRPC) for a caller's mistake;
* no answer carries a traceback or a path of this machine (the venvs, the work folders);
* the gateway still serves a good request afterwards, with the right predictions.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.edges.v2_grpc_codec import decode_infer_response, encode_infer_request
from generated.inference.v2 import grpc_predict_v2_pb2 as v2_pb
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from servers.launch import server_venv
from tests.support.cluster_fixtures import WAIT, Cluster, Iris, api_of, model
from tests.support.processes import GatewayProcess, start_gateway

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]

# What the REST edge answers (README, the gateway's section): 200; 400 malformed (HTTP itself included);
# 404 unknown route, model or pipeline; 405 wrong method; 413 body over the limit; 422 what MLServer's
# schema refuses; 503 nothing can answer now. 502 and 500 are ours or the server's faults, never a caller's.
REST_STATUSES = {200, 400, 404, 405, 413, 422, 503}
GRPC_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}
NAMES = ["iris", "exp", "pipe", "nosuch"]
PIPELINE_READY = pb.PipelineVersionState.PipelineStatus.Value("PipelineReady")


@dataclass
class Live:
    gateway: GatewayProcess
    iris: Iris
    secrets: list[str]  # what no answer may name: this machine's paths

    def leaks(self, text: str) -> list[str]:
        marks = ["Traceback", "site-packages", '.py", line', *self.secrets]
        return [mark for mark in marks if mark in text]


async def _serve(cluster: Cluster, iris: Iris) -> None:
    assert cluster.scheduler is not None
    async with api_of(cluster) as api:
        await api.load(model("iris", str(iris.folder)))
        await api.available("iris")
    async with grpc.aio.insecure_channel(cluster.scheduler.listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        experiment = pb.Experiment(
            name="exp", default="iris", candidates=[pb.ExperimentCandidate(name="iris", weight=1)]
        )
        await stub.StartExperiment(pb.StartExperimentRequest(experiment=experiment), timeout=10)
        pipeline = pb.Pipeline(
            name="pipe", steps=[pb.PipelineStep(name="iris")], output=pb.PipelineOutput(steps=["iris"])
        )
        await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=pipeline), timeout=10)
        async with asyncio.timeout(WAIT):
            while True:
                request = pb.PipelineStatusRequest(name="pipe")
                [status] = [s async for s in stub.PipelineStatus(request, timeout=10)]
                if status.versions and status.versions[-1].state.status == PIPELINE_READY:
                    break
                await asyncio.sleep(0.1)


@pytest.fixture
def live(cluster: Cluster, iris: Iris) -> Live:
    scheduler = cluster.start_scheduler()
    [agent] = cluster.start_agents(cluster.agent(0))
    asyncio.run(_serve(cluster, iris))
    gateway = start_gateway(cluster.root / "gateway", scheduler.listen, "--grpc-listen=127.0.0.1:0")
    secrets = [str(cluster.root), str(server_venv("mlserver")), sys.prefix, str(agent.server_dir), str(Path.home())]
    return Live(gateway, iris, secrets)


# ----------------------------------------------------------------- REST


def exchange(listen: str, method: str, target: str, headers: list[tuple[str, bytes]], body: bytes) -> tuple[int, bytes]:
    """One request as raw HTTP/1.1 bytes (nothing a client library would refuse to send is refused here)."""
    host, port = listen.rsplit(":", 1)
    head = [f"{method} {target} HTTP/1.1".encode(), f"Host: {listen}".encode()]
    head += [name.encode() + b": " + value for name, value in headers]
    head += [f"Content-Length: {len(body)}".encode(), b"Connection: close"]
    with socket.create_connection((host, int(port)), timeout=120) as connection:
        connection.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        response = http.client.HTTPResponse(connection, method=method)
        response.begin()
        return response.status, response.read()


def http_quote(text: str) -> str:
    return quote(text, safe="")


token = st.from_regex(r"\A[A-Za-z0-9!#$%&'*+.^_`|~-]{1,30}\Z")
header_values = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200).map(str.encode),
    st.binary(max_size=50).map(lambda raw: bytes(b for b in raw if b >= 0x20 and b != 0x7F)),  # obs-text too
)
framing = {"content-length", "transfer-encoding", "host", "connection"}
headers = st.lists(
    st.one_of(
        st.tuples(st.just("Content-Type"), st.sampled_from(
            [b"application/json", b"text/plain", b"application/octet-stream", b"multipart/form-data; boundary=x",
             b"application/json; charset=latin-1", b""]
        )),
        st.tuples(st.just("Content-Encoding"), st.sampled_from([b"gzip", b"deflate", b"br", b"identity", b"x"])),
        st.tuples(st.sampled_from(["x-request-id", "traceparent", "x-modelplane-route"]), header_values),
        st.tuples(token.filter(lambda name: name.lower() not in framing), header_values),
    ),
    max_size=6,
)  # fmt: skip
path_names = st.one_of(st.sampled_from(NAMES), st.text(max_size=40).map(http_quote))
targets = st.one_of(
    st.builds(lambda n: f"/v2/models/{n}/infer", path_names),
    st.builds(lambda n, v: f"/v2/models/{n}/versions/{v}/infer", path_names, st.text(max_size=12).map(http_quote)),
    st.builds(lambda n: f"/v2/models/{n}/ready", path_names),
    st.builds(lambda n: f"/v2/models/{n}", path_names),
    st.builds(lambda n: f"/v2/pipelines/{n}/infer", path_names),
    st.builds(lambda n: f"/v2/pipelines/{n}/ready", path_names),
    st.sampled_from(["/v2", "/v2/health/live", "/v2/health/ready", "/metrics", "/", "*"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=100).map(
        lambda t: "/" + t.lstrip("/")
    ),
)


datatypes = st.one_of(
    st.sampled_from(["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16"]), st.text(max_size=8)
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=25,
)
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["predict", "x"]) | st.text(max_size=10), "datatype": datatypes},
    optional={
        "shape": st.lists(st.integers(min_value=-3, max_value=10), max_size=4) | json_values,
        "data": st.lists(scalars, max_size=12)
        | st.lists(st.lists(st.floats(0, 10), max_size=5), max_size=4)
        | json_values,
        "parameters": st.dictionaries(st.text(max_size=8), scalars, max_size=3) | json_values,
    },
)
KINDS = {
    "BOOL": st.booleans(),
    "UINT8": st.integers(0, 255),
    "INT32": st.integers(-(2**31), 2**31 - 1),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "FP32": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "FP64": st.floats(allow_nan=False, allow_infinity=False),
    "BYTES": st.text(max_size=10),
}


@st.composite
def well_formed_tensors(draw: st.DrawFn) -> dict[str, object]:
    """Tensors the gateway lets through, so the server's own answers are what is tested."""
    shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
    datatype = draw(st.sampled_from(sorted(KINDS)))
    count = 1
    for dim in shape:
        count *= dim
    data = draw(st.lists(KINDS[datatype], min_size=count, max_size=count))
    return {"name": draw(st.sampled_from(["predict", "x"])), "shape": shape, "datatype": datatype, "data": data}


v2_requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensors | well_formed_tensors(), max_size=3) | json_values},
    optional={"id": scalars, "parameters": json_values, "outputs": st.lists(json_values, max_size=2)},
)
bodies = st.one_of(
    v2_requests.map(lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n),
    st.integers(min_value=1, max_value=300).map(lambda n: b'{"inputs": ' + b"[" * n + b"]" * n + b"}"),
    st.integers(min_value=0, max_value=2_000_000).map(
        lambda n: json.dumps(
            {"inputs": [{"name": "predict", "shape": [1], "datatype": "BYTES", "data": ["x" * n]}]}
        ).encode()
    ),
)


# Requests the gateway lets through to MLServer (a shape or datatype iris cannot take, several inputs), so
# that what the server answers, and how the gateway reads it, is tested too.
server_bound = st.tuples(
    st.just("POST"),
    st.sampled_from(["/v2/models/iris/infer", "/v2/models/exp/infer", "/v2/pipelines/pipe/infer"]),
    st.just([("Content-Type", b"application/json")]),
    st.fixed_dictionaries(
        {"inputs": st.lists(well_formed_tensors(), min_size=1, max_size=2, unique_by=lambda t: t["name"])},
        optional={
            "id": st.text(max_size=10),
            "parameters": st.dictionaries(st.text(max_size=8), scalars, max_size=3),
            "outputs": st.just([{"name": "predict"}]),
        },
    ).map(lambda request: json.dumps(request).encode()),
)
anything = st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]) | token, targets, headers, bodies
)


def good_rest(live: Live) -> None:
    status, body = exchange(
        live.gateway.listen,
        "POST",
        "/v2/models/iris/infer",
        [("Content-Type", b"application/json")],
        json.dumps(live.iris.request).encode(),
    )
    assert status == 200, body[:500]
    assert json.loads(body)["outputs"][0]["data"] == live.iris.expected


def check_rest(live: Live, method: str, target: str, sent: list[tuple[str, bytes]], body: bytes) -> None:
    status, answer = exchange(live.gateway.listen, method, target, sent, body)
    text = answer.decode("utf-8", errors="replace")
    where = f"{method} {target[:200]} ({len(body)} bytes): HTTP {status}: {text[:500]}"
    assert status in REST_STATUSES, where
    assert not live.leaks(text), f"{where}\nleaks {live.leaks(text)}"
    if status >= 400 and answer.startswith(b"{"):  # the gateway's own errors (aiohttp's HTTP parser answers text)
        assert isinstance(json.loads(answer).get("error"), str), where
    good_rest(live)


# ----------------------------------------------------------------- gRPC

parameters = st.dictionaries(
    st.text(max_size=10),
    st.one_of(
        st.builds(lambda v: v2_pb.InferParameter(bool_param=v), st.booleans()),
        st.builds(lambda v: v2_pb.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda v: v2_pb.InferParameter(string_param=v), st.text(max_size=20)),
        st.builds(lambda v: v2_pb.InferParameter(double_param=v), st.floats()),
        st.builds(lambda v: v2_pb.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
        st.just(v2_pb.InferParameter()),
    ),
    max_size=3,
)
contents = st.builds(
    v2_pb.InferTensorContents,
    bool_contents=st.lists(st.booleans(), max_size=8),
    int_contents=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8),
    int64_contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
    uint_contents=st.lists(st.integers(0, 2**32 - 1), max_size=8),
    uint64_contents=st.lists(st.integers(0, 2**64 - 1), max_size=8),
    fp32_contents=st.lists(st.floats(width=32), max_size=8),
    fp64_contents=st.lists(st.floats(), max_size=8),
    bytes_contents=st.lists(st.binary(max_size=20), max_size=8),
) | st.just(v2_pb.InferTensorContents(fp64_contents=[5.1, 3.5, 1.4, 0.2]))
input_tensors = st.builds(
    v2_pb.ModelInferRequest.InferInputTensor,
    name=st.sampled_from(["predict", ""]) | st.text(max_size=10),
    datatype=datatypes,
    shape=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 8), max_size=4),
    parameters=parameters,
    contents=contents,
)
infer_requests = st.builds(
    v2_pb.ModelInferRequest,
    model_name=st.sampled_from(NAMES) | st.text(max_size=30),
    model_version=st.sampled_from(["", "1", "7"]) | st.text(max_size=10),
    id=st.text(max_size=20),
    parameters=parameters,
    inputs=st.lists(input_tensors, max_size=3),
    outputs=st.lists(
        st.builds(v2_pb.ModelInferRequest.InferRequestedOutputTensor, name=st.text(max_size=10), parameters=parameters),
        max_size=2,
    ),
    raw_input_contents=st.lists(st.binary(max_size=64), max_size=3),
)
# Requests the edge lets through to MLServer, as for REST.
grpc_server_bound = st.builds(
    lambda name, inputs: encode_infer_request(name, None, {"inputs": inputs}).SerializeToString(),
    st.sampled_from(["iris", "exp", "pipe"]),
    st.lists(well_formed_tensors(), min_size=1, max_size=2, unique_by=lambda t: t["name"]),
)
metadata = st.lists(
    st.tuples(
        st.from_regex(r"\A[a-z0-9_.-]{1,20}\Z").filter(lambda k: not k.startswith("grpc-") and not k.endswith("-bin")),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=50),
    ),
    max_size=4,
)
RPCS = ["ModelInfer", "ModelReady", "ModelMetadata", "ServerLive", "ServerReady", "ServerMetadata"]


def good_grpc(live: Live, channel: grpc.Channel) -> None:
    reply = v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
        encode_infer_request("iris", None, live.iris.request), timeout=60
    )
    assert decode_infer_response(reply)["outputs"][0]["data"] == live.iris.expected


def check_grpc(live: Live, channel: grpc.Channel, rpc: str, request: bytes, sent: list[tuple[str, str]]) -> None:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/inference.GRPCInferenceService/{rpc}")
    try:
        call(request, timeout=60, metadata=tuple(sent))
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""
    where = f"{rpc} ({len(request)} bytes): {code.name}: {details[:500]}"
    assert code in GRPC_CODES, where
    assert not live.leaks(details), f"{where}\nleaks {live.leaks(details)}"
    good_grpc(live, channel)


# ----------------------------------------------------------------- the property


PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_any_request_gets_a_documented_answer_that_leaks_nothing(live: Live) -> None:
    @PROPERTY
    @given(request=anything | server_bound)
    def rest(request: tuple[str, str, list[tuple[str, bytes]], bytes]) -> None:
        check_rest(live, *request)

    assert live.gateway.grpc_listen is not None
    with grpc.insecure_channel(live.gateway.grpc_listen) as channel:

        @PROPERTY
        @given(
            rpc=st.sampled_from(RPCS),
            request=st.one_of(
                infer_requests.map(lambda message: message.SerializeToString()),
                grpc_server_bound,
                st.builds(
                    lambda name, version: v2_pb.ModelReadyRequest(name=name, version=version).SerializeToString(),
                    st.sampled_from(NAMES) | st.text(max_size=20),
                    st.text(max_size=5),
                ),
                st.binary(max_size=200),
            ),
            sent=metadata,
        )
        def grpc_edge(rpc: str, request: bytes, sent: list[tuple[str, str]]) -> None:
            check_grpc(live, channel, rpc, request, sent)

        rest()
        grpc_edge()
    # Callers' mistakes leave no traceback in the gateway's log either (aiohttp's own included).
    assert "Traceback" not in live.gateway.log()
