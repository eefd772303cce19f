"""Aliases and promotions: which alias names exist, and the promotion lifecycle as ONE explicit table of (state,
action) -> next state. Every 409 of an alias move or a ``promote`` call comes from here (or from the model
lifecycle, registry/lifecycle.py, for the model an alias is moved to).

How versions relate to aliases: an alias belongs to an EXPERIMENT (one dataset, one outcome: its models are
alternatives for one prediction) and points at one registered version, (model id, version). A retrained version
is a new model of the same experiment (the seed's POST train is 409 once a model is TRAINED), so "promote the
retrained version" is "move ``production`` from one model's version to another's". Per experiment, not per model
name: the experiment's name is the stable public name its ``production`` version is served under.

* ``production``: the version clients get through the experiment's stable name (registry/serving_names.py).
  Moving it deploys that version under the stable name.
* ``candidate``: a version on trial; moving it deploys the version under its own model's name, without traffic
  from the stable name until a canary starts.
* Any other valid name (``staging``, ``last-good``): a label only, deploying nothing.

A promotion's life (one row per promotion; at most one unsettled per experiment)::

    (none) --canary--> CANARY --canary (same candidate: a new percent)--> CANARY
                         |--finish--> FINISHING --done--> FINISHED   (finish again from FINISHING: it converges)
                         '--abort---> ABORTING  --done--> ABORTED    (abort again from ABORTING: it converges)

FINISHING and ABORTING are written BEFORE the scheduler is asked to act, and every step asked of it converges
(load this version under that name, stop that experiment, unload that name: each done or already so), so a
registry that stops or dies mid-way leaves a row that says what it was doing, and the same call, repeated after a
restart, completes it. No step lives only in the process.

Domain code: no HTTP, no database.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from registry.errors import Conflict, InvalidInput

PRODUCTION: Final = "production"
CANDIDATE: Final = "candidate"
SERVING_ALIASES: Final = (PRODUCTION, CANDIDATE)
# An alias's name: lower case, short, safe in a URL, a log and a table cell.
ALIAS_NAME: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_ALIASES_PER_EXPERIMENT: Final = 16
MIN_CANARY_PERCENT: Final = 1
MAX_CANARY_PERCENT: Final = 99


def check_alias_name(name: str) -> str:
    """``name`` when it is a valid alias name; InvalidInput (400) saying what one is."""
    if not ALIAS_NAME.fullmatch(name):
        raise InvalidInput("an alias is 1-32 of a-z 0-9 - starting with a letter (e.g. production, candidate, staging)")
    return name


def check_canary_percent(percent: int) -> int:
    if not MIN_CANARY_PERCENT <= percent <= MAX_CANARY_PERCENT:
        raise InvalidInput(
            f"canary: the candidate's share of traffic is {MIN_CANARY_PERCENT} to {MAX_CANARY_PERCENT} percent "
            f"(100 is --finish), not {percent}"
        )
    return percent


class PromotionState(StrEnum):
    CANARY = "CANARY"  # traffic to the stable name split between production and the candidate
    FINISHING = "FINISHING"  # the candidate being made production
    FINISHED = "FINISHED"
    ABORTING = "ABORTING"  # the canary being taken down, production alone again
    ABORTED = "ABORTED"


class PromotionAction(StrEnum):
    CANARY = "start a canary in"
    FINISH = "finish the promotion of"
    FINISHED = "record the end of"
    ABORT = "abort the promotion of"
    ABORTED = "record the abort of"


_P = PromotionState
_A = PromotionAction

# None stands for "no unsettled promotion" (none yet, or the last one FINISHED or ABORTED).
PROMOTION_TRANSITIONS: Final[Mapping[tuple[PromotionState | None, PromotionAction], PromotionState]] = {
    (None, _A.CANARY): _P.CANARY,
    (_P.CANARY, _A.CANARY): _P.CANARY,  # the same candidate at another percent (the service checks "same")
    (_P.CANARY, _A.FINISH): _P.FINISHING,
    (_P.CANARY, _A.ABORT): _P.ABORTING,
    (_P.FINISHING, _A.FINISH): _P.FINISHING,  # a finish cut short (a restart), asked again
    (_P.FINISHING, _A.FINISHED): _P.FINISHED,
    (_P.ABORTING, _A.ABORT): _P.ABORTING,
    (_P.ABORTING, _A.ABORTED): _P.ABORTED,
}

SETTLED: Final = frozenset({PromotionState.FINISHED, PromotionState.ABORTED})


class PromotionConflict(Conflict):
    """A promotion move the current state does not allow (409); the message says which states would allow it."""


def next_promotion_state(experiment: str, state: PromotionState | None, action: PromotionAction) -> PromotionState:
    if (state, action) not in PROMOTION_TRANSITIONS:
        allowed = [
            s.value if s is not None else "no promotion running" for (s, a) in PROMOTION_TRANSITIONS if a is action
        ]
        now = state.value if state is not None else "no promotion running"
        raise PromotionConflict(
            f"cannot {action.value} experiment {experiment}: {now}; allowed only with {', '.join(allowed)}"
        )
    return PROMOTION_TRANSITIONS[(state, action)]


def alias_held_by(state: PromotionState | None, alias: str) -> bool:
    """Whether an unsettled promotion owns ``alias`` (production and candidate move only through it meanwhile)."""
    return state is not None and state not in SETTLED and alias in SERVING_ALIASES
