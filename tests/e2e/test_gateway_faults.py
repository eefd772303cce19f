"""Routing around what cannot answer (issue 10, defects 8 and 2), end to end: a scheduler, agents with real
MLServer replicas, and `modelplane gateway` processes.

* An experiment whose candidate is unloaded keeps answering from the candidates that remain, and its status
  says which candidate is missing and why.
* A replica whose server died is skipped by the gateway at once, before the scheduler says anything, and
  only that replica: the gateway's ejection counter and log say which replica was skipped, how often and
  for how long; nothing here depends on how long the requests took.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.agent_processes import kill_server_of
from tests.support.cluster_fixtures import WAIT, Cluster, Iris, api_of, model
from tests.support.processes import GatewayProcess, start_gateway, stop_process

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=16), timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json(content_type=None)


async def many(http: aiohttp.ClientSession, url: str, body: Any, count: int) -> list[tuple[int, Any]]:
    limit = asyncio.Semaphore(8)

    async def one() -> tuple[int, Any]:
        async with limit:
            return await post(http, url, body)

    return await asyncio.gather(*(one() for _ in range(count)))


async def experiment_status(listen: str, name: str) -> pb.ExperimentStatusResponse:
    async with aio.insecure_channel(listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        [status] = [s async for s in stub.ExperimentStatus(pb.ExperimentStatusRequest(name=name), timeout=10)]
        return status


async def until_status(listen: str, name: str, done: Any, what: str) -> pb.ExperimentStatusResponse:
    status: pb.ExperimentStatusResponse | None = None
    try:
        async with asyncio.timeout(WAIT):
            while True:
                status = await experiment_status(listen, name)
                if done(status):
                    return status
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"experiment {name} was not {what} within {WAIT:g}s; last status:\n{status}") from None


async def until_answer(http: aiohttp.ClientSession, url: str, wanted: int, what: str) -> None:
    """Wait until GET ``url`` answers ``wanted`` (a routing change reached the gateway)."""
    status = 0
    try:
        async with asyncio.timeout(WAIT):
            while True:
                async with http.get(url) as response:
                    status = response.status
                if status == wanted:
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{what}: {url} still answers {status} after {WAIT:g}s") from None


async def test_an_unloaded_candidate_gets_no_traffic_and_the_status_says_why(
    cluster: Cluster, iris: Iris, http: aiohttp.ClientSession
) -> None:
    scheduler = cluster.start_scheduler()
    await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    async with api_of(cluster) as api:
        for name in ("iris-a", "iris-b"):
            await api.load(model(name, str(iris.folder)))
        for name in ("iris-a", "iris-b"):
            await api.available(name)
        gateway = await asyncio.to_thread(start_gateway, cluster.root / "gateway", scheduler.listen)
        experiment = pb.Experiment(
            name="ab",
            default="iris-a",
            candidates=[
                pb.ExperimentCandidate(name="iris-a", weight=50),
                pb.ExperimentCandidate(name="iris-b", weight=50),
            ],
            resourceType=pb.MODEL,
        )
        async with aio.insecure_channel(scheduler.listen) as channel:
            await pb_grpc.SchedulerStub(channel).StartExperiment(
                pb.StartExperimentRequest(experiment=experiment), timeout=10
            )
        await until_status(scheduler.listen, "ab", lambda s: s.active and s.candidatesReady, "active and ready")
        answers = await many(http, f"{gateway.url}/v2/models/ab/infer", iris.request, 100)
        assert {status for status, _ in answers} == {200}
        assert set(Counter(body["model_name"] for _, body in answers)) == {"iris-a", "iris-b"}

        # The default candidate is unloaded while the experiment runs.
        await api.unload("iris-a")
        await api.gone("iris-a")
        await until_answer(http, f"{gateway.url}/v2/models/iris-a/ready", 404, "iris-a's route is gone")
        for target in ("ab", "iris-a"):  # the experiment, and its default's name, which it takes the traffic of
            answers = await many(http, f"{gateway.url}/v2/models/{target}/infer", iris.request, 200)
            codes = Counter(status for status, _ in answers)
            assert codes == {200: 200}, f"requests to {target}: {codes}; e.g. {answers[0][1]}"
            assert {body["model_name"] for _, body in answers} == {"iris-b"}
            assert all(body["outputs"][0]["data"] == iris.expected for _, body in answers)
        async with http.get(f"{gateway.url}/v2/models/ab/ready") as response:
            assert response.status == 200, "the experiment can answer, so it is ready"

        status = await until_status(scheduler.listen, "ab", lambda s: not s.candidatesReady, "degraded")
        assert status.active, "a gateway still routes it"
        assert "candidate iris-a" in status.statusDescription
        assert "unloaded" in status.statusDescription, status.statusDescription
        assert "iris-b" not in status.statusDescription, status.statusDescription

        # No candidate left: the experiment answers 503 and says why, rather than 404.
        await api.unload("iris-b")
        await api.gone("iris-b")
        await until_answer(http, f"{gateway.url}/v2/models/ab/ready", 503, "no candidate left")
        code, body = await post(http, f"{gateway.url}/v2/models/ab/infer", iris.request)
        assert code == 503, body
        assert "ab" in body["error"], body
        assert "iris-a" in body["error"], body

        # A candidate that comes back gets its traffic back.
        await api.load(model("iris-a", str(iris.folder)))
        await api.available("iris-a")
        await until_answer(http, f"{gateway.url}/v2/models/ab/ready", 200, "iris-a back")
        answers = await many(http, f"{gateway.url}/v2/models/ab/infer", iris.request, 50)
        assert {(status, body["model_name"]) for status, body in answers} == {(200, "iris-a")}
    stop_process(gateway.process)


async def metric(http: aiohttp.ClientSession, gateway: GatewayProcess, name: str, **labels: str) -> int:
    """The sum of ``name``'s series whose labels include ``labels``, from the gateway's /metrics."""
    async with http.get(f"{gateway.url}/metrics") as response:
        text = await response.text()
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        int(float(line.rsplit(" ", 1)[1]))  # prometheus_client writes 1.0
        for line in text.splitlines()
        if line.startswith(name + "{") and all(label in line for label in wanted)
    )


def skip_periods(gateway: GatewayProcess, replica: str) -> list[float]:
    """How long the gateway's log says it skipped ``replica`` each time, in order."""
    found = re.findall(rf"replica {re.escape(replica)} \(\S+\) skipped for ([0-9.]+)s", gateway.log())
    return [float(seconds) for seconds in found]


