"""The kinds the controller watches and how an object of one is named: the one place that knows their REST paths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JsonObject = dict[str, Any]

SELDON_GROUP = "mlops.seldon.io"
SELDON_VERSION = "v1alpha1"


@dataclass(frozen=True, slots=True)
class ResourceKind:
    """A namespaced kind of a named API group (served under /apis/GROUP/VERSION/...: not the core group)."""

    group: str
    version: str
    plural: str
    kind: str

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}"


@dataclass(frozen=True, slots=True, order=True)
class ObjectKey:
    """Which object: its namespace and name (unique within a kind)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, obj: JsonObject) -> ObjectKey:
        """The key of an object the API server sent (its metadata has a name and, being namespaced, a namespace)."""
        metadata = obj.get("metadata") or {}
        return cls(str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


MODELS = ResourceKind(SELDON_GROUP, SELDON_VERSION, "models", "Model")
PIPELINES = ResourceKind(SELDON_GROUP, SELDON_VERSION, "pipelines", "Pipeline")
EXPERIMENTS = ResourceKind(SELDON_GROUP, SELDON_VERSION, "experiments", "Experiment")
SERVERS = ResourceKind(SELDON_GROUP, SELDON_VERSION, "servers", "Server")
SERVER_CONFIGS = ResourceKind(SELDON_GROUP, SELDON_VERSION, "serverconfigs", "ServerConfig")
