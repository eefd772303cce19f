"""SchedulerCore in-process: versions, placement in context, rollout, deletion, agents, drain, restart.

Fake replicas answer operations directly; ``Harness.settle`` checks the memory and state invariants
after every step, so each test also proves accounting stays consistent.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from scheduler.core import CoreSettings, SchedulerCore
from scheduler.models.model_state import ModelState
from scheduler.persistence import MemoryStateStore
from tests.support.scheduler_harness import Harness, MiB, model_spec

M = ModelState


# ----------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("second", "expected_versions", "latest_replicas"),
    [
        ({}, [1], 1),  # identical request: nothing changes
        ({"uri": "gs://models/iris-v2"}, [2], 1),  # modelSpec change: new version; v1 unloaded, dropped
        ({"memory": 200 * MiB}, [2], 1),  # modelSpec change: new version
        ({"replicas": 2}, [1], 2),  # deployment only: same version, updated in place
        ({"generation": 7}, [1], 1),  # metadata only: patched in place
    ],
)
async def test_versioning(second: dict[str, object], expected_versions: list[int], latest_replicas: int) -> None:
    async with Harness() as h:
        h.add_replica(index=0)
        h.add_replica(index=1)
        await h.load("iris")
        await h.settle()
        await h.load("iris", **second)
        await h.settle()
        record = h.core.cluster.models["iris"]
        assert [v.version for v in record.versions] == expected_versions
        assert h.state("iris") == M.AVAILABLE
        assert h.status("iris").versions[-1].state.availableReplicas == latest_replicas


async def test_first_version_is_the_kubernetes_generation() -> None:
    async with Harness() as h:
        await h.load("iris", generation=100)
        assert [v.version for v in h.core.cluster.models["iris"].versions] == [100]
        await h.load("iris", generation=100, uri="gs://changed")
        assert [v.version for v in h.core.cluster.models["iris"].versions] == [100, 101]


async def test_identical_load_writes_nothing() -> None:
    store = MemoryStateStore()
    async with Harness(store) as h:
        await h.load("iris")
        writes = store.apply_count
        await h.load("iris")
        assert store.apply_count == writes


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (model_spec("Bad_Name"), "is invalid"),
        (model_spec("a.b"), "is invalid"),
        (model_spec("x" * 64), "the limit is 63"),
        (model_spec(""), "name is empty"),
        (model_spec("iris", uri=""), "uri is empty"),
        (model_spec("iris", replicas=5000), "above the limit"),
        (model_spec("iris", replicas=1, min_replicas=2), "minReplicas=2 is more than replicas=1"),
        (model_spec("iris", replicas=3, max_replicas=2), "replicas=3 is more than maxReplicas=2"),
        (model_spec("iris", requirements=[" sklearn"]), "not a capability name"),
        (model_spec("iris", server="Not A Server"), "server name"),
        (pb.Model(meta=pb.MetaData(name="iris")), "modelSpec is missing"),
        (pb.Model(modelSpec=pb.ModelSpec(uri="x")), "meta is missing"),
    ],
)
async def test_bad_models_are_refused(model: pb.Model, message: str) -> None:
    async with Harness() as h:
        with pytest.raises(InvalidArgument, match=message):
            await h.core.load_model(model)
        assert h.core.cluster.models == {}


async def test_model_limit() -> None:
    core = SchedulerCore(MemoryStateStore(), CoreSettings(sync_grace_seconds=0, max_models=2))
    await core.start()
    try:
        await core.load_model(model_spec("a"))
        await core.load_model(model_spec("b"))
        with pytest.raises(ResourceExhausted, match="limit"):
            await core.load_model(model_spec("c"))
        await core.load_model(model_spec("a", uri="changed"))  # existing models can still change
    finally:
        await core.close()


async def test_every_models_status_is_rendered_as_it_is_taken() -> None:
    """ModelStatus for all models renders one status per message sent: models changed or removed between two
    messages are rendered as they are then (or left out), never an error for the whole answer."""
    async with Harness() as h:
        h.add_replica(memory=10_000 * MiB)
        for name in ("a", "b", "c"):
            await h.load(name)
        await h.settle()
        statuses = h.core.model_status(None, all_versions=False)
        assert next(statuses).modelName == "a"
        h.core.cluster.models.pop("b")  # as if its deletion had finished meanwhile
        await h.load("c", uri="gs://changed")
        await h.load("d")  # loaded after the answer began: not in it
        rest = list(statuses)
        assert [status.modelName for status in rest] == ["c"]
        assert [version.version for version in rest[0].versions] == [2]


async def test_concurrent_loads_of_one_name_are_single_flight() -> None:
    async with Harness() as h:
        replica = h.add_replica(memory=10_000 * MiB)
        await asyncio.gather(*(h.load("iris") for _ in range(20)))
        await asyncio.gather(*(h.load("iris", uri=f"gs://v{i}") for i in range(5)))
        await h.settle()
        versions = [v.version for v in h.core.cluster.models["iris"].versions]
        assert versions == [6]  # 1 + 5 changes, each a new version; old ones unloaded and dropped
        assert h.state("iris") == M.AVAILABLE
        assert len(replica.held) == 1


# ----------------------------------------------------------------------------- placement in context


async def test_schedule_failed_names_each_server_and_filter() -> None:
    async with Harness() as h:
        h.add_replica("mlserver", memory=100 * MiB)
        h.add_replica("triton", capabilities=["triton"])
        await h.load("big", memory=300 * MiB)
        await h.settle()
        status = h.status("big").versions[-1].state
        assert M(status.state) == M.SCHEDULE_FAILED
        assert "server mlserver" in status.reason
        assert "replica 0 has 100MiB free, model needs 300MiB" in status.reason
        assert "server triton: missing capability sklearn" in status.reason


async def test_failed_model_is_placed_when_capacity_arrives() -> None:
    async with Harness() as h:
        await h.load("iris")
        await h.settle()
        assert h.state("iris") == M.SCHEDULE_FAILED
        assert h.status("iris").versions[-1].state.reason == "no servers are connected"
        h.add_replica()
        await h.settle()
        assert h.state("iris") == M.AVAILABLE


async def test_partial_placement_asks_for_scale_up() -> None:
    async with Harness() as h:
        h.add_replica(index=0)
        async with h.core.subscribe_servers("test") as servers:
            await h.load("iris", replicas=3, min_replicas=1, max_replicas=5)
            await h.settle()
            assert h.state("iris") == M.AVAILABLE  # minReplicas met
            seen: list[pb.ServerStatusResponse] = []
            while not any(s.type == pb.ServerStatusResponse.ScalingRequest for s in seen):
                seen.append(await asyncio.wait_for(anext(servers), 5))
            [scaling] = [s for s in seen if s.type == pb.ServerStatusResponse.ScalingRequest]
            assert (scaling.serverName, scaling.expectedReplicas) == ("mlserver", 3)
        h.add_replica(index=1)
        h.add_replica(index=2)
        await h.settle()
        assert h.status("iris").versions[-1].state.availableReplicas == 3


async def test_scale_up_and_down_keep_existing_replicas() -> None:
    async with Harness() as h:
        for index in range(3):
            h.add_replica(index=index)
        await h.load("iris", replicas=1)
        await h.settle()
        assert len(h.placed_on("iris")) == 1
        await h.load("iris", replicas=3)
        await h.settle()
        assert set(h.placed_on("iris")) == {0, 1, 2}
        await h.load("iris", replicas=1)
        await h.settle()
        remaining = [i for i, state in h.placed_on("iris").items() if state == "AVAILABLE"]
        assert len(remaining) == 1
        await h.load("iris", replicas=0)
        await h.settle()
        assert h.state("iris") == M.SCALED_DOWN


async def test_memory_never_goes_negative_with_1000_models_on_tiny_replicas() -> None:
    async with Harness() as h:
        replicas = [h.add_replica(index=i, memory=10 * MiB) for i in range(4)]
        for i in range(1000):
            await h.load(f"m-{i}", memory=MiB)
        await h.settle(rounds=2000)
        states = [h.state(f"m-{i}") for i in range(1000)]
        assert states.count(M.AVAILABLE) == 40  # 4 replicas x 10 MiB / 1 MiB
        assert states.count(M.SCHEDULE_FAILED) == 960
        for replica in h.core.cluster.servers["mlserver"].replicas.values():
            assert replica.ledger.used == 10 * MiB
        for i in range(0, 1000, 2):
            await h.core.unload_model(f"m-{i}")
        await h.settle(rounds=4000)
        for replica in h.core.cluster.servers["mlserver"].replicas.values():
            assert 0 <= replica.ledger.used <= replica.ledger.capacity
        assert sum(len(r.held) for r in replicas) == 40  # freed room was taken by waiting models


# ----------------------------------------------------------------------------- rollout and deletion


async def test_rollout_replaces_the_old_version_after_the_new_one_serves() -> None:
    async with Harness() as h:
        replica = h.add_replica()
        await h.load("iris")
        await h.settle()
        replica.answering = False
        await h.load("iris", uri="gs://v2")
        await h.settle()
        assert replica.unloads == []  # v2 not loaded yet: v1 keeps serving
        assert h.state("iris") == M.PROGRESSING
        replica.answering = True
        for operation in replica.unanswered:
            replica.answer(operation)
        await h.settle()
        assert replica.unloads == [("iris", 1)]
        assert h.state("iris") == M.AVAILABLE
        assert [v.version for v in h.core.cluster.models["iris"].versions] == [2]


async def test_failing_new_version_leaves_the_old_one_serving() -> None:
    async with Harness() as h:
        replica = h.add_replica()
        await h.load("iris")
        await h.settle()
        replica.fail_loads["iris"] = "model file not found: gs://v2/model.joblib"
        await h.load("iris", uri="gs://v2")
        await h.settle()
        versions = h.status("iris", all_versions=True).versions
        assert [(v.version, M(v.state.state)) for v in versions] == [(1, M.AVAILABLE), (2, M.FAILED)]
        assert versions[1].state.reason == "model file not found: gs://v2/model.joblib"
        assert ("iris", 1) in replica.held


async def test_an_unchanged_load_retries_a_failed_model_and_leaves_a_serving_one_alone() -> None:
    """As Seldon's scheduler does: LoadModel again with the same spec places a failed model again (its
    artifact store is back, say) without a new version, and changes nothing for a model that serves."""
    async with Harness() as h:
        replica = h.add_replica()
        replica.fail_loads["iris"] = "listing s3://models/iris/ failed: cannot connect"
        await h.load("iris")
        await h.settle()
        assert h.state("iris") == M.FAILED
        del replica.fail_loads["iris"]
        await h.load("iris")
        await h.settle()
        assert h.state("iris") == M.AVAILABLE
        assert [v.version for v in h.core.cluster.models["iris"].versions] == [1]
        assert replica.loads == [("iris", 1), ("iris", 1)]  # the failed load, then the retried one
        await h.load("iris")
        await h.settle()
        assert replica.loads == [("iris", 1), ("iris", 1)]


async def test_unload_and_recreate() -> None:
    async with Harness() as h:
        replica = h.add_replica()
        await h.load("iris")
        await h.settle()
        replica.answering = False
        await h.core.unload_model("iris")
        await h.settle()
        assert h.state("iris") == M.TERMINATING
        with pytest.raises(FailedPrecondition, match="in process of deletion"):
            await h.load("iris")
        await h.core.unload_model("iris")  # repeating the unload is fine
        replica.answering = True
        for operation in replica.unanswered:
            replica.answer(operation)
        await h.settle()
        assert "iris" not in h.core.cluster.models
        with pytest.raises(FailedPrecondition, match="not found"):
            h.core.model_status("iris", all_versions=False)
        await h.load("iris")
        await h.settle()
        assert h.state("iris") == M.AVAILABLE


async def test_unknown_model_unload_is_failed_precondition() -> None:
    async with Harness() as h:
        with pytest.raises(FailedPrecondition, match="not found"):
            await h.core.unload_model("nope")


# ----------------------------------------------------------------------------- agents


async def test_agent_disconnect_reschedules() -> None:
    async with Harness() as h:
        first = h.add_replica(index=0, memory=150 * MiB)
        await h.load("iris")
        await h.settle()
        assert h.placed_on("iris") == {0: "AVAILABLE"}
        second = h.add_replica(index=1)
        first.disconnect()
        await h.settle()
        assert h.placed_on("iris") == {1: "AVAILABLE"}
        assert second.loads == [("iris", 1)]


async def test_a_replica_still_unloading_a_version_is_not_chosen_to_load_it_again() -> None:
    """A replica whose copy of a version is on its way out (UNLOADING) cannot load it again until the unload is
    over (the replica state table); placement must go elsewhere, not fail the reconcile on an illegal move."""
    async with Harness() as h:
        leaving = h.add_replica(index=1, memory=4000 * MiB)  # the most free memory: placement's first choice
        await h.load("iris")
        await h.settle()
        assert h.placed_on("iris") == {1: "AVAILABLE"}
        leaving.answering = False  # its unload stays in flight
        holder = h.add_replica(index=0, loaded=[("iris", 1, 100 * MiB)])  # one copy too many: index 1 gives up
        await h.settle()
        assert h.placed_on("iris") == {0: "AVAILABLE", 1: "UNLOADING"}
        other = h.add_replica(index=2, memory=2000 * MiB)
        holder.disconnect()
        await h.settle()
        assert h.placed_on("iris") == {1: "UNLOADING", 2: "AVAILABLE"}
        assert other.loads == [("iris", 1)]
        assert h.state("iris") == M.AVAILABLE


async def test_events_are_compare_and_set() -> None:
    async with Harness() as h:
        replica = h.add_replica()
        await h.load("iris")
        await h.settle()
        load = agent_pb2.ModelOperation(kind=agent_pb2.ModelOperation.KIND_LOAD, model=model_spec("iris"), version=1)
        # A LOADED answering some other operation than the one in flight.
        load.operation_id = 99
        replica.answer(load)
        assert replica.rejected[-1].reason == (
            "KIND_LOADED for iris:1 answers operation 99, but operation 1 is the one in flight"
        )
        # The same operation answered twice: the state no longer matches.
        load.operation_id = 1
        replica.answer(load)
        assert replica.rejected[-1].reason == (
            "KIND_LOADED for iris:1 on replica mlserver/0 expects state LOADING, but it is AVAILABLE"
        )
        assert h.state("iris") == M.AVAILABLE


async def test_held_models_are_adopted_without_reload() -> None:
    async with Harness() as h:
        await h.load("iris")
        replica = h.add_replica(loaded=[("iris", 1, 100 * MiB), ("stranger", 3, MiB)])
        await h.settle()
        assert h.state("iris") == M.AVAILABLE
        assert replica.loads == []
        assert replica.unloads == [("stranger", 3)]  # not wanted here: removed


async def test_drain_moves_models_before_answering() -> None:
    async with Harness() as h:
        leaving = h.add_replica(index=0)
        await h.load("iris")
        await h.load("wine")
        await h.settle()
        staying = h.add_replica(index=1)
        staying.answering = False
        leaving.drain()
        await h.settle()
        assert leaving.drain_complete == []  # nothing serves elsewhere yet
        assert h.state("iris") == M.AVAILABLE  # still served by the draining replica
        staying.answering = True
        for operation in staying.unanswered:
            staying.answer(operation)
        await h.settle()
        assert sorted(staying.held) == [("iris", 1), ("wine", 1)]
        assert sorted(leaving.unloads) == [("iris", 1), ("wine", 1)]
        assert [list(d.unplaced_models) for d in leaving.drain_complete] == [[]]


async def test_drain_reports_models_that_cannot_move() -> None:
    async with Harness() as h:
        leaving = h.add_replica(index=0)
        await h.load("iris")
        await h.settle()
        leaving.drain()
        await h.settle()
        assert [list(d.unplaced_models) for d in leaving.drain_complete] == [["iris"]]
        assert h.state("iris") == M.AVAILABLE  # keeps serving until the agent actually leaves


# ----------------------------------------------------------------------------- a replica's server dies

DOWN = "MLServer (pid 812) exited: killed by SIGKILL; restarting it"


def routed_to(h: Harness, name: str) -> list[int]:
    """Replica indexes the routing table sends ``name``'s requests to."""
    try:
        _version, endpoints = h.core.model_endpoints(name)
    except Unavailable:
        return []
    return [endpoint.replica_idx for endpoint in endpoints]


