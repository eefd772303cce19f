"""The promotion state table (registry/promotion_rules.py): every (state, action) pair either moves as the table
says or is refused with a message naming the states that would allow it; alias names and canary percents."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.errors import InvalidInput
from registry.promotion_rules import (
    PROMOTION_TRANSITIONS,
    SETTLED,
    PromotionAction,
    PromotionConflict,
    PromotionState,
    alias_held_by,
    check_alias_name,
    check_canary_percent,
    next_promotion_state,
)

STATES: list[PromotionState | None] = [None, *PromotionState]


@pytest.mark.parametrize("state", STATES, ids=lambda s: s.value if s is not None else "none")
@pytest.mark.parametrize("action", list(PromotionAction), ids=lambda a: a.name)
def test_every_pair_moves_by_the_table_or_is_refused_naming_what_allows_it(
    state: PromotionState | None, action: PromotionAction
) -> None:
    if (state, action) in PROMOTION_TRANSITIONS:
        assert next_promotion_state("houses", state, action) is PROMOTION_TRANSITIONS[(state, action)]
        return
    with pytest.raises(PromotionConflict) as refused:
        next_promotion_state("houses", state, action)
    allowed = [s for (s, a) in PROMOTION_TRANSITIONS if a is action]
    for each in allowed:
        assert (each.value if each is not None else "no promotion running") in refused.value.message


def test_the_lifecycle_it_promises() -> None:
    assert next_promotion_state("h", None, PromotionAction.CANARY) is PromotionState.CANARY
    for settled in SETTLED:  # a settled promotion is the past: nothing moves it again
        assert not [a for (s, a) in PROMOTION_TRANSITIONS if s is settled]
    # Half-done steps are completed by asking again, never turned into the other outcome.
    with pytest.raises(PromotionConflict):
        next_promotion_state("h", PromotionState.FINISHING, PromotionAction.ABORT)
    with pytest.raises(PromotionConflict):
        next_promotion_state("h", PromotionState.ABORTING, PromotionAction.FINISH)
    assert next_promotion_state("h", PromotionState.FINISHING, PromotionAction.FINISH) is PromotionState.FINISHING


@pytest.mark.parametrize("state", STATES, ids=lambda s: s.value if s is not None else "none")
def test_an_unsettled_promotion_owns_production_and_candidate_only(state: PromotionState | None) -> None:
    unsettled = state is not None and state not in SETTLED
    assert alias_held_by(state, "production") is unsettled
    assert alias_held_by(state, "candidate") is unsettled
    assert alias_held_by(state, "staging") is False


@given(st.text(max_size=40))
def test_alias_names(name: str) -> None:
    if re.fullmatch(r"[a-z][a-z0-9-]{0,31}", name):
        assert check_alias_name(name) == name
    else:
        with pytest.raises(InvalidInput):
            check_alias_name(name)


@given(st.integers(min_value=-1000, max_value=1000))
def test_canary_percents(percent: int) -> None:
    if 1 <= percent <= 99:
        assert check_canary_percent(percent) == percent
    else:
        with pytest.raises(InvalidInput):
            check_canary_percent(percent)
