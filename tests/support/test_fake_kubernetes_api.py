"""The fake Kubernetes API (tests/support/fake_kubernetes_api.py) through the real ``kubernetes.aio`` client: the
semantics the controller and the scheduler's leader election rely on behave as a real API server's do."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.aio import client as k8s
from kubernetes.aio.client.exceptions import ApiException

from tests.support.fake_kubernetes_api import (
    MODELS,
    SELDON_GROUP,
    FakeKubernetesApi,
    json_patch,
    labels_match,
    merge_patch,
)
from tests.support.waiting import wait_for

V = "v1alpha1"


@pytest.fixture
async def api() -> AsyncIterator[FakeKubernetesApi]:
    async with FakeKubernetesApi() as fake:
        yield fake


@pytest.fixture
async def client(api: FakeKubernetesApi) -> AsyncIterator[k8s.ApiClient]:
    configuration = k8s.Configuration(host=api.url)
    async with k8s.ApiClient(configuration) as api_client:
        yield api_client


def as_object(value: object) -> dict[str, Any]:
    """The custom objects API answers ``object``: a JSON object, checked."""
    assert isinstance(value, dict)
    return value


class Custom:
    """The custom objects API with its ``object`` answers checked as JSON objects (for mypy and for the test)."""

    def __init__(self, api: k8s.CustomObjectsApi) -> None:
        self.api = api

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.api, name)

        async def checked(*arguments: Any, **keywords: Any) -> dict[str, Any]:
            return as_object(await method(*arguments, **keywords))

        return checked


async def watch_events(custom: Custom, **arguments: Any) -> AsyncIterator[dict[str, Any]]:
    """The events of a cluster-wide watch of Models, read as the controller reads them: JSON lines."""
    response = await custom.api.list_cluster_custom_object_without_preload_content(
        SELDON_GROUP, V, "models", watch=True, **arguments
    )
    try:
        while line := await response.content.readline():
            yield as_object(json.loads(line))
    finally:
        response.release()


def a_model(name: str, uri: str = "gs://models/iris", **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{SELDON_GROUP}/{V}",
        "kind": "Model",
        "metadata": {"name": name, "labels": {"team": "a"}},
        "spec": {"storageUri": uri, "requirements": ["sklearn"], **extra},
    }


async def test_custom_objects_keep_generation_status_and_resource_versions_apart(
    api: FakeKubernetesApi, client: k8s.ApiClient
) -> None:
    custom = Custom(k8s.CustomObjectsApi(client))
    created = await custom.create_namespaced_custom_object(SELDON_GROUP, V, "ns1", "models", a_model("iris"))
    assert created["metadata"]["generation"] == 1
    assert created["status"] == {}

    status = {"conditions": [{"type": "ModelReady", "status": "True"}], "observedGeneration": 1}
    after_status = await custom.patch_namespaced_custom_object_status(
        SELDON_GROUP, V, "ns1", "models", "iris", {"status": status}
    )
    assert after_status["status"] == status
    assert after_status["metadata"]["generation"] == 1, "a status write is not a spec change"
    assert int(after_status["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    changed = dict(after_status, spec={**after_status["spec"], "storageUri": "gs://models/iris-2"})
    changed["status"] = {"scribbled": True}
    replaced = await custom.replace_namespaced_custom_object(SELDON_GROUP, V, "ns1", "models", "iris", changed)
    assert replaced["metadata"]["generation"] == 2
    assert replaced["status"] == status, "the main resource's writes leave status alone"

    with pytest.raises(ApiException) as stale:
        await custom.replace_namespaced_custom_object(SELDON_GROUP, V, "ns1", "models", "iris", changed)
    assert stale.value.status == 409

    everywhere = await custom.list_cluster_custom_object(SELDON_GROUP, V, "models", label_selector="team=a")
    assert [item["metadata"]["name"] for item in everywhere["items"]] == ["iris"]
    assert (await custom.list_cluster_custom_object(SELDON_GROUP, V, "models", label_selector="team!=a"))["items"] == []
    with pytest.raises(ApiException) as missing:
        await custom.get_namespaced_custom_object(SELDON_GROUP, V, "ns1", "models", "nosuch")
    assert missing.value.status == 404
    with pytest.raises(ApiException) as twice:
        await custom.create_namespaced_custom_object(SELDON_GROUP, V, "ns1", "models", a_model("iris"))
    assert twice.value.status == 409


async def test_a_finalizer_holds_a_deleted_object_until_it_is_removed(
    api: FakeKubernetesApi, client: k8s.ApiClient
) -> None:
    custom = Custom(k8s.CustomObjectsApi(client))
    body = a_model("held")
    body["metadata"]["finalizers"] = ["mlops.example/unload"]
    await custom.create_namespaced_custom_object(SELDON_GROUP, V, "default", "models", body)

    await custom.delete_namespaced_custom_object(SELDON_GROUP, V, "default", "models", "held")
    marked = await custom.get_namespaced_custom_object(SELDON_GROUP, V, "default", "models", "held")
    assert marked["metadata"]["deletionTimestamp"]

    with pytest.raises(ApiException) as adding:
        await custom.patch_namespaced_custom_object(
            SELDON_GROUP, V, "default", "models", "held", {"metadata": {"finalizers": ["a", "b"]}}
        )
    assert adding.value.status == 422

    await custom.patch_namespaced_custom_object(
        SELDON_GROUP, V, "default", "models", "held", {"metadata": {"finalizers": None}}
    )
    assert api.get(MODELS, "held") is None


async def test_a_watch_lists_then_follows_and_a_compacted_version_is_410(
    api: FakeKubernetesApi, client: k8s.ApiClient
) -> None:
    custom = Custom(k8s.CustomObjectsApi(client))
    api.put(MODELS, a_model("before"))
    seen: list[tuple[str, str]] = []
    last_version = ""
    async for event in watch_events(custom, timeout_seconds=30):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        last_version = event["object"]["metadata"]["resourceVersion"]
        if len(seen) == 1:
            api.put(MODELS, a_model("after"))
            api.remove(MODELS, "before")
        if len(seen) == 3:
            break
    assert seen == [("ADDED", "before"), ("ADDED", "after"), ("DELETED", "before")]

    api.put(MODELS, a_model("later"))
    resumed = [event async for event in watch_events(custom, resource_version=last_version, timeout_seconds=1)]
    assert [event["object"]["metadata"]["name"] for event in resumed] == ["later"], (
        "a resumed watch gets only what came after its version"
    )

    api.compact()
    expired = [event async for event in watch_events(custom, resource_version=last_version, timeout_seconds=30)]
    assert [(event["type"], event["object"]["code"]) for event in expired] == [("ERROR", 410)]


async def test_stateful_sets_leases_and_token_reviews(api: FakeKubernetesApi, client: k8s.ApiClient) -> None:
    apps = k8s.AppsV1Api(client)
    stateful_set = k8s.V1StatefulSet(
        metadata=k8s.V1ObjectMeta(name="mlserver"),
        spec=k8s.V1StatefulSetSpec(
            replicas=1,
            service_name="mlserver",
            selector=k8s.V1LabelSelector(match_labels={"app": "mlserver"}),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels={"app": "mlserver"}), spec=k8s.V1PodSpec(containers=[])
            ),
        ),
    )
    await apps.create_namespaced_stateful_set("default", stateful_set)
    scaled = await apps.patch_namespaced_stateful_set("mlserver", "default", {"spec": {"replicas": 3}})
    assert scaled.spec is not None
    assert scaled.metadata is not None
    assert (scaled.spec.replicas, scaled.metadata.generation) == (3, 2)

    coordination = k8s.CoordinationV1Api(client)
    lease = await coordination.create_namespaced_lease(
        "default",
        k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(name="scheduler"),
            spec=k8s.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15),
        ),
    )
    assert lease.spec is not None
    lease.spec.holder_identity = "b"
    await coordination.replace_namespaced_lease("scheduler", "default", lease)
    lease.spec.holder_identity = "c"
    with pytest.raises(ApiException) as lost_race:
        await coordination.replace_namespaced_lease("scheduler", "default", lease)
    assert lost_race.value.status == 409
    held = await coordination.read_namespaced_lease("scheduler", "default")
    assert held.spec is not None
    assert held.spec.holder_identity == "b"

    good_token, bad_token = "good-token", "bad-token"
    api.token_reviews[good_token] = {"authenticated": True, "user": {"username": "system:serviceaccount:ns:agent"}}
    authentication = k8s.AuthenticationV1Api(client)
    good = await authentication.create_token_review(k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=good_token)))
    bad = await authentication.create_token_review(k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=bad_token)))
    assert good.status is not None
    assert good.status.user is not None
    assert (good.status.authenticated, good.status.user.username) == (True, "system:serviceaccount:ns:agent")
    assert bad.status is not None
    assert bad.status.authenticated is False

    # A projected token is valid only for the audiences it was issued for.
    api.token_audiences[good_token] = ["modelplane-agent"]
    for audiences, authenticated in (
        (None, False),
        (["modelplane-scheduler"], False),
        (["x", "modelplane-agent"], True),
    ):
        spec = k8s.V1TokenReviewSpec(token=good_token, audiences=audiences)
        review = await authentication.create_token_review(k8s.V1TokenReview(spec=spec))
        assert review.status is not None
        assert review.status.authenticated is authenticated, audiences
        assert review.status.audiences == (["modelplane-agent"] if authenticated else None)


async def test_held_requests_wait_until_released_and_injected_errors_can_be_cleared(
    api: FakeKubernetesApi, client: k8s.ApiClient
) -> None:
    coordination = k8s.CoordinationV1Api(client)
    await coordination.create_namespaced_lease("default", k8s.V1Lease(metadata=k8s.V1ObjectMeta(name="held")))
    read = await coordination.read_namespaced_lease("held", "default")
    assert read.metadata is not None
    version = read.metadata.resource_version
    held = api.hold("PATCH", "/leases/held")

    async def write(holder: str) -> int:
        patch = {"metadata": {"resourceVersion": version}, "spec": {"holderIdentity": holder}}
        try:
            await coordination.patch_namespaced_lease(
                "held", "default", patch, _content_type="application/merge-patch+json"
            )
        except ApiException as error:
            return int(error.status)
        return 200

    writes = [asyncio.create_task(write(holder)) for holder in ("a", "b")]
    await wait_for(lambda: held.waiting == 2, what="both writes held")
    assert not any(task.done() for task in writes)
    held.release()
    assert sorted(await asyncio.gather(*writes)) == [200, 409], "two writes of one version: one wins, one is 409"

    api.inject_error("GET", "/leases/held", 503, "ServiceUnavailable", times=5)
    with pytest.raises(ApiException) as unavailable:
        await coordination.read_namespaced_lease("held", "default")
    assert unavailable.value.status == 503
    api.clear_errors()
    assert (await coordination.read_namespaced_lease("held", "default")).spec is not None


def test_patch_and_selector_rules() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": None, "e": 3}, "d": [2]}) == {
        "a": {"c": 2, "e": 3},
        "d": [2],
    }
    document = {"spec": {"replicas": 1, "list": [1, 2]}}
    assert json_patch(
        document,
        [
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/replicas", "value": 2},
            {"op": "add", "path": "/spec/list/-", "value": 3},
            {"op": "remove", "path": "/spec/list/0"},
        ],
    ) == {"spec": {"replicas": 2, "list": [2, 3]}}
    assert document == {"spec": {"replicas": 1, "list": [1, 2]}}, "a patch works on a copy"
    assert labels_match({"a": "1"}, "a=1,!b")
    assert not labels_match({"a": "1", "b": "2"}, "a=1,!b")
    assert labels_match({"a": "1"}, "a")
    assert not labels_match({"a": "1"}, "a!=1")