async def test_a_dead_servers_model_leaves_available_with_the_reason_and_comes_back_without_a_reload() -> None:
    async with Harness() as h:
        replica = h.add_replica(index=0)
        await h.load("iris")
        await h.settle()
        assert (h.state("iris"), routed_to(h, "iris")) == (M.AVAILABLE, [0])

        replica.server_down(DOWN)
        await h.settle()
        latest = h.status("iris").versions[-1]
        assert h.state("iris") == M.PROGRESSING
        assert latest.state.reason.startswith(f"server mlserver replica 0 is down: {DOWN}; ")
        assert "replica 0's inference server is down" in latest.state.reason  # and why it could not move
        assert (latest.state.availableReplicas, latest.state.unavailableReplicas) == (0, 1)
        assert h.placed_on("iris") == {0: "LOADED_UNAVAILABLE"}
        assert latest.modelReplicaState[0].reason == f"server mlserver replica 0 is down: {DOWN}"
        assert routed_to(h, "iris") == []
        [server] = h.core.server_status("mlserver")
        assert server.availableReplicas == 0
        assert replica.loads == [("iris", 1)]  # nothing is sent to a dead server

        replica.server_down("MLServer could not be restarted (attempt 2): port 9000 is in use")
        await h.settle()
        assert "attempt 2" in h.status("iris").versions[-1].state.reason  # the newest word on it

        replica.server_serving()
        await h.settle()
        assert (h.state("iris"), routed_to(h, "iris"), replica.loads) == (M.AVAILABLE, [0], [("iris", 1)])
        assert h.core.server_status("mlserver")[0].availableReplicas == 1


