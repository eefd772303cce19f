"""Scheduler API messages made from the scheduler's records: the one place that knows both shapes.

``model_status`` and ``server_status`` never fail: a record that cannot be rendered becomes its own error status
(scheduler/status_guard.py). ``render_model_status`` and ``render_server_status`` are the unguarded builders, for
invariant checks that want to see the failure.
"""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.bounded_text import cut
from modelplane.spec import limits
from scheduler.models.model_records import ModelRecord, ModelVersion
from scheduler.models.server_records import ServerRecord
from scheduler.status_guard import guarded, safe_name


def _stamp(stamp: Timestamp, seconds: float) -> None:
    """Set ``stamp`` (a field of a message being built) to ``seconds``: in place, and present even at zero, as a
    Timestamp given to a constructor is."""
    stamp.SetInParent()
    stamp.FromNanoseconds(int(seconds * 1e9))


def version_status(version: ModelVersion) -> pb.ModelVersionStatus:
    status = pb.ModelVersionStatus()
    _fill_version_status(status, version)
    return status


def _fill_version_status(status: pb.ModelVersionStatus, version: ModelVersion) -> None:
    """``version``'s status, written into ``status`` (an empty message) field by field, in place: a restart renders
    a status for each of 100,000 models at least once (the snapshot, the change at re-registration), and messages
    built to be copied into their parents cost half as much again (bench/README.md, "Recorded: the restart's status
    stream"). The message is the same, field for field, as one built from parts."""
    derived = version.derived
    status.version = version.version
    replicas = version.replicas
    if replicas:
        status.serverName = min(server for server, _ in replicas)
    state = status.state
    state.state = derived.state.value  # type: ignore[assignment]
    state.reason = cut(derived.reason, limits.MAX_STATUS_REASON_CHARS)
    state.availableReplicas = derived.available_replicas
    state.unavailableReplicas = derived.unavailable_replicas
    _stamp(state.lastChangeTimestamp, version.state_changed_at)
    state.modelGwState = version.gateway_state.value  # type: ignore[assignment]
    state.modelGwReason = cut(version.gateway_reason, limits.MAX_STATUS_REASON_CHARS)
    # The spec as it may be shown: credentials stay with the agents that load the model (modelplane/storage_secrets.py).
    defn = status.modelDefn
    defn.SetInParent()  # present even if empty, as when set from a message
    defn.MergeFromString(version.shown_spec)
    if defn.meta.HasField("kubernetesMeta"):
        status.kubernetesMeta.CopyFrom(defn.meta.kubernetesMeta)
    for (_server, index), assignment in replicas.items():
        # Every field written, as a copy would: replicas of two servers with one index share an entry (Seldon's
        # map is by index), and the last one's status is the entry's.
        replica = status.modelReplicaState[index]
        replica.state = assignment.state.value  # type: ignore[assignment]
        replica.reason = cut(assignment.reason, limits.MAX_REPLICA_REASON_CHARS)
        _stamp(replica.lastChangeTimestamp, assignment.changed_at)


def model_status(record: ModelRecord, *, all_versions: bool = False) -> pb.ModelStatusResponse:
    """The model's status, or, if it cannot be rendered, its own error status (never an exception)."""
    return guarded(
        "model",
        record.name,
        lambda: render_model_status(record, all_versions=all_versions),
        lambda reason: _model_error(record, reason),
    )


def _model_error(record: ModelRecord, reason: str) -> pb.ModelStatusResponse:
    latest = record.versions[-1].version if record.versions else 0
    return pb.ModelStatusResponse(
        modelName=safe_name(record.name),
        versions=[
            pb.ModelVersionStatus(
                version=latest if 0 <= latest <= limits.MAX_VERSION else 0,
                state=pb.ModelStatus(state=pb.ModelStatus.ModelFailed, reason=reason),
            )
        ],
        deleted=bool(record.deleted),
        timestamp=time.time_ns(),
        operation=pb.ModelStatusResponse.ModelDelete if record.deleted else pb.ModelStatusResponse.ModelCreate,
    )


def render_model_status(record: ModelRecord, *, all_versions: bool = False) -> pb.ModelStatusResponse:
    versions = record.versions if all_versions else record.versions[-1:]
    status = pb.ModelStatusResponse(
        modelName=record.name,
        deleted=record.deleted,
        keepTopics=not record.latest.spec_facts.clean_topics_on_delete,
        timestamp=time.time_ns(),
        operation=pb.ModelStatusResponse.ModelDelete if record.deleted else pb.ModelStatusResponse.ModelCreate,
    )
    for version in versions:
        _fill_version_status(status.versions.add(), version)
    return status


def removed_model_status(name: str) -> pb.ModelStatusResponse:
    """The last word on a deleted model once nothing of it is left."""
    return pb.ModelStatusResponse(
        modelName=name, deleted=True, timestamp=time.time_ns(), operation=pb.ModelStatusResponse.ModelDelete
    )


def server_status(server: ServerRecord) -> pb.ServerStatusResponse:
    """The server's status, or, if it cannot be rendered, one that names only the server (never an exception)."""
    return guarded(
        "server",
        server.name,
        lambda: render_server_status(server),
        lambda _reason: pb.ServerStatusResponse(
            type=pb.ServerStatusResponse.StatusUpdate, serverName=safe_name(server.name)
        ),
    )


def render_server_status(server: ServerRecord) -> pb.ServerStatusResponse:
    resources = [
        pb.ServerReplicaResources(
            replicaIdx=replica.index,
            totalMemoryBytes=replica.total_memory,
            availableMemoryBytes=max(0, replica.total_memory - replica.ledger.used),
            numLoadedModels=len(replica.ledger),
            overCommitPercentage=replica.overcommit_percent,
        )
        for replica in sorted(server.replicas.values(), key=lambda r: r.index)
    ]
    status = pb.ServerStatusResponse(
        type=pb.ServerStatusResponse.StatusUpdate,
        serverName=server.name,
        resources=resources,
        expectedReplicas=server.expected_replicas if server.expected_replicas is not None else len(resources),
        # A replica whose inference server is down is connected but not available.
        availableReplicas=sum(1 for replica in server.replicas.values() if replica.server_down is None),
        numLoadedModelReplicas=sum(r.numLoadedModels for r in resources),
    )
    if server.kubernetes_namespace or server.kubernetes_generation:
        status.kubernetesMeta.CopyFrom(
            pb.KubernetesMeta(namespace=server.kubernetes_namespace, generation=server.kubernetes_generation)
        )
    return status


def scaling_request(server: ServerRecord, replicas: int) -> pb.ServerStatusResponse:
    """Ask the controller to scale ``server`` to ``replicas``."""
    status = server_status(server)
    status.type = pb.ServerStatusResponse.ScalingRequest
    status.expectedReplicas = replicas
    return status
