"""The scheduler's records of models: desired state (specs, versions, deletion) and observed state
(which replica holds which version, in which state).

Only ``ModelRecord.to_bytes`` content is durable; replica assignments are rebuilt from agents. The stored form is
the ``mlops.state.v1.ModelRecord`` protobuf (proto/mlops/state/v1/state.proto); records written before it are JSON
with each spec in hex, told apart by their first byte (``{``), and read as well, so a state dir written by an
earlier modelplane opens unchanged; each such record is written in the new form the next time it changes.

Memory (the scheduler holds every model): a version keeps its spec as the bytes it was serialised to, not as a
protobuf message, whose arena costs ~1.3 KB even for a small spec; ``ModelVersion.spec`` parses a new message
when asked. What placement and derivation read on every change (replicas wanted, memory, requirements, ...) is
kept parsed in ``SpecFacts``, one object shared by every version whose facts are equal.

Checked once: a restart does not check again the specs this scheduler wrote (100,000 of them took ~1.5 s of CPU,
half the restore). Every spec in memory passed ``model_specs.validate_spec`` (a request's, or a stored one's at the
restore; ``Cluster.check_invariants``), so ``to_bytes`` marks each stored spec as checked: its CRC-32 started from
``SPEC_RULES``, the number of the rules it passed. A record read back whose every spec carries the mark of its own
bytes under today's rules is ``StoredModel.checked``; any other (written before the mark, damaged since, or under
other rules) has every spec checked in full, as before (``model_specs.usable_record``), and, if in the protobuf form
and usable whole, is written again with the mark (``Cluster.restore``), so that only the first restart after an
upgrade checks it. The cheap checks (name, version numbers, creation times, how many versions) run on every record
either way.

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
import sys
import time
import weakref
import zlib
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.state.v1 import state_pb2
from modelplane.spec.model_resources import memory_needed
from modelplane.storage_secrets import has_inline_config, is_redacted, redacted_model
from scheduler.models.assignment_index import AssignmentIndex
from scheduler.models.model_state import DerivedState, ModelState, ReplicaFact
from scheduler.models.replica_state import INACTIVE, SERVING, ReplicaState, check_transition

ReplicaKey = tuple[str, int]  # (server name, replica index)

# The first byte of a record written as JSON (before the protobuf form); a ModelRecord protobuf never starts with it
# (it would be field 15, a group, which the message does not have).
_JSON_RECORD = b"{"[0]
# A version's derived state until its replicas say otherwise: frozen, so one object serves every new version.
_NEW_VERSION_STATE = DerivedState(ModelState.PROGRESSING, "", 0, 0)

# The number of the rules a stored spec is checked by (model_specs.validate_spec and what it calls). Add one when they
# come to refuse a spec they accepted before: specs marked under the old number are then checked in full again at the
# next restart. tests/scheduler/test_model_records.py pins a fingerprint of those rules' code, so that a change to
# them is not missed.
SPEC_RULES = 1


def spec_mark(spec: bytes) -> int:
    """The mark of a stored spec that passed today's rules (module docstring): its CRC-32, started from SPEC_RULES."""
    return zlib.crc32(spec, SPEC_RULES)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class SpecFacts:
    """What the scheduler reads from a version's spec on every change, parsed once. Equal facts are one shared object
    (``of``), so that the thousands of models made alike cost one of these, not one each."""

    desired_replicas: int
    min_replicas: int
    memory_bytes: int  # what one replica commits to the model (memory x instances)
    requirements: frozenset[str]
    server_pin: str | None
    explainer: bool
    clean_topics_on_delete: bool
    # An inline storage config is held (and, when not the marker, its credentials, which are never stored).
    inline_config: bool
    credentials_in_clear: bool

    # The shared facts by their fields' values: a tuple is hashed and compared in C, so a version made like one before
    # (every restored model, most loads) costs the lookup, not a new object (~3 of the ~7 us of ``of``).
    _shared: ClassVar[weakref.WeakValueDictionary[tuple[object, ...], SpecFacts]] = weakref.WeakValueDictionary()

    @classmethod
    def of(cls, model: pb.Model) -> SpecFacts:
        spec = model.modelSpec
        inline = has_inline_config(model)
        deployment = model.deploymentSpec
        values = (
            deployment.replicas if model.HasField("deploymentSpec") else 1,  # desired_replicas
            deployment.minReplicas,
            memory_needed(model),
            frozenset(spec.requirements),
            spec.server if spec.HasField("server") else None,
            spec.WhichOneof("model_spec") == "explainer",
            model.dataflowSpec.cleanTopicsOnDelete,
            inline,
            inline and not is_redacted(spec.storageConfig.storageRcloneConfig),  # credentials_in_clear
        )
        shared = cls._shared.get(values)
        if shared is None:
            shared = cls._shared[values] = cls(*values)
        return shared


@dataclass(slots=True)
class ReplicaAssignment:
    state: ReplicaState = ReplicaState.UNKNOWN
    reason: str = ""
    changed_at: float = field(default_factory=time.time)
    # The operation sent to the replica for this assignment; its event must answer this one.
    operation_id: int = 0

    def fact(self) -> ReplicaFact:
        return ReplicaFact(self.state, self.reason, self.changed_at)