async def test_a_model_on_a_dead_server_moves_to_a_replica_with_room() -> None:
    async with Harness() as h:
        dead = h.add_replica(index=0)
        await h.load("iris")
        await h.settle()
        other = h.add_replica(index=1)
        dead.server_down(DOWN)
        await h.settle()
        assert h.placed_on("iris") == {1: "AVAILABLE"}  # and the dead replica's assignment is unloaded
        assert dead.unloads == [("iris", 1)]
        assert (h.state("iris"), routed_to(h, "iris"), other.loads) == (M.AVAILABLE, [1], [("iris", 1)])

        dead.server_serving(held=[])
        await h.settle()
        assert h.placed_on("iris") == {1: "AVAILABLE"}  # it does not move back


async def test_a_server_back_without_a_model_gets_it_loaded_again_and_unloads_what_is_not_wanted() -> None:
    async with Harness() as h:
        replica = h.add_replica(index=0)
        await h.load("iris")
        await h.load("wine")
        await h.settle()
        replica.server_down(DOWN)
        await h.settle()
        replica.server_serving(held=[("wine", 1), ("stranger", 4)])
        await h.settle()
        assert replica.loads == [("iris", 1), ("wine", 1), ("iris", 1)]  # iris was lost: loaded again
        assert replica.unloads == [("stranger", 4)]
        assert (h.state("iris"), h.state("wine")) == (M.AVAILABLE, M.AVAILABLE)


