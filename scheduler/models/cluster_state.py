"""The cluster's state and what every kind of change to it shares (the base of Cluster, scheduler/models/cluster.py).

The models and servers, what a change touched (for the caller to publish, persist and reconcile), the derived
states, the operations sent to replicas (load, unload) with their memory accounting, and the drains they finish.
The changes themselves live beside it: desired state in cluster.py, agents' reports in replica_lifecycle.py, the
reconcile (placement of versions, scale-in and scale-down) in version_placement.py.

The indexes, so that no change looks at every model or every replica (issue 14). Each is kept by one place and
checked against a full scan by ``Cluster.check_invariants``:
- ``assignments`` (models/assignment_index.py): replica -> the live model versions assigned there; kept by
  ``ModelVersion`` itself, which live versions report to (``_track`` makes a record's versions live, ``_untrack``
  retires one leaving its record). A change about one replica looks at its models only.
- ``waiting_for_capacity``: the models that capacity appearing could help (``needs_capacity``), in the order they
  began waiting. Kept by ``_derive`` (every change of what it depends on re-derives the latest version) and
  ``_forget_model``. New capacity asks the reconciler to try them once on its next round (``Touched.capacity``),
  instead of marking each of them at every registration.
- ``unclaimed_holders``: model name -> replicas holding it unclaimed (a new leader's holdings of models it does not
  know yet), so a LoadModel claims them without asking every replica; kept with each replica's ``unclaimed`` by
  ``_hold_unclaimed``, ``claim_unclaimed``, ``release_unclaimed`` and ``_drop_replica``.
- each server's ``by_free_memory`` (models/free_memory_order.py): its replicas that may take a model (``_usable``),
  by free memory; kept by ``_refresh_free_memory``, which each replica's ledger calls on every change of its used
  memory, and which the changes of whether a replica is usable (its server down or serving, a drain, a new
  expected replica count, a registration) call.
- each server's capabilities (a count per capability over its replicas): kept by ``ServerRecord.add_replica`` and
  ``remove_replica``.

And one set that is not an index: ``unreported``, the models restored at start-up whose state no replica has
reported yet (``Cluster.restore`` fills it; ``take_touched`` takes out every model a change touched, whose status is
then published). Status streams leave these models out of their snapshots (scheduler/publishing.py): what they
would show is not known yet, and each is published once it is: when its replica's agent reports it, or at its first
reconcile, once the synchroniser has stopped waiting for the replicas (``VersionPlacement.reconcile``; the first
round of the reconcile loop reconciles every restored model, 200 at a time, so the models no replica reported are
published in those slices, never all in one go). Invariant: every name in it is a model, and none of its versions
is on a replica unless a change not yet taken touched it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec import limits
from modelplane.storage_secrets import redacted_model
from scheduler.models.assignment_index import AssignmentIndex
from scheduler.models.memory_ledger import AccountingError
from scheduler.models.model_records import ModelRecord, ModelVersion, ReplicaKey
from scheduler.models.model_state import DerivedState, ModelState, derive_live, derive_terminating
from scheduler.models.replica_state import INACTIVE, ReplicaState
from scheduler.models.server_records import ReplicaRecord, ServerRecord

log = logging.getLogger(__name__)
S = ReplicaState
Operation = agent_pb2.ModelOperation

# The crash-loop guard. An agent marks a failed load "the server died during it" (server_died_during_load): the
# load may have killed the server (a segfault, the OOM killer). The version is then never placed on that replica
# again, and once its loads were in flight at this many server deaths (each on another replica) it is ModelFailed
# and placed nowhere, until a LoadModel for it (changed or not) asks for another try. Capacity changes, which
# otherwise retry failed loads, never lift either: a server back from its death is new capacity, and placing the
# model there again is what would loop. Two, not one: a server may die of something else while a load is in
# flight on it, and one innocent model should get a second chance elsewhere.
SERVER_DEATHS_TO_FAIL = 2


@dataclass(slots=True)
class Touched:
    """What a change affected, for the caller to act on."""

    models: set[str] = field(default_factory=set)  # status to publish
    servers: set[str] = field(default_factory=set)  # status to publish
    durable_models: set[str] = field(default_factory=set)  # durable record changed (or removed)
    durable_servers: set[str] = field(default_factory=set)
    reconcile: dict[str, bool] = field(default_factory=dict)  # model -> retry failed placements too
    scaling: dict[str, int] = field(default_factory=dict)  # server -> replicas wanted
    # Deleted models dropped by this change, as they were last (every version Terminated): their
    # final status must still say so.
    removed: dict[str, ModelRecord] = field(default_factory=dict)
    # Capacity appeared or freed up: the models waiting for it (Cluster.waiting_for_capacity) get another try.
    capacity: bool = False

    def want_reconcile(self, name: str, *, retry_failed: bool = False) -> None:
        self.reconcile[name] = self.reconcile.get(name, False) or retry_failed


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    server: str
    index: int
    shared: bool
    capabilities: frozenset[str]
    total_memory: int
    overcommit_percent: int
    http_url: str
    grpc_target: str
    agent_id: str


class ClusterState:
    """The models and servers and the changes every part of the cluster makes to them alike."""

    def __init__(self) -> None:
        self.models: dict[str, ModelRecord] = {}
        self.servers: dict[str, ServerRecord] = {}
        self.touched = Touched()
        # A new leader whose term started from an empty store keeps what agents hold of models it does not know
        # yet, unclaimed, until the controller has re-sent them (see ReplicaLifecycle.release_unclaimed).
        self.holding_unknown = False
        # The indexes (see the module docstring).
        self.assignments = AssignmentIndex()
        self.waiting_for_capacity: dict[str, None] = {}
        self.unclaimed_holders: dict[str, dict[ReplicaKey, None]] = {}
        self.unreported: set[str] = set()  # see the module docstring

    def take_touched(self) -> Touched:
        touched, self.touched = self.touched, Touched()
        if self.unreported and touched.models:
            self.unreported.difference_update(touched.models)  # known now, and published by the caller
        return touched

    def _changed(self, record: ModelRecord, *, retry_failed: bool = False) -> None:
        self._derive_all(record)
        self.touched.models.add(record.name)
        self.touched.want_reconcile(record.name, retry_failed=retry_failed)

    def _capacity_changed(self) -> None:
        """Capacity appeared or freed up: every model not where it should be (``waiting_for_capacity``) gets another
        try on the reconciler's next round. Said once per change, whatever the number of models waiting."""
        self.touched.capacity = True

    def _track(self, record: ModelRecord) -> None:
        """``record`` is (or stays) the cluster's: its versions' assignments are indexed from now on."""
        for version in record.versions:
            version.join(self.assignments)

    def _untrack(self, version: ModelVersion) -> None:
        """``version`` leaves its record: what it still had on replicas is forgotten by the index."""
        version.retire()

    def _forget_model(self, record: ModelRecord) -> None:
        del self.models[record.name]
        for version in record.versions:
            version.retire()
        self.waiting_for_capacity.pop(record.name, None)

    def _derive_all(self, record: ModelRecord) -> None:
        # Latest first: whether older versions are terminating depends on it.
        for version in reversed(record.versions):
            self._derive(record, version)

    def _derive(self, record: ModelRecord, version: ModelVersion) -> None:
        derived = _derived_state(record, version)
        if derived != version.derived:
            if derived.state != version.derived.state:
                version.state_changed_at = time.time()
            version.derived = derived
            self.touched.models.add(record.name)
        if version is record.latest:
            # Everything needs_capacity reads changes before a re-derivation of the latest version follows.
            if needs_capacity(record):
                self.waiting_for_capacity[record.name] = None
            else:
                self.waiting_for_capacity.pop(record.name, None)

    def _versions_on(self, key: ReplicaKey) -> list[tuple[ModelRecord, ModelVersion]]:
        """The live model versions assigned on replica ``key`` (any state), from the index."""
        found = []
        for name, number in self.assignments.on(key):
            record = self.models.get(name)
            version = record.version(number) if record is not None else None
            if record is not None and version is not None:  # always, while the index keeps its invariant
                found.append((record, version))
        return found

    def _replica(self, key: ReplicaKey) -> ReplicaRecord | None:
        server = self.servers.get(key[0])
        return server.replicas.get(key[1]) if server else None

    def _usable(self, key: ReplicaKey) -> bool:
        """A replica that can keep or take models: connected, its server serving, staying."""
        replica = self._replica(key)
        return replica is not None and self._replica_usable(replica)

    def _replica_usable(self, replica: ReplicaRecord) -> bool:
        return replica.server_down is None and self._staying(replica)

    def _refresh_free_memory(self, replica: ReplicaRecord) -> None:
        """Its free memory, or whether it is usable, may have changed: its server's order of replicas follows."""
        server = self.servers.get(replica.server)
        if server is not None and server.replicas.get(replica.index) is replica:
            usable = self._replica_usable(replica)
            server.by_free_memory.update(replica.index, replica.ledger.free if usable else None)

    def _staying(self, replica: ReplicaRecord) -> bool:
        """Not draining, and not beyond the server's expected replica count (being scaled away)."""
        server = self.servers[replica.server]
        if replica.draining:
            return False
        return server.expected_replicas is None or replica.index < server.expected_replicas

    def _load(self, replica: ReplicaRecord, record: ModelRecord, version: ModelVersion) -> None:
        version.set_replica(replica.key, S.LOAD_REQUESTED)
        self._commit_memory(replica, record.name, version)
        operation_id = self._send(replica, Operation.KIND_LOAD, version.spec, version.version)
        version.set_replica(replica.key, S.LOADING)
        version.replicas[replica.key].operation_id = operation_id
        self.touched.servers.add(replica.server)

    def _unload(self, replica: ReplicaRecord, record: ModelRecord, version: ModelVersion) -> None:
        state = version.state_of(replica.key)
        if state == S.LOAD_REQUESTED:
            version.set_replica(replica.key, S.UNLOADED)
            replica.ledger.release((record.name, version.version))
            return
        version.set_replica(replica.key, S.UNLOAD_REQUESTED)
        operation_id = self._send(replica, Operation.KIND_UNLOAD, version.spec, version.version)
        version.set_replica(replica.key, S.UNLOADING)
        version.replicas[replica.key].operation_id = operation_id
        self.touched.servers.add(replica.server)

    def _send(
        self, replica: ReplicaRecord, kind: agent_pb2.ModelOperation.Kind.ValueType, model: pb.Model, version: int
    ) -> int:
        if kind != Operation.KIND_LOAD:
            model = redacted_model(model)  # only a load needs the credentials (modelplane/storage_secrets.py)
        operation = Operation(operation_id=replica.session.next_operation_id(), kind=kind, model=model, version=version)
        replica.session.send(agent_pb2.SessionResponse(operation=operation))
        return operation.operation_id

    def _commit_memory(self, replica: ReplicaRecord, name: str, version: ModelVersion) -> None:
        try:
            replica.ledger.commit((name, version.version), version.spec_facts.memory_bytes)
        except AccountingError:
            log.exception("memory accounting refused %s:%d on %s/%d", name, version.version, *replica.key)
            raise

    def _check_drains(self, keys: Iterable[ReplicaKey]) -> None:
        """Answer the drains of these replicas that are over. A drain ends only by a change of an assignment on
        its replica, or by a reconcile of a model assigned there: the callers pass those replicas only."""
        for key in keys:
            replica = self._replica(key)
            if replica is not None and replica.draining and not replica.drain_reported:
                self._maybe_finish_drain(replica)

    def _maybe_finish_drain(self, replica: ReplicaRecord) -> None:
        unplaced: list[str] = []
        for record, version in self._versions_on(replica.key):
            state = version.state_of(replica.key)
            if state in INACTIVE or state == S.UNLOAD_FAILED:
                continue
            stuck = state in (S.DRAINING, S.LOADED_UNAVAILABLE)
            if stuck and version is record.latest and version.schedule_failure:
                unplaced.append(record.name)  # nowhere else to go: it serves here until the agent leaves
                continue
            return  # still moving
        replica.drain_reported = True
        replica.session.send(
            agent_pb2.SessionResponse(drain_complete=agent_pb2.DrainComplete(unplaced_models=sorted(unplaced)))
        )


