"""The scheduler's in-memory state of models and servers, and every synchronous change to it.

Every method here runs to completion without awaiting, so on the event loop each one is atomic: no
other change can interleave, which makes each model's reconcile single-flight by construction.
Methods record what they touched in ``self.touched`` for the caller (SchedulerCore) to publish,
persist and reconcile; nothing here does I/O except queueing agent operations.

Invariants (``check_invariants`` verifies them; tests call it after every step):
- each replica's memory ledger holds exactly the model versions whose assignment on it is in a
  memory-holding state, each once, and ``used`` is their sum (never negative);
- an assignment's state changes only along the replica state table, and every assignment is on a
  connected replica;
- a model's derived state is recomputed whenever one of its assignments or its desired state changes,
  so it always equals what its replicas say;
- every record is one a request could have made: versions rising within 1..MAX_VERSION (a uint32), at
  most MAX_MODEL_VERSIONS of them, specs that pass validation, reasons within their limits; so every
  model's and server's status renders and fits a default client (scheduler/limits.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.storage_secrets import redacted_model
from scheduler import limits, status_messages
from scheduler.errors import FailedPrecondition, IllegalTransition, ResourceExhausted
from scheduler.invariants import require
from scheduler.models import model_specs, server_specs
from scheduler.models.memory_ledger import AccountingError
from scheduler.models.model_records import ModelRecord, ModelVersion, ReplicaKey
from scheduler.models.model_state import DerivedState, ModelState, derive_live, derive_terminating
from scheduler.models.replica_state import (
    FAILED,
    HOLDS_MEMORY,
    INACTIVE,
    SERVING,
    UNLOADING_STATES,
    WANTED,
    ReplicaState,
)
from scheduler.models.server_records import OperationSink, ReplicaRecord, ServerRecord
from scheduler.placement import PlacementRequest, ReplicaView, ServerView, place

log = logging.getLogger(__name__)
S = ReplicaState
Event = agent_pb2.ModelEvent
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


class Cluster:
    def __init__(self) -> None:
        self.models: dict[str, ModelRecord] = {}
        self.servers: dict[str, ServerRecord] = {}
        self.touched = Touched()

    def take_touched(self) -> Touched:
        touched, self.touched = self.touched, Touched()
        return touched

    # ----------------------------------------------------------------- restore

    def restore(self, models: Iterable[ModelRecord], servers: Iterable[ServerRecord]) -> None:
        """Load durable state after a restart: desired state only; replicas come back with agents.

        Stored records pass the same checks as requests (a record written by an older scheduler, or damaged,
        must not break anything): what fails them is left out and logged; the store keeps it untouched.
        """
        for server in servers:
            problem = server_specs.stored_server_problem(server)
            if problem is not None:
                log.error("cannot use stored server %s (%s); skipping it", limits.shown(server.name), problem)
                continue
            self.servers[server.name] = server
        for stored in models:
            record = model_specs.usable_record(stored)
            if record is None:
                continue
            self.models[record.name] = record
            self._derive_all(record)
            self.touched.want_reconcile(record.name, retry_failed=True)

    # ----------------------------------------------------------------- desired state: models

    def prepare_load(self, model: pb.Model) -> tuple[model_specs.SpecChange, ModelRecord | None]:
        """What a LoadModel would change, without changing anything: (kind of change, the durable
        record to write first, or None when nothing changes). Raises FailedPrecondition."""
        name = model.meta.name
        record = self.models.get(name)
        if record is None:
            return model_specs.SpecChange.NEW_VERSION, ModelRecord(
                name, [ModelVersion(model_specs.first_version(model), _copy(model))]
            )
        if record.deleted:
            raise FailedPrecondition(
                f"model {name!r} is in process of deletion: load it again once it is terminated "
                f"({self._active_count(record)} replica assignment(s) still unloading)"
            )
        change = model_specs.classify_change(record.latest.spec, model)
        if change is model_specs.SpecChange.UNCHANGED:
            return change, None
        if change is model_specs.SpecChange.NEW_VERSION:
            version = ModelVersion(model_specs.next_version(name, record.latest.version), _copy(model))
            return change, ModelRecord(name, [*_versions_to_keep(record), version])
        patched = ModelVersion(record.latest.version, _copy(model), record.latest.created_at)
        return change, ModelRecord(name, [*record.versions[:-1], patched])

    def retry_placement(self, name: str) -> None:
        """An unchanged LoadModel: the desired state stays as it is, but, as in Seldon's scheduler, asking again
        places the model again, so a load that failed (its artifact store was down, say) is retried once its
        cause is gone. A model that serves where it should is left alone by the reconcile."""
        if name in self.models:
            self._forgive_server_deaths(self.models[name])
            self.touched.want_reconcile(name, retry_failed=True)

    def apply_load(self, change: model_specs.SpecChange, prepared: ModelRecord) -> None:
        """Make a prepared LoadModel live (after it has been written durably)."""
        name = prepared.name
        record = self.models.get(name)
        if record is None or change is model_specs.SpecChange.NEW_VERSION:
            if record is None:
                self.models[name] = prepared
            else:
                # The record written is the one that counts. Versions prepare_load dropped (inactive then, to stay
                # within MAX_MODEL_VERSIONS) go, even one an agent reported while the record was being written (it
                # connected holding it): keeping it would pass the limit, and the replica would be told to unload
                # it anyway once the scheduler restarts, so it is told now.
                kept = {id(version) for version in prepared.versions}
                for version in record.versions:
                    if id(version) not in kept:
                        self._unload_dropped(name, version)
                record.versions[:] = [*(v for v in record.versions if id(v) in kept), prepared.latest]
                if len(record.versions) != len(prepared.versions):
                    self.touched.durable_models.add(name)  # a version kept was forgotten meanwhile
        else:
            # Same version, new spec: keep its replicas and observed state, replace what was asked for.
            record.latest.spec = prepared.latest.spec
        self._forgive_server_deaths(self.models[name])
        # The derived states follow at once (replicas wanted may have changed), not only after the reconcile.
        self._derive_all(self.models[name])
        self.touched.models.add(name)
        self.touched.want_reconcile(name, retry_failed=True)

    def _forgive_server_deaths(self, record: ModelRecord) -> None:
        """A LoadModel lifts the crash-loop guard (see SERVER_DEATHS_TO_FAIL): the user asks for another try."""
        if record.latest.server_deaths:
            record.latest.server_deaths.clear()
            self._derive_all(record)
            self.touched.models.add(record.name)

    def _unload_dropped(self, name: str, version: ModelVersion) -> None:
        """``version`` is leaving its model's record: its replicas stop counting its memory and unload it. Their
        answers then find no such version, which is how an unload of a version already forgotten ends."""
        for key, assignment in version.replicas.items():
            replica = self._replica(key)
            if replica is None or assignment.state in INACTIVE:
                continue
            if assignment.state in HOLDS_MEMORY:
                replica.ledger.release((name, version.version))
            if assignment.state not in UNLOADING_STATES:
                log.info(
                    "replica %s/%d holds %s:%d, which is no longer wanted: unloading it", *key, name, version.version
                )
                self._send(replica, Operation.KIND_UNLOAD, version.spec, version.version)
            self.touched.servers.add(replica.server)

    def prepare_unload(self, name: str) -> ModelRecord:
        """The durable record of ``name`` marked deleted. Raises FailedPrecondition for unknown models."""
        record = self.models.get(name)
        if record is None:
            # Seldon's clients read FAILED_PRECONDITION as "do not retry"; an unknown model is final.
            raise FailedPrecondition(f"model {name!r} not found")
        return ModelRecord(name, list(record.versions), deleted=True)

    def apply_unload(self, name: str) -> None:
        record = self.models[name]
        record.deleted = True
        self._derive_all(record)  # Terminating at once: the status published now must not say otherwise
        self.touched.models.add(name)
        self.touched.want_reconcile(name)

    # ----------------------------------------------------------------- desired state: servers

    def notify_server(self, notify: pb.ServerNotify) -> None:
        server = self.servers.setdefault(notify.name, ServerRecord(notify.name))
        server.expected_replicas = notify.expectedReplicas
        server.min_replicas = notify.minReplicas
        server.max_replicas = notify.maxReplicas
        server.shared = notify.shared
        if notify.HasField("kubernetesMeta"):
            server.kubernetes_namespace = notify.kubernetesMeta.namespace
            server.kubernetes_generation = notify.kubernetesMeta.generation
        self.touched.servers.add(server.name)
        self.touched.durable_servers.add(server.name)
        # Expected counts decide which replicas may keep models: every model on the server is affected.
        for name, record in self.models.items():
            if any(key[0] == server.name for version in record.versions for key in version.replicas):
                self.touched.want_reconcile(name, retry_failed=True)
        self._capacity_changed()

    # ----------------------------------------------------------------- agents

    def register_replica(
        self,
        config: ReplicaConfig,
        loaded: Sequence[agent_pb2.LoadedModel],
        session: OperationSink,
        *,
        server_down: str | None = None,
    ) -> None:
        """A replica's agent connected. Models it already holds become Available without a reload (or
        LoadedUnavailable while its server is down, ``server_down`` saying why)."""
        server = self.servers.get(config.server)
        if server is None:
            server = self.servers[config.server] = ServerRecord(config.server, shared=config.shared)
        elif server.expected_replicas is None:
            server.shared = config.shared  # no controller has said: the agent's word stands
        if config.index in server.replicas:
            log.warning("replica %s/%d registered again: replacing its earlier session", config.server, config.index)
            earlier = server.replicas[config.index]
            earlier.session.close("replaced by a newer registration of the same replica")
            self._drop_replica(server, earlier)
        replica = ReplicaRecord(
            server=config.server,
            index=config.index,
            capabilities=config.capabilities,
            total_memory=config.total_memory,
            overcommit_percent=config.overcommit_percent,
            http_url=config.http_url,
            grpc_target=config.grpc_target,
            session=session,
            agent_id=config.agent_id,
            server_down=None if server_down is None else limits.clean_reason(server_down),
        )
        server.replicas[config.index] = replica
        if config.index + 1 > server.seen_replicas:
            server.seen_replicas = config.index + 1
            self.touched.durable_servers.add(server.name)
        for held in loaded:
            self._adopt(replica, held)
        self.touched.servers.add(server.name)
        self._capacity_changed()

    def _adopt(self, replica: ReplicaRecord, held: agent_pb2.LoadedModel) -> None:
        record = self.models.get(held.name)
        version = record.version(held.version) if record else None
        if version is not None and version.state_of(replica.key) != S.UNKNOWN:
            return  # reported twice in one registration
        if record is None or version is None or record.deleted:
            log.info(
                "replica %s/%d holds %s:%d, which is not wanted: unloading it", *replica.key, held.name, held.version
            )
            orphan = pb.Model(meta=pb.MetaData(name=held.name))
            self._send(replica, Operation.KIND_UNLOAD, orphan, held.version)
            return
        if replica.server_down is None:
            version.set_replica(replica.key, S.AVAILABLE, "held by the replica when its agent connected")
        else:
            version.set_replica(replica.key, S.LOADED_UNAVAILABLE, _down_reason(replica))
        self._commit_memory(replica, record.name, version)
        self._changed(record)

    def replica_gone(self, server_name: str, index: int, session: OperationSink) -> None:
        """A replica's session ended (disconnect, missed heartbeats, agent exit)."""
        server = self.servers.get(server_name)
        replica = server.replicas.get(index) if server else None
        if server is None or replica is None or replica.session is not session:
            return  # already replaced by a newer session of the same replica
        self._drop_replica(server, replica)
        self.touched.servers.add(server_name)

    def _drop_replica(self, server: ServerRecord, replica: ReplicaRecord) -> None:
        del server.replicas[replica.index]
        for record in self.models.values():
            for version in record.versions:
                if version.replicas.pop(replica.key, None) is not None:
                    self._changed(record, retry_failed=True)
        self._check_drains()

    def server_health(
        self,
        server_name: str,
        index: int,
        session: OperationSink,
        *,
        serving: bool,
        reason: str,
        loaded: Sequence[agent_pb2.LoadedModel],
    ) -> None:
        """A replica's agent says its inference server stopped serving (``reason``), or serves again holding
        ``loaded``. See agent.proto's file comment for what each means to the replica's assignments."""
        server = self.servers.get(server_name)
        replica = server.replicas.get(index) if server else None
        if replica is None or replica.session is not session:
            return
        if serving:
            self._server_serving(replica, loaded)
        else:
            self._server_down(replica, limits.clean_reason(reason) or "its agent gave no reason")
        self.touched.servers.add(server_name)
        self._capacity_changed()
        self._check_drains()

    def _server_down(self, replica: ReplicaRecord, reason: str) -> None:
        replica.server_down = reason
        why = _down_reason(replica)
        for record in self.models.values():
            for version in record.versions:
                state = version.state_of(replica.key)
                if state == S.LOADED_UNAVAILABLE:
                    version.set_reason(replica.key, why)  # still down, for a new reason (e.g. a failed restart)
                elif state in (S.LOADED, S.AVAILABLE, S.DRAINING):
                    version.set_replica(replica.key, S.LOADED_UNAVAILABLE, why)
                else:
                    continue  # loads and unloads in flight end with the agent's events
                self._changed(record, retry_failed=True)

    def _server_serving(self, replica: ReplicaRecord, loaded: Sequence[agent_pb2.LoadedModel]) -> None:
        replica.server_down = None
        held = {(model.name, model.version) for model in loaded}
        for record in self.models.values():
            for version in record.versions:
                if version.state_of(replica.key) != S.LOADED_UNAVAILABLE:
                    continue
                if (record.name, version.version) in held:
                    version.set_replica(replica.key, S.AVAILABLE, "its server serves again")
                    if replica.draining:
                        version.set_replica(replica.key, S.DRAINING, "replica is draining")
                else:
                    version.set_replica(replica.key, S.UNLOADED, "its server came back without it")
                    replica.ledger.release((record.name, version.version))
                    version.forget_inactive()
                self._changed(record, retry_failed=True)
        for model in loaded:
            self._adopt(replica, model)  # held but not assigned here: adopted if wanted, else unloaded

    def drain_replica(self, server_name: str, index: int, session: OperationSink) -> None:
        """The agent asked to leave: move its models elsewhere, then answer DrainComplete."""
        server = self.servers.get(server_name)
        replica = server.replicas.get(index) if server else None
        if replica is None or replica.session is not session:
            return
        replica.draining = True
        for record in self.models.values():
            for version in record.versions:
                state = version.state_of(replica.key)
                if state == S.AVAILABLE:
                    version.set_replica(replica.key, S.DRAINING, "replica is draining")
                    self._changed(record)
                elif state in (S.LOADING, S.LOADED):
                    self._unload(replica, record, version)
        self.touched.servers.add(server_name)
        self._check_drains()

    def model_event(self, server_name: str, index: int, session: OperationSink, event: Event) -> str | None:
        """Apply an agent's event, compare-and-set on the state the scheduler expects.

        Returns None when applied, or why it was rejected (the caller logs it and tells the agent).
        """
        server = self.servers.get(server_name)
        replica = server.replicas.get(index) if server else None
        if replica is None or replica.session is not session:
            problem: str | None = "the session no longer owns this replica"
        else:
            problem = model_specs.event_problem(event)  # a malformed name or version
        if replica is None or problem is not None:
            return problem
        record = self.models.get(event.model_name)
        version = record.version(event.model_version) if record else None
        if record is None or version is None or (record.deleted and event.kind == Event.KIND_LOADED):
            if event.kind in (Event.KIND_UNLOADED, Event.KIND_UNLOAD_FAILED):
                return None  # an unload of something already forgotten: nothing to do
            if event.kind == Event.KIND_LOADED:  # loaded but not wanted: take it off the replica again
                self._send(
                    replica,
                    Operation.KIND_UNLOAD,
                    pb.Model(meta=pb.MetaData(name=event.model_name)),
                    event.model_version,
                )
            return f"unknown model version {event.model_name}:{event.model_version}"
        expected, new, reason = _event_transition(event)
        mismatch = _mismatch(record.name, version, replica.key, event, expected)
        if mismatch is not None:
            return mismatch
        reason = _note_server_death(record.name, version, replica.key, event, reason)
        try:
            version.set_replica(replica.key, new, reason)
            if new == S.LOADED and replica.server_down is None:
                version.set_replica(replica.key, S.AVAILABLE)
            elif new == S.LOADED:  # loaded just before the server went down, as the agent reported first
                version.set_replica(replica.key, S.LOADED_UNAVAILABLE, _down_reason(replica))
        except IllegalTransition as error:  # the table and the event map disagree: a bug, reported
            return str(error)
        if new not in HOLDS_MEMORY:
            replica.ledger.release((record.name, version.version))
        if new == S.UNLOADED:
            version.forget_inactive()
            self._capacity_changed()
        self._changed(record)
        self.touched.servers.add(server_name)
        self._check_drains()
        return None

    # ----------------------------------------------------------------- reconcile

    def reconcile(self, name: str, *, retry_failed: bool) -> None:
        """Bring one model's assignments towards its desired state. Synchronous, hence single-flight."""
        record = self.models.get(name)
        if record is None:
            return
        if record.deleted:
            for version in record.versions:
                self._unload_all(record, version, retry_failed=retry_failed)
        else:
            self._place_latest(record, retry_failed=retry_failed)
            self._derive(record, record.latest)
            if record.latest.derived.state == ModelState.AVAILABLE:
                for old in record.versions[:-1]:
                    self._unload_all(record, old, retry_failed=retry_failed)
            self._unload_draining(record)
        self._changed(record)
        self._forget_finished(record)
        self._check_drains()
        # This pass has done what the model's own changes asked for; only new events ask again.
        self.touched.reconcile.pop(name, None)

    def _place_latest(self, record: ModelRecord, *, retry_failed: bool) -> None:
        version = record.latest
        if len(version.server_deaths) >= SERVER_DEATHS_TO_FAIL:
            return  # the crash-loop guard failed it: placed nowhere until a LoadModel (SERVER_DEATHS_TO_FAIL)
        spec = version.spec
        desired = model_specs.desired_replicas(spec)
        healthy = [key for key in version.keys_in(WANTED) if self._usable(key)]
        if len(healthy) > desired:
            self._scale_in(record, version, healthy, desired)
            return
        if len(healthy) == desired and len({server for server, _ in healthy}) <= 1:
            version.schedule_failure = None
            return
        if version.keys_in(FAILED) and not retry_failed:
            return  # a failed load is retried when capacity changes, not in a tight loop
        current = healthy[0][0] if healthy else _serving_server(record)
        request = PlacementRequest(
            model=record.name,
            version=version.version,
            memory_bytes=model_specs.memory_needed(spec),
            requirements=model_specs.requirements(spec),
            server_pin=spec.modelSpec.server if spec.modelSpec.HasField("server") else None,
            replicas=desired,
            min_replicas=model_specs.min_replicas(spec),
            is_explainer=model_specs.is_explainer(spec),
            current_server=current,
        )
        decision = place(request, self._views(record.name, version))
        if not decision.ok:
            version.schedule_failure = decision.failure
            log.info("cannot place %s:%d: %s", record.name, version.version, decision.failure)
            return
        version.schedule_failure = None
        if decision.server is None:
            return
        server = self.servers[decision.server]
        chosen = {(decision.server, index) for index in decision.replicas}
        for key in version.keys_in(frozenset({S.LOAD_FAILED})):
            if key not in chosen:  # retried elsewhere: the old failure no longer describes the model
                version.set_replica(key, S.UNLOADED)
        version.forget_inactive()
        for index in decision.replicas:
            key = (decision.server, index)
            if key not in healthy:
                self._load(server.replicas[index], record, version)
        if decision.scale_up_to is not None:
            self.touched.scaling[decision.server] = decision.scale_up_to

    def _scale_in(self, record: ModelRecord, version: ModelVersion, healthy: list[ReplicaKey], desired: int) -> None:
        # Give up the replicas that serve least first: not yet serving, then the highest index.
        ordered = sorted(healthy, key=lambda key: (version.state_of(key) in SERVING, -key[1]))
        for key in ordered[: len(healthy) - desired]:
            self._unload(self.servers[key[0]].replicas[key[1]], record, version)

    def _unload_draining(self, record: ModelRecord) -> None:
        """Unload from replicas that are leaving (draining, or beyond the server's expected count)
        once the model serves elsewhere; until then they keep serving, so a move never drops traffic."""
        latest = record.latest
        serving_elsewhere = any(latest.state_of(key) in SERVING and self._usable(key) for key in latest.replicas)
        for version in record.versions:
            for key in version.keys_in(WANTED | {S.DRAINING}):
                if self._usable(key):
                    continue
                if version is not latest or serving_elsewhere:
                    replica = self._replica(key)
                    if replica is not None:
                        self._unload(replica, record, version)

    def _unload_all(self, record: ModelRecord, version: ModelVersion, *, retry_failed: bool) -> None:
        for key, assignment in list(version.replicas.items()):
            if assignment.state in INACTIVE or assignment.state in UNLOADING_STATES:
                continue
            if assignment.state == S.UNLOAD_FAILED and not retry_failed:
                continue  # retried when capacity changes, not in a tight loop
            replica = self._replica(key)
            if replica is None:
                del version.replicas[key]
            else:
                self._unload(replica, record, version)

    # ----------------------------------------------------------------- operations

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
            replica.ledger.commit((name, version.version), model_specs.memory_needed(version.spec))
        except AccountingError:
            log.exception("memory accounting refused %s:%d on %s/%d", name, version.version, *replica.key)
            raise

    # ----------------------------------------------------------------- derived state

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

    def _forget_finished(self, record: ModelRecord) -> None:
        """Drop terminated old versions, and deleted models once nothing of them is left anywhere."""
        if record.deleted:
            if all(version.inactive for version in record.versions):
                del self.models[record.name]
                self.touched.durable_models.add(record.name)
                self.touched.models.add(record.name)
                self.touched.removed[record.name] = record
            return
        if record.latest.derived.state != ModelState.AVAILABLE:
            return
        kept = [v for v in record.versions[:-1] if not v.inactive]
        if len(kept) != len(record.versions) - 1:
            record.versions[:-1] = kept
            self.touched.durable_models.add(record.name)

    # ----------------------------------------------------------------- helpers

    def _changed(self, record: ModelRecord, *, retry_failed: bool = False) -> None:
        self._derive_all(record)
        self.touched.models.add(record.name)
        self.touched.want_reconcile(record.name, retry_failed=retry_failed)

    def _capacity_changed(self) -> None:
        """Capacity appeared or freed up: every model not where it should be gets another try."""
        for name, record in self.models.items():
            latest = record.latest
            if (
                record.deleted
                or latest.derived.state != ModelState.AVAILABLE
                or latest.schedule_failure
                or latest.derived.available_replicas < model_specs.desired_replicas(latest.spec)
            ):
                self.touched.want_reconcile(name, retry_failed=True)

    def _replica(self, key: ReplicaKey) -> ReplicaRecord | None:
        server = self.servers.get(key[0])
        return server.replicas.get(key[1]) if server else None

    def _usable(self, key: ReplicaKey) -> bool:
        """A replica that can keep or take models: connected, its server serving, staying."""
        replica = self._replica(key)
        return replica is not None and replica.server_down is None and self._staying(replica)

    def _staying(self, replica: ReplicaRecord) -> bool:
        """Not draining, and not beyond the server's expected replica count (being scaled away)."""
        server = self.servers[replica.server]
        if replica.draining:
            return False
        return server.expected_replicas is None or replica.index < server.expected_replicas

    def _views(self, name: str, version: ModelVersion) -> list[ServerView]:
        views = []
        for server in self.servers.values():
            replicas = tuple(
                ReplicaView(
                    index=replica.index,
                    capabilities=replica.capabilities,
                    capacity_bytes=replica.ledger.capacity,
                    used_bytes=replica.ledger.used,
                    draining=not self._staying(replica),
                    holds_model=version.state_of(replica.key) in WANTED,
                    server_down=replica.server_down is not None,
                    server_died_loading=replica.key in version.server_deaths,
                )
                for replica in server.replicas.values()
            )
            views.append(
                ServerView(
                    name=server.name,
                    shared=server.shared,
                    expected_replicas=server.expected_replicas,
                    max_replicas=server.max_replicas,
                    capabilities=server.capabilities,
                    replicas=replicas,
                )
            )
        return views

    def _active_count(self, record: ModelRecord) -> int:
        return sum(1 for v in record.versions for a in v.replicas.values() if a.state not in INACTIVE)

    def _check_drains(self) -> None:
        for server in self.servers.values():
            for replica in server.replicas.values():
                if replica.draining and not replica.drain_reported:
                    self._maybe_finish_drain(replica)

    def _maybe_finish_drain(self, replica: ReplicaRecord) -> None:
        unplaced: list[str] = []
        for record in self.models.values():
            for version in record.versions:
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

    def _check_record(self, name: str, record: ModelRecord) -> None:
        require(record.name == name, f"model {name!r} holds the record of {record.name!r}")
        numbers = [version.version for version in record.versions]
        require(bool(numbers), f"model {name!r} has no versions")
        require(numbers == sorted(set(numbers)), f"model {name!r}: versions {numbers} do not rise")
        require(all(1 <= n <= limits.MAX_VERSION for n in numbers), f"model {name!r}: versions {numbers}")
        require(len(numbers) <= limits.MAX_MODEL_VERSIONS, f"model {name!r} keeps {len(numbers)} versions")
        for version in record.versions:
            model_specs.validate_spec(version.spec)
            require(version.spec.meta.name == name, f"model {name!r}: version {version.version} is another's")
            require(
                version.derived == _derived_state(record, version),
                f"{name}:{version.version}: state {version.derived} is not {_derived_state(record, version)}",
            )
            _check_reason(version.schedule_failure, f"{name}:{version.version} placement")
            _check_reason(version.gateway_reason, f"{name}:{version.version} gateway")
            for key, assignment in version.replicas.items():
                require(self._replica(key) is not None, f"{name}:{version.version} is on {key}, not connected")
                _check_reason(assignment.reason, f"{name}:{version.version} on {key}")
        status = status_messages.render_model_status(record, all_versions=True)
        require(status.ByteSize() <= limits.MAX_STATUS_BYTES, f"model {name!r}: status too large")

    def request_scale_downs(self, now: float, idle_seconds: float) -> None:
        """Ask to scale servers down when replicas have held nothing for ``idle_seconds``.

        A server never goes below max(minReplicas, 1), and only idle replicas count, so the request can
        be met by removing replicas that serve nothing.
        """
        for server in self.servers.values():
            idle = 0
            for replica in server.replicas.values():
                if len(replica.ledger):
                    replica.empty_since = None
                else:
                    replica.empty_since = replica.empty_since or now
                    idle += now - replica.empty_since >= idle_seconds
            floor = max(server.min_replicas, 1)
            wanted = max(floor, len(server.replicas) - idle)
            if wanted < len(server.replicas) and wanted != server.scale_down_requested:
                server.scale_down_requested = wanted
                self.touched.scaling[server.name] = wanted
            elif wanted >= len(server.replicas):
                server.scale_down_requested = None

    def check_invariants(self) -> None:
        """Raise AccountingError/InvariantError if any invariant is broken. For tests and debugging.

        Beyond the ledgers (see the module docstring): every record renders and its status fits a client;
        version numbers rise within 1..MAX_VERSION, at most MAX_MODEL_VERSIONS of them; every spec passes the
        checks a request passes; every derived state is what its replicas say; every assignment is on a
        connected replica; stored reasons are within their limit.
        """
        for name, record in self.models.items():
            self._check_record(name, record)
        for name, server in self.servers.items():
            require(server.name == name, f"server {name!r} holds the record of {server.name!r}")
            require(server_specs.stored_server_problem(server) is None, f"server {name!r}: bad record")
            status = status_messages.render_server_status(server)
            require(status.ByteSize() <= limits.MAX_STATUS_BYTES, f"server {name!r}: status too large")
        for server in self.servers.values():
            for replica in server.replicas.values():
                replica.ledger.check()
                holding = {
                    (record.name, version.version)
                    for record in self.models.values()
                    for version in record.versions
                    if version.state_of(replica.key) in HOLDS_MEMORY
                }
                if len(holding) != len(replica.ledger) or not all(replica.ledger.holds(k) for k in holding):
                    raise AccountingError(f"replica {replica.key}: ledger does not match its assignments")