async def test_an_agent_that_registers_while_its_server_is_down_serves_nothing_until_it_is_back() -> None:
    async with Harness() as h:
        await h.load("iris")
        replica = h.add_replica(loaded=[("iris", 1, 100 * MiB)], server_down=DOWN)
        await h.settle()
        assert h.placed_on("iris") == {0: "LOADED_UNAVAILABLE"}
        assert (h.state("iris"), routed_to(h, "iris")) == (M.PROGRESSING, [])
        replica.server_serving()
        await h.settle()
        assert (h.state("iris"), routed_to(h, "iris"), replica.loads) == (M.AVAILABLE, [0], [])


async def test_a_load_in_flight_on_a_dead_server_fails_and_is_retried_once_it_serves() -> None:
    async with Harness() as h:
        replica = h.add_replica()
        replica.answering = False
        await h.load("iris")
        await h.settle()
        [load] = replica.unanswered
        replica.server_down(DOWN)
        await h.settle()
        assert h.placed_on("iris") == {0: "LOADING"}  # the agent's event ends it, not the scheduler
        replica.answering = True
        replica.fail_loads["iris"] = f"the inference server is down: {DOWN}"
        replica.answer(load)
        await h.settle()
        assert (h.state("iris"), h.placed_on("iris")) == (M.FAILED, {0: "LOAD_FAILED"})
        del replica.fail_loads["iris"]
        replica.server_serving()
        await h.settle()
        assert (h.state("iris"), replica.loads) == (M.AVAILABLE, [("iris", 1), ("iris", 1)])


