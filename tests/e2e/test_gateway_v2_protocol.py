"""The V2 (Open Inference) protocol at the gateway as third-party clients use it (issue 16): Triton's own client
in its default binary mode against a Triton model and an MLServer model, model metadata and configuration in the
public names, readiness of unknown models, one server identity over REST and gRPC, Seldon's routing conventions
(the Seldon-Model header, ``.pipeline`` and ``.experiment``), and a gateway cut off from its scheduler.

A scheduler, an agent with MLServer serving iris, an agent with Triton serving the doubler (OUTPUT0 = 2 * INPUT0),
an experiment and a one-step pipeline over iris, and a `modelplane gateway` with its gRPC edge.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
from grpc import aio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from gateway.edges.v2_grpc_codec import decode_infer_response, encode_infer_request
from generated.inference.v2 import grpc_predict_v2_pb2 as v2_pb
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from servers.launch import server_venv
from tests.support.cluster_fixtures import WAIT, Cluster, Iris, api_of, model
from tests.support.processes import GatewayProcess, start_gateway, stop_process
from tests.support.triton_models import write_doubler

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(900)]

PIPELINE_READY = pb.PipelineVersionState.PipelineStatus.Value("PipelineReady")
DOUBLED_IN = [1.0, 2.5, -3.0]


@dataclass
class Served:
    cluster: Cluster
    gateway: GatewayProcess
    iris: Iris

    @property
    def grpc_listen(self) -> str:
        assert self.gateway.grpc_listen is not None
        return self.gateway.grpc_listen


async def _serve(cluster: Cluster, iris: Iris, doubler: Path) -> None:
    assert cluster.scheduler is not None
    async with api_of(cluster) as api:
        await api.load(model("iris", str(iris.folder)))
        await api.load(model("doubler", str(doubler), requirements=("triton",)))
        await api.available("iris")
        await api.available("doubler")
    async with aio.insecure_channel(cluster.scheduler.listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        experiment = pb.Experiment(name="exp", candidates=[pb.ExperimentCandidate(name="iris", weight=1)])
        await stub.StartExperiment(pb.StartExperimentRequest(experiment=experiment), timeout=10)
        pipeline = pb.Pipeline(
            name="p1", steps=[pb.PipelineStep(name="iris")], output=pb.PipelineOutput(steps=["iris"])
        )
        await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=pipeline), timeout=10)
        async with asyncio.timeout(WAIT):
            while True:
                [status] = [s async for s in stub.PipelineStatus(pb.PipelineStatusRequest(name="p1"), timeout=10)]
                if status.versions and status.versions[-1].state.status == PIPELINE_READY:
                    break
                await asyncio.sleep(0.1)


@pytest.fixture
def served(cluster: Cluster, iris: Iris, tmp_path: Path) -> Iterator[Served]:
    server_venv("triton")  # made here on a first run, not under the agent's ready timeout
    scheduler = cluster.start_scheduler()
    cluster.start_agents(cluster.agent(0), cluster.agent(1, kind="triton"))
    asyncio.run(_serve(cluster, iris, write_doubler(tmp_path / "doubler")))
    gateway = start_gateway(cluster.root / "gateway", scheduler.listen, "--grpc-listen=127.0.0.1:0")
    yield Served(cluster, gateway, iris)
    stop_process(gateway.process)


def iris_input(iris: Iris, binary: bool = True) -> triton_http.InferInput:
    [tensor] = iris.request["inputs"]
    flowers = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
    given = triton_http.InferInput(tensor["name"], list(flowers.shape), "FP64")
    given.set_data_from_numpy(flowers, binary_data=binary)
    return given


def doubler_input(binary: bool = True) -> triton_http.InferInput:
    given = triton_http.InferInput("INPUT0", [len(DOUBLED_IN)], "FP32")
    given.set_data_from_numpy(np.asarray(DOUBLED_IN, dtype=np.float32), binary_data=binary)
    return given


async def check_tritonclient_binary(served: Served) -> None:
    """tritonclient's HTTP client as its users call it (binary inputs and outputs unless told otherwise), against
    Triton (which knows the extension) and MLServer (which does not: the gateway converts)."""
    async with triton_http_aio.InferenceServerClient(served.gateway.listen) as client:
        # Default mode: binary inputs, every output binary (the request's binary_data_output).
        result = await client.infer("doubler", [doubler_input()])
        assert result.as_numpy("OUTPUT0").tolist() == [2.0, 5.0, -6.0]
        result = await client.infer("iris", [iris_input(served.iris)])
        assert result.as_numpy("predict").ravel().tolist() == served.iris.expected
        # Requested outputs, binary and not, and JSON inputs with a binary answer.
        wanted = [triton_http_aio.InferRequestedOutput("OUTPUT0", binary_data=False)]
        result = await client.infer("doubler", [doubler_input()], outputs=wanted)
        assert result.get_output("OUTPUT0")["data"] == [2.0, 5.0, -6.0]
        wanted = [triton_http_aio.InferRequestedOutput("predict", binary_data=True)]
        result = await client.infer("iris", [iris_input(served.iris, binary=False)], outputs=wanted)
        assert result.as_numpy("predict").ravel().tolist() == served.iris.expected
        # A pipeline's answer too.
        result = await client.infer("p1", [iris_input(served.iris)], headers={"Seldon-Model": "p1.pipeline"})
        assert result.as_numpy("predict").ravel().tolist() == served.iris.expected


async def check_tritonclient_metadata(served: Served) -> None:
    """Metadata, configuration and readiness as tritonclient reads them: the public names, unknown is not ready."""
    async with triton_http_aio.InferenceServerClient(served.gateway.listen) as client:
        assert await client.is_server_ready()
        assert await client.is_model_ready("doubler")
        assert not await client.is_model_ready("nosuch")
        metadata = await client.get_model_metadata("doubler")
        assert metadata["name"] == "doubler", metadata
        assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [("INPUT0", "FP32")]
        config = await client.get_model_config("doubler")
        assert config["name"] == "doubler", config
        assert config["backend"] == "python", config
        metadata = await client.get_model_metadata("iris")
        assert metadata["name"] == "iris", metadata
        assert metadata["versions"] == ["1"], metadata


TRITONCLIENT_GRPC = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.grpc as client_module

    client = client_module.InferenceServerClient(sys.argv[1])
    doubled = client_module.InferInput("INPUT0", [3], "FP32")
    doubled.set_data_from_numpy(np.asarray([1.0, 2.5, -3.0], dtype=np.float32))
    flowers = np.asarray(json.loads(sys.argv[2]), dtype=np.float64)
    iris = client_module.InferInput("predict", list(flowers.shape), "FP64")
    iris.set_data_from_numpy(flowers)
    server = client.get_server_metadata(as_json=True)
    print(json.dumps({
        "doubler": client.infer("doubler", [doubled]).as_numpy("OUTPUT0").tolist(),
        "iris": client.infer("iris", [iris]).as_numpy("predict").ravel().tolist(),
        "pipeline": client.infer("p1.pipeline", [iris]).as_numpy("predict").ravel().tolist(),
        "experiment": client.infer("iris", [iris], headers={"seldon-model": "exp.experiment"})
            .as_numpy("predict").ravel().tolist(),
        "metadata": client.get_model_metadata("doubler", as_json=True),
        "unknown_ready": client.is_model_ready("nosuch"),
        "server": [server["name"], server["version"]],
    }))
    """
)


