"""The scheduler's records of servers and their replicas.

A server is a set of identical inference-server replicas (e.g. the StatefulSet "mlserver"); each replica
has one agent. ServerNotify says how many replicas a server should have; agents say which are connected.
Only the expectations (``ServerRecord.to_bytes``) are durable; connected replicas are rebuilt from agents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

from generated.mlops.agent.v1 import agent_pb2
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

    @property
    def capabilities(self) -> frozenset[str]:
        """Capabilities every connected replica has (replicas of one server should agree)."""
        sets = [r.capabilities for r in self.replicas.values()]
        return frozenset.intersection(*sets) if sets else frozenset()

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
