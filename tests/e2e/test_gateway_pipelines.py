"""Pipelines through the gateway with real MLServer replicas: a -> b, a -> c, join b and c -> output.

The models are small scikit-learn ones fitted here (the main venv pins MLServer's scikit-learn):
a: iris classifier (4 features -> class); b: linear regression of the class (2 * class + 1);
c: a decision tree mapping class k to (k + 1) % 3. The pipeline's answer must equal calling the three
models by hand, in the same order, through the gateway's plain model routes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.cluster_fixtures import WAIT, Cluster, Iris, api_of, model, until
from tests.support.kafka_broker import KafkaBroker, consume_until, create_topics, produce
from tests.support.metrics_reading import sample_sum, scrape
from tests.support.pipeline_models import class_models, three_step_pipeline
from tests.support.processes import GatewayProcess, start_gateway, stop_process

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures", "tests.support.kafka_broker"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]

READY = pb.PipelineVersionState.PipelineStatus.Value("PipelineReady")


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


async def test_three_model_pipeline_over_rest_and_kafka_equals_the_calls_by_hand(
    cluster: Cluster, iris: Iris, http: aiohttp.ClientSession, tmp_path: Path, kafka_broker: KafkaBroker
) -> None:
    scheduler = cluster.start_scheduler()
    await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    b_folder, c_folder = class_models(tmp_path / "models")
    async with api_of(cluster) as api:
        for name, folder in (("pa", iris.folder), ("pb", b_folder), ("pc", c_folder)):
            await api.load(model(name, str(folder)))
        prefix = f"t{uuid.uuid4().hex[:8]}"  # the session's broker is shared: topics of our own
        gateway = await asyncio.to_thread(
            start_gateway,
            cluster.root / "gateway",
            scheduler.listen,
            f"--kafka={kafka_broker.bootstrap}",
            f"--kafka-topic-prefix={prefix}",
        )
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

    # The same pipeline through Kafka: requests on .pipeline.abc.inputs, answers on .outputs with the
    # request id in a header; a model's topics too; a malformed request goes to the errors topic.
    topics = f"{prefix}.default"
    await create_topics(kafka_broker.bootstrap, [f"{topics}.pipeline.abc.inputs", f"{topics}.model.pa.inputs"])
    ids = [f"req-{n}" for n in range(5)]
    for request_id in ids:
        await produce(
            kafka_broker.bootstrap,
            f"{topics}.pipeline.abc.inputs",
            [json.dumps(iris.request).encode()],
            key=request_id.encode(),
            headers=[("x-request-id", request_id.encode())],
        )
    await produce(kafka_broker.bootstrap, f"{topics}.model.pa.inputs", [json.dumps(iris.request).encode()], key=b"m")
    await produce(kafka_broker.bootstrap, f"{topics}.pipeline.abc.inputs", [b"not json"], key=b"bad")

    def request_ids(records: list[Any]) -> set[str]:
        return {dict(r.headers)["x-request-id"].decode() for r in records}

    answers = await consume_until(
        kafka_broker.bootstrap, f"{topics}.pipeline.abc.outputs", lambda rs: set(ids) <= request_ids(rs), timeout=WAIT
    )
    for record in answers:
        body = json.loads(record.value)
        assert {t["name"]: t["data"] for t in body["outputs"]} == expected
        assert record.key == dict(record.headers)["x-request-id"]
    assert len(answers) == len(ids), "each request answered once"
    [model_answer] = await consume_until(
        kafka_broker.bootstrap, f"{topics}.model.pa.outputs", lambda rs: len(rs) >= 1, timeout=WAIT
    )
    assert json.loads(model_answer.value)["outputs"][0]["data"] == iris.expected
    [error] = await consume_until(kafka_broker.bootstrap, f"{topics}.errors", lambda rs: len(rs) >= 1, timeout=WAIT)
    problem = json.loads(error.value)
    assert problem["status"] == 400
    assert problem["name"] == "abc"

    # Its metrics: the pipeline's step timed for each request (REST and Kafka alike); the consumer lag of each input
    # partition it took records from, down to nothing once every record is answered.
    lag_labels = {"topic": f"{topics}.pipeline.abc.inputs", "partition": "0"}

    async def lag_is_zero() -> bool:
        families = await scrape(http, f"{gateway.url}/metrics")
        lags = [s for f in families for s in f.samples if s.name == "modelplane_gateway_kafka_consumer_lag"]
        return any(s.labels == lag_labels and s.value == 0 for s in lags)

    await until(lag_is_zero, "the pipeline topic's lag reported, at 0")
    families = await scrape(http, f"{gateway.url}/metrics")
    step = {"pipeline": "abc", "step": "pa", "outcome": "ok"}
    # One REST request and five by Kafka ran the pipeline; the 400 one never reached a step.
    assert sample_sum(families, "modelplane_gateway_pipeline_step_duration_seconds_count", **step) == 6
    stop_process(gateway.process)
