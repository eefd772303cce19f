"""The gateway end to end: a scheduler, agents with real MLServer replicas, and `modelplane gateway`
processes routing V2 REST inference, experiments' split, mirror and sticky sessions, and restarts.

Statistical checks use bounds of about 4.5 standard deviations, so a correct split fails them about once
in 150,000 runs. Every wait is a hang guard, never an expectation of speed.
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
import grpc
import pytest
from grpc import aio

from gateway.edges.v2_grpc_codec import decode_infer_response, encode_infer_request
from generated.inference.v2 import grpc_predict_v2_pb2 as v2_pb
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.agent_processes import kill_agent, kill_server_of
from tests.support.cluster_fixtures import WAIT, Cluster, Iris, api_of, model, until
from tests.support.processes import GatewayProcess, start_gateway, stop_process

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]

ROUTE_HEADER = "x-modelplane-route"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    async with http.post(url, json=body, headers=headers or {}) as response:
        return response.status, await response.json(content_type=None), dict(response.headers)


async def many(
    http: aiohttp.ClientSession, url: str, body: Any, count: int, headers: dict[str, str] | None = None
) -> list[tuple[int, Any, dict[str, str]]]:
    limit = asyncio.Semaphore(24)

    async def one() -> tuple[int, Any, dict[str, str]]:
        async with limit:
            return await post(http, url, body, headers)

    return await asyncio.gather(*(one() for _ in range(count)))


async def metric(http: aiohttp.ClientSession, gateway: GatewayProcess, name: str, **labels: str) -> int:
    async with http.get(f"{gateway.url}/metrics") as response:
        text = await response.text()
    total = 0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += int(float(line.rsplit(" ", 1)[1]))  # prometheus_client writes 1.0
    return total


async def start_experiment(listen: str, experiment: pb.Experiment) -> None:
    """StartExperiment, then wait until the scheduler says a gateway routes it (active)."""
    async with aio.insecure_channel(listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        await stub.StartExperiment(pb.StartExperimentRequest(experiment=experiment), timeout=10)
        async with asyncio.timeout(WAIT):
            while True:
                [status] = [
                    s async for s in stub.ExperimentStatus(pb.ExperimentStatusRequest(name=experiment.name), timeout=10)
                ]
                if status.active and status.candidatesReady:
                    return
                await asyncio.sleep(0.1)


async def experiment_active(listen: str, name: str, active: bool) -> None:
    """Wait until the scheduler reports the experiment's ``active`` as given."""
    async with aio.insecure_channel(listen) as channel, asyncio.timeout(WAIT):
        stub = pb_grpc.SchedulerStub(channel)
        while True:
            [status] = [s async for s in stub.ExperimentStatus(pb.ExperimentStatusRequest(name=name), timeout=10)]
            if status.active == active:
                return
            await asyncio.sleep(0.1)


def candidates(*pairs: tuple[str, int]) -> list[pb.ExperimentCandidate]:
    return [pb.ExperimentCandidate(name=name, weight=weight) for name, weight in pairs]