def check_tritonclient_grpc(served: Served) -> dict[str, Any]:
    """tritonclient's gRPC client, run by the Triton venv's Python (its protobuf pin cannot share ours)."""
    [tensor] = served.iris.request["inputs"]
    flowers = np.asarray(tensor["data"]).reshape(tensor["shape"]).tolist()
    python = server_venv("triton") / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", TRITONCLIENT_GRPC, served.grpc_listen, json.dumps(flowers)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout)
    assert answer["doubler"] == [2.0, 5.0, -6.0]
    assert answer["iris"] == answer["pipeline"] == answer["experiment"] == served.iris.expected
    assert answer["metadata"]["name"] == "doubler", answer["metadata"]
    assert answer["unknown_ready"] is False
    return answer


async def check_metadata_and_identity(served: Served, grpc_server: list[str]) -> None:
    url = served.gateway.url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        async with http.get(f"{url}/v2") as response:
            rest_server = await response.json()
        assert [rest_server["name"], rest_server["version"]] == grpc_server, (rest_server, grpc_server)
        async with http.get(f"{url}/v2/models/doubler/versions/1") as response:
            metadata = await response.json()
        assert (response.status, metadata["name"], metadata["versions"]) == (200, "doubler", ["1"]), metadata
        async with http.get(f"{url}/v2/models/doubler/config") as response:
            assert (await response.json())["name"] == "doubler"
        # MLServer has no configuration endpoint: said so, not taken for a model that moved away (503).
        async with http.get(f"{url}/v2/models/iris/config") as response:
            said = await response.json()
            assert response.status == 400, said
            assert "configuration" in said["error"], said
        # REST readiness: 200 is true, a 4xx false (the protocol's health rule), with the reason.
        async with http.get(f"{url}/v2/models/nosuch/ready") as response:
            assert response.status == 404
            assert "nosuch" in (await response.json())["error"]
    async with aio.insecure_channel(served.grpc_listen) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        assert not (await stub.ModelReady(v2_pb.ModelReadyRequest(name="nosuch"), timeout=30)).ready
        metadata = await stub.ModelMetadata(v2_pb.ModelMetadataRequest(name="iris"), timeout=30)
        assert (metadata.name, list(metadata.versions)) == ("iris", ["1"]), metadata


