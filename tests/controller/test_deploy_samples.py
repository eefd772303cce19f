"""deploy/ and the controller agree: what `kubectl apply -k deploy/samples` and the base's ServerConfigs create,
applied as rendered to the FAKE Kubernetes API, run by the REAL `modelplane controller` process with a real
scheduler, makes a StatefulSet and a Service that Kubernetes 1.32's schemas accept (kubernetes-validate, strict),
whose agent command parses with the agent's own flags; the agents those pods would run, started here as local
processes named by pod with the StatefulSet's own agent arguments, make the sample Model Ready, reading its
Secret `modelstore` from the API (an rclone config under the key rclone.conf, as README's "Running on
Kubernetes" creates it) and its artifact from a real S3 (SeaweedFS) at the sample's own s3://models/iris.

No kubelet runs here: the test plays it (the agents as local processes, the StatefulSet's status written as the
StatefulSet controller would). Every wait is a hang guard on a condition, never a timing check.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from agent import settings as agent_settings
from controller.servers.agent_container import AGENT_CONTAINER
from controller.servers.workloads import HASH_ANNOTATION
from tests.controller.controller_harness import ControllerProcess, condition, start_controller
from tests.deploy.rendering import expand_variables, mounted_files, render
from tests.support import fake_kubernetes_api as fake
from tests.support.agent_processes import AgentProcess
from tests.support.agent_serving import predict
from tests.support.cluster_fixtures import Cluster, Iris
from tests.support.real_components import S3Server
from tests.support.waiting import wait_for

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]

NAMESPACE = "modelplane"  # README: kubectl apply -n modelplane -k deploy/samples
WAIT = 180.0  # seconds: a hang guard for every wait
# The pod-local parts of the StatefulSet's agent command, given here for a process on this machine instead.
LOCAL_FLAGS = (
    "--scheduler",
    "--server-kind",
    "--server-url",
    "--server-grpc",
    "--models-dir",
    "--cache-dir",
    "--work-dir",
    "--proxy-http",
    "--proxy-grpc",
    "--drain-timeout",
    "--k8s-in-cluster",
    "--pod-name",
    "--server-name",
)


@pytest.fixture
async def kubernetes() -> AsyncIterator[fake.FakeKubernetesApi]:
    api = fake.FakeKubernetesApi()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def apply(api: fake.FakeKubernetesApi, documents: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """`kubectl apply -n modelplane` of rendered documents (the Seldon kinds only): (kind, name) of each."""
    kinds = {"Model": fake.MODELS, "Server": fake.SERVERS, "ServerConfig": fake.SERVER_CONFIGS}
    applied = []
    for document in documents:
        if document["kind"] in kinds:
            document["metadata"]["namespace"] = NAMESPACE
            api.put(kinds[document["kind"]], document)
            applied.append((document["kind"], document["metadata"]["name"]))
    return applied


def pod_environment(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The container's plain values and the downward API's, as the kubelet would give them to this pod."""
    fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE, "status.podIP": "127.0.0.1"}
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
        elif "fieldRef" in variable.get("valueFrom", {}):
            env[variable["name"]] = fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def agent_container(stateful_set: dict[str, Any]) -> dict[str, Any]:
    containers = stateful_set["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == AGENT_CONTAINER)


def kubelet_reports(api: fake.FakeKubernetesApi, name: str, running: int) -> None:
    """What the StatefulSet controller writes once ``running`` pods run and are ready."""
    sts = api.get(fake.STATEFUL_SETS, name, NAMESPACE)
    assert sts is not None
    status = {
        "replicas": running,
        "readyReplicas": running,
        "availableReplicas": running,
        "observedGeneration": sts["metadata"]["generation"],
    }
    api.set_status(fake.STATEFUL_SETS, name, status, NAMESPACE)


async def until(predicate: Callable[[], bool], what: str, diagnostics: Callable[[], str] = str) -> None:
    try:
        await wait_for(predicate, WAIT, what)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{diagnostics()}") from None


async def test_the_samples_and_server_configs_run_through_the_real_controller_and_the_sample_model_is_ready(
    cluster: Cluster, kubernetes: fake.FakeKubernetesApi, s3_server: S3Server, iris: Iris, tmp_path: Path
) -> None:
    # What README's "Running on Kubernetes" has the user do: the sample's artifact at s3://models/iris, its
    # store's settings in the Secret modelstore (rclone's own format under the key rclone.conf), then apply.
    if not s3_server.client.bucket_exists("models"):
        s3_server.client.make_bucket("models")
    s3_server.put("models", "iris/model.joblib", iris.joblib)
    rclone_conf = base64.b64encode(s3_server.rclone_ini().encode()).decode()
    kubernetes.put(
        fake.SECRETS,
        {"metadata": {"name": "modelstore", "namespace": NAMESPACE}, "data": {"rclone.conf": rclone_conf}},
    )
    configs = [d for d in render("base") if d["kind"] == "ServerConfig"]
    assert apply(kubernetes, configs) == [("ServerConfig", "mlserver"), ("ServerConfig", "triton")]
    samples = apply(kubernetes, render("samples"))
    assert sorted(samples) == [("Model", "iris"), ("Server", "mlserver")]
    [server_name] = [name for kind, name in samples if kind == "Server"]
    sample_model = kubernetes.get(fake.MODELS, "iris", NAMESPACE)
    assert sample_model is not None
    assert sample_model["spec"]["storageUri"] == "s3://models/iris", "the sample as shipped"

    scheduler = await asyncio.to_thread(cluster.start_scheduler)
    controller: ControllerProcess = await start_controller(tmp_path / "controller", kubernetes, scheduler.listen)
    agents: list[AgentProcess] = []

    def diagnostics() -> str:
        parts = [cluster.diagnostics(), "--- controller log:\n" + "\n".join(controller.log().splitlines()[-60:])]
        parts.append(f"--- server: {kubernetes.get(fake.SERVERS, server_name, NAMESPACE)}")
        parts.append(f"--- model: {kubernetes.get(fake.MODELS, 'iris', NAMESPACE)}")
        return "\n".join(parts)

    try:
        # 1. The StatefulSet and the headless Service, valid Kubernetes 1.32 objects as stored.
        await until(lambda: kubernetes.get(fake.STATEFUL_SETS, server_name, NAMESPACE) is not None, "the StatefulSet")
        await until(lambda: kubernetes.get(fake.SERVICES, server_name, NAMESPACE) is not None, "the Service")
        stateful_set = kubernetes.get(fake.STATEFUL_SETS, server_name, NAMESPACE)
        service = kubernetes.get(fake.SERVICES, server_name, NAMESPACE)
        assert stateful_set is not None
        assert service is not None
        for obj in (stateful_set, service):
            kubernetes_validate.validate(obj, "1.32", strict=True)
        assert HASH_ANNOTATION in stateful_set["metadata"]["annotations"]
        assert stateful_set["spec"]["replicas"] == 1, "the sample Server's replicas"
        pod = stateful_set["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["containers"]] == ["mlserver", "agent"], "the ServerConfig's containers"
        assert pod["serviceAccountName"] == "modelplane-agent"

        # 2. The agent command the controller built parses with the agent's own flags, as pod 0 would run it.
        agent = agent_container(stateful_set)
        pod0 = f"{server_name}-0"
        env = pod_environment(agent, pod0)
        argv = [expand_variables(arg, env) for arg in agent["args"]]
        # The files its ConfigMaps, Secrets and projected token would put in the pod, as local files.
        for mount_path, local in mounted_files("base", pod, agent, tmp_path / "pod0").items():
            argv = [arg.replace(f"={mount_path}/", f"={local}/") for arg in argv]
        assert argv[0] == "agent"
        parsed = agent_settings.parse_settings(
            agent_settings.build_parser(argparse.ArgumentParser(prog="modelplane agent")), argv[1:], env
        )
        assert (parsed.server_name, parsed.replica_idx) == (server_name, 0), "the replica index from the pod name"
        assert parsed.kubernetes is not None
        assert parsed.kubernetes.in_cluster, "it reads Secrets with the pod's ServiceAccount"
        assert parsed.secrets_namespace == NAMESPACE

        # 3. The pod runs (the test is the kubelet): its agent, with the StatefulSet's arguments except the
        # pod-local ones (addresses and folders on this machine; the fake API instead of the in-cluster one).
        kept = [arg for arg in argv[1:] if flag_name(arg) not in LOCAL_FLAGS]
        assert "--k8s-secrets" in kept
        assert f"--k8s-namespace={NAMESPACE}" in kept
        spec = cluster.agent(
            0, pod_name=pod0, server_name=server_name, memory="300MiB", extra=(*kept, f"--k8s-api={kubernetes.url}")
        )
        agents = await asyncio.to_thread(cluster.start_agents, spec)
        kubelet_reports(kubernetes, server_name, 1)

        def server_ready() -> bool:
            found = condition(kubernetes.get(fake.SERVERS, server_name, NAMESPACE), "Ready")
            return found is not None and found["status"] == "True"

        await until(server_ready, "the sample Server Ready", diagnostics)

        # 4. The sample Model becomes Ready: the agent read the Secret from the API and the artifact from S3.
        def model_ready() -> bool:
            found = condition(kubernetes.get(fake.MODELS, "iris", NAMESPACE), "ModelReady")
            return found is not None and found["status"] == "True"

        await until(model_ready, "the sample Model Ready", diagnostics)
        model = kubernetes.get(fake.MODELS, "iris", NAMESPACE)
        assert model is not None
        assert (model["status"]["replicas"], model["status"]["availableReplicas"]) == (1, 1)
        assert kubernetes.requests_for("GET", f"/namespaces/{NAMESPACE}/secrets/modelstore"), "read from the API"
        await predict(agents[0], "iris", iris)
    finally:
        await controller.stop()
