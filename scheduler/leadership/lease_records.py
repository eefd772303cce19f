"""What the scheduler keeps in its Lease, as plain data: the holder, the times, and the leader's addresses.

The Lease is a ``coordination.k8s.io/v1`` object; kubernetes_leases.py turns it into a :class:`LeaseRecord` and
back, so the elector's rules (lease_elector.py) read no Kubernetes types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime

# Where the leader writes the addresses clients should dial, so a standby can name them (the UNAVAILABLE answer's
# ``modelplane-leader`` metadata). Annotations, because LeaseSpec has no field for them.
API_ADDRESS_ANNOTATION = "modelplane.io/leader-api-address"
AGENT_ADDRESS_ANNOTATION = "modelplane.io/leader-agent-address"

# The bounds of the timing flags. leaseDurationSeconds is a whole number of seconds in the Lease API.
MIN_LEASE_DURATION_SECONDS, MAX_LEASE_DURATION_SECONDS = 1, 3600
MIN_RETRY_PERIOD_SECONDS = 0.05
DEFAULT_LEASE_DURATION_SECONDS = 15
DEFAULT_RENEW_DEADLINE_SECONDS = 10.0
DEFAULT_RETRY_PERIOD_SECONDS = 2.0
# A standby waits between one and this many retry periods between looks at the Lease, so that replicas started
# together do not ask in lockstep.
STANDBY_JITTER = 1.2


class LeaseTimingError(ValueError):
    """Timings that cannot keep two leaders apart; the message says which and why."""


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """How long a Lease lasts unrenewed, how long its leader keeps trying to renew it, how often anyone tries.

    ``renew_deadline_seconds < lease_duration_seconds``: the leader gives up before anyone else may take over; the
    difference is the time it has to stop acting. ``retry_period_seconds < renew_deadline_seconds``: the leader
    gets more than one try to renew before it gives up."""

    lease_duration_seconds: int = DEFAULT_LEASE_DURATION_SECONDS
    renew_deadline_seconds: float = DEFAULT_RENEW_DEADLINE_SECONDS
    retry_period_seconds: float = DEFAULT_RETRY_PERIOD_SECONDS

    def __post_init__(self) -> None:
        if not MIN_LEASE_DURATION_SECONDS <= self.lease_duration_seconds <= MAX_LEASE_DURATION_SECONDS:
            raise LeaseTimingError(
                f"lease duration {self.lease_duration_seconds}s is out of range: give "
                f"{MIN_LEASE_DURATION_SECONDS} to {MAX_LEASE_DURATION_SECONDS} whole seconds"
            )
        if not 0 < self.renew_deadline_seconds < self.lease_duration_seconds:
            raise LeaseTimingError(
                f"renew deadline {self.renew_deadline_seconds:g}s must be shorter than the lease duration "
                f"{self.lease_duration_seconds}s: a leader must stop before another may take over"
            )
        if not MIN_RETRY_PERIOD_SECONDS <= self.retry_period_seconds < self.renew_deadline_seconds:
            raise LeaseTimingError(
                f"retry period {self.retry_period_seconds:g}s must be at least {MIN_RETRY_PERIOD_SECONDS:g}s and "
                f"shorter than the renew deadline {self.renew_deadline_seconds:g}s: the leader needs more than one "
                "try to renew"
            )

    @property
    def takeover_bound_seconds(self) -> float:
        """The longest a standby that watches the Lease waits, after the leader's last renewal, before it holds
        the Lease: the lease duration, plus up to one (jittered) retry period to see the last renewal and one to
        see it expire (and the API server's answers on top)."""
        return self.lease_duration_seconds + 2 * STANDBY_JITTER * self.retry_period_seconds


@dataclass(frozen=True, slots=True)
class LeaderAddresses:
    """What clients should dial to reach a leader: its Scheduler API and its agent listener (HOST:PORT each)."""

    api: str
    agent: str

    def annotations(self) -> dict[str, str]:
        return {API_ADDRESS_ANNOTATION: self.api, AGENT_ADDRESS_ANNOTATION: self.agent}

    @classmethod
    def from_annotations(cls, annotations: dict[str, str]) -> LeaderAddresses | None:
        api, agent = annotations.get(API_ADDRESS_ANNOTATION), annotations.get(AGENT_ADDRESS_ANNOTATION)
        if not api or not agent:
            return None
        return cls(api[:_MAX_ADDRESS_CHARS], agent[:_MAX_ADDRESS_CHARS])


_MAX_ADDRESS_CHARS = 300  # a hostname is at most 253 characters; what another writer put there is cut, not trusted


@dataclass(frozen=True, slots=True)
class Term:
    """One leadership term: the Lease object (its uid: a deleted and recreated Lease starts counting again), its
    holder, and the holder's transition count. Every change of holder makes a new term."""

    lease_uid: str
    holder: str
    transitions: int


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A Lease as the elector reads and writes it. ``resource_version`` is the optimistic-concurrency token of the
    version read (None for a Lease not created yet); a write with a stale one is refused (409)."""

    holder: str | None = None
    lease_duration_seconds: int | None = None
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0
    annotations: dict[str, str] = field(default_factory=dict)
    resource_version: str | None = None
    uid: str | None = None

    def held_by(self, identity: str) -> bool:
        return bool(self.holder) and self.holder == identity

    @property
    def free(self) -> bool:
        """Nobody holds it (never held, or released)."""
        return not self.holder

    def leader(self) -> LeaderAddresses | None:
        return None if self.free else LeaderAddresses.from_annotations(self.annotations)

    def replace(self, **changes: object) -> LeaseRecord:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
