"""A server's replicas given as a list of views (as tests build them): placement judges every one, in order."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from scheduler.placement.replica_sorters import ReplicaKey, sort_replicas
from scheduler.placement.views import PlacementRequest, ReplicaView


class ListedReplicas:
    """``ReplicaCandidates`` over listed views: one per replica index (the first, so a duplicated report cannot
    count a replica twice), sorted in ``order`` whole for every question. Leaves nothing out."""

    def __init__(self, views: Sequence[ReplicaView], order: Sequence[ReplicaKey]) -> None:
        by_index: dict[int, ReplicaView] = {}
        for view in views:
            by_index.setdefault(view.index, view)
        self._views = sorted(by_index.values(), key=lambda view: view.index)
        self._order = order

    def __len__(self) -> int:
        return len(self._views)

    def preferred(
        self, request: PlacementRequest, wanted: int, fits: Callable[[ReplicaView], bool]
    ) -> list[ReplicaView]:
        return [view for view in sort_replicas(self._views, self._order) if fits(view)][:wanted]

    def __iter__(self) -> Iterator[ReplicaView]:
        return iter(self._views)
