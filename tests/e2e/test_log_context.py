"""Every log line about a model or a request names it, by the same keys in every process (issue 16, Logs), end to
end: a scheduler, an agent with a real MLServer, and a gateway, each logging JSON to its own file.

A load that fails is a warning naming the model in the scheduler's log and in the agent's; one inference is found by
its request id in the gateway's lines and the agent's (the id the caller sent, or the one the gateway assigned and
answered with); pipeline and experiment changes are info lines naming them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane import logs
from tests.support.cluster_fixtures import CALL_TIMEOUT, Cluster, Iris, api_of, model, until
from tests.support.processes import start_gateway, stop_process

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]

JSON_LOGS = ("--log-json", "--log-level=debug")
# What a process might have called an id had it not used modelplane/logs.py's keys.
OTHER_SPELLINGS = {"model_name", "modelName", "model_version", "requestId", "request-id", "pipeline_name", "runId"}


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a process's log (it may also hold what a child process printed)."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def with_ids(records: list[dict[str, Any]], **ids: object) -> list[dict[str, Any]]:
    return [record for record in records if all(record.get(key) == value for key, value in ids.items())]


async def test_lines_name_their_model_and_request_by_the_same_keys_in_every_process(
    cluster: Cluster, iris: Iris, tmp_path: Path
) -> None:
    scheduler = cluster.start_scheduler(*JSON_LOGS)
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0, extra=JSON_LOGS))
    async with api_of(cluster) as api:
        await api.load(model("iris", str(iris.folder)))
        await api.available("iris")
        await api.load(model("broken", str(tmp_path / "no-such-folder")))
        reason = await api.failed("broken")
        await api.stub.LoadPipeline(
            pb.LoadPipelineRequest(
                pipeline=pb.Pipeline(
                    name="flow", steps=[pb.PipelineStep(name="iris")], output=pb.PipelineOutput(steps=["iris"])
                )
            ),
            timeout=CALL_TIMEOUT,
        )
        await api.stub.StartExperiment(
            pb.StartExperimentRequest(
                experiment=pb.Experiment(name="trial", candidates=[pb.ExperimentCandidate(name="iris", weight=1)])
            ),
            timeout=CALL_TIMEOUT,
        )
    gateway = await asyncio.to_thread(start_gateway, cluster.root / "gateway", scheduler.listen, *JSON_LOGS)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            url = f"{gateway.url}/v2/models/iris/infer"
            async with http.post(url, json=iris.request, headers={"x-request-id": "caller-id-7"}) as response:
                assert response.status == 200, await response.text()
                assert response.headers["x-request-id"] == "caller-id-7"
            async with http.post(url, json=iris.request) as response:
                assert response.status == 200, await response.text()
                assigned = response.headers["x-request-id"]
        assert len(assigned) == 32, assigned  # a new id (a uuid4 in hex), not the caller's of the first request

        async def agent_logged_both() -> bool:
            records = json_lines(agent.log_path)
            return all(with_ids(records, request_id=rid, model="iris") for rid in ("caller-id-7", assigned))

        await until(agent_logged_both, "the agent's lines of both requests", cluster.diagnostics)
    finally:
        stop_process(gateway.process)

    scheduler_lines, agent_lines, gateway_lines = (
        json_lines(path) for path in (scheduler.log_path, agent.log_path, gateway.log_path)
    )
    # The failed load: a warning naming the model, in the scheduler's log and in the agent's (with its replica).
    assert with_ids(scheduler_lines, level="warning", model="broken", version=1), reason
    assert with_ids(agent_lines, level="warning", model="broken", version=1, server="mlserver", replica=0), reason
    # One inference, one id, in both processes: the caller's, and the one the gateway assigned.
    for request_id in ("caller-id-7", assigned):
        assert with_ids(gateway_lines, request_id=request_id, model="iris"), request_id
        assert with_ids(agent_lines, request_id=request_id, model="iris", server="mlserver"), request_id
    # Pipeline and experiment changes, at info.
    assert with_ids(scheduler_lines, level="info", pipeline="flow", message="pipeline loaded")
    assert any(
        "CREATING -> READY" in line["message"] for line in with_ids(scheduler_lines, level="info", pipeline="flow")
    )
    assert with_ids(scheduler_lines, level="info", experiment="trial", message="experiment started")
    # The same key names everywhere: modelplane/logs.py's, never another spelling.
    for name, records in (("scheduler", scheduler_lines), ("agent", agent_lines), ("gateway", gateway_lines)):
        assert records, f"the {name} wrote no JSON lines"
        spelled_otherwise = {key for record in records for key in record} & OTHER_SPELLINGS
        assert not spelled_otherwise, f"{name}: {spelled_otherwise}"
        assert with_ids(records, model="iris"), f"the {name} has no line naming iris by 'model'"
    assert set(logs.CONTEXT_KEYS) == {
        "model",
        "version",
        "pipeline",
        "experiment",
        "request_id",
        "server",
        "replica",
        "run_id",
    }


async def test_the_agents_proxy_logs_only_a_usable_request_id(cluster: Cluster, iris: Iris) -> None:
    # The agent's proxy is reached directly too (tritonclient, a replica's own clients): a caller's x-request-id
    # goes on its log lines only when it is what the gateway takes (visible ASCII, at most 256 characters).
    cluster.start_scheduler(*JSON_LOGS)
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0, extra=JSON_LOGS))
    async with api_of(cluster) as api:
        await api.load(model("iris", str(iris.folder)))
        await api.available("iris")
    unusable = ["x" * 5000, "has spaces in it"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        url = f"{agent.proxy_url}/v2/models/iris/infer"
        for request_id in [*unusable, "usable-id-1"]:
            async with http.post(url, json=iris.request, headers={"x-request-id": request_id}) as response:
                assert response.status == 200, await response.text()

    async def logged_the_usable_one() -> bool:
        return bool(with_ids(json_lines(agent.log_path), request_id="usable-id-1", model="iris"))

    await until(logged_the_usable_one, "the agent's line of the request with a usable id", cluster.diagnostics)
    records = json_lines(agent.log_path)
    for request_id in unusable:
        assert not with_ids(records, request_id=request_id), request_id[:40]
