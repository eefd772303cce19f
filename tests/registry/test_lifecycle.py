"""The model lifecycle table against seed 002's 409 rules, written out here independently of the table."""

from __future__ import annotations

import pytest

from registry.lifecycle import (
    MODEL_TRANSITIONS,
    LifecycleConflict,
    ModelAction,
    ModelState,
    next_model_state,
    states_allowing,
)

S = ModelState
# Seed 002, as written: "409 - if the model is not in the ... states".
SEED_RULES = {
    ModelAction.EDIT_DIRECTIVES: {S.PREPARING, S.SPLIT_FAILED, S.TRAINING_FAILED},
    ModelAction.UNASSIGN_SPLIT: {S.SPLIT_FAILED, S.DATA_READY, S.TRAINING_FAILED},
    ModelAction.TRAIN: {S.TRAINING_FAILED, S.DATA_READY},
}


@pytest.mark.parametrize("action", list(SEED_RULES))
@pytest.mark.parametrize("state", list(ModelState))
def test_every_seed_409_rule(state: ModelState, action: ModelAction) -> None:
    if state in SEED_RULES[action]:
        assert next_model_state("model m", state, action) is not None
    else:
        with pytest.raises(LifecycleConflict) as refused:
            next_model_state("model m", state, action)
        assert state.value in refused.value.message
        for allowed in SEED_RULES[action]:
            assert allowed.value in refused.value.message


def test_the_happy_path_and_its_returns() -> None:
    path = [
        (S.PREPARING, ModelAction.SPLIT, S.SPLITTING),
        (S.SPLITTING, ModelAction.SPLIT_SUCCEEDED, S.DATA_READY),
        (S.DATA_READY, ModelAction.TRAIN, S.TRAINING),
        (S.TRAINING, ModelAction.TRAINING_FAILED, S.TRAINING_FAILED),
        (S.TRAINING_FAILED, ModelAction.TRAIN, S.TRAINING),
        (S.TRAINING, ModelAction.TRAINING_SUCCEEDED, S.TRAINED),
        (S.TRAINED, ModelAction.DEPLOY, S.DEPLOYED),
        (S.DEPLOYED, ModelAction.DEPLOY, S.DEPLOYED),
        (S.SPLITTING, ModelAction.SPLIT_FAILED, S.SPLIT_FAILED),
        (S.SPLIT_FAILED, ModelAction.SPLIT, S.SPLITTING),
        (S.DATA_READY, ModelAction.UNASSIGN_SPLIT, S.PREPARING),
        (S.TRAINING_FAILED, ModelAction.EDIT_DIRECTIVES, S.PREPARING),
    ]
    for before, action, after in path:
        assert next_model_state("model m", before, action) is after


def test_delete_is_allowed_in_every_state_and_nothing_else_leaves_trained_but_deploy() -> None:
    assert set(states_allowing(ModelAction.DELETE)) == set(ModelState)
    assert {action for (state, action) in MODEL_TRANSITIONS if state is S.TRAINED} == {
        ModelAction.DEPLOY,
        ModelAction.DELETE,
    }
    # Reported outcomes only land on a model waiting for them.
    assert states_allowing(ModelAction.SPLIT_SUCCEEDED) == [S.SPLITTING]
    assert states_allowing(ModelAction.TRAINING_SUCCEEDED) == [S.TRAINING]