def _check_reason(text: str | None, where: str) -> None:
    # A cleaned reason may carry a prefix and the note of how much was cut; twice the limit bounds both.
    require(text is None or len(text) <= 2 * limits.MAX_REASON_CHARS, f"{where}: reason of {len(text or '')} chars")


def _derived_state(record: ModelRecord, version: ModelVersion) -> DerivedState:
    # An older version keeps its live state (and keeps serving) until the latest is available.
    superseded = version is not record.latest and record.latest.derived.state == ModelState.AVAILABLE
    if record.deleted or superseded:
        return derive_terminating(version.facts())
    return derive_live(
        version.facts(),
        desired=model_specs.desired_replicas(version.spec),
        min_replicas=model_specs.min_replicas(version.spec),
        previous_available=any(v.serving > 0 for v in record.versions[:-1]),
        schedule_failure=version.schedule_failure,
        failure=_crash_loop_failure(version),
    )


def _note_server_death(name: str, version: ModelVersion, key: ReplicaKey, event: Event, reason: str) -> str:
    """The reason to record for ``event``: when it is a load the server died during, that is recorded too (the
    crash-loop guard, SERVER_DEATHS_TO_FAIL) and the reason says so."""
    if event.kind != Event.KIND_LOAD_FAILED or not event.server_died_during_load:
        return reason
    version.server_deaths[key] = reason
    log.warning("%s:%d: the server of replica %s/%d died while loading it", name, version.version, *key)
    return (
        f"its server died during this load, so it is not placed on this replica again "
        f"({len(version.server_deaths)} of {SERVER_DEATHS_TO_FAIL} such deaths fail the model): {reason}"
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


def _event_transition(event: agent_pb2.ModelEvent) -> tuple[ReplicaState, ReplicaState, str]:
    """(state the scheduler must expect, state the event moves to, reason) for an agent event."""
    reason = limits.clean_reason(event.reason)  # an agent's words: bounded and on one line, never refused
    if event.kind == Event.KIND_LOADED:
        return S.LOADING, S.LOADED, ""
    if event.kind == Event.KIND_LOAD_FAILED:
        return S.LOADING, S.LOAD_FAILED, reason or "load failed"
    if event.kind == Event.KIND_LOAD_FAIL_MEMORY:
        return S.LOADING, S.LOAD_FAILED, f"not enough memory on the replica: {reason or 'load refused'}"
    if event.kind == Event.KIND_UNLOADED:
        return S.UNLOADING, S.UNLOADED, ""
    if event.kind == Event.KIND_UNLOAD_FAILED:
        return S.UNLOADING, S.UNLOAD_FAILED, reason or "unload failed"
    raise IllegalTransition(f"unknown event kind {event.kind}")


def _mismatch(
    name: str, version: ModelVersion, key: ReplicaKey, event: agent_pb2.ModelEvent, expected: ReplicaState
) -> str | None:
    """Why ``event`` does not answer what the scheduler is waiting for on ``key``, or None if it does."""
    what = f"{Event.Kind.Name(event.kind)} for {name}:{version.version}"
    assignment = version.replicas.get(key)
    in_flight = assignment.operation_id if assignment else 0
    if event.operation_id and event.operation_id != in_flight:
        # A late answer to an earlier operation (e.g. a LOADED for a load since unloaded and requested
        # again) must not complete the operation now in flight.
        return f"{what} answers operation {event.operation_id}, but operation {in_flight} is the one in flight"
    current = version.state_of(key)
    if current != expected:
        return f"{what} on replica {key[0]}/{key[1]} expects state {expected.name}, but it is {current.name}"
    return None


def _versions_to_keep(record: ModelRecord) -> list[ModelVersion]:
    """The versions to keep beside a new one: all, or without inactive ones (oldest first) when the record would
    exceed MAX_MODEL_VERSIONS. Raises ResourceExhausted when the versions still on replicas are too many."""
    versions = list(record.versions)
    for version in list(versions):
        if len(versions) < limits.MAX_MODEL_VERSIONS:
            break
        if version.inactive:
            versions.remove(version)
    if len(versions) >= limits.MAX_MODEL_VERSIONS:
        numbers = ", ".join(str(v.version) for v in versions)
        raise ResourceExhausted(
            f"model {record.name!r} keeps {len(versions)} versions that still have replicas ({numbers}); the limit is "
            f"{limits.MAX_MODEL_VERSIONS}: load a new version once older ones are unloaded (they are once the "
            "latest is available), or unload the model"
        )
    return versions


def _down_reason(replica: ReplicaRecord) -> str:
    return f"server {replica.server} replica {replica.index} is down: {replica.server_down}"


def _serving_server(record: ModelRecord) -> str | None:
    for version in reversed(record.versions):
        for key, assignment in version.replicas.items():
            if assignment.state in SERVING:
                return key[0]
    return None


def _copy(model: pb.Model) -> pb.Model:
    copy = pb.Model()
    copy.CopyFrom(model)
    return copy
