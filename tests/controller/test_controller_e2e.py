"""The controller end to end: Seldon-style Model resources applied to the fake Kubernetes API, a real
``modelplane controller``, a real scheduler, a real agent with a real MLServer, and a real gateway.

A Model becomes Ready in its status (from the scheduler's status stream), inference through the gateway answers, a
spec change makes version 2, deletion unloads and removes the finalizer; a controller restart, a scheduler restart
and an expired watch (410) converge without duplicate versions. Every wait is a hang guard, never a timing check.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.scheduler_resources import FINALIZER
from generated.mlops.scheduler import scheduler_pb2 as pb
from tests.controller.controller_harness import ControllerProcess, condition, start_controller
from tests.support import fake_kubernetes_api as fake
from tests.support.cluster_fixtures import Api, Cluster, Iris, api_of
from tests.support.processes import GatewayProcess, start_gateway, stop_process
from tests.support.waiting import wait_for

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(900)]

WAIT = 180.0  # seconds: a hang guard for every wait


@pytest.fixture
async def api() -> AsyncIterator[fake.FakeKubernetesApi]:
    async with fake.FakeKubernetesApi() as server:
        yield server


def versioned_iris(iris: Iris, root: Path) -> Path:
    """The iris model in version folders 1 and 2, so artifactVersion selects one."""
    for version in ("1", "2"):
        (root / version).mkdir(parents=True)
        shutil.copy(iris.folder / "model.joblib", root / version / "model.joblib")
    return root


def iris_resource(uri: str, **spec: Any) -> dict[str, Any]:
    """Our own Seldon-style Model using every field the Scheduler API has a place for, and those it has not."""
    return {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "iris", "namespace": "team-a", "labels": {"app": "iris"}},
        "spec": {
            "storageUri": uri,
            "modelType": "sklearn",
            "artifactVersion": 1,
            "schemaUri": "gs://schemas/iris.json",
            "secretName": "artifact-store",
            "requirements": ["sklearn"],
            "memory": "20Mi",
            "replicas": 1,
            "minReplicas": 1,
            "maxReplicas": 2,
            "server": "mlserver",
            "preloaded": False,
            "dedicated": False,
            "logger": {"percent": 100},
            "parameters": [{"name": "note", "value": "from a resource"}],
            "llm": {"pipelineRef": "chat"},
            "dataflow": {"cleanTopicsOnDelete": True},
            **spec,
        },
    }


def explainer_resource(uri: str) -> dict[str, Any]:
    """The one field iris cannot carry with llm: an explainer (no replica here runs explainers)."""
    return {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "iris-explainer", "namespace": "team-a"},
        "spec": {
            "storageUri": uri,
            "requirements": ["sklearn"],
            "memory": "10Mi",
            "explainer": {"type": "anchor_tabular", "modelRef": "iris"},
        },
    }


async def until(predicate: Callable[[], bool], what: str, diagnostics: Callable[[], str] = str) -> None:
    try:
        await wait_for(predicate, WAIT, what)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{diagnostics()}") from None


def ready(api: fake.FakeKubernetesApi, name: str, generation: int) -> bool:
    obj = api.get(fake.MODELS, name, "team-a")
    model_ready = condition(obj, "ModelReady")
    return (
        obj is not None
        and model_ready is not None
        and model_ready["status"] == "True"
        and obj["status"].get("observedGeneration") == generation
    )


async def versions(scheduler: Api, name: str) -> list[int]:
    return [version.version for version in (await scheduler.status(name)).versions]


async def infer(gateway: GatewayProcess, name: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.post(f"{gateway.url}/v2/models/{name}/infer", json=body) as response,
    ):
        return response.status, await response.json(content_type=None)


async def answers(gateway: GatewayProcess, iris: Iris) -> bool:
    status, answer = await infer(gateway, "iris", iris.request)
    return status == 200 and answer["outputs"][0]["data"] == iris.expected


def diagnostics(
    cluster: Cluster, controller: ControllerProcess | None, api: fake.FakeKubernetesApi
) -> Callable[[], str]:
    def text() -> str:
        parts = [cluster.diagnostics()]
        if controller is not None:
            parts.append("--- controller log:\n" + "\n".join(controller.log().splitlines()[-60:]))
        parts.append(f"--- models: {api.objects(fake.MODELS)}")
        return "\n".join(parts)

    return text


async def test_a_model_resource_is_served_changed_and_deleted(
    cluster: Cluster, iris: Iris, api: fake.FakeKubernetesApi, tmp_path: Path
) -> None:
    scheduler = await asyncio.to_thread(cluster.start_scheduler)
    await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    gateway = await asyncio.to_thread(start_gateway, tmp_path / "gateway", scheduler.listen)
    uri = str(versioned_iris(iris, tmp_path / "iris-versions"))
    api.put(fake.MODELS, iris_resource(uri))
    api.put(fake.MODELS, explainer_resource(str(iris.folder)))
    controller = await start_controller(tmp_path / "controller", api, scheduler.listen)
    explain = diagnostics(cluster, controller, api)
    try:
        await until(lambda: ready(api, "iris", 1), "iris Ready at generation 1", explain)
        resource = api.get(fake.MODELS, "iris", "team-a")
        assert resource is not None
        assert FINALIZER in resource["metadata"]["finalizers"]
        assert (resource["status"]["replicas"], resource["status"]["availableReplicas"]) == (1, 1)
        assert condition(resource, "Ready") is not None
        assert condition(resource, "Ready")["status"] == "True"  # type: ignore[index]
        assert resource["spec"]["modelType"] == "sklearn", "the controller never rewrites the spec"
        async with api_of(cluster) as scheduler_api:
            sent = (await scheduler_api.status("iris")).versions[-1].modelDefn
            assert sent.meta.kubernetesMeta == pb.KubernetesMeta(namespace="team-a", generation=1)
            assert sent.modelSpec.artifactVersion == 1
            assert sent.modelSpec.storageConfig.storageSecretName == "artifact-store"
            assert sent.deploymentSpec == pb.DeploymentSpec(replicas=1, minReplicas=1, maxReplicas=2, logPayloads=True)
            assert sent.dataflowSpec.cleanTopicsOnDelete
            assert sent.modelSpec.llm.pipelineRef == "chat"
        status, answer = await infer(gateway, "iris", iris.request)
        assert status == 200, answer
        assert answer["outputs"][0]["data"] == iris.expected

        # The explainer cannot be placed: its status says so, and why, for its generation.
        def explainer_failed() -> bool:
            model_ready = condition(api.get(fake.MODELS, "iris-explainer", "team-a"), "ModelReady")
            return model_ready is not None and model_ready["status"] == "False" and bool(model_ready.get("message"))

        await until(explainer_failed, "the explainer's status says it cannot be placed", explain)

        # A spec change is a new generation and a new version.
        changed = api.get(fake.MODELS, "iris", "team-a")
        assert changed is not None
        changed["spec"]["artifactVersion"] = 2
        api.put(fake.MODELS, changed)
        await until(lambda: ready(api, "iris", 2), "iris Ready at generation 2", explain)
        async with api_of(cluster) as scheduler_api:
            assert await versions(scheduler_api, "iris") in ([1, 2], [2])
            assert (await scheduler_api.status("iris")).versions[-1].version == 2
        assert await answers(gateway, iris)

        # A field the controller does not know: the resource keeps it, a new generation, no new version.
        unknown = copy.deepcopy(api.get(fake.MODELS, "iris", "team-a"))
        assert unknown is not None
        unknown["spec"]["futureField"] = {"kept": True}
        api.put(fake.MODELS, unknown)
        await until(lambda: ready(api, "iris", 3), "iris Ready at generation 3", explain)
        kept = api.get(fake.MODELS, "iris", "team-a")
        assert kept is not None
        assert kept["spec"]["futureField"] == {"kept": True}
        async with api_of(cluster) as scheduler_api:
            assert (await scheduler_api.status("iris")).versions[-1].version == 2, "no version for an unknown field"

        # Deletion unloads first, then lets the resource go.
        api.remove(fake.MODELS, "iris", "team-a")
        await until(lambda: api.get(fake.MODELS, "iris", "team-a") is None, "the finalizer removed", explain)
        async with api_of(cluster) as scheduler_api:
            assert (await scheduler_api.gone("iris")).name in ("FAILED_PRECONDITION", "NOT_FOUND")
    finally:
        await controller.stop()
        await asyncio.to_thread(stop_process, gateway.process)


async def test_restarts_and_an_expired_watch_converge_without_duplicate_versions(
    cluster: Cluster, iris: Iris, api: fake.FakeKubernetesApi, tmp_path: Path
) -> None:
    scheduler = await asyncio.to_thread(cluster.start_scheduler)
    await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    uri = str(versioned_iris(iris, tmp_path / "iris-versions"))
    api.put(fake.MODELS, iris_resource(uri))
    controller = await start_controller(tmp_path / "controller", api, scheduler.listen)
    try:
        explain = diagnostics(cluster, controller, api)
        await until(lambda: ready(api, "iris", 1), "iris Ready at generation 1", explain)

        # The controller restarts; the spec changes while it is away.
        await controller.stop()
        changed = api.get(fake.MODELS, "iris", "team-a")
        assert changed is not None
        changed["spec"]["artifactVersion"] = 2
        api.put(fake.MODELS, changed)
        controller = await start_controller(tmp_path / "controller", api, scheduler.listen)
        explain = diagnostics(cluster, controller, api)
        await until(lambda: ready(api, "iris", 2), "iris Ready at generation 2 after a controller restart", explain)
        async with api_of(cluster) as scheduler_api:
            assert await versions(scheduler_api, "iris") in ([1, 2], [2])

        # A second restart with nothing changed: the LoadModel it sends again changes nothing.
        await controller.stop()
        controller = await start_controller(tmp_path / "controller", api, scheduler.listen)
        explain = diagnostics(cluster, controller, api)
        await until(lambda: "control-plane stream from" in controller.log(), "the control-plane stream", explain)
        async with api_of(cluster) as scheduler_api:
            assert (await scheduler_api.status("iris")).versions[-1].version == 2
            assert await versions(scheduler_api, "iris") in ([1, 2], [2])

        # The scheduler restarts (same state, same ports): it asks for everything again, and gets the same spec.
        await asyncio.to_thread(stop_process, scheduler.process)
        scheduler.log_path.rename(scheduler.log_path.with_name("scheduler-before-restart.log"))
        restarted = await asyncio.to_thread(
            cluster.start_scheduler, f"--listen={scheduler.listen}", f"--agent-listen={scheduler.agent_listen}"
        )
        await until(lambda: controller.log().count("asks for SEND_MODELS") >= 2, "SEND_MODELS again", explain)
        async with api_of(cluster) as scheduler_api:
            await scheduler_api.available("iris", version=2)
            assert await versions(scheduler_api, "iris") in ([1, 2], [2]), "no version for the same spec"
        await until(lambda: ready(api, "iris", 2), "iris still Ready at generation 2", explain)

        # The watch expires (410) while a change happens: the controller lists again and applies it.
        lists_before = len([r for r in api.requests_for("GET", "/models") if "watch" not in r.query])
        api.close_watches()
        changed = api.get(fake.MODELS, "iris", "team-a")
        assert changed is not None
        changed["spec"]["artifactVersion"] = 1
        api.put(fake.MODELS, changed)
        api.compact()
        await until(lambda: ready(api, "iris", 3), "iris Ready at generation 3 after a 410", explain)
        assert len([r for r in api.requests_for("GET", "/models") if "watch" not in r.query]) > lists_before
        async with api_of(cluster) as scheduler_api:
            assert (await scheduler_api.status("iris")).versions[-1].version == 3
        assert restarted.process.poll() is None
    finally:
        await controller.stop()


async def test_pipelines_and_experiments_as_resources(
    cluster: Cluster, iris: Iris, api: fake.FakeKubernetesApi, tmp_path: Path
) -> None:
    scheduler = await asyncio.to_thread(cluster.start_scheduler)
    await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    for name in ("iris", "iris-b"):
        model = iris_resource(str(iris.folder), artifactVersion=None)
        model["metadata"]["name"] = name
        api.put(fake.MODELS, model)
    api.put(
        fake.PIPELINES,
        {
            "apiVersion": "mlops.seldon.io/v1alpha1",
            "kind": "Pipeline",
            "metadata": {"name": "classify", "namespace": "team-a"},
            "spec": {
                "steps": [{"name": "iris"}, {"name": "iris-b", "inputs": ["iris.inputs"], "inputsJoinType": "inner"}],
                "output": {"steps": ["iris-b"], "stepsJoin": "any"},
            },
        },
    )
    api.put(
        fake.EXPERIMENTS,
        {
            "apiVersion": "mlops.seldon.io/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "iris-ab", "namespace": "team-a"},
            "spec": {
                "default": "iris",
                "resourceType": "model",
                "candidates": [{"name": "iris", "weight": 50}, {"name": "iris-b", "weight": 50}],
            },
        },
    )
    bad = {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "loops", "namespace": "team-a"},
        "spec": {"steps": [{"name": "a", "inputs": ["nosuch-step"]}]},
    }
    api.put(fake.PIPELINES, bad)
    gateway = await asyncio.to_thread(start_gateway, tmp_path / "gateway", scheduler.listen)
    controller = await start_controller(tmp_path / "controller", api, scheduler.listen)
    explain = diagnostics(cluster, controller, api)
    try:

        def condition_of(kind: fake.Kind, name: str, which: str) -> dict[str, Any] | None:
            return condition(api.get(kind, name, "team-a"), which)

        def is_true(kind: fake.Kind, name: str, which: str) -> bool:
            found = condition_of(kind, name, which)
            return found is not None and found["status"] == "True"

        await until(lambda: is_true(fake.PIPELINES, "classify", "PipelineReady"), "the pipeline Ready", explain)
        await until(lambda: is_true(fake.EXPERIMENTS, "iris-ab", "ExperimentReady"), "the experiment Ready", explain)
        await until(lambda: condition_of(fake.PIPELINES, "loops", "PipelineReady") is not None, "refusal", explain)
        refused = condition_of(fake.PIPELINES, "loops", "PipelineReady")
        assert refused is not None
        assert (refused["status"], refused["reason"]) == ("False", "LoadRejected"), refused
        assert "nosuch-step" in refused.get("message", ""), refused
        refusals = "Pipeline team-a/loops generation 1 refused"
        # Once from the first reconcile, and at most once more if the scheduler's SEND_PIPELINES came after it
        # (the scheduler asking for everything again forgets what it refused, on purpose).
        assert controller.log().count(refusals) in (1, 2), controller.log()
        seen = controller.log().count(refusals)
        # A metadata-only change (no new generation) is no reason to send generation 1 again; a fixed spec is.
        labelled = api.get(fake.PIPELINES, "loops", "team-a")
        assert labelled is not None
        labelled["metadata"]["labels"] = {"touched": "yes"}
        api.put(fake.PIPELINES, labelled)
        fixed = api.get(fake.PIPELINES, "loops", "team-a")
        assert fixed is not None
        fixed["spec"] = {"steps": [{"name": "iris"}]}
        api.put(fake.PIPELINES, fixed)
        await until(lambda: is_true(fake.PIPELINES, "loops", "PipelineReady"), "the fixed pipeline Ready", explain)
        assert controller.log().count(refusals) == seen, "FAILED_PRECONDITION is final for its generation"
        fixed_status = api.get(fake.PIPELINES, "loops", "team-a")
        assert fixed_status is not None
        assert fixed_status["status"]["observedGeneration"] == 2

        api.remove(fake.EXPERIMENTS, "iris-ab", "team-a")
        api.remove(fake.PIPELINES, "classify", "team-a")
        await until(lambda: api.get(fake.EXPERIMENTS, "iris-ab", "team-a") is None, "experiment deleted", explain)
        await until(lambda: api.get(fake.PIPELINES, "classify", "team-a") is None, "pipeline deleted", explain)
    finally:
        await controller.stop()
        await asyncio.to_thread(stop_process, gateway.process)
