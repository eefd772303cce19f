"""A Server resource through the real controller, the fake Kubernetes API and a real scheduler: its StatefulSet and
headless Service, the scheduler's expected replicas, the Server's status, the scheduler's scaling requests, and a
scale-down that drains first.

No kubelet runs here: the test plays it. It starts the agents the StatefulSet's pods would run as local processes
named by pod (real agents with real MLServers, ``--pod-name=iris-servers-N``) and writes the StatefulSet's status
as a kubelet's reports would make the StatefulSet controller write it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller import process
from controller.settings import ControllerSettings
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.addresses import parse_address
from modelplane.kubernetes_api import KubernetesConnection
from modelplane.transport import TransportSecurity
from tests.controller.server_manifests import a_server, server_config_with_agent
from tests.support import fake_kubernetes_api as fake
from tests.support.agent_processes import AgentProcess, stop_agent
from tests.support.cluster_fixtures import MIB, REPLICA_AVAILABLE, SCHEDULER_FLAGS, Api, Cluster, Iris, api_of
from tests.support.processes import start_scheduler, stop_process
from tests.support.waiting import wait_for_async

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]

NS = "models"
NAME = "iris-servers"
WAIT = 90.0  # a hang guard for every wait (under the suite's 120 s per test), never an expectation


@pytest.fixture
async def kubernetes() -> AsyncIterator[fake.FakeKubernetesApi]:
    async with fake.FakeKubernetesApi() as api:
        yield api


@contextlib.asynccontextmanager
async def running_controller(api: fake.FakeKubernetesApi, scheduler_listen: str) -> AsyncIterator[None]:
    settings = ControllerSettings(
        scheduler=parse_address(scheduler_listen),
        security=TransportSecurity(insecure=True),
        kubernetes=KubernetesConnection(host=api.url),
        namespaces=(),
        name="test-controller",
        health_listen=None,
        serving=TransportSecurity(insecure=True),
        ready_file=None,
        log_level="info",
        log_json=False,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(process.run(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until(check: Callable[[], bool], what: str, diagnostics: Callable[[], str] = str) -> None:
    async def holds() -> bool:
        return check()

    await wait_for_async(holds, WAIT, what, diagnostics)


def stateful_set(api: fake.FakeKubernetesApi) -> dict[str, Any] | None:
    return api.get(fake.STATEFUL_SETS, NAME, NS)


def sts_replicas(api: fake.FakeKubernetesApi) -> int | None:
    sts = stateful_set(api)
    return None if sts is None else int(sts["spec"]["replicas"])


def ready(api: fake.FakeKubernetesApi) -> dict[str, Any]:
    server = api.get(fake.SERVERS, NAME, NS) or {}
    conditions = (server.get("status") or {}).get("conditions") or [{}]
    return dict(conditions[0])


def kubelet_reports(api: fake.FakeKubernetesApi, running: int) -> None:
    """What the StatefulSet controller writes once ``running`` pods run and are ready."""
    sts = stateful_set(api)
    assert sts is not None
    generation = sts["metadata"]["generation"]
    status = {
        "replicas": running,
        "readyReplicas": running,
        "availableReplicas": running,
        "observedGeneration": generation,
    }
    api.set_status(fake.STATEFUL_SETS, NAME, status, NS)


def start_pods(cluster: Cluster, *ordinals: int) -> list[AgentProcess]:
    """The agents of pods ``iris-servers-N``, each launching its MLServer (the pod's server container)."""
    specs = [cluster.agent(n, pod_name=f"{NAME}-{n}", memory="300MiB") for n in ordinals]
    return cluster.start_agents(*specs)


def a_model(name: str, iris: Iris, replicas: int = 1, min_replicas: int = 0) -> pb.Model:
    spec = pb.ModelSpec(uri=str(iris.folder), requirements=["sklearn"], memoryBytes=10 * MIB, server=NAME)
    deployment = pb.DeploymentSpec(replicas=replicas, minReplicas=min_replicas)
    return pb.Model(meta=pb.MetaData(name=name), modelSpec=spec, deploymentSpec=deployment)


async def serving_on(api: Api, name: str) -> list[int]:
    status = await api.status(name)
    latest = status.versions[-1]
    return sorted(i for i, r in latest.modelReplicaState.items() if r.state == REPLICA_AVAILABLE)


async def server_status(api: Api) -> pb.ServerStatusResponse:
    request = pb.ServerStatusRequest(subscriberName="test", name=NAME)
    [status] = [s async for s in api.stub.ServerStatus(request, timeout=10)]
    return status


async def test_a_server_runs_as_a_stateful_set_scales_on_request_and_drains_before_scaling_down(
    cluster: Cluster, kubernetes: fake.FakeKubernetesApi, iris: Iris, tmp_path: Path
) -> None:
    kubernetes.put(fake.SERVER_CONFIGS, server_config_with_agent())
    kubernetes.put(fake.SERVERS, a_server(NAME, replicas=2, minReplicas=1, maxReplicas=3))
    scheduler = cluster.start_scheduler()
    diagnostics = cluster.diagnostics
    async with running_controller(kubernetes, scheduler.listen), api_of(cluster) as api:
        # 1. The StatefulSet and Service, and the scheduler told to expect 2 replicas.
        await until(lambda: stateful_set(kubernetes) is not None, "the StatefulSet is made")
        sts = stateful_set(kubernetes)
        assert sts is not None
        pod = sts["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["containers"]] == ["mlserver", "agent"]
        agent_args = pod["containers"][1]["args"]
        assert f"--server-name={NAME}" in agent_args
        assert "--pod-name=$(POD_NAME)" in agent_args
        assert [v["name"] for v in pod["volumes"]] == ["models"]
        assert sts["spec"]["replicas"] == 2
        owner = kubernetes.get(fake.SERVERS, NAME, NS)
        assert owner is not None
        assert sts["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
        service = kubernetes.get(fake.SERVICES, NAME, NS)
        assert service is not None
        assert service["spec"]["clusterIP"] == "None"
        await until(lambda: ready(kubernetes).get("reason") == "ReplicasNotAvailable", "the Server says not ready")
        assert (await server_status(api)).expectedReplicas == 2

        # 2. The pods run (the test is the kubelet): the Server is Ready and a model on it becomes Available.
        await asyncio.to_thread(start_pods, cluster, 0, 1)
        kubelet_reports(kubernetes, 2)
        await until(lambda: ready(kubernetes).get("status") == "True", "the Server is Ready", diagnostics)
        server = kubernetes.get(fake.SERVERS, NAME, NS)
        assert server is not None
        assert server["status"]["availableReplicas"] == 2
        assert server["status"]["observedGeneration"] == server["metadata"]["generation"]
        await api.load(a_model("iris", iris))
        await api.available("iris")

        # 3. A model needs 3 replicas: the scheduler's scaling request makes the StatefulSet 3 (within maxReplicas).
        await api.load(a_model("wide", iris, replicas=5, min_replicas=1))
        await until(lambda: sts_replicas(kubernetes) == 3, "the StatefulSet scaled to maxReplicas 3", diagnostics)
        [pod2] = await asyncio.to_thread(start_pods, cluster, 2)
        kubelet_reports(kubernetes, 3)
        await until(lambda: ready(kubernetes).get("status") == "True", "the Server is Ready with 3", diagnostics)

        async def wide_everywhere() -> bool:
            return await serving_on(api, "wide") == [0, 1, 2]

        await wait_for_async(wide_everywhere, WAIT, "wide serves on replicas 0, 1 and 2", diagnostics)
        await api.unload("wide")
        await api.gone("wide")

        # 4. Scale-down drains first. Pod 0 goes (its agent drains: iris serves from 1 or 2), then the user asks for
        # 1 replica: replicas 1 and 2 must hand iris to replica 0, which is not there. The StatefulSet stays at 3.
        [pod0] = [a for a in cluster.agents if a.replica_idx == 0]
        await asyncio.to_thread(stop_agent, pod0)
        cluster.agents.remove(pod0)

        async def iris_moved() -> bool:
            return bool(await serving_on(api, "iris")) and 0 not in await serving_on(api, "iris")

        await wait_for_async(iris_moved, WAIT, "iris serves from replica 1 or 2", diagnostics)
        server = kubernetes.get(fake.SERVERS, NAME, NS)
        assert server is not None
        server["spec"]["replicas"] = 1
        kubernetes.put(fake.SERVERS, server)
        await until(
            lambda: ready(kubernetes).get("reason") == "Draining", "the Server says it is draining", diagnostics
        )
        assert sts_replicas(kubernetes) == 3, "a scale-down waits for its replicas to drain"
        assert (await server_status(api)).expectedReplicas == 1, "the scheduler was told first"

        # Pod 0 is back: iris moves to it, and only then does the StatefulSet go to 1.
        await asyncio.to_thread(start_pods, cluster, 0)
        await until(lambda: sts_replicas(kubernetes) == 1, "the StatefulSet scaled down to 1", diagnostics)
        holding = [r.replicaIdx for r in (await server_status(api)).resources if r.numLoadedModels and r.replicaIdx]
        assert holding == [], "replicas 1 and 2 held nothing when they were removed"

        # Waited for, not read once: on a machine at load average 10-12 replica 0's state was once seen out of
        # Available right after the scale-down (2026-12-04, not reproduced since; see the closing note of that
        # day). What this step proves is the order above: the leaving replicas were empty before they went.
        async def iris_on_replica_0() -> bool:
            return await serving_on(api, "iris") == [0]

        await wait_for_async(iris_on_replica_0, WAIT, "iris serves from replica 0 only", diagnostics)
        for agent in [a for a in cluster.agents if a.replica_idx > 0]:
            await asyncio.to_thread(stop_agent, agent)
        kubelet_reports(kubernetes, 1)
        await until(lambda: ready(kubernetes).get("status") == "True", "the Server is Ready with 1", diagnostics)
        assert pod2.process.poll() is not None


async def expected_replicas(api: Api, name: str) -> int | None:
    request = pb.ServerStatusRequest(subscriberName="test", name=name)
    try:
        [status] = [s async for s in api.stub.ServerStatus(request, timeout=10)]
    except grpc.aio.AioRpcError:
        return None  # not known (yet), or the scheduler is not there
    return status.expectedReplicas


def stateful_set_writes(api: fake.FakeKubernetesApi) -> int:
    return len([r for r in api.requests if r.method in ("POST", "PUT", "PATCH") and "/statefulsets" in r.path])


async def test_a_restarted_scheduler_is_told_every_server_again_and_nothing_is_written_twice(
    cluster: Cluster, kubernetes: fake.FakeKubernetesApi, tmp_path: Path
) -> None:
    kubernetes.put(fake.SERVER_CONFIGS, server_config_with_agent())
    kubernetes.put(fake.SERVERS, a_server(NAME, replicas=2, maxReplicas=4))
    kubernetes.put(fake.SERVERS, a_server("idle-servers", replicas=0))
    first = cluster.start_scheduler()
    async with running_controller(kubernetes, first.listen):
        async with api_of(cluster) as api:

            async def both_told() -> bool:
                return await expected_replicas(api, NAME) == 2 and await expected_replicas(api, "idle-servers") == 0

            await wait_for_async(both_told, WAIT, "the scheduler expects 2 and 0 replicas")
        await until(lambda: len(kubernetes.objects(fake.STATEFUL_SETS, NS)) == 2, "both StatefulSets are made")
        writes = stateful_set_writes(kubernetes)
        assert writes == 2, "one create each"

        # A new scheduler with no state on the same address: its SEND_SERVERS makes the controller tell it again.
        stop_process(first.process)
        (tmp_path / "second").mkdir()
        cluster.scheduler = start_scheduler(
            tmp_path / "second", *SCHEDULER_FLAGS, f"--listen={first.listen}", f"--agent-listen={first.agent_listen}"
        )
        async with api_of(cluster) as api:
            await wait_for_async(both_told, WAIT, "the new scheduler expects 2 and 0 replicas")
            assert stateful_set_writes(kubernetes) == writes, "reconciling again wrote no StatefulSet"

            # A deleted Server: the scheduler is told to expect none of it (its objects go by owner reference).
            kubernetes.remove(fake.SERVERS, NAME, NS)

            async def none_expected() -> bool:
                return await expected_replicas(api, NAME) == 0

            await wait_for_async(none_expected, WAIT, "the scheduler expects 0 replicas of the deleted Server")


async def test_a_server_that_cannot_run_says_why_and_runs_once_its_server_config_exists(
    cluster: Cluster, kubernetes: fake.FakeKubernetesApi
) -> None:
    kubernetes.put(fake.SERVERS, a_server(NAME, config="later"))
    kubernetes.put(fake.SERVERS, a_server("bounded", minReplicas=3, maxReplicas=2))
    unrelated = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "taken", "namespace": NS}}
    kubernetes.put(fake.STATEFUL_SETS, {**unrelated, "spec": {"replicas": 7}})
    kubernetes.put(fake.SERVERS, a_server("taken"))
    kubernetes.put(fake.SERVER_CONFIGS, server_config_with_agent())
    scheduler = cluster.start_scheduler()
    async with running_controller(kubernetes, scheduler.listen):
        await until(
            lambda: ready(kubernetes).get("reason") == "ServerConfigNotFound", "the Server names what is missing"
        )
        assert "no ServerConfig 'later' in namespace 'models'" in ready(kubernetes)["message"]

        def bounded() -> dict[str, Any]:
            server = kubernetes.get(fake.SERVERS, "bounded", NS) or {}
            return dict(((server.get("status") or {}).get("conditions") or [{}])[0])

        await until(lambda: bounded().get("reason") == "InvalidSpec", "the invalid Server says why")
        assert "spec.minReplicas (3) is more than spec.maxReplicas (2)" in bounded()["message"]

        def taken() -> dict[str, Any]:
            server = kubernetes.get(fake.SERVERS, "taken", NS) or {}
            return dict(((server.get("status") or {}).get("conditions") or [{}])[0])

        await until(lambda: taken().get("reason") == "NameTaken", "a Server never takes another's StatefulSet")
        assert [s["metadata"]["name"] for s in kubernetes.objects(fake.STATEFUL_SETS, NS)] == ["taken"]
        assert (kubernetes.get(fake.STATEFUL_SETS, "taken", NS) or {})["spec"] == {"replicas": 7}

        kubernetes.put(fake.SERVER_CONFIGS, server_config_with_agent("later"))
        await until(lambda: stateful_set(kubernetes) is not None, "the StatefulSet is made once its ServerConfig is")
        await until(lambda: ready(kubernetes).get("reason") == "ReplicasNotAvailable", "the Server waits for its pods")
