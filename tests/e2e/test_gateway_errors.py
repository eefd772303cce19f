"""Errors that blame the right side (issue 10, defect 5), end to end: a scheduler, agents with real MLServer
(and Triton) replicas, and a `modelplane gateway` process.

A caller's mistake is a 4xx with a short reason; what a server says in a traceback stays in our logs; 5xx is
only for our faults or the server's. The requests below are the ones found on main: 100,000 nested ``[``
(a RecursionError, 500), a shape that does not fit the model, an oversized BYTES tensor, the wrong
datatype (502 "every replica tried failed" carrying MLServer's traceback and venv paths).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from gateway.edges.v2_grpc_codec import encode_infer_request
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from servers.launch import server_venv
from tests.support.cluster_fixtures import Cluster, Iris, api_of, model
from tests.support.processes import start_gateway, stop_process
from tests.support.triton_models import write_doubler

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]

MAX_REASON = 600  # characters: "short" for the assertions below; the gateway's own bound is smaller


def leaks(text: str, *folders: Path) -> list[str]:
    """What in ``text`` belongs to a process's insides: a traceback, a Python file, a venv or a work folder."""
    marks = ["Traceback", "site-packages", '.py", line', sys.prefix, str(server_venv("mlserver"))]
    marks += [str(folder) for folder in folders]
    return [mark for mark in marks if mark in text]


def short_reason(status: int, body: bytes, *folders: Path) -> str:
    """The ``error`` of a JSON error answer, checked to be short and to leak nothing."""
    document = json.loads(body)
    assert isinstance(document, dict), body[:300]
    reason = document.get("error")
    assert isinstance(reason, str), document
    assert len(body) <= MAX_REASON + 100, f"HTTP {status}: {len(body)} bytes: {body[:300]!r}..."
    assert not leaks(reason, *folders), f"HTTP {status} leaks {leaks(reason, *folders)}: {reason}"
    return reason


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def post_raw(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, bytes]:
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.read()


def tensor(shape: list[int], datatype: str, data: Any, name: str = "predict") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


FLOWERS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
# (what, request body, words the reason must contain): each one the caller's mistake.
CALLER_MISTAKES: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("100,000 nested [", b"[" * 100_000, ("nest",)),
    (
        "nesting inside a tensor",
        b'{"inputs": [{"name": "predict", "shape": [1], "datatype": "FP64", "data": '
        + b"[" * 100_000
        + b"1"
        + b"]" * 100_000
        + b"}]}",
        ("nest",),
    ),
    ("a shape that does not hold the data", json.dumps(tensor([1, 4], "FP64", FLOWERS)).encode(), ("shape",)),
    ("a shape the model cannot take", json.dumps(tensor([2, 3], "FP64", [1, 2, 3, 4, 5, 6])).encode(), ("features",)),
    ("strings for FP64", json.dumps(tensor([2], "FP64", ["a", "b"])).encode(), ("FP64",)),
    ("BYTES for a numeric model", json.dumps(tensor([2, 4], "BYTES", ["1"] * 8)).encode(), ("bytes",)),
    # MLServer echoes the 10 MB element in its traceback: the proxy keeps its ends and the final exception.
    ("an oversized BYTES tensor", json.dumps(tensor([1], "BYTES", ["x" * 10_000_000])).encode(), ("2D array",)),
    # A string that never ends, 4 MB of escaped quotes: once a scan quadratic in the body's length.
    ("an unending string", b'"' + b'\\"' * 2_000_000, ("not valid JSON", "Unterminated string")),
    ("an unknown datatype", json.dumps(tensor([2, 4], "FP65", FLOWERS)).encode(), ("FP65",)),
]


