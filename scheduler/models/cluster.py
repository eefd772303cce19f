"""The scheduler's in-memory state of models and servers, and every synchronous change to it.

Every method here runs to completion without awaiting, so on the event loop each one is atomic: no
other change can interleave, which makes each model's reconcile single-flight by construction.
Methods record what they touched in ``self.touched`` for the caller (SchedulerCore) to publish,
persist and reconcile; nothing here does I/O except queueing agent operations.

Cluster is one class made of four parts, one module each, all over the same state (ClusterState):
- cluster.py (this module): desired state (restore, LoadModel, UnloadModel, ServerNotify) and the invariants;
- cluster_state.py: the state, what a change touched, derived states, operations sent to replicas, drains;
- replica_lifecycle.py: what agents report (registrations, sessions ending, server health, drains, events);
- version_placement.py: the reconcile (placement of versions, scale-in, moves) and scale-down requests.

Invariants (``check_invariants`` verifies them; tests call it after every step):
- each replica's memory ledger holds exactly the model versions whose assignment on it is in a
  memory-holding state, each once, and ``used`` is their sum (never negative);
- an assignment's state changes only along the replica state table, and every assignment is on a
  connected replica;
- a model's derived state is recomputed whenever one of its assignments or its desired state changes,
  so it always equals what its replicas say;
- every record is one a request could have made: versions rising within 1..MAX_VERSION (a uint32), at
  most MAX_MODEL_VERSIONS of them, specs that pass validation, reasons within their limits; so every
  model's and server's status renders and fits a default client (modelplane/spec/limits.py);
- the indexes (cluster_state.py's docstring says who keeps each) say what a full scan says: the assignments by
  replica, the models waiting for capacity, the holders of unclaimed models, each server's replicas by free
  memory (exactly its usable replicas, each with its ledger's free memory) and its capabilities.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec import limits
from modelplane.spec.errors import FailedPrecondition, ResourceExhausted
from scheduler import status_messages
from scheduler.invariants import require
from scheduler.models import model_specs, server_specs
from scheduler.models.cluster_state import Operation, _derived_state, needs_capacity
from scheduler.models.memory_ledger import AccountingError
from scheduler.models.model_records import ModelRecord, ModelVersion, StoredModel
from scheduler.models.replica_lifecycle import ReplicaLifecycle
from scheduler.models.replica_state import HOLDS_MEMORY, INACTIVE, UNLOADING_STATES
from scheduler.models.server_records import ServerRecord
from scheduler.models.version_placement import VersionPlacement

log = logging.getLogger(__name__)


class Cluster(ReplicaLifecycle, VersionPlacement):
    """The scheduler's in-memory state of models and servers (see the module docstring for its parts)."""

    def restore(self, models: Iterable[StoredModel], servers: Iterable[ServerRecord]) -> None:
        """Load durable state after a restart: desired state only; replicas come back with agents.

        Stored records pass the same checks as requests (a record written by an older scheduler, or damaged,
        must not break anything): what fails them is left out and logged; the store keeps it untouched. A spec
        marked as checked under today's rules when written is not checked again (models/model_records.py); a
        protobuf record that was not marked, and passes whole, is written again with the mark (a JSON one moves to
        the protobuf form only when it changes).
        """
        for server in servers:
            problem = server_specs.stored_server_problem(server)
            if problem is not None:
                log.error("cannot use stored server %s (%s); skipping it", limits.shown(server.name), problem)
                continue
            self.servers[server.name] = server
        for stored, checked, json_form in models:
            record = model_specs.usable_record(stored, checked=checked)
            if record is None:
                continue
            if not checked and not json_form and len(record.versions) == len(stored.versions):
                self.touched.durable_models.add(record.name)  # checked in full now: marked, not checked again
            self.models[record.name] = record
            self._track(record)
            self._derive_all(record)
            self.touched.want_reconcile(record.name, retry_failed=True)
            self.unreported.add(record.name)
        # Restored, not changed: nothing to publish (the records are the ones stored; no stream has a state to follow).
        self.touched.models.clear()

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
                        self._untrack(version)
                record.versions[:] = [*(v for v in record.versions if id(v) in kept), prepared.latest]
                if len(record.versions) != len(prepared.versions):
                    self.touched.durable_models.add(name)  # a version kept was forgotten meanwhile
            self._track(self.models[name])
        else:
            # Same version, new spec: keep its replicas and observed state, replace what was asked for.
            record.latest.take_spec_of(prepared.latest)
        self._forgive_server_deaths(self.models[name])
        if self.holding_unknown:
            self.claim_unclaimed(name)  # before the reconcile: what a replica holds already is not placed again
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
        for replica in server.replicas.values():
            self._refresh_free_memory(replica)
            for name, _version in self.assignments.on(replica.key):
                self.touched.want_reconcile(name, retry_failed=True)
        self._capacity_changed()

    def _active_count(self, record: ModelRecord) -> int:
        return sum(1 for v in record.versions for a in v.replicas.values() if a.state not in INACTIVE)

    def _check_record(self, name: str, record: ModelRecord) -> None:
        require(record.name == name, f"model {name!r} holds the record of {record.name!r}")
        numbers = [version.version for version in record.versions]
        require(bool(numbers), f"model {name!r} has no versions")
        require(numbers == sorted(set(numbers)), f"model {name!r}: versions {numbers} do not rise")
        require(all(1 <= n <= limits.MAX_VERSION for n in numbers), f"model {name!r}: versions {numbers}")
        require(len(numbers) <= limits.MAX_MODEL_VERSIONS, f"model {name!r} keeps {len(numbers)} versions")
        for version in record.versions:
            spec = version.spec
            model_specs.validate_spec(spec)
            require(spec.meta.name == name, f"model {name!r}: version {version.version} is another's")
            require(version.kept_as(spec), f"{name}:{version.version}: its facts or stored form disagree with its spec")
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
        assigned: dict[tuple[str, int], set[tuple[str, int]]] = {}
        holding: dict[tuple[str, int], set[tuple[str, int] | tuple[str, str, int]]] = {}
        for record in self.models.values():
            for version in record.versions:
                require(version.index is self.assignments, f"{record.name}:{version.version} is not indexed")
                for key, assignment in version.replicas.items():
                    assigned.setdefault(key, set()).add((record.name, version.version))
                    if assignment.state in HOLDS_MEMORY:
                        holding.setdefault(key, set()).add((record.name, version.version))
        require(self.assignments.as_sets() == assigned, "the assignment index does not match the assignments")
        waiting = {name for name, record in self.models.items() if needs_capacity(record)}
        require(set(self.waiting_for_capacity) == waiting, "the models waiting for capacity are not those that do")
        unclaimed: dict[str, dict[tuple[str, int], None]] = {}
        for server in self.servers.values():
            require(server.check_capabilities(), f"server {server.name!r}: capabilities do not match its replicas")
            usable = {}
            for replica in server.replicas.values():
                replica.ledger.check()
                held = holding.get(replica.key, set()) | {("unclaimed", *key) for key in replica.unclaimed}
                if len(held) != len(replica.ledger) or not all(replica.ledger.holds(k) for k in held):
                    raise AccountingError(f"replica {replica.key}: ledger does not match its assignments")
                if self._replica_usable(replica):
                    usable[replica.index] = replica.ledger.free
                for name, _version in replica.unclaimed:
                    unclaimed.setdefault(name, {})[replica.key] = None
            server.by_free_memory.check(usable)
        require(self.unclaimed_holders == unclaimed, "the holders of unclaimed models are not those that hold them")
        self._check_unreported()

    def _check_unreported(self) -> None:
        """The models awaited from a replica (cluster_state.py's docstring) are models no replica has reported, but
        for those a change not yet taken touched."""
        for name in self.unreported:
            record = self.models.get(name)
            require(record is not None, f"model {name!r} is awaited from a replica but is not a model")
            if record is not None and name not in self.touched.models:
                require(not any(v.replicas for v in record.versions), f"model {name!r} was reported, yet awaited still")


def _check_reason(text: str | None, where: str) -> None:
    # A cleaned reason may carry a prefix and the note of how much was cut; twice the limit bounds both.
    require(text is None or len(text) <= 2 * limits.MAX_REASON_CHARS, f"{where}: reason of {len(text or '')} chars")


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


def _copy(model: pb.Model) -> pb.Model:
    copy = pb.Model()
    copy.CopyFrom(model)
    return copy
