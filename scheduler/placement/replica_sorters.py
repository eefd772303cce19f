"""The order in which acceptable replicas are chosen, as composable sort-key pieces.

Replicas already holding the model come first so scaling up or down never moves a loaded copy; then the
most free memory, to spread load; then the lowest index, so equal replicas are chosen deterministically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from scheduler.placement.views import ReplicaView

ReplicaKey = Callable[[ReplicaView], int]


def holds_model_first(replica: ReplicaView) -> int:
    return 0 if replica.holds_model else 1


def most_free_first(replica: ReplicaView) -> int:
    return -replica.free_bytes


def lowest_index_first(replica: ReplicaView) -> int:
    return replica.index


DEFAULT_REPLICA_ORDER: tuple[ReplicaKey, ...] = (holds_model_first, most_free_first, lowest_index_first)


def sort_replicas(
    replicas: Iterable[ReplicaView], order: Sequence[ReplicaKey] = DEFAULT_REPLICA_ORDER
) -> list[ReplicaView]:
    """Replicas most preferred first, comparing by each key piece in turn."""
    return sorted(replicas, key=lambda replica: tuple(key(replica) for key in order))
