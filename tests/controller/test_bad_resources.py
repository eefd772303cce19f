"""Hypothesis against the LIVE controller: arbitrary Model, Pipeline and Experiment bodies (the fields Seldon's
CRDs have with values of any JSON type, and beyond: a spec that is not an object, unknown fields, names the API
server admits but the scheduler does not, a status someone else wrote) created in the FAKE Kubernetes API, which
checks no schema, as a real `modelplane controller` process runs against a real scheduler and agent.

What must hold, for every example: the controller process keeps running; each resource gets its kind's condition
and a ``Ready`` one, with a reason and, when not ready, a message of one bounded line; each can be deleted (the
finalizer goes); and the scheduler stays consistent: a good Model created after the bad ones becomes Ready.
Bounded: a few examples of a few resources each (the machine has 2 cores), every wait a hang guard.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from controller.status_documents import MAX_MESSAGE_CHARS
from tests.controller.controller_harness import ControllerProcess, start_controller
from tests.support import fake_kubernetes_api as fake
from tests.support.cluster_fixtures import Cluster, Iris
from tests.support.waiting import wait_for

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]

WAIT = 60.0  # seconds: a hang guard for every wait
GROUP_VERSION = "mlops.seldon.io/v1alpha1"
NAMESPACES = ("team-a", "team-b")
KINDS = {"Model": (fake.MODELS, "ModelReady"), "Pipeline": (fake.PIPELINES, "PipelineReady")}
KINDS["Experiment"] = (fake.EXPERIMENTS, "ExperimentReady")
_unique = itertools.count()

# -- the bodies ------------------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False),  # JSON has no NaN: the API server could not store one
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
# Names the API server admits (DNS subdomains): with dots, or longer than 63, the scheduler refuses them.
names = st.one_of(
    st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z"),
    st.from_regex(r"\A[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){1,3}\Z"),
    st.text(alphabet="abcdefghij0123456789", min_size=64, max_size=200),
)
SPEC_FIELDS = {
    "Model": ["storageUri", "memory", "replicas", "minReplicas", "requirements", "server", "parameters", "llm"],
    "Pipeline": ["steps", "input", "output", "allowCycles", "maxStepRevisits"],
    "Experiment": ["default", "candidates", "mirror", "resourceType", "config"],
}
step_names = st.sampled_from(["m1", "m2", "good-0"])
# Specs the CRDs' schemas admit, most of which the translation accepts: the scheduler decides (and often cannot
# place or run them: no such folder, server or step).
PLAUSIBLE_SPECS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "Model": st.fixed_dictionaries(
        {"storageUri": st.sampled_from(["s3://nowhere/m", "/no/such/folder", "gs://b/m"])},
        optional={
            "memory": st.sampled_from(["10Mi", "1Gi", "900Ti", "0"]),
            "replicas": st.integers(min_value=0, max_value=3),
            "minReplicas": st.integers(min_value=0, max_value=3),
            "maxReplicas": st.integers(min_value=0, max_value=3),
            "requirements": st.lists(st.sampled_from(["sklearn", "nosuch", "xgboost"]), max_size=2),
            "server": st.sampled_from(["mlserver", "nosuch"]),
            "artifactVersion": st.integers(min_value=0, max_value=3),
            "parameters": st.lists(st.fixed_dictionaries({"name": st.just("p"), "value": st.just("v")}), max_size=1),
        },
    ),
    "Pipeline": st.fixed_dictionaries(
        {"steps": st.lists(st.fixed_dictionaries({"name": step_names}), min_size=1, max_size=2)},
        optional={"output": st.fixed_dictionaries({"steps": st.lists(step_names, max_size=2)})},
    ),
    "Experiment": st.fixed_dictionaries(
        {
            "candidates": st.lists(
                st.fixed_dictionaries({"name": step_names, "weight": st.integers(min_value=0, max_value=100)}),
                min_size=1,
                max_size=2,
            )
        },
        optional={
            "default": step_names,
            "resourceType": st.sampled_from(["model", "pipeline"]),
            "mirror": st.fixed_dictionaries({"name": step_names, "percent": st.integers(min_value=0, max_value=100)}),
        },
    ),
}


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(KINDS)))
    spec: Any = draw(
        st.one_of(
            PLAUSIBLE_SPECS[kind],
            st.dictionaries(st.sampled_from([*SPEC_FIELDS[kind], "unknownField"]), json_values, max_size=4),
            json_values,  # not even an object
        )
    )
    name = f"{draw(names)}-x{next(_unique)}"  # unique across examples: a name is never reused while it is deleted
    body: dict[str, Any] = {
        "apiVersion": GROUP_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": draw(st.sampled_from(NAMESPACES))},
        "spec": spec,
    }
    if draw(st.booleans()):
        body["extra"] = draw(json_values)
    if draw(st.booleans()):
        body["status"] = draw(st.dictionaries(st.sampled_from(["conditions", "observedGeneration", "x"]), json_values))
    return body


# -- the live processes, shared by every example ------------------------------------------------------------


@dataclass
class Live:
    api: fake.FakeKubernetesApi
    controller: ControllerProcess
    cluster: Cluster
    iris: Iris

    def diagnostics(self) -> str:
        tail = "\n".join(self.controller.log().splitlines()[-50:])
        return f"{self.cluster.diagnostics()}\n--- controller log:\n{tail}"


@pytest.fixture
async def live(cluster: Cluster, iris: Iris, tmp_path: Path) -> AsyncIterator[Live]:
    api = fake.FakeKubernetesApi()
    await api.start()
    try:
        scheduler = await asyncio.to_thread(cluster.start_scheduler)
        await asyncio.to_thread(cluster.start_agents, cluster.agent(0, memory="300MiB"))
        controller = await start_controller(tmp_path / "controller", api, scheduler.listen)
        try:
            yield Live(api, controller, cluster, iris)
        finally:
            await controller.stop()
    finally:
        await api.stop()


async def until(live: Live, predicate: Callable[[], bool], what: str) -> None:
    try:
        await wait_for(predicate, WAIT, what)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{live.diagnostics()}") from None
    assert live.controller.process.poll() is None, f"the controller exited\n{live.diagnostics()}"


def conditions_of(live: Live, kind: str, namespace: str, name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The kind's condition and Ready, once the controller wrote both (None before)."""
    obj = live.api.get(KINDS[kind][0], name, namespace)
    status = (obj or {}).get("status")
    if not isinstance(status, dict) or not isinstance(status.get("conditions"), list):
        return None
    by_type = {c.get("type"): c for c in status["conditions"] if isinstance(c, dict)}  # someone else's may be junk
    own, ready = by_type.get(KINDS[kind][1]), by_type.get("Ready")
    if own is None or ready is None or status.get("observedGeneration") != (obj or {})["metadata"]["generation"]:
        return None
    return own, ready


