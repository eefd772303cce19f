"""The model lifecycle of seed 002, and its splits' lifecycle: each ONE explicit table of (state, action) -> next
state. Every "409 - if the model is not in ... states" the seed lists is a missing row here, and the refusal's
message is built from the table (which states would have allowed the action), so the rule and its explanation
cannot drift apart.

A model's life::

    PREPARING --split--> SPLITTING --split succeeded--> DATA_READY --train--> TRAINING --succeeded--> TRAINED
        ^                    '--split failed--> SPLIT_FAILED                       '--failed--> TRAINING_FAILED
        '-- edit directives / unassign split (from SPLIT_FAILED, DATA_READY, TRAINING_FAILED) --'
    TRAINED --deploy--> DEPLOYED (deploying again is the same full-state request: it stays DEPLOYED)

Deleting is allowed in every state (the seed lists no 409 for it): ``None`` is "no model any more".

DEPLOYED means "the registry deployed it" (a deploytime, a servingName), not "it is served now": what the scheduler
serves is a separate fact that changes without any request to the registry (a model unloaded at the scheduler, its
replicas gone, the scheduler away), shown beside the state as ``serving`` (registry/service/serving.py, kept by a
follower of the scheduler's status stream). The state does not move when the scheduler stops serving: no row here
depends on what the scheduler does, so every 409 stays exactly the seed's, and a model no longer served is deployed
again the way any DEPLOYED model is (DEPLOYED --deploy--> DEPLOYED). Moving it back to TRAINED would make the
lifecycle flap with every scheduler restart (unknown, then served again) and lose its deploytime.

Domain code: no HTTP, no database. The store applies these moves under optimistic row versions
(registry/store/database.py), so two writers deciding from the same state cannot both win.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from registry.errors import Conflict


class ModelState(StrEnum):
    PREPARING = "PREPARING"  # directives being written; no split yet
    SPLITTING = "SPLITTING"  # its split is being computed
    SPLIT_FAILED = "SPLIT_FAILED"
    DATA_READY = "DATA_READY"  # split computed: can be trained
    TRAINING = "TRAINING"
    TRAINED = "TRAINED"
    TRAINING_FAILED = "TRAINING_FAILED"
    DEPLOYED = "DEPLOYED"


class ModelAction(StrEnum):
    """What can happen to a model: a request (PUT directives, POST split, ...) or an outcome reported back."""

    EDIT_DIRECTIVES = "edit the directives of"  # PUT .../models/{id}/directives (deletes the model's split)
    SPLIT = "split"  # POST .../models/{id}/split
    SPLIT_SUCCEEDED = "finish the split of"
    SPLIT_FAILED = "fail the split of"
    UNASSIGN_SPLIT = "unassign the split of"  # DELETE .../models/{id}/split, or DELETE of the split itself
    TRAIN = "train"  # POST .../models/{id}/train
    TRAINING_SUCCEEDED = "finish training"
    TRAINING_FAILED = "fail training"
    DEPLOY = "deploy"  # POST .../models/{id}/deploy
    DELETE = "delete"  # DELETE .../models/{id}, or of its experiment


_S = ModelState
_A = ModelAction

# The whole model lifecycle. A pair that is not here is refused (LifecycleConflict, a 409 at the REST edge).
MODEL_TRANSITIONS: Final[Mapping[tuple[ModelState, ModelAction], ModelState | None]] = {
    (_S.PREPARING, _A.EDIT_DIRECTIVES): _S.PREPARING,
    (_S.PREPARING, _A.SPLIT): _S.SPLITTING,
    (_S.PREPARING, _A.DELETE): None,
    (_S.SPLITTING, _A.SPLIT_SUCCEEDED): _S.DATA_READY,
    (_S.SPLITTING, _A.SPLIT_FAILED): _S.SPLIT_FAILED,
    (_S.SPLITTING, _A.DELETE): None,
    (_S.SPLIT_FAILED, _A.EDIT_DIRECTIVES): _S.PREPARING,
    (_S.SPLIT_FAILED, _A.SPLIT): _S.SPLITTING,  # try again: the failed split is unassigned first
    (_S.SPLIT_FAILED, _A.UNASSIGN_SPLIT): _S.PREPARING,
    (_S.SPLIT_FAILED, _A.DELETE): None,
    (_S.DATA_READY, _A.UNASSIGN_SPLIT): _S.PREPARING,
    (_S.DATA_READY, _A.TRAIN): _S.TRAINING,
    (_S.DATA_READY, _A.DELETE): None,
    (_S.TRAINING, _A.TRAINING_SUCCEEDED): _S.TRAINED,
    (_S.TRAINING, _A.TRAINING_FAILED): _S.TRAINING_FAILED,
    (_S.TRAINING, _A.DELETE): None,  # the run's result, when it comes, finds no model and is dropped
    (_S.TRAINING_FAILED, _A.EDIT_DIRECTIVES): _S.PREPARING,
    (_S.TRAINING_FAILED, _A.UNASSIGN_SPLIT): _S.PREPARING,
    (_S.TRAINING_FAILED, _A.TRAIN): _S.TRAINING,
    (_S.TRAINING_FAILED, _A.DELETE): None,
    (_S.TRAINED, _A.DEPLOY): _S.DEPLOYED,
    (_S.TRAINED, _A.DELETE): None,
    (_S.DEPLOYED, _A.DEPLOY): _S.DEPLOYED,
    (_S.DEPLOYED, _A.DELETE): None,
}


class SplitState(StrEnum):
    SPLITTING = "SPLITTING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"


class SplitAction(StrEnum):
    SUCCEED = "finish"
    FAIL = "fail"
    DELETE = "delete"


SPLIT_TRANSITIONS: Final[Mapping[tuple[SplitState, SplitAction], SplitState | None]] = {
    (SplitState.SPLITTING, SplitAction.SUCCEED): SplitState.COMPLETE,
    (SplitState.SPLITTING, SplitAction.FAIL): SplitState.FAILED,
    # A split being computed is not deleted under its computation: wait for it to finish or fail.
    (SplitState.COMPLETE, SplitAction.DELETE): None,
    (SplitState.FAILED, SplitAction.DELETE): None,
}

# A model created with an existing split (POST .../models with "split") starts where the split is (seed 002:
# "the model state will be determined by split state").
MODEL_STATE_FOR_SPLIT: Final[Mapping[SplitState, ModelState]] = {
    SplitState.SPLITTING: ModelState.SPLITTING,
    SplitState.COMPLETE: ModelState.DATA_READY,
    SplitState.FAILED: ModelState.SPLIT_FAILED,
}

# What a finished split does to the models waiting on it.
MODEL_ACTION_FOR_SPLIT_OUTCOME: Final[Mapping[SplitState, ModelAction]] = {
    SplitState.COMPLETE: ModelAction.SPLIT_SUCCEEDED,
    SplitState.FAILED: ModelAction.SPLIT_FAILED,
}


class LifecycleConflict(Conflict):
    """An action the current state does not allow (409); the message says which states would have allowed it."""


def states_allowing(action: ModelAction) -> list[ModelState]:
    return [state for state in ModelState if (state, action) in MODEL_TRANSITIONS]


def next_model_state(what: str, state: ModelState, action: ModelAction) -> ModelState | None:
    """The state after ``action`` (None: deleted); LifecycleConflict when ``state`` does not allow it.
    ``what`` names the model in the message ("model 3f2a in experiment houses")."""
    if (state, action) not in MODEL_TRANSITIONS:
        allowed = ", ".join(states_allowing(action))
        raise LifecycleConflict(f"cannot {action.value} {what}: it is {state.value}; allowed only in {allowed}")
    return MODEL_TRANSITIONS[(state, action)]


def next_split_state(what: str, state: SplitState, action: SplitAction) -> SplitState | None:
    if (state, action) not in SPLIT_TRANSITIONS:
        allowed = ", ".join(s.value for s in SplitState if (s, action) in SPLIT_TRANSITIONS)
        raise LifecycleConflict(f"cannot {action.value} {what}: it is {state.value}; allowed only in {allowed}")
    return SPLIT_TRANSITIONS[(state, action)]
