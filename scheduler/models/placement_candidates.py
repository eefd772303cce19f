"""One server's replicas as placement asks about them for one model version (scheduler/placement/views.py's
``ReplicaCandidates``), answered from the server's replicas ordered by free memory: a view is built only of the
replicas that already hold the version and of those the order offers until enough fit, never of every replica."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from scheduler.models.model_records import ModelVersion
from scheduler.models.replica_state import LEAVING, WANTED
from scheduler.models.server_records import ReplicaRecord, ServerRecord
from scheduler.placement import PlacementRequest, ReplicaView


class ServerCandidates:
    """``server``'s replicas for ``version``; ``staying`` says whether a replica stays (not draining or being scaled
    away). Left out unasked, as the protocol allows: replicas that neither hold the version nor are in the
    server's free-memory order (their server is down, or they are leaving), and those with too little memory."""

    __slots__ = ("_server", "_staying", "_version")

    def __init__(self, server: ServerRecord, version: ModelVersion, staying: Callable[[ReplicaRecord], bool]) -> None:
        self._server = server
        self._version = version
        self._staying = staying

    def __len__(self) -> int:
        return len(self._server.replicas)

    def _view(self, replica: ReplicaRecord) -> ReplicaView:
        return ReplicaView(
            index=replica.index,
            capabilities=replica.capabilities,
            capacity_bytes=replica.ledger.capacity,
            used_bytes=replica.ledger.used,
            draining=not self._staying(replica),
            holds_model=self._version.state_of(replica.key) in WANTED,
            server_down=replica.server_down is not None,
            server_died_loading=replica.key in self._version.server_deaths,
            unloading_model=self._version.state_of(replica.key) in LEAVING,
        )

    def preferred(
        self, request: PlacementRequest, wanted: int, fits: Callable[[ReplicaView], bool]
    ) -> list[ReplicaView]:
        """The replicas holding the version first (most free memory, then lowest index, as the order says), then
        the server's replicas by free memory while they have the memory the version needs."""
        server = self._server
        holders = []
        for (server_name, index), assignment in self._version.replicas.items():
            replica = server.replicas.get(index) if server_name == server.name else None
            if replica is not None and assignment.state in WANTED:
                holders.append(self._view(replica))
        holders.sort(key=lambda view: (-view.free_bytes, view.index))
        chosen = [view for view in holders if fits(view)][:wanted]
        if len(chosen) == wanted:
            return chosen
        held = {view.index for view in holders}

        def accept(index: int) -> bool:
            if index in held:
                return False  # judged above
            view = self._view(server.replicas[index])
            if not fits(view):
                return False
            chosen.append(view)
            return True

        server.by_free_memory.take(wanted - len(chosen), request.memory_bytes, accept)
        return chosen

    def __iter__(self) -> Iterator[ReplicaView]:
        replicas = self._server.replicas
        for index in self._server.indexes_in_order():
            yield self._view(replicas[index])
