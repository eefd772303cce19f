"""The state table of one scheduler process's leadership.

A process starts as a STANDBY. It becomes LEADING when it acquires the Lease, and stays LEADING while it renews
it. It ends STEPPED_DOWN, for good, when it can no longer renew (the renew deadline passed, or another holder
took the Lease), when it releases the Lease on a graceful stop, or when it stops. A process that stepped down
never leads again: it exits, and the replica that restarts in its place starts as a STANDBY, so state of one
term never leaks into the next.
"""

from __future__ import annotations

import enum

from modelplane.spec.errors import IllegalTransition


class LeadershipLost(Exception):  # noqa: N818 - what happened, not a failure of the code
    """This replica led and lost the Lease (or its election failed): it stopped acting as leader, and the process
    exits to start again as a standby."""


class LeadershipState(enum.Enum):
    STANDBY = "standby"
    LEADING = "leading"
    STEPPED_DOWN = "stepped down"


class LeadershipEvent(enum.Enum):
    ACQUIRED = "acquired the lease"
    RENEWED = "renewed the lease"
    LOST = "lost the lease"  # not renewed within the renew deadline, or another holder has it
    RELEASED = "released the lease"  # a graceful stop: standbys may take over at once
    STOPPED = "stopped"  # the process stops (a standby, or a leader that cannot release)


_S, _E = LeadershipState, LeadershipEvent
TRANSITIONS: dict[tuple[LeadershipState, LeadershipEvent], LeadershipState] = {
    (_S.STANDBY, _E.ACQUIRED): _S.LEADING,
    (_S.STANDBY, _E.STOPPED): _S.STEPPED_DOWN,
    (_S.LEADING, _E.RENEWED): _S.LEADING,
    (_S.LEADING, _E.LOST): _S.STEPPED_DOWN,
    (_S.LEADING, _E.RELEASED): _S.STEPPED_DOWN,
    (_S.LEADING, _E.STOPPED): _S.STEPPED_DOWN,
}


def next_state(state: LeadershipState, event: LeadershipEvent) -> LeadershipState:
    """The state ``event`` leads to from ``state``; IllegalTransition when the table has no such step."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"leadership: no transition from {state.value} on {event.value}") from None
