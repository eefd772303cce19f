"""The scheduler's records of models: desired state (specs, versions, deletion) and observed state
(which replica holds which version, in which state).

Only ``ModelRecord.to_bytes`` content is durable; replica assignments are rebuilt from agents.

Inline storage credentials are never persisted (``to_bytes`` writes the spec through
modelplane/storage_secrets.py's ``redacted_model``): the scheduler holds an inline ``storageRcloneConfig`` in
memory only, for as long as the version lives and an agent may need to load it. The trade-off, chosen over
"encrypted at rest with a key from a file": no key to manage, rotate or lose, and no state-store row (SQLite
file, Redis, backups of either) that can ever yield the credentials, whatever happens to the key; the cost is
that after a scheduler restart a restored version holds only the marker. Replicas that still hold the model
keep serving it (agents report it when they reconnect), but a new load (a new replica, a moved model) fails
with a reason saying the credentials must be sent again, until a client re-sends the model's LoadModel (a
Seldon controller does so when the scheduler asks it to, SEND_MODELS on SubscribeControlPlane). That LoadModel
restores the credentials in place, without a new version (model_specs.classify_change). Models that name a
``storageSecretName`` instead lose nothing on a restart: prefer it in production.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.storage_secrets import has_inline_config, is_redacted, redacted_model
from scheduler.models.assignment_index import AssignmentIndex
from scheduler.models.model_state import DerivedState, ModelState, ReplicaFact
from scheduler.models.replica_state import INACTIVE, SERVING, ReplicaState, check_transition

ReplicaKey = tuple[str, int]  # (server name, replica index)


@dataclass(slots=True)
class ReplicaAssignment:
    state: ReplicaState = ReplicaState.UNKNOWN
    reason: str = ""
    changed_at: float = field(default_factory=time.time)
    # The operation sent to the replica for this assignment; its event must answer this one.
    operation_id: int = 0

    def fact(self) -> ReplicaFact:
        return ReplicaFact(self.state, self.reason, self.changed_at)


@dataclass(slots=True)
class ModelVersion:
    version: int
    spec: pb.Model
    created_at: float = field(default_factory=time.time)
    replicas: dict[ReplicaKey, ReplicaAssignment] = field(default_factory=dict)
    # Why the last placement attempt failed; None once placement succeeds.
    schedule_failure: str | None = None
    derived: DerivedState = field(default_factory=lambda: DerivedState(ModelState.PROGRESSING, "", 0, 0))
    state_changed_at: float = field(default_factory=time.time)
    gateway_state: ModelState = ModelState.UNKNOWN
    gateway_reason: str = ""
    # Replicas whose inference server died while this version's load was in flight on it (its agent said so),
    # with the agent's reason: the load may have killed the server, so the version is not placed there again, and
    # enough of them fail it (models/cluster.py, the crash-loop guard). Observed state, not durable: a LoadModel
    # for the model (changed or not) clears it; capacity changes never do.
    server_deaths: dict[ReplicaKey, str] = field(default_factory=dict)
    # The cluster's index of assignments by replica (models/assignment_index.py) while this version is live: every
    # assignment gained or forgotten is reported to it. None before the version joins its record, and once retired.
    index: AssignmentIndex | None = field(default=None, repr=False, compare=False)

    def set_replica(self, key: ReplicaKey, state: ReplicaState, reason: str = "") -> ReplicaState:
        """Move one replica assignment through the state machine; returns the previous state."""
        assignment = self.replicas.get(key)
        previous = assignment.state if assignment else ReplicaState.UNKNOWN
        check_transition(previous, state)
        if assignment is None:
            assignment = self.replicas[key] = ReplicaAssignment()
            if self.index is not None:
                self.index.added(key, self.version_key)
        assignment.state, assignment.reason, assignment.changed_at = state, reason, time.time()
        return previous

    @property
    def version_key(self) -> tuple[str, int]:
        """(model name, version): how the assignment index and the memory ledgers name this version."""
        return (self.spec.meta.name, self.version)

    def drop_replica(self, key: ReplicaKey) -> ReplicaAssignment | None:
        """Forget the assignment on ``key`` whatever its state (its replica is gone); returns it, if there was one."""
        assignment = self.replicas.pop(key, None)
        if assignment is not None and self.index is not None:
            self.index.removed(key, self.version_key)
        return assignment

    def join(self, index: AssignmentIndex) -> None:
        """The version is live in the cluster from now on: its assignments are indexed."""
        if self.index is index:
            return
        self.index = index
        for key in self.replicas:
            index.added(key, self.version_key)

    def retire(self) -> None:
        """The version leaves its record (or its model is forgotten): its assignments leave the index."""
        if self.index is not None:
            for key in self.replicas:
                self.index.removed(key, self.version_key)
        self.index = None

    def set_reason(self, key: ReplicaKey, reason: str) -> None:
        """A new reason for an assignment's unchanged state (e.g. its server is still down, for another reason)."""
        assignment = self.replicas[key]
        assignment.reason, assignment.changed_at = reason, time.time()

    def state_of(self, key: ReplicaKey) -> ReplicaState:
        assignment = self.replicas.get(key)
        return assignment.state if assignment else ReplicaState.UNKNOWN

    def keys_in(self, states: frozenset[ReplicaState]) -> list[ReplicaKey]:
        return [key for key, a in self.replicas.items() if a.state in states]

    def facts(self) -> list[ReplicaFact]:
        return [a.fact() for a in self.replicas.values()]

    @property
    def serving(self) -> int:
        return sum(1 for a in self.replicas.values() if a.state in SERVING)

    @property
    def inactive(self) -> bool:
        return all(a.state in INACTIVE for a in self.replicas.values())

    def forget_inactive(self) -> None:
        for key in [k for k, a in self.replicas.items() if a.state in (ReplicaState.UNLOADED, ReplicaState.UNKNOWN)]:
            self.drop_replica(key)


@dataclass(slots=True)
class ModelRecord:
    """One model: its versions (oldest first; the last is the latest) and whether it is deleted."""

    name: str
    versions: list[ModelVersion]
    deleted: bool = False

    @property
    def latest(self) -> ModelVersion:
        return self.versions[-1]

    def version(self, number: int) -> ModelVersion | None:
        for version in self.versions:
            if version.version == number:
                return version
        return None

    def stores_credentials_in_clear(self) -> bool:
        """True if a version holds an inline storage config in clear: restored from a record written before they
        were redacted (the scheduler then writes the record again)."""
        return any(
            has_inline_config(v.spec) and not is_redacted(v.spec.modelSpec.storageConfig.storageRcloneConfig)
            for v in self.versions
        )

    def to_bytes(self) -> bytes:
        """The durable part: specs of every version still present, and the deleted flag."""
        return json.dumps(
            {
                "deleted": self.deleted,
                "versions": [
                    {
                        "version": v.version,
                        "created_at": v.created_at,
                        "spec": redacted_model(v.spec).SerializeToString().hex(),
                    }
                    for v in self.versions
                ],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> ModelRecord:
        document = json.loads(data)
        versions = [
            ModelVersion(
                version=int(entry["version"]),
                spec=pb.Model.FromString(bytes.fromhex(entry["spec"])),
                created_at=float(entry["created_at"]),
            )
            for entry in document["versions"]
        ]
        if not versions:
            raise ValueError(f"stored model {name!r} has no versions")
        return cls(name=name, versions=versions, deleted=bool(document["deleted"]))