def needs_capacity(record: ModelRecord) -> bool:
    """Whether new capacity could help ``record``: being deleted, not available, its placement failed, or fewer
    replicas serving than it wants."""
    latest = record.latest
    return (
        record.deleted
        or latest.derived.state != ModelState.AVAILABLE
        or bool(latest.schedule_failure)
        or latest.derived.available_replicas < latest.spec_facts.desired_replicas
    )


def _derived_state(record: ModelRecord, version: ModelVersion) -> DerivedState:
    # An older version keeps its live state (and keeps serving) until the latest is available.
    superseded = version is not record.latest and record.latest.derived.state == ModelState.AVAILABLE
    if record.deleted or superseded:
        return derive_terminating(version.facts())
    if not version.replicas and version.schedule_failure is None and not version.server_deaths:
        # Held nowhere and never tried (every version a restart restores): one of a few states, derived once each.
        return _derived_unplaced(
            version.spec_facts.desired_replicas,
            version.spec_facts.min_replicas,
            any(v.serving > 0 for v in record.versions[:-1]),
        )
    return derive_live(
        version.facts(),
        desired=version.spec_facts.desired_replicas,
        min_replicas=version.spec_facts.min_replicas,
        previous_available=any(v.serving > 0 for v in record.versions[:-1]),
        schedule_failure=version.schedule_failure,
        failure=_crash_loop_failure(version),
    )


@functools.lru_cache(maxsize=256)
def _derived_unplaced(desired: int, min_replicas: int, previous_available: bool) -> DerivedState:
    """``derive_live`` of a version with no replica, no placement failure and no crash-loop failure."""
    return derive_live(
        (), desired=desired, min_replicas=min_replicas, previous_available=previous_available, schedule_failure=None
    )


def _crash_loop_failure(version: ModelVersion) -> str | None:
    """Why the crash-loop guard failed ``version`` (SERVER_DEATHS_TO_FAIL), or None while it has not."""
    deaths = version.server_deaths
    if len(deaths) < SERVER_DEATHS_TO_FAIL:
        return None
    where = ", ".join(f"{server}/{index}" for server, index in deaths)
    last = next(reversed(deaths.values()))
    return limits.clean_reason(
        f"its load killed its server {len(deaths)} times (replicas {where}): it may crash any server it loads on, "
        f"so it is placed nowhere until its spec changes or LoadModel is sent for it again; last: {last}"
    )


def _down_reason(replica: ReplicaRecord) -> str:
    return f"server {replica.server} replica {replica.index} is down: {replica.server_down}"
