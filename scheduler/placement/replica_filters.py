"""Replica filters: which replicas of an acceptable server can take the model right now."""

from __future__ import annotations

from typing import Protocol

from scheduler.placement.views import PlacementRequest, ReplicaView

EXPLAINER_CAPABILITY = "alibi-explain"

_UNITS = ("B", "KiB", "MiB", "GiB")
_STEP = 1024


class ReplicaFilter(Protocol):
    @property
    def name(self) -> str: ...

    def reject(self, request: PlacementRequest, replica: ReplicaView) -> str | None:
        """None to accept the replica; otherwise a short human reason naming the replica."""
        ...


def format_bytes(count: int) -> str:
    """Bytes in the largest binary unit up to GiB, with one decimal only when not whole (1536 -> 1.5KiB)."""
    value = float(count)
    unit = 0
    while unit < len(_UNITS) - 1 and abs(value) >= _STEP:
        value /= _STEP
        unit += 1
    rounded = round(value, 1)
    # Rounding can reach the next unit (1048575 B -> 1024.0KiB); say 1MiB instead.
    if abs(rounded) >= _STEP and unit < len(_UNITS) - 1:
        rounded = round(rounded / _STEP, 1)
        unit += 1
    text = f"{int(rounded)}" if rounded.is_integer() else f"{rounded:.1f}"
    return f"{text}{_UNITS[unit]}"


class EnoughMemory:
    """The replica must have the model's memory free, unless it already holds the model."""

    name = "enough-memory"

    def reject(self, request: PlacementRequest, replica: ReplicaView) -> str | None:
        if replica.holds_model or request.memory_bytes <= replica.free_bytes:
            return None
        free, needed = format_bytes(replica.free_bytes), format_bytes(request.memory_bytes)
        if free == needed:
            # Rounded units would read "has 1MiB free, model needs 1MiB"; exact bytes show the gap.
            free, needed = f"{replica.free_bytes}B", f"{request.memory_bytes}B"
        return f"replica {replica.index} has {free} free, model needs {needed}"


class NotDraining:
    """A draining replica is being emptied, so nothing new may land on it."""

    name = "not-draining"

    def reject(self, request: PlacementRequest, replica: ReplicaView) -> str | None:
        return f"replica {replica.index} is draining" if replica.draining else None


class ServerServing:
    """A replica whose inference server is down can load nothing until it serves again."""

    name = "server-serving"

    def reject(self, request: PlacementRequest, replica: ReplicaView) -> str | None:
        return f"replica {replica.index}'s inference server is down" if replica.server_down else None


class NoServerDeathHere:
    """A version whose load was in flight when a replica's server died is not placed on that replica again: the
    load may have killed it (a segfault, the OOM killer), and placing it again would crash-loop the server."""

    name = "no-server-death-here"

    def reject(self, request: PlacementRequest, replica: ReplicaView) -> str | None:
        if replica.server_died_loading:
            return f"replica {replica.index}'s server died while loading this version"
        return None


class NotUnloadingHere:
    """A replica still unloading this version cannot load it again until the unload is over (the replica state
    table has no way back), so another replica must take it meanwhile."""

    name = "not-unloading-here"

    def reject(self, request: PlacementRequest, replica: ReplicaView) -> str | None:
        return f"replica {replica.index} is still unloading this version" if replica.unloading_model else None


class ExplainerCapable:
    """Explainer models run only on replicas that provide the explainer runtime."""

    name = "explainer-capable"

    def reject(self, request: PlacementRequest, replica: ReplicaView) -> str | None:
        if request.is_explainer and EXPLAINER_CAPABILITY not in replica.capabilities:
            return f"replica {replica.index} lacks capability {EXPLAINER_CAPABILITY}"
        return None


DEFAULT_REPLICA_FILTERS: tuple[ReplicaFilter, ...] = (
    ServerServing(),
    NoServerDeathHere(),
    NotUnloadingHere(),
    EnoughMemory(),
    NotDraining(),
    ExplainerCapable(),
)
