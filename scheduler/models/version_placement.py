"""The cluster's reconcile: bring one model's assignments towards its desired state (place its latest
version, scale in, move it off leaving replicas, unload old versions and deleted models), and ask to scale
idle servers down. Every method runs to completion without awaiting, so each reconcile is single-flight."""

from __future__ import annotations

import logging

from scheduler.models.cluster_state import SERVER_DEATHS_TO_FAIL, ClusterState, S
from scheduler.models.model_records import ModelRecord, ModelVersion, ReplicaKey
from scheduler.models.model_state import ModelState
from scheduler.models.placement_candidates import ServerCandidates
from scheduler.models.replica_state import FAILED, INACTIVE, SERVING, UNLOADING_STATES, WANTED
from scheduler.placement import PlacementRequest, ServerView, place

log = logging.getLogger(__name__)


class VersionPlacement(ClusterState):
    """Where each model's versions go (the part of Cluster that the reconcile and scale-down loops call)."""

    def reconcile(self, name: str, *, retry_failed: bool) -> None:
        """Bring one model's assignments towards its desired state. Synchronous, hence single-flight."""
        record = self.models.get(name)
        if record is None:
            return
        if name in self.unreported:
            # Restored, and no replica reported it while the synchroniser waited: shown from now on, as it is.
            self.touched.models.add(name)
        # The replicas whose drains this reconcile may end: those the model is on (a move only leaves them).
        on = {key for version in record.versions for key in version.replicas}
        before = _what_status_shows(record)
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
        self._derive_all(record)
        if _what_status_shows(record) != before:
            # A reconcile that changed nothing publishes nothing: after a restart, 100,000 models held where they
            # should be are each reconciled once, and would each be sent to every status subscriber again.
            self.touched.models.add(name)
        self._forget_finished(record)
        self._check_drains(on)
        # This pass has done what the model's own changes asked for; only new events ask again.
        self.touched.reconcile.pop(name, None)

    def _place_latest(self, record: ModelRecord, *, retry_failed: bool) -> None:
        version = record.latest
        if len(version.server_deaths) >= SERVER_DEATHS_TO_FAIL:
            return  # the crash-loop guard failed it: placed nowhere until a LoadModel (SERVER_DEATHS_TO_FAIL)
        facts = version.spec_facts
        desired = facts.desired_replicas
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
            memory_bytes=facts.memory_bytes,
            requirements=facts.requirements,
            server_pin=facts.server_pin,
            replicas=desired,
            min_replicas=facts.min_replicas,
            is_explainer=facts.explainer,
            current_server=current,
        )
        decision = place(request, self._views(version))
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
                version.drop_replica(key)
            else:
                self._unload(replica, record, version)

    def _forget_finished(self, record: ModelRecord) -> None:
        """Drop terminated old versions, and deleted models once nothing of them is left anywhere."""
        if record.deleted:
            if all(version.inactive for version in record.versions):
                self._forget_model(record)
                self.touched.durable_models.add(record.name)
                self.touched.models.add(record.name)
                self.touched.removed[record.name] = record
            return
        if record.latest.derived.state != ModelState.AVAILABLE:
            return
        kept = [v for v in record.versions[:-1] if not v.inactive]
        if len(kept) != len(record.versions) - 1:
            for version in record.versions[:-1]:
                if version.inactive:
                    self._untrack(version)
            record.versions[:-1] = kept
            self.touched.durable_models.add(record.name)

    def _views(self, version: ModelVersion) -> list[ServerView]:
        """Every server as placement sees it for ``version``: its replicas asked about, not listed (O(servers))."""
        return [
            ServerView(
                name=server.name,
                shared=server.shared,
                expected_replicas=server.expected_replicas,
                max_replicas=server.max_replicas,
                capabilities=server.capabilities,
                replicas=ServerCandidates(server, version, self._staying),
            )
            for server in self.servers.values()
        ]

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


def _what_status_shows(record: ModelRecord) -> tuple[object, ...]:
    """What the model's status and route are made of, but for the spec (a reconcile never changes it): compared
    before and after a reconcile, so that one that changed nothing publishes nothing."""
    return (
        record.deleted,
        tuple(
            (
                version.version,
                version.derived,
                version.state_changed_at,
                tuple((key, a.state, a.reason, a.changed_at) for key, a in version.replicas.items()),
            )
            for version in record.versions
        ),
    )


def _serving_server(record: ModelRecord) -> str | None:
    for version in reversed(record.versions):
        for key, assignment in version.replicas.items():
            if assignment.state in SERVING:
                return key[0]
    return None
