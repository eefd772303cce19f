"""Which replica count a Server's StatefulSet follows (controller/servers/scaling.py) and the Server's status
(server_status.py): pure rules, every case."""

from __future__ import annotations

from controller.servers.scaling import holding_replicas, target_replicas
from controller.servers.server_objects import ReplicaBounds
from controller.servers.server_status import same_status, server_status
from generated.mlops.scheduler import scheduler_pb2 as pb
from tests.controller.server_manifests import a_server

BOUNDS = ReplicaBounds(1, 4)


def test_a_new_stateful_set_and_a_changed_spec_follow_the_user() -> None:
    new = target_replicas(spec_replicas=2, bounds=BOUNDS, live_replicas=None, followed_spec_replicas=None, requested=3)
    assert new == (2, True)
    changed = target_replicas(spec_replicas=1, bounds=BOUNDS, live_replicas=3, followed_spec_replicas="2", requested=4)
    assert changed == (1, True), "the user spoke last: a pending scaling request no longer counts"


def test_otherwise_a_scaling_request_within_bounds_else_what_runs() -> None:
    request = target_replicas(spec_replicas=2, bounds=BOUNDS, live_replicas=2, followed_spec_replicas="2", requested=9)
    assert request == (4, False)
    kept = target_replicas(spec_replicas=2, bounds=BOUNDS, live_replicas=3, followed_spec_replicas="2", requested=None)
    assert kept == (3, False), "a scaling made earlier stays"
    narrowed = ReplicaBounds(1, 2)
    within = target_replicas(
        spec_replicas=2, bounds=narrowed, live_replicas=3, followed_spec_replicas="2", requested=None
    )
    assert within == (2, False)


def test_replicas_holding_models_at_or_above_the_target() -> None:
    status = pb.ServerStatusResponse(
        serverName="s",
        resources=[
            pb.ServerReplicaResources(replicaIdx=0, numLoadedModels=3),
            pb.ServerReplicaResources(replicaIdx=1, numLoadedModels=0),
            pb.ServerReplicaResources(replicaIdx=2, numLoadedModels=1),
        ],
    )
    assert holding_replicas(status, 1) == [2]
    assert holding_replicas(status, 3) == []
    assert holding_replicas(None, 0) == []


def test_the_status_says_ready_only_when_every_wanted_replica_is_available_and_rolled_out() -> None:
    server = a_server()
    sts = {"metadata": {"generation": 2}, "status": {"replicas": 2, "availableReplicas": 2, "observedGeneration": 2}}
    ready = server_status(server, stateful_set=sts, wanted=2, loaded_models=5, selector={"a": "b", "c": "d"})
    assert ready["conditions"][0]["status"] == "True"
    assert ready["selector"] == "a=b,c=d"
    assert ready["loadedModels"] == 5
    assert ready["observedGeneration"] == 1
    stale = {**sts, "status": {**sts["status"], "observedGeneration": 1}}
    assert (
        server_status(server, stateful_set=stale, wanted=2, loaded_models=None, selector=None)["conditions"][0][
            "status"
        ]
        == "False"
    )
    draining = server_status(server, stateful_set=sts, wanted=1, loaded_models=None, selector=None, draining=[1])
    assert draining["conditions"][0]["reason"] == "Draining"
    # The transition time stays while the condition's status does.
    server["status"] = ready
    again = server_status(server, stateful_set=sts, wanted=2, loaded_models=5, selector={"a": "b", "c": "d"})
    assert again["conditions"][0]["lastTransitionTime"] == ready["conditions"][0]["lastTransitionTime"]
    assert same_status(ready, again)
