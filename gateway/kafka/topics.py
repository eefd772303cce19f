"""Kafka topic names of the gateway's asynchronous inference, named as Seldon Core v2 names them so producers
and consumers written for Seldon work unchanged:

- ``<prefix>.<namespace>.model.<name>.inputs`` / ``.outputs`` for a model,
- ``<prefix>.<namespace>.pipeline.<name>.inputs`` / ``.outputs`` for a pipeline,
- ``<prefix>.<namespace>.errors`` (configurable) for requests that could not be answered.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# Kafka's own rule for topic names (kafka.common.internals.Topic): these characters, at most 249 of them.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


class ResourceKind(enum.StrEnum):
    MODEL = "model"
    PIPELINE = "pipeline"


@dataclass(frozen=True, order=True)
class Resource:
    """A model or a pipeline the gateway serves, as its topics name it."""

    kind: ResourceKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def is_valid_topic_name(topic: str) -> bool:
    """True when Kafka accepts ``topic`` as a topic name (``.`` and ``..`` are reserved)."""
    return topic not in {".", ".."} and _TOPIC_NAME.fullmatch(topic) is not None


@dataclass(frozen=True)
class TopicNames:
    """The topic names for one prefix and namespace."""

    prefix: str = "seldon"
    namespace: str = "default"
    errors_topic: str | None = None  # None: ``<prefix>.<namespace>.errors``

    def inputs(self, resource: Resource) -> str:
        return f"{self._base(resource)}.inputs"

    def outputs(self, resource: Resource) -> str:
        return f"{self._base(resource)}.outputs"

    def errors(self) -> str:
        return self.errors_topic if self.errors_topic is not None else f"{self.prefix}.{self.namespace}.errors"

    def usable(self, resource: Resource) -> bool:
        """Whether the resource's topics are legal Kafka names; a name that is not (empty, a character Kafka
        forbids, or too long once prefixed) cannot be served over Kafka at all."""
        return (
            is_valid_topic_name(resource.name)
            and is_valid_topic_name(self.inputs(resource))
            and is_valid_topic_name(self.outputs(resource))
        )

    def _base(self, resource: Resource) -> str:
        return f"{self.prefix}.{self.namespace}.{resource.kind}.{resource.name}"