async def test_caller_mistakes_are_4xx_with_a_short_reason_through_the_gateway(
    cluster: Cluster, iris: Iris, http: aiohttp.ClientSession
) -> None:
    scheduler = cluster.start_scheduler()
    agents = await asyncio.to_thread(cluster.start_agents, cluster.agent(0), cluster.agent(1))
    async with api_of(cluster) as api:
        spec = model("iris", str(iris.folder))
        spec.deploymentSpec.replicas = 2
        await api.load(spec)
        await api.available("iris")
    gateway = await asyncio.to_thread(
        start_gateway, cluster.root / "gateway", scheduler.listen, "--grpc-listen=127.0.0.1:0"
    )
    url = f"{gateway.url}/v2/models/iris/infer"
    good = json.dumps(iris.request).encode()

    problems: list[str] = []  # every case is tried, so one run shows all that are wrong
    for what, body, words in CALLER_MISTAKES:
        status, answer = await post_raw(http, url, body)
        try:
            assert status in (400, 413, 422), f"HTTP {status}: {answer[:300]!r}"
            reason = short_reason(status, answer, cluster.root)
            for word in words:
                assert word.lower() in reason.lower(), reason
        except (AssertionError, ValueError) as error:
            problems.append(f"{what}: {error}")
        status, answer = await post_raw(http, url, good)
        assert status == 200, f"after {what}: HTTP {status}: {answer[:300]!r}"
        assert json.loads(answer)["outputs"][0]["data"] == iris.expected
    assert not problems, "\n".join(problems)

    # The same over the gateway's gRPC edge: INVALID_ARGUMENT with a short reason, never a traceback.
    assert gateway.grpc_listen is not None
    async with aio.insecure_channel(gateway.grpc_listen) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        for what, request in [
            ("a shape the model cannot take", tensor([2, 3], "FP64", [1, 2, 3, 4, 5, 6])),
            ("BYTES for a numeric model", tensor([2, 4], "BYTES", ["1"] * 8)),
        ]:
            with pytest.raises(aio.AioRpcError) as raised:
                await stub.ModelInfer(encode_infer_request("iris", None, request), timeout=60)
            details = raised.value.details() or ""
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {raised.value}"
            assert len(details) <= MAX_REASON, details
            assert not leaks(details, cluster.root), details
        # Bytes that are no ModelInferRequest at all are the caller's mistake too.
        corrupt: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer"
        )
        with pytest.raises(aio.AioRpcError) as raised:
            await corrupt(b"\xff\xff\xff", timeout=60)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
        assert "DecodeError" not in (raised.value.details() or "")
    # What the server said in full is in the log of the agent in front of it, for whoever runs them.
    assert any("LogisticRegression is expecting 4 features" in agent.log() for agent in agents)
    stop_process(gateway.process)


async def test_the_agents_proxy_passes_on_no_traceback(cluster: Cluster, iris: Iris, tmp_path: Path) -> None:
    """The agent's proxy fronts MLServer and Triton for any client (the gateway, `modelplane model infer`):
    what their servers reject is a 4xx with the server's reason in one line, never its traceback."""
    await asyncio.to_thread(server_venv, "triton")  # made here on a first run, not under the agent's ready timeout
    cluster.start_scheduler()
    mlserver, triton = await asyncio.to_thread(cluster.start_agents, cluster.agent(0), cluster.agent(1, kind="triton"))
    doubler = write_doubler(tmp_path / "doubler")
    async with api_of(cluster) as api:
        await api.load(model("iris", str(iris.folder)))
        await api.load(model("doubler", str(doubler), requirements=("triton",)))
        await api.available("iris")
        await api.available("doubler")
    cases = [
        (mlserver, "iris", tensor([1, 4], "FP64", FLOWERS), "shape"),
        (mlserver, "iris", tensor([2, 3], "FP64", [1, 2, 3, 4, 5, 6]), "features"),
        (mlserver, "iris", tensor([1], "BYTES", ["x" * 20_000_000]), "Expected 2D array"),  # echoed back whole
        # Triton answers these with 500 {"error": "Unable to parse 'data': ..."}: still the request's fault.
        (triton, "doubler", tensor([4], "FP32", [1, 2, 3], name="INPUT0"), "shape"),
        (triton, "doubler", tensor([3], "FP32", ["a", "b", "c"], name="INPUT0"), "parse"),
        (triton, "doubler", tensor([3], "INT32", [1, 2, 3], name="INPUT0"), "data-type"),
    ]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        problems: list[str] = []
        for agent, name, request, word in cases:
            url = f"{agent.proxy_url}/v2/models/{name}/infer"
            status, answer = await post_raw(http, url, json.dumps(request).encode())
            try:
                assert status == 400, f"HTTP {status}: {answer[:300]!r}"
                reason = short_reason(status, answer, cluster.root, agent.server_dir)
                assert word in reason, reason
            except (AssertionError, ValueError) as error:
                problems.append(f"{name} {request['inputs'][0]['shape']}: {error}")
        assert not problems, "\n".join(problems)
    # gRPC through the proxy: the server's code stays, its details are bounded and say nothing of its insides.
    async with aio.insecure_channel(mlserver.proxy_grpc) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as raised:
            await stub.ModelInfer(encode_infer_request("iris", None, tensor([1], "BYTES", ["x" * 100_000])), timeout=60)
        details = raised.value.details() or ""
        assert len(details) <= MAX_REASON, f"{len(details)} characters: {details[:300]}..."
        assert not leaks(details, cluster.root, mlserver.server_dir), details
        corrupt: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer"
        )
        with pytest.raises(aio.AioRpcError) as raised:
            await corrupt(b"\xff\xff\xff", timeout=60)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
