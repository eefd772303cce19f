"""The controller's watch loop against the fake Kubernetes API, through the real kubernetes.aio client: every
change reaches the kind's reconciler as the object's latest version, bursts coalesce, and an expired watch (410)
or a closed stream converges without losing a change or a deletion made meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller import process
from controller.reconciling import ControllerContext, ControlPlaneEvent, Reconciler
from controller.resource_kinds import MODELS, JsonObject, ObjectKey, ResourceKind
from controller.settings import ControllerSettings
from modelplane.addresses import Address
from modelplane.kubernetes_api import KubernetesConnection
from modelplane.transport import TransportSecurity
from tests.support import fake_kubernetes_api as fake
from tests.support.waiting import wait_for

DEADLINE = 60.0


@dataclass
class RecordingReconciler:
    """Records what it is handed: (key, resourceVersion or None for gone)."""

    seen: list[tuple[ObjectKey, str | None]] = field(default_factory=list)
    latest: dict[ObjectKey, JsonObject | None] = field(default_factory=dict)
    forgotten: int = 0

    @property
    def kind(self) -> ResourceKind:
        return MODELS

    @property
    def resend_on(self) -> frozenset[ControlPlaneEvent]:
        return frozenset()

    async def reconcile(self, key: ObjectKey, resource: JsonObject | None) -> None:
        version = None if resource is None else resource["metadata"]["resourceVersion"]
        self.seen.append((key, version))
        self.latest[key] = resource

    def forget_sent(self) -> None:
        self.forgotten += 1

    async def run(self) -> None:
        await asyncio.Event().wait()


@pytest.fixture
async def api() -> AsyncIterator[fake.FakeKubernetesApi]:
    async with fake.FakeKubernetesApi() as server:
        yield server


def settings_for(api: fake.FakeKubernetesApi, namespaces: tuple[str, ...] = ()) -> ControllerSettings:
    return ControllerSettings(
        scheduler=Address("127.0.0.1", 1),  # nothing listens: the control-plane stream just retries
        security=TransportSecurity(),
        kubernetes=KubernetesConnection(host=api.url),
        namespaces=namespaces,
        name="test-controller",
        health_listen=None,
        serving=TransportSecurity(),
        ready_file=None,
        log_level="info",
        log_json=False,
    )


def a_model(name: str, namespace: str = "default", uri: str = "gs://models/iris", **extra: Any) -> JsonObject:
    return {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"storageUri": uri, **extra},
    }


def version_of(api: fake.FakeKubernetesApi, name: str, namespace: str = "default") -> str | None:
    obj = api.get(fake.MODELS, name, namespace)
    return None if obj is None else str(obj["metadata"]["resourceVersion"])


async def running_controller(
    api: fake.FakeKubernetesApi, recorder: RecordingReconciler, namespaces: tuple[str, ...] = ()
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()

    def factory(_: ControllerContext) -> Reconciler:
        return recorder

    task = asyncio.create_task(process.run(settings_for(api, namespaces), stop, [factory]))
    return stop, task


async def test_changes_reach_the_reconciler_and_a_410_relists_without_losing_a_deletion(
    api: fake.FakeKubernetesApi,
) -> None:
    recorder = RecordingReconciler()
    api.put(fake.MODELS, a_model("before"))
    stop, task = await running_controller(api, recorder)
    try:
        before = ObjectKey("default", "before")
        await wait_for(lambda: recorder.latest.get(before) is not None, DEADLINE, "the listed model is reconciled")

        api.put(fake.MODELS, a_model("after", namespace="ns2"))
        after = ObjectKey("ns2", "after")
        await wait_for(lambda: after in recorder.latest, DEADLINE, "a created model is reconciled")

        # The stream ends; a deletion and a change happen before the controller watches again, and the history
        # is compacted: resuming from its last version is 410, and only a new list shows what happened in the gap.
        # (One synchronous block: the controller runs on this loop, so it sees nothing in between.)
        api.close_watches()
        api.remove(fake.MODELS, "before")
        api.put(fake.MODELS, a_model("after", namespace="ns2", uri="gs://models/iris-2"))
        api.compact()
        await wait_for(lambda: recorder.latest.get(before, {}) is None, DEADLINE, "the deletion in the gap is seen")
        await wait_for(
            lambda: (after, version_of(api, "after", "ns2")) in recorder.seen,
            DEADLINE,
            "the change in the gap is seen",
        )
        lists = [r for r in api.requests_for("GET", "/models") if r.query.get("watch") not in ("true", "True", "1")]
        assert len(lists) >= 2, "an expired watch lists again"
    finally:
        stop.set()
        await task


async def test_a_burst_of_changes_coalesces_to_the_latest_version(api: fake.FakeKubernetesApi) -> None:
    recorder = RecordingReconciler()
    stop, task = await running_controller(api, recorder, namespaces=("team-a",))
    try:
        for index in range(30):
            api.put(fake.MODELS, a_model("busy", namespace="team-a", uri=f"gs://models/{index}"))
        api.put(fake.MODELS, a_model("elsewhere", namespace="team-b"))
        key = ObjectKey("team-a", "busy")
        final = version_of(api, "busy", "team-a")
        await wait_for(lambda: (key, final) in recorder.seen, DEADLINE, "the latest version is reconciled")
        seen_for_key = [version for k, version in recorder.seen if k == key]
        assert seen_for_key[-1] == final
        assert len(seen_for_key) == len(set(seen_for_key)), "no version is handed over twice"
        assert all(k.namespace == "team-a" for k, _ in recorder.seen), "only the watched namespace"
    finally:
        stop.set()
        await task