async def test_models_and_experiments_through_the_gateway(
    cluster: Cluster, iris: Iris, http: aiohttp.ClientSession
) -> None:
    scheduler = cluster.start_scheduler()
    await asyncio.to_thread(cluster.start_agents, cluster.agent(0), cluster.agent(1))
    async with api_of(cluster) as api:
        for name in ("iris-a", "iris-b", "iris-m"):
            spec = model(name, str(iris.folder))
            spec.deploymentSpec.replicas = 2 if name == "iris-a" else 1
            await api.load(spec)
        for name in ("iris-a", "iris-b", "iris-m"):
            await api.available(name)
    gateway = await asyncio.to_thread(
        start_gateway, cluster.root / "gateway", scheduler.listen, "--grpc-listen=127.0.0.1:0"
    )

    # Plain model routing, errors that name the problem.
    status, answer, _ = await post(http, f"{gateway.url}/v2/models/iris-a/infer", iris.request)
    assert status == 200, answer
    assert answer["outputs"][0]["data"] == iris.expected
    status, answer, _ = await post(http, f"{gateway.url}/v2/models/iris-a/versions/1/infer", iris.request)
    assert (status, answer["outputs"][0]["data"]) == (200, iris.expected)
    status, answer, _ = await post(http, f"{gateway.url}/v2/models/iris-a/versions/7/infer", iris.request)
    assert status == 404
    assert "version 7" in answer["error"]
    status, answer, _ = await post(http, f"{gateway.url}/v2/models/nosuch/infer", iris.request)
    assert status == 404
    assert "nosuch" in answer["error"]
    status, answer, _ = await post(http, f"{gateway.url}/v2/models/iris-a/infer", {"inputs": "x"})
    assert status == 400
    assert "inputs" in answer["error"]
    async with http.get(f"{gateway.url}/v2/models/iris-a/ready") as response:
        assert response.status == 200
    async with http.get(f"{gateway.url}/v2/models/iris-a") as response:
        assert response.status == 200
        assert (await response.json())["name"] == "iris-a"

    # The same over V2 gRPC.
    assert gateway.grpc_listen is not None
    async with aio.insecure_channel(gateway.grpc_listen) as channel:
        v2 = v2_grpc.GRPCInferenceServiceStub(channel)
        reply = await v2.ModelInfer(encode_infer_request("iris-a", None, iris.request), timeout=30)
        assert decode_infer_response(reply)["outputs"][0]["data"] == iris.expected
        assert (await v2.ModelReady(v2_pb.ModelReadyRequest(name="iris-a"), timeout=30)).ready
        with pytest.raises(aio.AioRpcError) as raised:
            await v2.ModelInfer(encode_infer_request("nosuch", None, iris.request), timeout=30)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND

    # 50/50 over 2,000 requests: sd = sqrt(2000 * 0.25) = 22.4.
    await start_experiment(
        scheduler.listen,
        pb.Experiment(name="ab", candidates=candidates(("iris-a", 50), ("iris-b", 50)), resourceType=pb.MODEL),
    )
    answers = await many(http, f"{gateway.url}/v2/models/ab/infer", iris.request, 2000)
    assert {status for status, _, _ in answers} == {200}
    assert all(answer["outputs"][0]["data"] == iris.expected for _, answer, _ in answers)
    split = Counter(answer["model_name"] for _, answer, _ in answers)
    assert set(split) == {"iris-a", "iris-b"}
    assert 900 <= split["iris-a"] <= 1100, split

    # Started again with new weights, a default and a 20% mirror: the new split replaces the old one
    # (90/10: sd = sqrt(1000 * 0.09) = 9.5), and requests to the default's name are split too.
    mirrored_before = await metric(http, gateway, "modelplane_gateway_mirror_requests_total", outcome="ok")
    await start_experiment(
        scheduler.listen,
        pb.Experiment(
            name="ab",
            default="iris-a",
            candidates=candidates(("iris-a", 9), ("iris-b", 1)),
            mirror=pb.ExperimentMirror(name="iris-m", percent=20),
            resourceType=pb.MODEL,
        ),
    )
    answers = await many(http, f"{gateway.url}/v2/models/iris-a/infer", iris.request, 1000)
    assert {status for status, _, _ in answers} == {200}
    split = Counter(answer["model_name"] for _, answer, _ in answers)
    assert set(split) <= {"iris-a", "iris-b"}, "the mirror's answers must never reach the caller"
    assert 857 <= split["iris-a"] <= 943, split
    assert all(answer["outputs"][0]["data"] == iris.expected for _, answer, _ in answers)
    # The mirror got about 20%: sd = sqrt(1000 * 0.16) = 12.6. Its copies run in the background.
    mirrored = 0
    async with asyncio.timeout(WAIT):
        while True:
            settled = await metric(http, gateway, "modelplane_gateway_mirror_requests_total")
            await asyncio.sleep(0.5)
            if settled == await metric(http, gateway, "modelplane_gateway_mirror_requests_total"):
                mirrored = await metric(http, gateway, "modelplane_gateway_mirror_requests_total", outcome="ok")
                break
    assert 143 <= mirrored - mirrored_before <= 257, mirrored - mirrored_before

    # Sticky sessions: the route header names the candidate; carrying it back keeps the route.
    await start_experiment(
        scheduler.listen,
        pb.Experiment(
            name="sticky",
            candidates=candidates(("iris-a", 1), ("iris-b", 1)),
            config=pb.ExperimentConfig(stickySessions=True),
            resourceType=pb.MODEL,
        ),
    )
    for _ in range(4):
        status, answer, headers = await post(http, f"{gateway.url}/v2/models/sticky/infer", iris.request)
        assert status == 200
        route = headers[ROUTE_HEADER]
        assert route == answer["model_name"]
        again = await many(http, f"{gateway.url}/v2/models/sticky/infer", iris.request, 40, {ROUTE_HEADER: route})
        assert {a["model_name"] for _, a, _ in again} == {route}
        assert {h[ROUTE_HEADER] for _, _, h in again} == {route}
    # A route header naming something outside the experiment is ignored, never followed.
    status, answer, headers = await post(
        http, f"{gateway.url}/v2/models/sticky/infer", iris.request, {ROUTE_HEADER: "iris-m"}
    )
    assert status == 200
    assert answer["model_name"] in {"iris-a", "iris-b"}
    stop_process(gateway.process)


