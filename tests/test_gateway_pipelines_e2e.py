"""Pipelines through the gateway with real MLServer replicas: a -> b, a -> c, join b and c -> output.

The models are small scikit-learn ones fitted here (the main venv pins MLServer's scikit-learn):
a: iris classifier (4 features -> class); b: linear regression of the class (2 * class + 1);
c: a decision tree mapping class k to (k + 1) % 3. The pipeline's answer must equal calling the three
models by hand, in the same order, through the gateway's plain model routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import joblib
import numpy as np
import pytest
from grpc import aio
from sklearn.linear_model import LinearRegression
from sklearn.tree import DecisionTreeClassifier

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.cluster_fixtures import WAIT, Cluster, Iris, api_of, model
from tests.processes import GatewayProcess, start_gateway, stop_process

pytest_plugins = ["tests.real_components", "tests.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]

READY = pb.PipelineVersionState.PipelineStatus.Value("PipelineReady")


def fitted(folder: Path, estimator: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, folder / "model.joblib")
    return folder


def class_models(root: Path) -> tuple[Path, Path]:
    classes = np.array([[0], [1], [2]] * 10)
    b = LinearRegression().fit(classes, 2 * classes.ravel() + 1)
    c = DecisionTreeClassifier(random_state=0).fit(classes, (classes.ravel() + 1) % 3)
    return fitted(root / "b", b), fitted(root / "c", c)


def three_step_pipeline(name: str = "abc") -> pb.Pipeline:
    return pb.Pipeline(
        name=name,
        steps=[
            pb.PipelineStep(name="pa"),
            pb.PipelineStep(name="pb", inputs=["pa"]),
            pb.PipelineStep(name="pc", inputs=["pa.outputs.predict"]),
        ],
        output=pb.PipelineOutput(
            steps=["pb", "pc"],
            stepsJoin=pb.PipelineOutput.INNER,
            tensorMap={"pb.outputs.predict": "b_predict", "pc.outputs.predict": "c_predict"},
        ),
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json(content_type=None)


async def pipeline_ready(listen: str, name: str) -> None:
    async with aio.insecure_channel(listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        async with asyncio.timeout(WAIT):
            while True:
                request = pb.PipelineStatusRequest(name=name)
                [status] = [s async for s in stub.PipelineStatus(request, timeout=10)]
                state = status.versions[-1].state
                if state.status == READY and state.pipelineGwStatus == READY:
                    return
                await asyncio.sleep(0.1)


async def by_hand(http: aiohttp.ClientSession, gateway: GatewayProcess, request: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's work done by hand: a, then b and c on a's output."""
    status, a = await post(http, f"{gateway.url}/v2/models/pa/infer", request)
    assert status == 200, a
    [a_out] = a["outputs"]
    follow_up = {"inputs": [{k: a_out[k] for k in ("name", "shape", "datatype", "data")}]}
    status, b = await post(http, f"{gateway.url}/v2/models/pb/infer", follow_up)
    assert status == 200, b
    status, c = await post(http, f"{gateway.url}/v2/models/pc/infer", follow_up)
    assert status == 200, c
    return {"b_predict": b["outputs"][0]["data"], "c_predict": c["outputs"][0]["data"]}


async def test_three_model_pipeline_over_rest_equals_the_calls_by_hand(
    cluster: Cluster, iris: Iris, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    scheduler = cluster.start_scheduler()
    await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    b_folder, c_folder = class_models(tmp_path / "models")
    async with api_of(cluster) as api:
        for name, folder in (("pa", iris.folder), ("pb", b_folder), ("pc", c_folder)):
            await api.load(model(name, str(folder)))
        gateway = await asyncio.to_thread(start_gateway, cluster.root / "gateway", scheduler.listen)
        async with aio.insecure_channel(scheduler.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=three_step_pipeline()), timeout=10)
        for name in ("pa", "pb", "pc"):
            await api.available(name)
    await pipeline_ready(scheduler.listen, "abc")

    status, answer = await post(http, f"{gateway.url}/v2/pipelines/abc/infer", iris.request)
    assert status == 200, answer
    got = {tensor["name"]: tensor["data"] for tensor in answer["outputs"]}
    expected = await by_hand(http, gateway, iris.request)
    assert got == expected
    assert got["c_predict"] == [(k + 1) % 3 for k in iris.expected]
    assert got["b_predict"] == pytest.approx([2 * k + 1 for k in iris.expected])
    assert answer["model_name"] == "abc"

    # Errors name what is wrong: an unknown pipeline, a malformed body, a model addressed as a pipeline.
    status, answer = await post(http, f"{gateway.url}/v2/pipelines/nosuch/infer", iris.request)
    assert status == 404
    assert "nosuch" in answer["error"]
    status, answer = await post(http, f"{gateway.url}/v2/pipelines/abc/infer", {"inputs": [{"name": 3}]})
    assert status == 400
    async with http.get(f"{gateway.url}/v2/pipelines/abc/ready") as response:
        assert response.status == 200
    stop_process(gateway.process)
