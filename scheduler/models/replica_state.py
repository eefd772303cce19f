"""The state machine of one model version on one server replica.

Values are the wire values of the Scheduler API's ``ModelReplicaStatus.ModelReplicaState``. Every change
goes through :func:`check_transition`; a transition not in the table is an error, never applied.

    LoadRequested -> Loading -> Loaded -> Available -> Draining
          |             |         |          |            |
          +-------------+---------+----------+------------+--> UnloadRequested -> Unloading -> Unloaded
    Loading -> LoadFailed (agent said so, or the replica went away)        Unloading -> UnloadFailed

    Loaded, Available, Draining -> LoadedUnavailable: the replica's inference server stopped serving (its agent
    said so in ServerHealth). The model is still assigned there, but answers nothing, is not routed to and
    counts as not serving. When the server serves again: -> Available if the agent still holds the model,
    -> Unloaded if it does not (the server came back without it; the model is placed again). Unknown ->
    LoadedUnavailable when an agent registers while its server is down.
"""

from __future__ import annotations

import enum

from modelplane.spec.errors import IllegalTransition


class ReplicaState(enum.IntEnum):
    UNKNOWN = 0
    LOAD_REQUESTED = 1
    LOADING = 2
    LOADED = 3
    LOAD_FAILED = 4
    UNLOAD_REQUESTED = 5
    UNLOADING = 6
    UNLOADED = 7
    UNLOAD_FAILED = 8
    AVAILABLE = 9
    LOADED_UNAVAILABLE = 10
    UNLOAD_ENVOY_REQUESTED = 11
    DRAINING = 12


S = ReplicaState
TRANSITIONS: dict[ReplicaState, frozenset[ReplicaState]] = {
    # A new assignment; LOADED/AVAILABLE directly when an agent reports a model it already holds.
    # LOADED_UNAVAILABLE when it reports one while its server is down.
    S.UNKNOWN: frozenset({S.LOAD_REQUESTED, S.LOADED, S.AVAILABLE, S.LOADED_UNAVAILABLE}),
    S.LOAD_REQUESTED: frozenset({S.LOADING, S.LOAD_FAILED, S.UNLOADED}),
    S.LOADING: frozenset({S.LOADED, S.LOAD_FAILED, S.UNLOAD_REQUESTED}),
    S.LOADED: frozenset({S.AVAILABLE, S.UNLOAD_REQUESTED, S.LOADED_UNAVAILABLE}),
    S.AVAILABLE: frozenset({S.DRAINING, S.UNLOAD_REQUESTED, S.LOADED_UNAVAILABLE}),
    # Back to AVAILABLE (or UNLOADED, lost) when the server serves again.
    S.LOADED_UNAVAILABLE: frozenset({S.AVAILABLE, S.UNLOAD_REQUESTED, S.UNLOADED}),
    S.DRAINING: frozenset({S.AVAILABLE, S.UNLOAD_REQUESTED, S.LOADED_UNAVAILABLE}),
    # A failed load is retried (LOAD_REQUESTED) when capacity changes, or given up (UNLOADED).
    S.LOAD_FAILED: frozenset({S.LOAD_REQUESTED, S.UNLOAD_REQUESTED, S.UNLOADED}),
    S.UNLOAD_REQUESTED: frozenset({S.UNLOADING, S.UNLOADED}),
    S.UNLOADING: frozenset({S.UNLOADED, S.UNLOAD_FAILED}),
    S.UNLOAD_FAILED: frozenset({S.UNLOAD_REQUESTED, S.UNLOADED}),
    S.UNLOADED: frozenset({S.LOAD_REQUESTED}),
    S.UNLOAD_ENVOY_REQUESTED: frozenset({S.UNLOAD_REQUESTED}),
}

# States in which the model is meant to serve on the replica (loads in flight included).
WANTED = frozenset({S.LOAD_REQUESTED, S.LOADING, S.LOADED, S.AVAILABLE, S.LOADED_UNAVAILABLE})
# States in which the replica's memory is committed to the model: from the load request until the
# agent confirms the unload (a failed unload may still hold the memory).
HOLDS_MEMORY = WANTED | {S.DRAINING, S.UNLOAD_REQUESTED, S.UNLOADING, S.UNLOAD_FAILED}
# States in which the model answers requests on the replica.
SERVING = frozenset({S.AVAILABLE, S.DRAINING})
# States on the way to being served.
LOADING_STATES = frozenset({S.LOAD_REQUESTED, S.LOADING, S.LOADED})
# States that still need the replica to do something before the assignment is gone.
UNLOADING_STATES = frozenset({S.UNLOAD_REQUESTED, S.UNLOADING})
FAILED = frozenset({S.LOAD_FAILED, S.UNLOAD_FAILED})
# States in which the model is on its way out of the replica: it cannot be loaded there again before that ends
# (the table has no move from them to LOAD_REQUESTED), so placement does not choose the replica for it.
LEAVING = frozenset(
    state for state, moves in TRANSITIONS.items() if state not in WANTED and S.LOAD_REQUESTED not in moves
)
# Assignments that are over: the record can be dropped.
INACTIVE = frozenset({S.UNLOADED, S.LOAD_FAILED, S.UNKNOWN})


def check_transition(current: ReplicaState, new: ReplicaState) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"replica state {current.name} cannot change to {new.name}")
