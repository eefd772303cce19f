"""Every process's Prometheus metrics, scraped live: a real scheduler (--metrics-listen), an agent with a real MLServer
(/metrics on its proxy's HTTP port) and a gateway (/metrics on its REST port), before and after a load, inferences
and an unload. Names and values both: a count that does not move, or moves by the wrong amount, fails."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.agent_processes import kill_server_of
from tests.support.cluster_fixtures import Cluster, Iris, api_of, model, until
from tests.support.metrics_reading import sample_names, sample_sum, scrape
from tests.support.processes import start_gateway, stop_process

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]


async def answers_200(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(url) as response:
        return response.status == 200


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def test_scheduler_agent_and_gateway_metrics_follow_a_load_inferences_and_an_unload(
    cluster: Cluster, iris: Iris, http: aiohttp.ClientSession
) -> None:
    scheduler = cluster.start_scheduler()
    [agent] = cluster.start_agents(cluster.agent(0))
    assert scheduler.metrics_listen is not None
    scheduler_url, agent_url = f"http://{scheduler.metrics_listen}/metrics", f"{agent.proxy_url}/metrics"

    before = await scrape(http, scheduler_url)
    assert sample_sum(before, "modelmesh_models_managed_total") == 0
    assert sample_sum(before, "modelplane_scheduler_agent_sessions", server="mlserver") == 1
    assert sample_sum(before, "modelplane_scheduler_load_model_duration_seconds_count") == 0
    held_before = await scrape(http, agent_url)
    assert sample_sum(held_before, "modelmesh_instance_models_total") == 0
    assert sample_sum(held_before, "modelmesh_instance_capacity_bytes") == 200 * 1024 * 1024
    assert sample_sum(held_before, "modelplane_agent_server_serving") == 1
    assert "modelmesh_instance_lru_age_seconds" not in sample_names(held_before)  # nothing loaded: no LRU model

    async with api_of(cluster) as api:
        await api.load(model("iris", str(iris.folder)))
        await api.available("iris")
        await api.load(model("iris-b", str(iris.folder)))  # the experiment's second candidate, below
        await api.available("iris-b")

    loaded = await scrape(http, scheduler_url)
    assert sample_sum(loaded, "modelplane_scheduler_models", state="AVAILABLE") == 2
    assert sample_sum(loaded, "modelplane_scheduler_models") == 2  # two models, each in one state
    assert sample_sum(loaded, "modelmesh_models_loaded_total") == 2
    assert sample_sum(loaded, "modelmesh_models_managed_total") == 2
    assert sample_sum(loaded, "modelplane_scheduler_load_model_duration_seconds_count") == 2
    assert sample_sum(loaded, "modelplane_scheduler_load_model_duration_seconds_sum") > 0
    assert sample_sum(loaded, "modelplane_scheduler_placement_duration_seconds_count") >= 1
    assert sample_sum(loaded, "modelplane_scheduler_store_commit_duration_seconds_count") >= 1
    held = await scrape(http, agent_url)
    assert sample_sum(held, "modelmesh_instance_models_total") == 2
    assert sample_sum(held, "modelmesh_loadmodel_milliseconds_count") == 2
    assert sample_sum(held, "modelmesh_loadmodel_milliseconds_sum") > 0
    assert sample_sum(held, "modelmesh_loading_queue_delay_milliseconds_count") == 2
    assert sample_sum(held, "modelmesh_loadmodel_failure_total") == 0
    assert sample_sum(held, "modelmesh_instance_used_bytes") == 2 * 10 * 1024 * 1024  # the models' memoryBytes
    assert "modelplane_agent_artifact_cache_bytes" in sample_names(held)  # 0: a local folder is used in place
    assert sample_sum(held, "modelmesh_instance_lru_age_seconds") >= 0
    assert "modelmesh_instance_lru_seconds" in sample_names(held)

    gateway = start_gateway(cluster.root / "gateway", scheduler.listen)  # once both are routed: its first table
    try:
        for _ in range(3):
            async with http.post(f"{gateway.url}/v2/models/iris/infer", json=iris.request) as response:
                assert response.status == 200, await response.text()
        async with http.post(f"{gateway.url}/v2/models/nosuch/infer", json=iris.request) as response:
            assert response.status == 404
        routed = await scrape(http, f"{gateway.url}/metrics")
        labels = {"kind": "model", "name": "iris", "route": "iris", "code": "200"}
        assert sample_sum(routed, "modelplane_gateway_requests_total", **labels) == 3
        assert sample_sum(routed, "modelplane_gateway_request_duration_seconds_count", **labels) == 3
        assert sample_sum(routed, "modelplane_gateway_request_duration_seconds_bucket", **labels, le="+Inf") == 3
        assert sample_sum(routed, "modelplane_gateway_requests_total") == 3  # the unknown name got no series
        # An experiment over both, and a one-step pipeline: route counts and step timings.
        async with aio.insecure_channel(scheduler.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            candidates = [
                pb.ExperimentCandidate(name="iris", weight=1),
                pb.ExperimentCandidate(name="iris-b", weight=1),
            ]
            experiment = pb.Experiment(name="ab", candidates=candidates)
            await stub.StartExperiment(pb.StartExperimentRequest(experiment=experiment), timeout=10)
            steps = [pb.PipelineStep(name="iris")]
            pipeline = pb.Pipeline(name="pipe", steps=steps, output=pb.PipelineOutput(steps=["iris"]))
            await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=pipeline), timeout=10)
        await until(lambda: answers_200(http, f"{gateway.url}/v2/models/ab/ready"), "experiment ab routed")
        await until(lambda: answers_200(http, f"{gateway.url}/v2/pipelines/pipe/ready"), "pipeline pipe routed")
        for _ in range(20):
            async with http.post(f"{gateway.url}/v2/models/ab/infer", json=iris.request) as response:
                assert response.status == 200, await response.text()
        async with http.post(f"{gateway.url}/v2/pipelines/pipe/infer", json=iris.request) as response:
            assert response.status == 200, await response.text()
        split = await scrape(http, f"{gateway.url}/metrics")
        drawn = {
            route: sample_sum(split, "modelplane_gateway_experiment_routes_total", experiment="ab", route=route)
            for route in ("iris", "iris-b")
        }
        assert sum(drawn.values()) == 20
        for route, count in drawn.items():  # each draw answered under the route it took
            answered = sample_sum(split, "modelplane_gateway_requests_total", kind="model", name="ab", route=route)
            assert answered == count, (route, drawn)
        step = {"pipeline": "pipe", "step": "iris", "outcome": "ok"}
        assert sample_sum(split, "modelplane_gateway_pipeline_step_duration_seconds_count", **step) == 1
        assert sample_sum(split, "modelplane_gateway_pipeline_step_duration_seconds_sum", **step) > 0
        piped = {"kind": "pipeline", "name": "pipe", "route": "pipe", "code": "200"}
        assert sample_sum(split, "modelplane_gateway_requests_total", **piped) == 1
        assert sample_sum(split, "modelplane_gateway_request_duration_seconds_count", **piped) == 1
        async with aio.insecure_channel(scheduler.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            await stub.StopExperiment(pb.StopExperimentRequest(name="ab"), timeout=10)
            await stub.UnloadPipeline(pb.UnloadPipelineRequest(name="pipe"), timeout=10)

        watched = await scrape(http, scheduler_url)
        assert sample_sum(watched, "modelplane_scheduler_status_subscribers", hub="routes") == 1  # the gateway
        assert sample_sum(watched, "modelplane_scheduler_stream_lag_seconds", rpc="WatchRoutes") >= 0
    finally:
        stop_process(gateway.process)

    # The agent's server killed: restarted, counted, serving again with both models loaded again.
    kill_server_of(agent)

    async def restarted_and_serving() -> bool:
        families = await scrape(http, agent_url)
        restarts = sample_sum(families, "modelplane_agent_server_restarts_total")
        return restarts >= 1 and sample_sum(families, "modelplane_agent_server_serving") == 1

    await until(restarted_and_serving, "the agent's server restarted and serving", cluster.diagnostics)
    again = await scrape(http, agent_url)
    assert sample_sum(again, "modelplane_agent_server_restarts_total") == 1
    assert sample_sum(again, "modelmesh_instance_models_total") == 2

    async with api_of(cluster) as api:
        for name in ("iris", "iris-b"):
            await api.unload(name)
            await api.gone(name)
    unloaded = await scrape(http, agent_url)
    assert sample_sum(unloaded, "modelmesh_instance_models_total") == 0
    assert sample_sum(unloaded, "modelmesh_unloadmodel_milliseconds_count") == 2
    assert sample_sum(unloaded, "modelmesh_instance_used_bytes") == 0
    forgotten = await scrape(http, scheduler_url)
    assert sample_sum(forgotten, "modelmesh_models_managed_total") == 0
    assert sample_sum(forgotten, "modelplane_scheduler_models") == 0