async def test_a_load_that_finished_as_the_server_died_is_not_counted_as_serving() -> None:
    async with Harness() as h:
        replica = h.add_replica()
        replica.answering = False
        await h.load("iris")
        await h.settle()
        [load] = replica.unanswered
        replica.server_down(DOWN)  # the agent reports the death before the load's answer
        replica.answer(load)
        await h.settle()
        assert (h.state("iris"), h.placed_on("iris"), routed_to(h, "iris")) == (
            M.PROGRESSING,
            {0: "LOADED_UNAVAILABLE"},
            [],
        )


async def test_a_draining_replica_whose_server_dies_reports_what_cannot_move() -> None:
    async with Harness() as h:
        leaving = h.add_replica(index=0)
        await h.load("iris")
        await h.settle()
        leaving.server_down(DOWN)
        leaving.drain()
        await h.settle()
        assert [list(d.unplaced_models) for d in leaving.drain_complete] == [["iris"]]


KILLED = "MLServer (pid 813) exited: killed by SIGKILL; the agent is restarting it"


async def test_a_model_whose_load_kills_its_server_is_not_placed_there_again_and_fails_after_two_deaths() -> None:
    """A model that kills its server as it loads (a segfault, the OOM killer) must not crash-loop the replicas:
    after its load took a server down it is not placed on that replica again, whatever capacity comes and goes,
    and after two such deaths it is ModelFailed, saying why, until LoadModel is sent for it again."""
    async with Harness() as h:
        replicas = [h.add_replica(index=0), h.add_replica(index=1)]
        for replica in replicas:
            replica.kills_server["killer"] = KILLED
        await h.load("iris")
        await h.load("killer")
        await h.settle()
        for replica in replicas:  # each server restarts, holding what its agent held (iris, wherever it is)
            replica.server_serving()
        await h.settle()
        h.add_replica(index=2).kills_server["killer"] = KILLED  # new capacity
        await h.settle()

        loads = [load for replica in h.replicas for load in replica.loads if load[0] == "killer"]
        assert loads == [("killer", 1), ("killer", 1)]  # once on each of the first two replicas, never again
        latest = h.status("killer").versions[-1]
        assert h.state("killer") == M.FAILED
        assert "killed its server 2 times" in latest.state.reason, latest.state.reason
        assert "LoadModel" in latest.state.reason, latest.state.reason
        assert h.state("iris") == M.AVAILABLE  # the other model serves on, wherever it went
        assert len(routed_to(h, "iris")) == 1

        await h.load("killer")  # the same spec again: the user asks for another try, and gets two more deaths
        await h.settle()
        loads = [load for replica in h.replicas for load in replica.loads if load[0] == "killer"]
        assert len(loads) == 4, loads
        assert h.state("killer") == M.FAILED


