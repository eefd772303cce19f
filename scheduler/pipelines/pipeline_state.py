"""The state machine of one pipeline version.

Values are the wire values of the Scheduler API's ``PipelineVersionState.PipelineStatus``. Every change
goes through :func:`check_transition`; a transition not in the table is an error, never applied.

    Create -> Creating -> Ready <-> Rebalancing
    Creating, Ready, Rebalancing -> Failed -> Creating (retry)
    any live state (Create, Creating, Ready, Rebalancing, Failed) -> Terminate -> Terminating -> Terminated

* Create: the version was accepted (written durably); nothing has been done for it yet.
* Creating: waiting for the models of its steps (and, once wired, for the pipeline gateways).
* Ready: every model of its steps is available.
* Rebalancing: it was Ready and a model stopped being available; back to Ready when it is again.
* Failed: it could not be made ready; a retry moves it back to Creating.
* Terminate -> Terminating -> Terminated: a newer version became Ready, or the pipeline was deleted.
"""

from __future__ import annotations

import enum

from modelplane.spec.errors import IllegalTransition


class PipelineStatus(enum.IntEnum):
    UNKNOWN = 0
    CREATE = 1
    CREATING = 2
    READY = 3
    FAILED = 4
    TERMINATE = 5
    TERMINATING = 6
    TERMINATED = 7
    REBALANCING = 8


P = PipelineStatus
LIVE = frozenset({P.CREATE, P.CREATING, P.READY, P.REBALANCING, P.FAILED})
ENDING = frozenset({P.TERMINATE, P.TERMINATING, P.TERMINATED})

TRANSITIONS: dict[PipelineStatus, frozenset[PipelineStatus]] = {
    # A version restored or accepted starts at Create.
    P.UNKNOWN: frozenset({P.CREATE}),
    P.CREATE: frozenset({P.CREATING, P.TERMINATE}),
    P.CREATING: frozenset({P.READY, P.FAILED, P.TERMINATE}),
    P.READY: frozenset({P.REBALANCING, P.FAILED, P.TERMINATE}),
    P.REBALANCING: frozenset({P.READY, P.FAILED, P.TERMINATE}),
    # Retry.
    P.FAILED: frozenset({P.CREATING, P.TERMINATE}),
    P.TERMINATE: frozenset({P.TERMINATING}),
    P.TERMINATING: frozenset({P.TERMINATED}),
    P.TERMINATED: frozenset(),
}


def check_transition(current: PipelineStatus, new: PipelineStatus) -> None:
    """Raise IllegalTransition unless the table allows ``current`` -> ``new``."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"pipeline status {current.name} cannot change to {new.name}")
