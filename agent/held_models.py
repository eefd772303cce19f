"""What the agent holds on its server (one HeldModel per model version), how an operation on one ended, and what
to fetch for a model the scheduler sends. The manager that changes them is agent/model_manager.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

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


class HeldTable(dict[str, HeldModel]):
    """The models an agent holds, by loaded name (``<name>_<version>``, the entry's ``loaded_name``), with the
    versions of each plain name indexed: the inference proxy asks for a model's newest version on every request,
    which must not cost a look at every model the agent holds.

    Invariant: ``versions(name)`` holds exactly the entries whose ``name`` is ``name``. Entries change only
    through ``table[key] = model``, ``del table[key]`` and ``table.pop(key[, default])``; the other ways a dict
    can change are refused, so none can bypass the index."""

    def __init__(self) -> None:
        super().__init__()
        self._by_name: dict[str, dict[int, HeldModel]] = {}

    def versions(self, name: str) -> Iterable[HeldModel]:
        return self._by_name.get(name, {}).values()

    def __setitem__(self, loaded_name: str, model: HeldModel) -> None:
        if loaded_name != model.loaded_name:
            raise ValueError(f"{model.loaded_name} held under another name: {loaded_name!r}")
        if loaded_name in self:
            self._forget(self[loaded_name])
        super().__setitem__(loaded_name, model)
        self._by_name.setdefault(model.name, {})[model.version] = model

    def __delitem__(self, loaded_name: str) -> None:
        model = self[loaded_name]
        super().__delitem__(loaded_name)
        self._forget(model)

    def pop(self, loaded_name: str, *default: Any) -> Any:
        if loaded_name not in self:
            return super().pop(loaded_name, *default)  # the default, or KeyError
        model = super().pop(loaded_name)
        self._forget(model)
        return model

    def _forget(self, model: HeldModel) -> None:
        versions = self._by_name.get(model.name, {})
        versions.pop(model.version, None)
        if not versions:
            self._by_name.pop(model.name, None)

    def _refused(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("HeldTable changes only by [key] = model, del and pop (its index must follow)")

    update = setdefault = popitem = clear = __ior__ = _refused


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