async def test_a_load_that_killed_its_only_replicas_server_fails_the_model_there_and_a_new_spec_tries_again() -> None:
    async with Harness() as h:
        replica = h.add_replica(index=0)
        replica.kills_server["killer"] = KILLED
        await h.load("killer")
        await h.settle()
        replica.server_serving()
        await h.settle()
        replica.server_down("MLServer (pid 814) exited: killed by SIGTERM; the agent is restarting it")
        replica.server_serving()  # capacity events: none of them places it on this replica again
        await h.settle()
        assert replica.loads == [("killer", 1)]
        latest = h.status("killer").versions[-1]
        assert h.state("killer") == M.FAILED
        assert latest.modelReplicaState[0].reason.startswith("its server died during this load"), latest
        assert KILLED in latest.state.reason, latest

        del replica.kills_server["killer"]
        await h.load("killer", uri="gs://models/killer-fixed")  # a new spec is a new version: tried again
        await h.settle()
        assert (h.state("killer"), replica.loads) == (M.AVAILABLE, [("killer", 1), ("killer", 2)])


async def test_server_health_from_a_replaced_session_changes_nothing() -> None:
    async with Harness() as h:
        first = h.add_replica(index=0)
        await h.load("iris")
        await h.settle()
        h.add_replica(index=0, loaded=[("iris", 1, 100 * MiB)])  # the same replica registers again
        first.server_down(DOWN)
        await h.settle()
        assert (h.state("iris"), h.placed_on("iris")) == (M.AVAILABLE, {0: "AVAILABLE"})


async def test_server_scaling_to_zero_moves_its_models() -> None:
    async with Harness() as h:
        h.add_replica("old")
        await h.load("iris")
        await h.settle()
        h.add_replica("new")
        await h.core.notify_servers([pb.ServerNotify(name="old", expectedReplicas=0, shared=True)], first_sync=False)
        await h.settle()
        record = h.core.cluster.models["iris"]
        assert {server for server, _ in record.latest.replicas} == {"new"}