class ModelVersion:
    """One version of a model: its spec (kept serialised; module docstring), its replica assignments and the state
    derived from them."""

    __slots__ = (
        "_spec",
        "_stored",
        "created_at",
        "derived",
        "gateway_reason",
        "gateway_state",
        "index",
        "name",
        "replicas",
        "schedule_failure",
        "server_deaths",
        "spec_facts",
        "state_changed_at",
        "version",
    )

    def __init__(self, version: int, spec: pb.Model, created_at: float | None = None) -> None:
        self.version = version
        self._spec = b""
        self._stored = b""
        self.spec_facts: SpecFacts
        self.spec = spec
        self.created_at: float = time.time() if created_at is None else created_at
        self.replicas: dict[ReplicaKey, ReplicaAssignment] = {}
        # Why the last placement attempt failed; None once placement succeeds.
        self.schedule_failure: str | None = None
        self.derived: DerivedState = _NEW_VERSION_STATE
        self.state_changed_at: float = time.time()
        self.gateway_state: ModelState = ModelState.UNKNOWN
        self.gateway_reason = ""
        # Replicas whose inference server died while this version's load was in flight on it (its agent said so),
        # with the agent's reason: the load may have killed the server, so the version is not placed there again,
        # and enough of them fail it (models/cluster.py, the crash-loop guard). Observed state, not durable: a
        # LoadModel for the model (changed or not) clears it; capacity changes never do.
        self.server_deaths: dict[ReplicaKey, str] = {}
        # The cluster's index of assignments by replica (models/assignment_index.py) while this version is live:
        # every assignment gained or forgotten is reported to it. None before the version joins its record, and once
        # retired.
        self.index: AssignmentIndex | None = None

    @classmethod
    def restored(cls, version: int, stored_spec: bytes, created_at: float) -> ModelVersion:
        """A version read back from the store: its spec as stored (redacted), parsed once for its facts."""
        restored = cls.__new__(cls)
        cls.__init__(restored, version, pb.Model.FromString(stored_spec), created_at)
        return restored

    @property
    def spec(self) -> pb.Model:
        """The version's Model, with inline credentials if it holds them: a new message each time, for the caller to
        keep only while it needs it (changing it changes nothing here)."""
        return pb.Model.FromString(self._spec)

    @spec.setter
    def spec(self, model: pb.Model) -> None:
        self._spec = model.SerializeToString()
        # Interned: the record, its versions and the assignment index name the model with one string.
        self.name: str = sys.intern(model.meta.name)
        self.spec_facts = SpecFacts.of(model)
        # What is stored and shown: the same bytes unless inline credentials are to be withheld.
        clear = self.spec_facts.credentials_in_clear
        self._stored = redacted_model(model).SerializeToString() if clear else self._spec

    def take_spec_of(self, other: ModelVersion) -> None:
        """Hold ``other``'s spec from now on (a LoadModel that changed the spec but not the version)."""
        self._spec, self._stored, self.spec_facts = other._spec, other._stored, other.spec_facts
        self.name = other.name

    def kept_as(self, spec: pb.Model) -> bool:
        """The invariant of what is kept beside the serialised spec (checked by Cluster.check_invariants): its facts
        are ``spec``'s, and the stored form is ``spec`` with inline credentials redacted."""
        return self.spec_facts == SpecFacts.of(spec) and self._stored == redacted_model(spec).SerializeToString()

    @property
    def shown_spec(self) -> bytes:
        """The serialised spec as it may be stored and shown: an inline storage config redacted."""
        return self._stored

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
        return (self.name, self.version)

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

    def __repr__(self) -> str:
        return f"<ModelVersion {self.version} {self.derived.state.name} replicas={len(self.replicas)}>"


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
        return any(v.spec_facts.credentials_in_clear for v in self.versions)

    def to_bytes(self) -> bytes:
        """The durable part: specs of every version still present (redacted), and the deleted flag."""
        return state_pb2.ModelRecord(
            deleted=self.deleted,
            versions=[
                state_pb2.ModelVersionRecord(
                    version=v.version, created_at=v.created_at, spec=v.shown_spec, checked=spec_mark(v.shown_spec)
                )
                for v in self.versions
            ],
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> ModelRecord:
        """A stored record, in either form (module docstring). Raises ValueError (or KeyError, TypeError) if it
        cannot be read."""
        return cls.read_stored(name, data).record

    @classmethod
    def read_stored(cls, name: str, data: bytes) -> StoredModel:
        """``from_bytes``, and whether every spec in it carries the mark of its bytes under today's rules (module
        docstring)."""
        checked = False
        json_form = data[:1] == bytes([_JSON_RECORD])
        if json_form:
            versions = _versions_from_json(data)
            deleted = bool(json.loads(data)["deleted"])
        else:
            try:
                stored = state_pb2.ModelRecord.FromString(data)
                versions = []
                checked = True
                for entry in stored.versions:
                    spec = entry.spec
                    versions.append(ModelVersion.restored(entry.version, spec, entry.created_at))
                    checked = checked and entry.checked != 0 and entry.checked == spec_mark(spec)
            except Exception as error:  # protobuf's DecodeError and friends: the record is damaged
                raise ValueError(f"stored model {name!r} is not a model record: {error}") from None
            deleted = stored.deleted
        if not versions:
            raise ValueError(f"stored model {name!r} has no versions")
        return StoredModel(cls(name=name, versions=versions, deleted=deleted), checked, json_form)


class StoredModel(NamedTuple):
    """A model record read back from the store; ``checked``: every spec in it passed today's rules when written;
    ``json_form``: written as JSON, before the protobuf form (module docstring)."""

    record: ModelRecord
    checked: bool
    json_form: bool = False


def _versions_from_json(data: bytes) -> list[ModelVersion]:
    """The versions of a record written as JSON, each spec in hex (the form before the protobuf one)."""
    document = json.loads(data)
    return [
        ModelVersion(
            version=int(entry["version"]),
            spec=pb.Model.FromString(bytes.fromhex(entry["spec"])),
            created_at=float(entry["created_at"]),
        )
        for entry in document["versions"]
    ]
