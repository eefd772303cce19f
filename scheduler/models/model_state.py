"""A model version's state (the Scheduler API's ``ModelStatus.ModelState``), derived from its replicas.

The model state is never set directly: it is computed from the replica states every time one changes,
so it cannot disagree with them. The rules, in order:

For the live (latest, not deleted) version:
  0. the version itself failed (its loads killed  -> ModelFailed, with that reason (scheduler/models/cluster.py:
     SERVER_DEATHS_TO_FAIL inference servers)        the crash-loop guard), whatever its replicas say
  1. any replica LoadFailed                      -> ModelFailed, with the newest failure's reason
  2. placement failed and nothing is assigned    -> ScheduleFailed, with the placement reason
  3. nothing serving, replicas=0, minReplicas=0  -> ModelScaledDown
  4. serving == replicas, or minReplicas > 0 and serving >= minReplicas,
     or (rolling update) serving > 0 while the previous version was available -> ModelAvailable
  5. otherwise                                   -> ModelProgressing, with the reason of the newest replica
     whose server is down (LoadedUnavailable) if any, then the placement failure if any

A replica whose inference server is down (LoadedUnavailable) does not serve, so a model that has no other
replica serving leaves ModelAvailable at once. It becomes ModelProgressing, not ModelFailed: nothing is wrong
with the model, and the system is already at work to serve it again (the agent restarts its server and loads
the model again, and the scheduler moves it to a replica with room if there is one); ModelFailed stays the
state of a model whose own load failed. The reason names the dead server, and the placement failure when the
model has nowhere else to go, so a person can see both why it does not serve and why it did not move.
For a deleted model or an older version:
  any UnloadFailed -> ModelTerminateFailed; anything not yet inactive -> ModelTerminating;
  else ModelTerminated.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass

from scheduler.models.replica_state import INACTIVE, SERVING, ReplicaState


class ModelState(enum.IntEnum):
    UNKNOWN = 0
    PROGRESSING = 1
    AVAILABLE = 2
    FAILED = 3
    TERMINATING = 4
    TERMINATED = 5
    TERMINATE_FAILED = 6
    SCHEDULE_FAILED = 7
    SCALED_DOWN = 8
    CREATE = 9
    TERMINATE = 10


@dataclass(frozen=True, slots=True)
class ReplicaFact:
    """What derivation needs to know about one replica assignment."""

    state: ReplicaState
    reason: str = ""
    changed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class DerivedState:
    state: ModelState
    reason: str
    available_replicas: int
    unavailable_replicas: int


@functools.lru_cache(maxsize=1024)
def _without_reason(state: ModelState, available: int, unavailable: int) -> DerivedState:
    return DerivedState(state, "", available, unavailable)


def _derived(state: ModelState, reason: str, available: int, unavailable: int) -> DerivedState:
    """A DerivedState; without a reason, one shared by every version in that state (it is frozen): most models are
    in a few such states, and each version holds its own."""
    if reason:
        return DerivedState(state, reason, available, unavailable)
    return _without_reason(state, available, unavailable)


def derive_live(
    replicas: Iterable[ReplicaFact],
    *,
    desired: int,
    min_replicas: int,
    previous_available: bool,
    schedule_failure: str | None,
    failure: str | None = None,
) -> DerivedState:
    """The state of the latest version of a model that is not deleted (``failure``: rule 0's reason)."""
    facts = list(replicas)
    serving = sum(1 for f in facts if f.state in SERVING)
    unavailable = max(0, desired - serving)
    if failure is not None:
        return _derived(ModelState.FAILED, failure, serving, unavailable)
    failed = [f for f in facts if f.state == ReplicaState.LOAD_FAILED]
    if failed:
        newest = max(failed, key=lambda f: f.changed_at)
        return _derived(ModelState.FAILED, newest.reason, serving, unavailable)
    assigned = [f for f in facts if f.state not in INACTIVE]
    if schedule_failure is not None and not assigned:
        return _derived(ModelState.SCHEDULE_FAILED, schedule_failure, serving, unavailable)
    if serving == 0 and desired == 0 and min_replicas == 0:
        return _derived(ModelState.SCALED_DOWN, "", 0, 0)
    if (
        (desired > 0 and serving >= desired)
        or (min_replicas > 0 and serving >= min_replicas)
        or (serving > 0 and previous_available)
    ):
        return _derived(ModelState.AVAILABLE, "", serving, unavailable)
    down = [f for f in facts if f.state == ReplicaState.LOADED_UNAVAILABLE]
    reasons = [max(down, key=lambda f: f.changed_at).reason] if down else []
    if schedule_failure:
        reasons.append(schedule_failure)
    return _derived(ModelState.PROGRESSING, "; ".join(reasons), serving, unavailable)


def derive_terminating(replicas: Iterable[ReplicaFact]) -> DerivedState:
    """The state of a deleted model's version, or of a version superseded by a newer one."""
    facts = list(replicas)
    serving = sum(1 for f in facts if f.state in SERVING)
    active = [f for f in facts if f.state not in INACTIVE]
    unload_failed = [f for f in facts if f.state == ReplicaState.UNLOAD_FAILED]
    if unload_failed:
        newest = max(unload_failed, key=lambda f: f.changed_at)
        return _derived(ModelState.TERMINATE_FAILED, newest.reason, serving, len(active) - serving)
    if active:
        return _derived(ModelState.TERMINATING, "", serving, len(active) - serving)
    return _derived(ModelState.TERMINATED, "", 0, 0)
