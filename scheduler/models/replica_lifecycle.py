"""How the cluster follows its replicas' agents: registrations, sessions that end, inference servers that go
down or serve again, drains, and the model events that answer the operations sent (compare-and-set on the state
the scheduler expects, along the replica state table)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec import limits
from modelplane.spec.errors import IllegalTransition
from scheduler.models import model_specs
from scheduler.models.cluster_state import (
    SERVER_DEATHS_TO_FAIL,
    ClusterState,
    Operation,
    ReplicaConfig,
    S,
    _down_reason,
)
from scheduler.models.memory_ledger import AccountingError
from scheduler.models.model_records import ModelVersion, ReplicaKey
from scheduler.models.replica_state import HOLDS_MEMORY, ReplicaState
from scheduler.models.server_records import OperationSink, ReplicaRecord, ServerRecord

log = logging.getLogger(__name__)
Event = agent_pb2.ModelEvent


class ReplicaLifecycle(ClusterState):
    """The changes agents report (the part of Cluster that agent_service.py's calls reach)."""

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
        server.add_replica(replica)
        if config.index + 1 > server.seen_replicas:
            server.seen_replicas = config.index + 1
            self.touched.durable_servers.add(server.name)
        try:
            # The memory of every model it holds is committed below, and nothing is placed meanwhile: its place in
            # its server's order by free memory is taken once, after (not once per model: a restart's thousand
            # registrations of 100 models each cost 100,000 updates of that order).
            for held in loaded:
                self._adopt(replica, held)
        finally:
            replica.ledger.on_change = functools.partial(self._refresh_free_memory, replica)
            self._refresh_free_memory(replica)
        self.touched.servers.add(server.name)
        self._capacity_changed()

    def _adopt(self, replica: ReplicaRecord, held: agent_pb2.LoadedModel) -> None:
        record = self.models.get(held.name)
        version = record.version(held.version) if record else None
        if version is not None and version.state_of(replica.key) != S.UNKNOWN:
            return  # reported twice in one registration
        if record is None and self.holding_unknown and self._hold_unclaimed(replica, held):
            return
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

    # -- what a new leader holds for the controller's re-send ----------------------------------------------------------

    def _hold_unclaimed(self, replica: ReplicaRecord, held: agent_pb2.LoadedModel) -> bool:
        """Keep ``held`` (a model this leader does not know yet) on ``replica``, its memory counted, for a LoadModel
        of the same version to claim. False when its size cannot be counted (then it is unloaded as unwanted)."""
        key = (held.name, held.version)
        if key in replica.unclaimed:
            return True
        try:
            replica.ledger.commit(_unclaimed_key(key), held.memory_bytes)
        except AccountingError:
            log.warning("replica %s/%d reports %s:%d with a size that cannot be counted", *replica.key, *key)
            return False
        replica.unclaimed[key] = held.memory_bytes
        self.unclaimed_holders.setdefault(held.name, {})[replica.key] = None
        log.info("replica %s/%d holds %s:%d, not known yet: kept for the controller's re-send", *replica.key, *key)
        return True

    def claim_unclaimed(self, name: str) -> None:
        """A LoadModel made ``name`` known: what replicas hold of it unclaimed becomes its replicas (Available,
        without a load) when the version matches, and is unloaded otherwise."""
        for replica_key in self.unclaimed_holders.pop(name, {}):
            replica = self._replica(replica_key)
            if replica is None:
                continue
            for key in [key for key in replica.unclaimed if key[0] == name]:
                memory = replica.unclaimed.pop(key)
                replica.ledger.release(_unclaimed_key(key))
                self._adopt(replica, agent_pb2.LoadedModel(name=key[0], version=key[1], memory_bytes=memory))

    def release_unclaimed(self) -> None:
        """The controller's re-send is over: what no LoadModel claimed is not wanted, and is unloaded."""
        self.holding_unknown = False
        for server in self.servers.values():
            for replica in server.replicas.values():
                for (name, version), _memory in list(replica.unclaimed.items()):
                    log.info(
                        "replica %s/%d holds %s:%d, which nobody re-sent: unloading it", *replica.key, name, version
                    )
                    replica.ledger.release(_unclaimed_key((name, version)))
                    self._send(replica, Operation.KIND_UNLOAD, pb.Model(meta=pb.MetaData(name=name)), version)
                if replica.unclaimed:
                    replica.unclaimed.clear()
                    self.touched.servers.add(server.name)
        self.unclaimed_holders.clear()
        self._capacity_changed()

    def replica_gone(self, server_name: str, index: int, session: OperationSink) -> None:
        """A replica's session ended (disconnect, missed heartbeats, agent exit)."""
        server = self.servers.get(server_name)
        replica = server.replicas.get(index) if server else None
        if server is None or replica is None or replica.session is not session:
            return  # already replaced by a newer session of the same replica
        self._drop_replica(server, replica)
        self.touched.servers.add(server_name)

    def _drop_replica(self, server: ServerRecord, replica: ReplicaRecord) -> None:
        """``replica`` is gone: its assignments (and unclaimed holdings) go with it. Looks at its models only."""
        server.remove_replica(replica.index)
        replica.ledger.on_change = None
        for record, version in self._versions_on(replica.key):
            version.drop_replica(replica.key)
            self._changed(record, retry_failed=True)
        for name, _version in replica.unclaimed:
            holders = self.unclaimed_holders.get(name)
            if holders is not None:
                holders.pop(replica.key, None)
                if not holders:
                    del self.unclaimed_holders[name]

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
        self._refresh_free_memory(replica)
        self.touched.servers.add(server_name)
        self._capacity_changed()
        self._check_drains([replica.key])

    def _server_down(self, replica: ReplicaRecord, reason: str) -> None:
        replica.server_down = reason
        why = _down_reason(replica)
        for record, version in self._versions_on(replica.key):
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
        for record, version in self._versions_on(replica.key):
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
        self._refresh_free_memory(replica)  # it takes nothing new from now on
        for record, version in self._versions_on(replica.key):
            state = version.state_of(replica.key)
            if state == S.AVAILABLE:
                version.set_replica(replica.key, S.DRAINING, "replica is draining")
                self._changed(record)
            elif state in (S.LOADING, S.LOADED):
                self._unload(replica, record, version)
        self.touched.servers.add(server_name)
        self._check_drains([replica.key])

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
        self._check_drains([replica.key])
        return None


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


def _unclaimed_key(key: tuple[str, int]) -> tuple[str, str, int]:
    """The ledger's key for an unclaimed holding: three parts, so it never meets a (model, version) commitment."""
    return ("unclaimed", *key)
