"""The scheduler's records of servers and their replicas.

A server is a set of identical inference-server replicas (e.g. the StatefulSet "mlserver"); each replica
has one agent. ServerNotify says how many replicas a server should have; agents say which are connected.
Only the expectations (``ServerRecord.to_bytes``) are durable; connected replicas are rebuilt from agents.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from generated.mlops.agent.v1 import agent_pb2
from scheduler.models.free_memory_order import ReplicasByFreeMemory
from scheduler.models.memory_ledger import MemoryLedger

ModelVersionKey = tuple[str, int]  # (model name, version)


class OperationSink(Protocol):
    """Where the scheduler sends a replica's operations: its agent's session."""

    def send(self, message: agent_pb2.SessionResponse) -> None: ...

    def next_operation_id(self) -> int: ...

    def close(self, reason: str) -> None: ...


@dataclass(slots=True)
class ReplicaRecord:
    server: str
    index: int
    capabilities: frozenset[str]
    total_memory: int
    overcommit_percent: int
    http_url: str
    grpc_target: str
    session: OperationSink
    agent_id: str = ""
    draining: bool = False
    drain_reported: bool = False
    # Why the replica's inference server does not serve (its agent's ServerHealth); None while it serves.
    server_down: str | None = None
    # Since when the replica holds no model (None while it holds some): scale-down looks at this.
    empty_since: float | None = None
    # (model, version) -> bytes: what the agent holds of models a new leader did not know yet when it reported them,
    # kept (and its memory counted) until the controller's re-send claims them or the wait ends (Cluster.unclaimed).
    unclaimed: dict[tuple[str, int], int] = field(default_factory=dict)
    ledger: MemoryLedger = field(init=False)
    # (server, index): made once, so that the assignments of every model on this replica share it, not a copy each.
    key: tuple[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = MemoryLedger(self.total_memory * (100 + self.overcommit_percent) // 100)
        self.key = (self.server, self.index)


@dataclass(slots=True)
class ServerRecord:
    """A server and its connected replicas. ``replicas`` changes only through ``add_replica`` and
    ``remove_replica``, which keep the capabilities every replica offers (a count per capability) as they go."""

    name: str
    shared: bool = True
    # From ServerNotify; None until a controller says.
    expected_replicas: int | None = None
    min_replicas: int = 0
    max_replicas: int = 0
    kubernetes_namespace: str = ""
    kubernetes_generation: int = 0
    # Highest replica count ever seen connected: what the synchroniser waits for after a restart
    # when no controller has said.
    seen_replicas: int = 0
    replicas: dict[int, ReplicaRecord] = field(default_factory=dict)
    # The replica count last asked for in a scale-down ScalingRequest, so it is asked once.
    scale_down_requested: int | None = None
    # The replicas that can take a new model, most free memory first (kept by the cluster: models/cluster_state.py).
    by_free_memory: ReplicasByFreeMemory = field(
        default_factory=ReplicasByFreeMemory, init=False, repr=False, compare=False
    )
    # capability -> how many connected replicas offer it; and those all of them offer, derived from it.
    _capability_counts: Counter[str] = field(default_factory=Counter, init=False, repr=False, compare=False)
    _capabilities: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    # The connected replicas' indexes, lowest first: computed when asked, forgotten when a replica comes or goes.
    _in_order: list[int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def capabilities(self) -> frozenset[str]:
        """Capabilities every connected replica has (replicas of one server should agree)."""
        return self._capabilities

    def add_replica(self, replica: ReplicaRecord) -> None:
        """Connect ``replica`` (its index must be free: a replica registering again is removed first)."""
        self.replicas[replica.index] = replica
        self._capability_counts.update(replica.capabilities)
        self._capabilities = self._offered_by_all()
        self._in_order = None

    def remove_replica(self, index: int) -> ReplicaRecord:
        replica = self.replicas.pop(index)
        self._capability_counts.subtract(replica.capabilities)
        self._capability_counts = +self._capability_counts  # drop the capabilities no replica offers any more
        self._capabilities = self._offered_by_all()
        self._in_order = None
        self.by_free_memory.update(index, None)
        return replica

    def indexes_in_order(self) -> list[int]:
        """The connected replicas' indexes, lowest first (sorted once per change of the replicas)."""
        if self._in_order is None:
            self._in_order = sorted(self.replicas)
        return self._in_order

    def _offered_by_all(self) -> frozenset[str]:
        count = len(self.replicas)
        return frozenset(c for c, n in self._capability_counts.items() if n == count) if count else frozenset()

    def check_capabilities(self) -> bool:
        """Whether the kept capabilities are those every connected replica has (the invariant check's question)."""
        sets = [r.capabilities for r in self.replicas.values()]
        return self._capabilities == (frozenset.intersection(*sets) if sets else frozenset())

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "shared": self.shared,
                "expected_replicas": self.expected_replicas,
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "namespace": self.kubernetes_namespace,
                "generation": self.kubernetes_generation,
                "seen_replicas": self.seen_replicas,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> ServerRecord:
        document = json.loads(data)
        expected = document["expected_replicas"]
        return cls(
            name=name,
            shared=bool(document["shared"]),
            expected_replicas=None if expected is None else int(expected),
            min_replicas=int(document["min_replicas"]),
            max_replicas=int(document["max_replicas"]),
            kubernetes_namespace=str(document["namespace"]),
            kubernetes_generation=int(document["generation"]),
            seen_replicas=int(document["seen_replicas"]),
        )