# ----------------------------------------------------------------------------- restart


async def test_restart_restores_models_and_waits_for_agents() -> None:
    tables: dict[str, dict[str, bytes]] = {}
    async with Harness(MemoryStateStore(tables)) as h:
        h.add_replica()
        await h.load("iris")
        await h.load("wine", uri="gs://wine")
        await h.load("wine", uri="gs://wine-2")
        await h.settle()
    async with Harness(MemoryStateStore(tables), sync_grace_seconds=30) as again:
        assert sorted(again.core.cluster.models) == ["iris", "wine"]
        assert not again.core.ready.is_set()  # the replica seen before has not reconnected yet
        replica = again.add_replica(loaded=[("iris", 1, 100 * MiB), ("wine", 2, 100 * MiB)])
        await asyncio.wait_for(again.core.ready.wait(), 5)
        await again.settle()
        assert again.state("iris") == M.AVAILABLE
        assert again.state("wine") == M.AVAILABLE
        assert replica.loads == []  # nothing reloaded


async def test_idle_replicas_are_offered_for_scale_down() -> None:
    async with Harness() as h:
        for index in range(3):
            h.add_replica(index=index)
        await h.load("iris")
        await h.settle()
        async with h.core.subscribe_servers("test") as servers:
            h.core.cluster.request_scale_downs(now=1000.0, idle_seconds=60)  # idle clocks start
            h.core.cluster.request_scale_downs(now=1030.0, idle_seconds=60)  # not idle long enough
            h.core._after_change()
            h.core.cluster.request_scale_downs(now=1061.0, idle_seconds=60)
            h.core._after_change()
            h.core.cluster.request_scale_downs(now=1200.0, idle_seconds=60)  # asked once, not again
            h.core._after_change()
            seen: list[pb.ServerStatusResponse] = []
            while len(seen) < 2:  # the snapshot, then the scaling request
                seen.append(await asyncio.wait_for(anext(servers), 5))
            assert servers.pending_count == 0
        scaling = [s for s in seen if s.type == pb.ServerStatusResponse.ScalingRequest]
        assert [(s.serverName, s.expectedReplicas) for s in scaling] == [("mlserver", 1)]


# ----------------------------------------------------------------------------- experiments


def experiment(name: str, *candidates: str, default: str | None = None, mirror: str | None = None) -> pb.Experiment:
    spec = pb.Experiment(name=name, candidates=[pb.ExperimentCandidate(name=c, weight=50) for c in candidates])
    if default is not None:
        spec.default = default
    if mirror is not None:
        spec.mirror.CopyFrom(pb.ExperimentMirror(name=mirror, percent=10))
    return spec


async def test_experiment_follows_its_candidates_and_survives_a_restart() -> None:
    tables: dict[str, dict[str, bytes]] = {}
    async with Harness(MemoryStateStore(tables)) as h:
        h.add_replica(memory=10_000 * MiB)
        async with h.core.subscribe_experiments("test") as statuses:
            await h.core.start_experiment(experiment("ab", "iris", "wine", default="iris"))
            [status] = h.core.experiment_status("ab")
            assert (status.candidatesReady, status.active) == (False, False)
            assert "iris" in status.statusDescription
            await h.load("iris")
            await h.load("wine")
            await h.settle()
            [status] = h.core.experiment_status("ab")
            assert status.candidatesReady is True
            seen: list[pb.ExperimentStatusResponse] = []
            while not seen or not seen[-1].candidatesReady:
                seen.append(await asyncio.wait_for(anext(statuses), 5))
            assert seen[0].experimentName == "ab"
        # Starting it again replaces it whole: wine is no longer a candidate.
        await h.core.start_experiment(experiment("ab", "iris"))
        assert [c.name for c in h.core.experiments.records["ab"].spec.candidates] == ["iris"]
        # iris is no longer ab's default, so another experiment may take it, but not two at once.
        await h.core.start_experiment(experiment("other", "iris", default="iris"))
        with pytest.raises(FailedPrecondition, match="'other'"):
            await h.core.start_experiment(experiment("ab", "iris", default="iris"))
        await h.core.stop_experiment("other")
        await h.core.start_experiment(experiment("ab", "iris", default="iris"))
        await h.core.stop_experiment("ab")
        with pytest.raises(FailedPrecondition, match="not found"):
            await h.core.stop_experiment("never-started")
    async with Harness(MemoryStateStore(tables)) as again:
        [status] = again.core.experiment_status("ab")
        assert (status.experimentName, status.active, status.candidatesReady) == ("ab", False, False)
        assert again.core.experiments.records["ab"].stopped


