"""The routing table the scheduler streams to gateways (RoutingService.WatchRoutes), at the core level."""

from __future__ import annotations

import asyncio
import contextlib

from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.event_hub import Subscription
from scheduler.route_messages import RouteKey
from tests.support.scheduler_harness import Harness


async def _drain(subscription: Subscription[RouteKey, rpb.WatchRoutesResponse]) -> list[rpb.WatchRoutesResponse]:
    """Everything pending now (the subscription never ends by itself)."""
    got: list[rpb.WatchRoutesResponse] = []
    while subscription.pending_count:
        got.append(await anext(subscription))
    return got


def _models(updates: list[rpb.WatchRoutesResponse]) -> dict[str, rpb.ModelRoute]:
    return {u.model.name: u.model for u in updates if u.WhichOneof("route") == "model"}


def _experiment(name: str, *models: str, default: str = "") -> pb.Experiment:
    candidates = [pb.ExperimentCandidate(name=m, weight=1) for m in models]
    experiment = pb.Experiment(name=name, candidates=candidates, resourceType=pb.MODEL)
    if default:
        experiment.default = default
    return experiment


async def test_snapshot_lists_serving_replicas_then_marks_its_end() -> None:
    async with Harness() as harness:
        harness.add_replica(index=0)
        harness.add_replica(index=1)
        await harness.load("iris", replicas=2)
        await harness.load("pending", replicas=1, requirements=["tensorflow"])  # nowhere to place it
        await harness.settle()
        async with harness.core.subscribe_routes("test") as routes:
            updates = await _drain(routes)
    assert updates[-1].snapshot_complete
    assert updates[-1].WhichOneof("route") is None
    models = _models(updates)
    [iris] = models["iris"].versions
    assert iris.version == 1
    assert [(e.server_name, e.replica_idx, e.http_url) for e in iris.endpoints] == [
        ("mlserver", 0, "http://127.0.0.1:1/mlserver/0"),
        ("mlserver", 1, "http://127.0.0.1:1/mlserver/1"),
    ]
    assert not models["pending"].removed
    assert list(models["pending"].versions) == []


async def test_changes_follow_the_snapshot_and_removal_is_announced() -> None:
    async with Harness() as harness:
        harness.add_replica(index=0)
        async with harness.core.subscribe_routes("test") as routes:
            assert (await _drain(routes))[-1].snapshot_complete
            await harness.load("iris", replicas=1)
            await harness.settle()
            served = _models(await _drain(routes))["iris"]
            assert [v.version for v in served.versions] == [1]
            await harness.core.unload_model("iris")
            await harness.settle()
            gone = _models(await _drain(routes))["iris"]
    assert gone.removed


async def test_a_moved_model_is_routed_only_to_its_new_replica() -> None:
    async with Harness() as harness:
        first = harness.add_replica(index=0)
        await harness.load("iris", replicas=1)
        await harness.settle()
        async with harness.core.subscribe_routes("test") as routes:
            before = _models(await _drain(routes))["iris"]
            assert [e.replica_idx for e in before.versions[0].endpoints] == [0]
            harness.add_replica(index=1)
            first.disconnect()
            await harness.settle()
            await asyncio.sleep(0)
            after = _models(await _drain(routes))["iris"]
    assert [e.replica_idx for v in after.versions for e in v.endpoints] == [1]


async def _two_models(harness: Harness) -> None:
    harness.add_replica(index=0)
    await harness.load("a", replicas=1)
    await harness.load("b", replicas=1)
    await harness.settle()


async def test_experiments_and_pipelines_are_routed_and_experiment_acks_set_active() -> None:
    async with Harness() as harness:
        await _two_models(harness)
        async with harness.core.subscribe_routes("test") as routes:
            await _drain(routes)
            await harness.core.start_experiment(_experiment("ab", "a", "b", default="a"))
            pipeline = pb.Pipeline(name="p", steps=[pb.PipelineStep(name="a")], output=pb.PipelineOutput(steps=["a"]))
            await harness.core.load_pipeline(pipeline)
            await harness.settle()
            updates = await _drain(routes)
            experiments = [u.experiment for u in updates if u.WhichOneof("route") == "experiment"]
            pipelines = [u.pipeline for u in updates if u.WhichOneof("route") == "pipeline"]
            assert experiments[-1].name == "ab"
            assert experiments[-1].experiment.default == "a"
            assert pipelines[-1].name == "p"
            assert pipelines[-1].version == 1
            assert pipelines[-1].pipeline.steps[0].name == "a"

            [status] = harness.core.experiment_status("ab")
            assert not status.active
            harness.core.record_experiment_routed("ab", "gw-1", True, "")
            [status] = harness.core.experiment_status("ab")
            assert not status.active  # gw-1 watches no routes: its word is stale and ignored
            async with harness.core.watch_routes("gw-1"):
                harness.core.record_experiment_routed("ab", "gw-1", True, "")
                [status] = harness.core.experiment_status("ab")
                assert status.active

            await harness.core.stop_experiment("ab")
            await harness.core.unload_pipeline("p")
            await harness.settle()
            updates = await _drain(routes)
    removed = {(u.WhichOneof("route"), getattr(u, u.WhichOneof("route") or "model").name) for u in updates}
    assert ("experiment", "ab") in removed
    assert ("pipeline", "p") in removed
    assert any(u.experiment.removed for u in updates if u.WhichOneof("route") == "experiment")
    assert any(u.pipeline.removed for u in updates if u.WhichOneof("route") == "pipeline")


async def test_an_experiment_is_inactive_once_the_gateways_that_routed_it_are_gone() -> None:
    async with Harness() as harness:
        await _two_models(harness)
        await harness.core.start_experiment(_experiment("ab", "a", "b"))
        await harness.settle()

        def active() -> bool:
            return harness.core.experiment_status("ab")[0].active

        async with harness.core.subscribe_experiments("test") as statuses:
            gw1, gw2_old, gw2_new = (contextlib.AsyncExitStack() for _ in range(3))
            await gw1.enter_async_context(harness.core.watch_routes("gw-1"))
            await gw2_old.enter_async_context(harness.core.watch_routes("gw-2"))
            harness.core.record_experiment_routed("ab", "gw-1", True, "")
            harness.core.record_experiment_routed("ab", "gw-2", True, "")
            await gw2_new.enter_async_context(harness.core.watch_routes("gw-2"))  # reconnects before...
            await gw2_old.aclose()  # ...its old stream ends: still connected
            assert active()
            await gw2_new.aclose()
            assert active()  # gw-1 still routes it
            await gw1.aclose()
            [status] = harness.core.experiment_status("ab")
            assert not status.active
            assert status.statusDescription == "not active yet"
            seen = []
            while statuses.pending_count:
                seen.append(await anext(statuses))
    assert seen[-1].experimentName == "ab"
    assert not seen[-1].active  # subscribers are told