async def test_a_replica_whose_server_died_is_skipped_without_waiting_for_the_scheduler(
    cluster: Cluster, iris: Iris, http: aiohttp.ClientSession
) -> None:
    scheduler = cluster.start_scheduler()
    # The killed server stays down for the whole test (its agent would restart it after 600 s): every
    # request its replica gets fails, and every 200 comes from the other replica.
    doomed, survivor = await asyncio.to_thread(
        cluster.start_agents, cluster.agent(0, extra=("--server-restart-backoff=600",)), cluster.agent(1)
    )
    async with api_of(cluster) as api:
        spec = model("pair", str(iris.folder))
        spec.deploymentSpec.replicas = 2
        await api.load(spec)
        await api.available("pair")
    # One attempt per request: every request that goes to the dead replica fails, so the failures count
    # how often the gateway still sends it traffic. And one gateway as deployed (three attempts).
    single = await asyncio.to_thread(start_gateway, cluster.root / "single", scheduler.listen, "--max-attempts=1")
    retrying = await asyncio.to_thread(start_gateway, cluster.root / "retrying", scheduler.listen)
    for gateway in (single, retrying):
        answers = await many(http, f"{gateway.url}/v2/models/pair/infer", iris.request, 20)
        assert {status for status, _ in answers} == {200}
    dead_key, live_key = (f"mlserver/{agent.replica_idx}" for agent in (doomed, survivor))

    # The scheduler is frozen, so no route update can reach the gateways: what they do, they do alone.
    os.kill(scheduler.process.pid, signal.SIGSTOP)
    try:
        kill_server_of(doomed)
        results: list[tuple[int, Any]] = []
        for _ in range(200):  # one at a time: each one sees what the ones before taught the gateway
            results.append(await post(http, f"{single.url}/v2/models/pair/infer", iris.request))
        retried = await many(http, f"{retrying.url}/v2/models/pair/infer", iris.request, 100)
    finally:
        os.kill(scheduler.process.pid, signal.SIGCONT)
    assert not doomed.server_pids(), "the killed server stayed down: every 200 came from the other replica"

    failed = [body for status, body in results if status != 200]
    assert all(status == 503 and "pair" in body["error"] for status, body in results if status != 200), failed[:3]
    assert all(body["outputs"][0]["data"] == iris.expected for status, body in results if status == 200)
    # Each request the dead replica got failed and had it skipped; while skipped it got none (a request to a
    # skipped replica would fail without a new skip). Without skipping, about every other request fails.
    ejections = await metric(http, single, "modelplane_gateway_replica_ejections_total", replica=dead_key)
    assert failed, "the dead replica was tried"
    assert len(failed) == ejections, f"{len(failed)} of 200 failed, the dead replica was skipped {ejections} times"
    # Skipped for 1 s, then twice as long after each failure in a row, up to 30 s.
    periods = skip_periods(single, dead_key)
    assert periods == [min(30.0, 2.0**n) for n in range(len(periods))], periods
    assert len(periods) == ejections, periods
    assert await metric(http, single, "modelplane_gateway_replica_ejections_total", replica=live_key) == 0

    assert {status for status, _ in retried} == {200}, Counter(status for status, _ in retried)
    assert all(body["outputs"][0]["data"] == iris.expected for _, body in retried)
    assert await metric(http, retrying, "modelplane_gateway_replica_ejections_total", replica=dead_key) >= 1
    assert await metric(http, retrying, "modelplane_gateway_replica_ejections_total", replica=live_key) == 0
    for gateway in (single, retrying):
        stop_process(gateway.process)
