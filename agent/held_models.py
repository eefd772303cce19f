"""What the agent holds on its server (one HeldModel per model version), how an operation on one ended, and what
to fetch for a model the scheduler sends. The manager that changes them is agent/model_manager.py."""

from __future__ import annotations

from dataclasses import dataclass

from agent.artifacts import ArtifactSource
from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from servers.adapter import ModelFiles


@dataclass(slots=True)
class HeldModel:
    name: str
    version: int
    memory: int
    files: ModelFiles | None  # None for a model adopted from the server after a restart
    on_server: bool = True
    loading: bool = False
    last_used: float = 0.0
    # False until the first load succeeds: requests must not go to a version that never served.
    ready: bool = True
    # The server went down while this model's load call was in flight on it: the load may have killed it.
    server_died_loading: bool = False

    @property
    def loaded_name(self) -> str:
        return f"{self.name}_{self.version}"


class NoRoom(Exception):  # noqa: N818 - "no room" is what happened
    """Evicting every evictable model would still not make room."""


@dataclass(frozen=True, slots=True)
class OperationOutcome:
    """How a load or unload ended, for its event."""

    kind: agent_pb2.ModelEvent.Kind.ValueType
    reason: str = ""
    server_died: bool = False  # a failed load: the server went down while it was in flight on it


def artifact_source(model: pb.Model) -> ArtifactSource:
    """Where the model's artifact is, and how to check it, as its ModelSpec says."""
    spec = model.modelSpec
    parameters = {p.name: p.value for p in spec.parameters}
    config = spec.storageConfig if spec.HasField("storageConfig") else None
    return ArtifactSource(
        uri=spec.uri,
        artifact_version=spec.artifactVersion if spec.HasField("artifactVersion") else None,
        storage_secret_name=config.storageSecretName if config and config.HasField("storageSecretName") else None,
        storage_rclone_config=config.storageRcloneConfig if config and config.HasField("storageRcloneConfig") else None,
        sha256=parameters.get("sha256"),
    )
