"""Models and their splits: moving a model by the lifecycle table, and unassigning its split (seed 002: "If no
other model is using it, the split will also be deleted")."""

from __future__ import annotations

from sqlalchemy.orm import Session

from registry.lifecycle import SPLIT_TRANSITIONS, ModelAction, ModelState, SplitAction, SplitState, next_model_state
from registry.service import lookups
from registry.store.tables import ModelRow, SplitRow


def move(row: ModelRow, action: ModelAction) -> ModelState | None:
    """Apply ``action`` to ``row`` by the lifecycle table (LifecycleConflict when it does not allow it); the new
    state (None: the caller deletes the row)."""
    after = next_model_state(lookups.describe(row), ModelState(row.state), action)
    if after is not None:
        row.state = after.value
    return after


def unassign_split(session: Session, row: ModelRow) -> None:
    """Take ``row``'s split away (no state change: the caller's move did that) and delete the split when no other
    model uses it and it is not being computed."""
    split_id = row.split_id
    if split_id is None:
        return
    row.split_id = None
    session.flush()
    split = session.get(SplitRow, split_id)
    if split is None:
        return
    if lookups.models_of_split(session, split_id):
        return
    if (SplitState(split.state), SplitAction.DELETE) in SPLIT_TRANSITIONS:  # one being computed stays
        session.delete(split)
