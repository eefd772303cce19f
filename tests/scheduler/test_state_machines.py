"""The explicit state machines: replica transitions and the model state derived from replicas."""

from __future__ import annotations

import itertools

import pytest

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import IllegalTransition
from scheduler.models.model_state import DerivedState, ModelState, ReplicaFact, derive_live, derive_terminating
from scheduler.models.replica_state import TRANSITIONS, ReplicaState, check_transition

S = ReplicaState
M = ModelState


def _normal(name: str) -> str:
    name = name.lower().replace("_", "")
    for prefix in ("modelreplicastate", "modelstate", "model"):
        name = name.removeprefix(prefix)
    return name


def test_enum_values_are_the_wire_values() -> None:
    replica_names = pb.ModelReplicaStatus.ModelReplicaState.items()
    assert [(_normal(name), value) for name, value in replica_names] == [
        (_normal(s.name), s.value) for s in ReplicaState
    ]
    model_names = pb.ModelStatus.ModelState.items()
    assert [(_normal(name), value) for name, value in model_names] == [(_normal(m.name), m.value) for m in ModelState]


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.UNKNOWN, S.LOAD_REQUESTED),
        (S.LOAD_REQUESTED, S.LOADING),
        (S.LOADING, S.LOADED),
        (S.LOADED, S.AVAILABLE),
        (S.AVAILABLE, S.DRAINING),
        (S.AVAILABLE, S.UNLOAD_REQUESTED),
        (S.DRAINING, S.UNLOAD_REQUESTED),
        (S.UNLOAD_REQUESTED, S.UNLOADING),
        (S.UNLOADING, S.UNLOADED),
        (S.UNLOADING, S.UNLOAD_FAILED),
        (S.LOADING, S.LOAD_FAILED),
        (S.LOAD_FAILED, S.LOAD_REQUESTED),
        (S.UNKNOWN, S.AVAILABLE),  # adopted from an agent that already holds it
        # the replica's inference server stops serving, and serves again
        (S.AVAILABLE, S.LOADED_UNAVAILABLE),
        (S.LOADED, S.LOADED_UNAVAILABLE),
        (S.DRAINING, S.LOADED_UNAVAILABLE),
        (S.UNKNOWN, S.LOADED_UNAVAILABLE),  # held by an agent that registers while its server is down
        (S.LOADED_UNAVAILABLE, S.AVAILABLE),
        (S.LOADED_UNAVAILABLE, S.UNLOADED),  # the server came back without it
        (S.LOADED_UNAVAILABLE, S.UNLOAD_REQUESTED),  # moved elsewhere while the server is down
    ],
)
def test_allowed_transitions(current: ReplicaState, new: ReplicaState) -> None:
    check_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.UNKNOWN, S.UNLOADED),
        (S.LOAD_REQUESTED, S.AVAILABLE),  # skipping the agent's confirmation
        (S.LOADING, S.AVAILABLE),
        (S.AVAILABLE, S.LOADING),
        (S.UNLOADED, S.AVAILABLE),
        (S.UNLOADING, S.AVAILABLE),
        (S.UNLOAD_FAILED, S.AVAILABLE),
        (S.AVAILABLE, S.AVAILABLE),  # an event applied twice
        (S.LOADED_UNAVAILABLE, S.LOADED_UNAVAILABLE),  # still down: only the reason changes
        (S.LOADING, S.LOADED_UNAVAILABLE),  # a load in flight ends with the agent's event
        (S.UNLOADING, S.LOADED_UNAVAILABLE),
        (S.LOADED_UNAVAILABLE, S.DRAINING),  # a dead server's replica serves nothing to drain
        (S.LOADED_UNAVAILABLE, S.LOADING),
    ],
)
def test_illegal_transitions_raise(current: ReplicaState, new: ReplicaState) -> None:
    with pytest.raises(IllegalTransition, match=f"{current.name} cannot change to {new.name}"):
        check_transition(current, new)


def test_every_state_has_a_row_and_only_unloaded_paths_end() -> None:
    assert set(TRANSITIONS) == set(ReplicaState)
    # From every state there is a path to UNLOADED (nothing gets stuck), except states only reachable by error.
    for start in ReplicaState:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert S.UNLOADED in seen or start == S.UNLOADED, start


def facts(*states: ReplicaState, reason: str = "") -> list[ReplicaFact]:
    return [ReplicaFact(s, reason, float(i)) for i, s in enumerate(states)]