async def test_a_restarted_gateway_rebuilds_its_routes_and_follows_a_moved_model(
    cluster: Cluster, iris: Iris, http: aiohttp.ClientSession
) -> None:
    scheduler = cluster.start_scheduler()
    agents = await asyncio.to_thread(cluster.start_agents, cluster.agent(0), cluster.agent(1))
    async with api_of(cluster) as api:
        await api.load(model("mover", str(iris.folder)))
        await api.available("mover")
        gateway = await asyncio.to_thread(start_gateway, cluster.root / "gateway", scheduler.listen)
        status, answer, _ = await post(http, f"{gateway.url}/v2/models/mover/infer", iris.request)
        assert (status, answer["outputs"][0]["data"]) == (200, iris.expected)
        experiment = pb.Experiment(name="mover-trial", candidates=candidates(("mover", 1)))
        await start_experiment(scheduler.listen, experiment)  # returns once the gateway routes it (active)

        # kill -9 the gateway; a new one knows nothing but what the scheduler streams to it. Meanwhile no
        # gateway routes the experiment, and the scheduler says so.
        os.kill(gateway.process.pid, signal.SIGKILL)
        gateway.process.wait(10)
        await experiment_active(scheduler.listen, "mover-trial", False)
        gateway = await asyncio.to_thread(start_gateway, cluster.root / "gateway2", scheduler.listen)
        status, answer, _ = await post(http, f"{gateway.url}/v2/models/mover/infer", iris.request)
        assert (status, answer["outputs"][0]["data"]) == (200, iris.expected), answer
        await experiment_active(scheduler.listen, "mover-trial", True)

        # The replica that holds the model dies; the model moves. Requests keep coming throughout.
        holder = agents[await api.holder("mover")]
        survivor = next(agent for agent in agents if agent is not holder)
        results: list[tuple[int, Any]] = []
        moving = True

        async def keep_asking() -> None:
            while moving:
                code, body, _ = await post(http, f"{gateway.url}/v2/models/mover/infer", iris.request)
                results.append((code, body))
                await asyncio.sleep(0.01)

        asker = asyncio.create_task(keep_asking())
        await asyncio.to_thread(kill_agent, holder)
        kill_server_of(holder)
        await api.available("mover", replica=survivor.replica_idx)

        # The scheduler says Available once the survivor has loaded it; the gateway hears of the new route on its
        # own stream a moment later (requests in between meet the dead replica: 503, counted above). Once it
        # answers, every request goes to the survivor.
        async def routed_to_the_survivor() -> bool:
            code, _, _ = await post(http, f"{gateway.url}/v2/models/mover/infer", iris.request)
            return code == 200

        await until(routed_to_the_survivor, "the gateway to route mover to the replica it moved to")
        after = await many(http, f"{gateway.url}/v2/models/mover/infer", iris.request, 50)
        moving = False
        await asker
    # Every answer, during the move and after, came from a live replica with the right predictions;
    # while no replica served the model, the gateway said so (503/502) rather than answering wrongly.
    for code, body in results:
        assert code in (200, 502, 503), body
        if code == 200:
            assert body["outputs"][0]["data"] == iris.expected
        else:
            assert re.search("mover", body["error"])
    assert {code for code, _, _ in after} == {200}
    assert all(body["outputs"][0]["data"] == iris.expected for _, body, _ in after)
    stop_process(gateway.process)


async def test_the_gateway_keeps_serving_through_a_scheduler_kill_and_resyncs_after(
    cluster: Cluster, iris: Iris, http: aiohttp.ClientSession
) -> None:
    """The data plane does not depend on the control plane being up: while the scheduler is down the gateway
    serves from its last table; once a scheduler is back on the same address it takes the new snapshot."""
    first = cluster.start_scheduler()
    await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    async with api_of(cluster) as api:
        await api.load(model("steady", str(iris.folder)))
        await api.available("steady")
    gateway = await asyncio.to_thread(start_gateway, cluster.root / "gateway", first.listen)
    url = f"{gateway.url}/v2/models/steady/infer"
    status, answer, _ = await post(http, url, iris.request)
    assert (status, answer["outputs"][0]["data"]) == (200, iris.expected)

    os.kill(first.process.pid, signal.SIGKILL)
    await asyncio.to_thread(first.process.wait, 30)
    during = await many(http, url, iris.request, 50)
    assert {code for code, _, _ in during} == {200}, "the gateway must serve from its table while the scheduler is away"
    assert all(body["outputs"][0]["data"] == iris.expected for _, body, _ in during)

    first.log_path.rename(first.log_path.with_name("scheduler-before-restart.log"))
    second = await asyncio.to_thread(
        cluster.start_scheduler, f"--listen={first.listen}", f"--agent-listen={first.agent_listen}"
    )
    async with api_of(cluster) as api:
        await api.load(model("newcomer", str(iris.folder)))  # only the new scheduler knows it
        await api.available("newcomer")
    async with asyncio.timeout(WAIT):
        while True:  # the gateway reconnects with backoff; then the new model is routable
            status, answer, _ = await post(http, f"{gateway.url}/v2/models/newcomer/infer", iris.request)
            if status == 200:
                break
            # Not known yet (404), or known before its replica's route reached this gateway (503).
            assert status in (404, 503), answer
            await asyncio.sleep(0.2)
    assert answer["outputs"][0]["data"] == iris.expected
    status, answer, _ = await post(http, url, iris.request)
    assert (status, answer["outputs"][0]["data"]) == (200, iris.expected)
    assert second.listen == first.listen
    stop_process(gateway.process)
