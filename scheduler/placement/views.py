"""Read-only snapshots that placement decides on.

Placement is a pure function of these views, so the scheduler can take a consistent snapshot under its
lock, release the lock, and plan without touching live state (and tests can build views directly).

A server's replicas come either listed (a tuple of views: every replica judged, as tests build them) or from a
``ReplicaCandidates`` source that answers the planner's two questions without a view of every replica: the
scheduler's (scheduler/models/placement_candidates.py) keeps each server's replicas ordered by free memory, so a
LoadModel costs the same with 10 replicas or 1,000.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One server replica as placement sees it for one model version."""

    index: int
    capabilities: frozenset[str]
    # Total memory, including any over-commit the server allows.
    capacity_bytes: int
    # Memory committed to models on the replica, including loads still in flight, so two placements
    # planned back to back cannot both claim the same free memory.
    used_bytes: int
    draining: bool
    # The replica already has (or is loading) this model's version, so keeping it there costs nothing.
    holds_model: bool
    # Its inference server does not serve (it died and is being restarted, or stopped answering).
    server_down: bool = False
    # Its inference server died while this model version was loading on it: the load may kill it again.
    server_died_loading: bool = False
    # This model version is on its way out of the replica (being unloaded): it cannot be loaded there again yet.
    unloading_model: bool = False

    @property
    def free_bytes(self) -> int:
        """Memory still available; never negative, since over-committed replicas simply have none."""
        return max(0, self.capacity_bytes - self.used_bytes)


class ReplicaCandidates(Protocol):
    """A server's replicas, asked about as placement needs them rather than all judged."""

    def __len__(self) -> int:
        """How many distinct replicas the server has."""
        ...

    def __iter__(self) -> Iterator[ReplicaView]:
        """Every replica, lowest index first (for the reason when too few fit, only the first few are read)."""
        ...

    def preferred(
        self, request: PlacementRequest, wanted: int, fits: Callable[[ReplicaView], bool]
    ) -> list[ReplicaView]:
        """Up to ``wanted`` replicas that ``fits`` accepts, most preferred first in DEFAULT_REPLICA_ORDER (holding the
        model, most free memory, lowest index). Replicas that ServerServing, NotDraining or EnoughMemory reject may
        be left out without asking ``fits``: the planner uses a source only with those filters among its own."""
        ...


@dataclass(frozen=True, slots=True)
class ServerView:
    """One server (a set of interchangeable replicas) as placement sees it."""

    name: str
    shared: bool
    # None: ServerNotify has not told us, so the connected replicas are all we know.
    expected_replicas: int | None
    # 0: unknown, so a scale-up request is not capped.
    max_replicas: int
    # Taken as given: the capabilities every replica of the server offers.
    capabilities: frozenset[str]
    replicas: tuple[ReplicaView, ...] | ReplicaCandidates


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """What one model version needs."""

    model: str
    version: int
    # Already multiplied by the instance count: the memory one replica must have free.
    memory_bytes: int
    requirements: frozenset[str]
    server_pin: str | None
    # Desired replica count; 0 means the model is scaled down.
    replicas: int
    # Above 0, the model may run on fewer than `replicas` replicas (but at least this many) while the
    # server scales up.
    min_replicas: int
    is_explainer: bool
    # Tried first, so a model stays where it is loaded rather than moving when another server also fits.
    current_server: str | None

    def __post_init__(self) -> None:
        # Negative counts would make "enough replicas" comparisons silently true; reject them at the edge.
        for field_name in ("memory_bytes", "replicas", "min_replicas"):
            if getattr(self, field_name) < 0:
                raise ValueError(f"{field_name} must not be negative, got {getattr(self, field_name)}")


@dataclass(frozen=True, slots=True)
class PlacementDecision:
    """Where a model version goes, or why it cannot go anywhere."""

    server: str | None
    # Chosen replica indexes, most preferred first.
    replicas: tuple[int, ...]
    # Set when placement was partial: the replica count the server should scale to (capped at its
    # max_replicas when that is known).
    scale_up_to: int | None
    # Set when nothing could be placed: a human-readable reason for ScheduleFailed.
    failure: str | None

    def __post_init__(self) -> None:
        # A decision is either a placement or a failure, never both, so callers can branch on `ok` alone.
        if self.failure is not None and (self.server is not None or self.replicas or self.scale_up_to is not None):
            raise ValueError("a failed placement names no server, replicas or scale-up")
        if self.failure == "":
            raise ValueError("a failed placement needs a reason")

    @property
    def ok(self) -> bool:
        """True unless placement failed (a scaled-down model is ok with no replicas)."""
        return self.failure is None

    @property
    def is_partial(self) -> bool:
        """True when the model runs on fewer replicas than desired while the server scales up."""
        return self.scale_up_to is not None

    @classmethod
    def failed(cls, reason: str) -> PlacementDecision:
        return cls(server=None, replicas=(), scale_up_to=None, failure=reason)