async def test_an_experiment_says_which_candidate_is_not_ready_and_why() -> None:
    async with Harness() as h:
        replica = h.add_replica(memory=10_000 * MiB)
        replica.fail_loads["broken"] = "the artifact is not a model"
        for name in ("iris", "wine", "broken"):
            await h.load(name)
        await h.settle()
        await h.core.start_experiment(experiment("abc", "iris", "wine", "broken", default="iris"))
        [status] = h.core.experiment_status("abc")
        assert not status.candidatesReady
        assert status.statusDescription.startswith("degraded: requests go to the candidates that are ready")
        assert "candidate broken not ready (ModelFailed: the artifact is not a model)" in status.statusDescription
        assert "candidate iris" not in status.statusDescription

        await h.core.unload_model("wine")
        [status] = h.core.experiment_status("abc")
        assert "candidate wine not ready (being unloaded)" in status.statusDescription
        await h.settle()
        [status] = h.core.experiment_status("abc")
        assert "candidate wine not ready (not loaded: unloaded, or never loaded)" in status.statusDescription

        await h.core.unload_model("iris")
        await h.settle()
        [status] = h.core.experiment_status("abc")
        assert "no candidate can take requests" in status.statusDescription


# ----------------------------------------------------------------------------- pipelines


def pipeline(name: str, *steps: str) -> pb.Pipeline:
    chained = [pb.PipelineStep(name=steps[0])]
    chained += [pb.PipelineStep(name=step, inputs=[f"{before}.outputs"]) for before, step in itertools.pairwise(steps)]
    return pb.Pipeline(name=name, steps=chained, output=pb.PipelineOutput(steps=[steps[-1]]))


def pipeline_state(h: Harness, name: str, *, all_versions: bool = False) -> list[tuple[int, str, bool]]:
    [status] = h.core.pipeline_status(name, all_versions=all_versions)
    return [
        (v.state.pipelineVersion, pb.PipelineVersionState.PipelineStatus.Name(v.state.status), v.state.modelsReady)
        for v in status.versions
    ]


async def test_pipeline_follows_its_models_versions_and_survives_a_restart() -> None:
    tables: dict[str, dict[str, bytes]] = {}
    async with Harness(MemoryStateStore(tables)) as h:
        h.add_replica(memory=10_000 * MiB)
        await h.core.load_pipeline(pipeline("flow", "iris", "wine"))
        assert pipeline_state(h, "flow") == [(1, "PipelineCreating", False)]
        await h.core.load_pipeline(pipeline("flow", "iris", "wine"))  # identical: nothing changes
        await h.load("iris")
        await h.load("wine")
        await h.settle()
        assert pipeline_state(h, "flow") == [(1, "PipelineReady", True)]
        await h.core.load_pipeline(pipeline("flow", "iris"))  # a change: version 2; version 1 ends once 2 is ready
        assert pipeline_state(h, "flow", all_versions=True) == [
            (1, "PipelineTerminated", True),
            (2, "PipelineReady", True),
        ]
        await h.core.unload_model("wine")
        await h.settle()
        assert pipeline_state(h, "flow") == [(2, "PipelineReady", True)]  # version 2 does not use wine
        cyclic = pipeline("loop", "a", "b")
        cyclic.steps[0].inputs.append("b.outputs")
        with pytest.raises(FailedPrecondition, match="cycle"):
            await h.core.load_pipeline(cyclic)
    async with Harness(MemoryStateStore(tables)) as again:
        again.add_replica(memory=10_000 * MiB, loaded=[("iris", 1, 100 * MiB)])
        await asyncio.wait_for(again.core.ready.wait(), 5)
        await again.settle()
        assert pipeline_state(again, "flow")[-1] == (2, "PipelineReady", True)
        await again.core.unload_pipeline("flow")
        await again.settle()
        with pytest.raises(FailedPrecondition, match="not found"):
            again.core.pipeline_status("flow", all_versions=False)
        await again.core.load_pipeline(pipeline("flow", "iris"))
        assert pipeline_state(again, "flow")[0][0] == 1  # after termination, versions start again at 1