async def check_scheduler_unreachable(served: Served) -> None:
    """Without its scheduler the gateway still routes what it knows, and says 503 (not 404) for any other name:
    the name may exist."""
    assert served.cluster.scheduler is not None
    stop_process(served.cluster.scheduler.process)
    url = served.gateway.url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        async with asyncio.timeout(WAIT):
            while True:  # until the gateway has seen its routing stream end
                async with http.post(f"{url}/v2/models/newer/infer", json=served.iris.request) as response:
                    status, reason = response.status, (await response.json())["error"]
                if status != 404:
                    break
                await asyncio.sleep(0.1)
        assert status == 503, reason
        assert "newer" in reason, reason
        assert "scheduler" in reason, reason
        async with http.post(f"{url}/v2/models/iris/infer", json=served.iris.request) as response:
            assert response.status == 200, await response.text()


async def check_seldon_names(served: Served) -> None:
    """Clients written for Seldon's gateway: the Seldon-Model header and the .pipeline / .experiment suffixes."""
    url, request, expected = served.gateway.url, served.iris.request, served.iris.expected
    calls = [
        ("p1.pipeline", {}),
        ("exp.experiment", {}),
        ("p1", {"Seldon-Model": "p1.pipeline"}),
        ("iris", {"Seldon-Model": "exp.experiment"}),
        ("whatever", {"Seldon-Model": "iris"}),
    ]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        for name, headers in calls:
            async with http.post(f"{url}/v2/models/{name}/infer", json=request, headers=headers) as response:
                assert response.status == 200, (name, headers, await response.text())
                assert (await response.json())["outputs"][0]["data"] == expected, (name, headers)
            async with http.get(f"{url}/v2/models/{name}/ready", headers=headers) as response:
                assert response.status == 200, (name, headers, await response.text())
        async with http.post(f"{url}/v2/models/nosuch.experiment/infer", json=request) as response:
            assert response.status == 404
            assert "experiment 'nosuch'" in (await response.json())["error"]
    async with aio.insecure_channel(served.grpc_listen) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        for name, headers in calls:
            metadata = tuple((key.lower(), value) for key, value in headers.items())
            answer = await stub.ModelInfer(encode_infer_request(name, None, request), metadata=metadata, timeout=60)
            assert decode_infer_response(answer)["outputs"][0]["data"] == expected, (name, headers)


async def check_agent_proxies(served: Served) -> None:
    """Callers reach the agents' proxies too (`modelplane up` prints them). Triton's speaks the extension: its
    binary answer passes on, in the public name; MLServer's refuses a binary body with a 400 that says why (rather
    than MLServer's own confusion), and takes tritonclient's JSON mode."""
    mlserver, triton = served.cluster.agents
    async with triton_http_aio.InferenceServerClient(triton.proxy_http) as client:
        result = await client.infer("doubler", [doubler_input()])
        assert result.as_numpy("OUTPUT0").tolist() == [2.0, 5.0, -6.0]
        assert result.get_response()["model_name"] == "doubler"
    async with triton_http_aio.InferenceServerClient(mlserver.proxy_http) as client:
        with pytest.raises(InferenceServerException) as raised:
            await client.infer("iris", [iris_input(served.iris)])
        assert raised.value.status() == "400", raised.value
        assert "binary" in raised.value.message(), raised.value
        wanted = [triton_http_aio.InferRequestedOutput("predict", binary_data=False)]
        result = await client.infer("iris", [iris_input(served.iris, binary=False)], outputs=wanted)
        assert np.asarray(result.get_output("predict")["data"]).ravel().tolist() == served.iris.expected


def test_the_agents_proxies_and_the_binary_extension(served: Served) -> None:
    asyncio.run(check_agent_proxies(served))


def test_tritonclient_http_in_its_default_binary_mode(served: Served) -> None:
    asyncio.run(check_tritonclient_binary(served))