@pytest.mark.parametrize(
    ("replicas", "desired", "minimum", "previous", "failure", "expected"),
    [
        (facts(S.AVAILABLE), 1, 0, False, None, DerivedState(M.AVAILABLE, "", 1, 0)),
        (facts(S.LOADING), 1, 0, False, None, DerivedState(M.PROGRESSING, "", 0, 1)),
        (facts(S.AVAILABLE, S.LOADING), 2, 0, False, None, DerivedState(M.PROGRESSING, "", 1, 1)),
        # partial availability with minReplicas
        (facts(S.AVAILABLE, S.LOADING, S.LOADING), 3, 1, False, None, DerivedState(M.AVAILABLE, "", 1, 2)),
        # new version not ready but previous available -> Available once one replica serves
        (facts(S.AVAILABLE, S.LOADING), 2, 0, True, None, DerivedState(M.AVAILABLE, "", 1, 1)),
        (facts(S.LOADING), 1, 0, True, None, DerivedState(M.PROGRESSING, "", 0, 1)),
        (
            facts(S.AVAILABLE, S.LOAD_FAILED, reason="bad uri"),
            2,
            0,
            False,
            None,
            DerivedState(M.FAILED, "bad uri", 1, 1),
        ),
        (
            [],
            1,
            0,
            False,
            "server a: missing capability x",
            DerivedState(M.SCHEDULE_FAILED, "server a: missing capability x", 0, 1),
        ),
        # a placement failure for extra replicas while some are assigned: progressing, with the reason
        (facts(S.AVAILABLE), 2, 0, False, "no room", DerivedState(M.PROGRESSING, "no room", 1, 1)),
        ([], 0, 0, False, None, DerivedState(M.SCALED_DOWN, "", 0, 0)),
        (facts(S.DRAINING), 1, 0, False, None, DerivedState(M.AVAILABLE, "", 1, 0)),
        # the only replica's server is down: not serving, Progressing, with why (and why it could not move)
        (facts(S.LOADED_UNAVAILABLE, reason="dead"), 1, 0, False, None, DerivedState(M.PROGRESSING, "dead", 0, 1)),
        (
            facts(S.LOADED_UNAVAILABLE, reason="dead"),
            1,
            0,
            False,
            "no room",
            DerivedState(M.PROGRESSING, "dead; no room", 0, 1),
        ),
        # ... even while the previous version was available (it does not serve either)
        (facts(S.LOADED_UNAVAILABLE, reason="dead"), 1, 0, True, None, DerivedState(M.PROGRESSING, "dead", 0, 1)),
        # another replica still serves enough
        (facts(S.AVAILABLE, S.LOADED_UNAVAILABLE), 2, 1, False, None, DerivedState(M.AVAILABLE, "", 1, 1)),
        # moving: loading elsewhere while the dead replica holds it
        (
            facts(S.LOADED_UNAVAILABLE, S.LOADING, reason="dead"),
            1,
            0,
            False,
            None,
            DerivedState(M.PROGRESSING, "dead", 0, 1),
        ),
    ],
)
def test_derive_live(  # noqa: PLR0917 - one parameter per table column
    replicas: list[ReplicaFact],
    desired: int,
    minimum: int,
    previous: bool,
    failure: str | None,
    expected: DerivedState,
) -> None:
    derived = derive_live(
        replicas, desired=desired, min_replicas=minimum, previous_available=previous, schedule_failure=failure
    )
    assert derived == expected


def test_newest_failure_reason_wins() -> None:
    replicas = [ReplicaFact(S.LOAD_FAILED, "old", 1.0), ReplicaFact(S.LOAD_FAILED, "new", 2.0)]
    derived = derive_live(replicas, desired=2, min_replicas=0, previous_available=False, schedule_failure=None)
    assert (derived.state, derived.reason) == (M.FAILED, "new")


def test_a_version_failed_by_the_crash_loop_guard_is_failed_whatever_its_replicas_say() -> None:
    for replicas in ([], facts(S.AVAILABLE), facts(S.LOAD_FAILED, reason="other"), facts(S.LOADING)):
        derived = derive_live(
            replicas, desired=1, min_replicas=0, previous_available=True, schedule_failure="x", failure="killed 2"
        )
        assert (derived.state, derived.reason) == (M.FAILED, "killed 2")


def test_the_newest_down_reason_wins() -> None:
    replicas = [ReplicaFact(S.LOADED_UNAVAILABLE, "old", 1.0), ReplicaFact(S.LOADED_UNAVAILABLE, "new", 2.0)]
    derived = derive_live(replicas, desired=2, min_replicas=0, previous_available=False, schedule_failure=None)
    assert (derived.state, derived.reason, derived.available_replicas) == (M.PROGRESSING, "new", 0)


@pytest.mark.parametrize(
    ("replicas", "state"),
    [
        (facts(S.AVAILABLE), M.TERMINATING),
        (facts(S.LOADED_UNAVAILABLE), M.TERMINATING),
        (facts(S.UNLOADING), M.TERMINATING),
        (facts(S.UNLOADED, S.LOAD_FAILED), M.TERMINATED),
        ([], M.TERMINATED),
        (facts(S.UNLOADING, S.UNLOAD_FAILED), M.TERMINATE_FAILED),
    ],
)
def test_derive_terminating(replicas: list[ReplicaFact], state: ModelState) -> None:
    assert derive_terminating(replicas).state == state


def test_derivation_is_total() -> None:
    """Any combination of replica states derives some state, with counts that add up."""
    for combo in itertools.combinations_with_replacement(list(ReplicaState), 2):
        for desired in (0, 1, 2):
            derived = derive_live(
                facts(*combo), desired=desired, min_replicas=0, previous_available=False, schedule_failure=None
            )
            assert derived.available_replicas >= 0
            assert derived.unavailable_replicas >= 0
            assert derive_terminating(facts(*combo)).state in {M.TERMINATING, M.TERMINATED, M.TERMINATE_FAILED}