def has_conditions(live: Live, kind: str, namespace: str, name: str) -> Callable[[], bool]:
    return lambda: conditions_of(live, kind, namespace, name) is not None


def deleted(live: Live, kind: str, namespace: str, name: str) -> Callable[[], bool]:
    return lambda: live.api.get(KINDS[kind][0], name, namespace) is None


def check_condition(found: dict[str, Any], where: str) -> None:
    assert found["status"] in ("True", "False"), (where, found)
    reason = found.get("reason")
    assert isinstance(reason, str), (where, found)
    assert reason, (where, found)
    assert " " not in reason, (where, found)
    if found["status"] == "False":
        message = found.get("message")
        assert isinstance(message, str), f"{where}: not ready without saying why: {found}"
        assert message.strip(), f"{where}: not ready without saying why: {found}"
        assert "\n" not in message, (where, found)
        assert len(message) <= MAX_MESSAGE_CHARS, (where, found)


async def a_good_model_becomes_ready(live: Live) -> None:
    name = f"good-{next(_unique)}"
    body = {
        "apiVersion": GROUP_VERSION,
        "kind": "Model",
        "metadata": {"name": name, "namespace": NAMESPACES[0]},
        "spec": {"storageUri": str(live.iris.folder), "requirements": ["sklearn"], "memory": "10Mi"},
    }
    live.api.put(fake.MODELS, body)

    def ready() -> bool:
        found = conditions_of(live, "Model", NAMESPACES[0], name)
        return found is not None and found[0]["status"] == "True"

    await until(live, ready, f"the good Model {name} Ready after the bad ones")
    live.api.remove(fake.MODELS, name, NAMESPACES[0])
    await until(live, lambda: live.api.get(fake.MODELS, name, NAMESPACES[0]) is None, f"{name} deleted")


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,  # the same few examples every run: a failure is reproduced by running the test again
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example waits on live processes
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(bodies(), min_size=1, max_size=4))
@example(  # a name the API server admits and the scheduler refuses: its deletion once waited for ever
    batch=[
        {
            "apiVersion": GROUP_VERSION,
            "kind": kind,
            "metadata": {"name": f"dotted.{kind.lower()}.name", "namespace": NAMESPACES[1]},
            "spec": {"storageUri": "/no/such/folder", "steps": [{"name": "m1"}], "default": "m1"},
        }
        for kind in sorted(KINDS)
    ]
)
@example(  # a status someone else wrote, of shapes no condition list has
    batch=[
        {
            "apiVersion": GROUP_VERSION,
            "kind": "Model",
            "metadata": {"name": f"junk-status-{index}", "namespace": NAMESPACES[0]},
            "spec": {"storageUri": "/no/such/folder"},
            "status": status,
        }
        for index, status in enumerate(
            [
                {"conditions": 5, "observedGeneration": "x"},
                {"conditions": "abc"},
                {"conditions": [1, None, {"type": "ModelReady", "status": "False", "lastTransitionTime": 7}]},
            ]
        )
    ]
)
async def test_bad_resources_get_a_clear_condition_can_be_deleted_and_leave_the_scheduler_consistent(
    live: Live, batch: list[dict[str, Any]]
) -> None:
    created = []
    for body in batch:
        kind = body["kind"]
        resource_kind = KINDS[kind][0]
        garbage_status = body.pop("status", None)
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        live.api.put(resource_kind, body)
        if garbage_status is not None:  # someone else's status write (the status subresource takes any JSON here)
            live.api.set_status(resource_kind, name, garbage_status, namespace)
        created.append((kind, namespace, name))
    for kind, namespace, name in created:
        where = f"{kind} {namespace}/{name}"
        await until(live, has_conditions(live, kind, namespace, name), where)
        found = conditions_of(live, kind, namespace, name)
        assert found is not None
        for item in found:
            check_condition(item, where)
        event(f"{kind} {found[0]['status']} {found[0]['reason']}")  # --hypothesis-show-statistics
    for kind, namespace, name in created:
        live.api.remove(KINDS[kind][0], name, namespace)
    for kind, namespace, name in created:
        await until(live, deleted(live, kind, namespace, name), f"{kind} {namespace}/{name} deleted")
    await a_good_model_becomes_ready(live)