def test_tritonclient_grpc(served: Served) -> None:
    check_tritonclient_grpc(served)


def test_metadata_config_readiness_and_identity(served: Served) -> None:
    asyncio.run(check_tritonclient_metadata(served))
    grpc_server = check_tritonclient_grpc(served)["server"]
    asyncio.run(check_metadata_and_identity(served, grpc_server))


def test_seldon_routing_conventions(served: Served) -> None:
    asyncio.run(check_seldon_names(served))


def test_a_gateway_cut_off_from_its_scheduler_answers_503_for_names_it_does_not_know(served: Served) -> None:
    asyncio.run(check_scheduler_unreachable(served))


# ----------------------------------------------------------------- bodies the gateway cannot read


def exchange(listen: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One POST to the doubler as raw HTTP/1.1 (nothing a client library would refuse to send is refused)."""
    host, port = listen.rsplit(":", 1)
    head = [b"POST /v2/models/doubler/infer HTTP/1.1", f"Host: {listen}".encode()]
    head += [f"{name}: {value}".encode() for name, value in headers.items()]
    head += [f"Content-Length: {len(body)}".encode(), b"Connection: close"]
    with socket.create_connection((host, int(port)), timeout=120) as connection:
        connection.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        response = http.client.HTTPResponse(connection, method="POST")
        response.begin()
        return response.status, response.read()


datatypes = st.sampled_from(["FP32", "FP64", "INT32", "BYTES", "BOOL", "BF16", "nonsense"])
binary_bodies = st.fixed_dictionaries(
    {
        "datatype": datatypes,
        "shape": st.lists(st.integers(-2, 5), max_size=2) | st.just([3]),
        "size": st.integers(-1, 20) | st.just(12) | st.text(max_size=3),
        "raw": st.binary(max_size=20) | st.builds(lambda: np.asarray(DOUBLED_IN, dtype="<f4").tobytes()),
        "length_shift": st.sampled_from([0, 0, 0, -1, 10_000]),
        "length_text": st.none() | st.sampled_from(["", "x", "-1", "1e3", "99999999999999999"]),
        "outputs": st.none() | st.sampled_from([True, False, "yes", 1]),
        "data_too": st.booleans(),
    }
)


def test_bodies_the_gateway_cannot_read_get_a_400_that_says_why(served: Served) -> None:
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(case=binary_bodies)
    @example(  # tritonclient's own request, so that a readable body is always among those sent
        case={
            "datatype": "FP32",
            "shape": [3],
            "size": 12,
            "raw": np.asarray(DOUBLED_IN, dtype="<f4").tobytes(),
            "length_shift": 0,
            "length_text": None,
            "outputs": True,
            "data_too": False,
        }
    )
    def binary(case: dict[str, Any]) -> None:
        tensor: dict[str, Any] = {
            "name": "INPUT0",
            "shape": case["shape"],
            "datatype": case["datatype"],
            "parameters": {"binary_data_size": case["size"]},
        }
        if case["data_too"]:
            tensor["data"] = DOUBLED_IN
        request: dict[str, Any] = {"inputs": [tensor]}
        if case["outputs"] is not None:
            request["parameters"] = {"binary_data_output": case["outputs"]}
        header = json.dumps(request).encode()
        length = case["length_text"] if case["length_text"] is not None else str(len(header) + case["length_shift"])
        status, answer = exchange(
            served.gateway.listen, {"Inference-Header-Content-Length": length}, header + case["raw"]
        )
        elements = int(np.prod(case["shape"])) if all(dim >= 0 for dim in case["shape"]) else -1
        readable = (  # by the gateway, as an FP32 tensor (the doubler takes FP32 of any length)
            length == str(len(header))
            and case["size"] == len(case["raw"]) == 4 * elements
            and case["datatype"] == "FP32"
            and not case["data_too"]
            and case["outputs"] in (None, True, False)
        )
        where = f"{case}: HTTP {status} {answer[:300]!r}"
        if readable and case["shape"] == [3] and case["raw"] == np.asarray(DOUBLED_IN, dtype="<f4").tobytes():
            assert status == 200, where
            return
        if readable and status == 200:
            return  # other shapes and numbers the model may take (not NaN, which JSON cannot carry to Triton)
        assert status == 400, where
        reason = json.loads(answer)["error"]
        assert isinstance(reason, str), where
        assert reason, where
        assert "Traceback" not in reason, where
        assert "codec can't decode" not in reason, where  # the JSON parser's words on the binary part

    binary()
    assert "Traceback" not in served.gateway.log()
