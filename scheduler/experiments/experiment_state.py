"""The state machine of one experiment, as the scheduler sees it.

Every change goes through :func:`check_transition`; a change not in the table is an error, never applied.

    StartExperiment --> Pending <---------------------------------.
                          |  a connected gateway routes it        | no connected gateway routes it any more
                          v                                       |
                        Active -----------------------------------'
    Pending, Active --StopExperiment--> Stopped

- Pending: running (its routes go to the gateways), but no connected gateway has said it routes it, yet or any
  more. The status says ``active`` False.
- Active: running, and at least one connected gateway routes it (``active`` True).
- Stopped: routed nowhere; the record is kept so that its status still answers (``stopped``). Stopping it again
  changes nothing. Starting it again, like starting a running one with a new spec, replaces the record whole
  with a new one in Pending: the gateways must acknowledge the new spec.

Only Stopped-or-not is durable: after a restart an experiment is Stopped or Pending, until gateways route it
again. Readiness (``candidates_ready``, ``mirror_ready``) is observed beside the state, not part of it: the
status reports it in its own fields, in Pending and Active alike (a gateway routes a degraded experiment to the
candidates that are ready), and it is False once Stopped.
"""

from __future__ import annotations

import enum

from modelplane.spec.errors import IllegalTransition


class ExperimentState(enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    STOPPED = "stopped"


TRANSITIONS: dict[ExperimentState, frozenset[ExperimentState]] = {
    ExperimentState.PENDING: frozenset({ExperimentState.ACTIVE, ExperimentState.STOPPED}),
    ExperimentState.ACTIVE: frozenset({ExperimentState.PENDING, ExperimentState.STOPPED}),
    ExperimentState.STOPPED: frozenset(),
}


def check_transition(current: ExperimentState, new: ExperimentState) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"experiment state {current.name} cannot change to {new.name}")
