"""A manifest file of any of Seldon's five kinds (``mlops.seldon.io`` Model, Pipeline, Experiment, Server,
ServerConfig), several YAML documents to a file, to the Scheduler API calls that apply them, in the order they
must be applied.

How each kind meets the Scheduler API (the controller makes the same calls for the same resources):

    Model         LoadModel / UnloadModel / ModelStatus
    Pipeline      LoadPipeline / UnloadPipeline / PipelineStatus
    Experiment    StartExperiment / StopExperiment / ExperimentStatus
    Server        ServerNotify (spec.replicas, within minReplicas..maxReplicas, as the replicas the scheduler
                  should expect) / ServerNotify with 0 expected replicas (as the controller says of a deleted
                  Server) / ServerStatus
    ServerConfig  none: it is the pod template a Server's StatefulSet is built from on Kubernetes, so it is read
                  and checked, then reported as not applied (kubectl applies it)

Order: servers, then models, then pipelines (their steps are models), then experiments (their candidates are models
or pipelines) on load and status; the reverse on unload. Within a kind, the file's order.

Everything is read and checked before anything is sent: a file with one bad document applies nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

from google.protobuf.message import Message

from controller.servers.errors import ServerSpecError
from controller.servers.server_objects import desired_replicas, replica_bounds, server_name_of
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.cli.manifests import ManifestError, load_yaml_documents, model_of
from modelplane.spec.seldon_resources import (
    API_VERSIONS,
    ResourceSpecError,
    Translation,
    experiment_from_resource,
    listed,
    pipeline_from_resource,
)

_SHOWN = 60  # characters of a user's kind quoted in a message
M = TypeVar("M", bound=Message)


class Kind(IntEnum):
    """The five kinds, valued in the order they are loaded (unloaded in reverse)."""

    SERVER_CONFIG = 0
    SERVER = 1
    MODEL = 2
    PIPELINE = 3
    EXPERIMENT = 4

    @property
    def resource(self) -> str:
        return _RESOURCE_NAMES[self]

    @property
    def word(self) -> str:
        """The kind as printed in a sentence: ``model``, ``pipeline``, ``server config``."""
        return "server config" if self is Kind.SERVER_CONFIG else self.resource.lower()


_RESOURCE_NAMES = {
    Kind.SERVER_CONFIG: "ServerConfig",
    Kind.SERVER: "Server",
    Kind.MODEL: "Model",
    Kind.PIPELINE: "Pipeline",
    Kind.EXPERIMENT: "Experiment",
}
KINDS_BY_NAME = {name: kind for kind, name in _RESOURCE_NAMES.items()}
_KINDS_SAID = "Model, Pipeline, Experiment, Server, ServerConfig"


@dataclass(frozen=True)
class Resource:
    """One document of a manifest, checked: its kind, name, and the Scheduler API message that applies it (a
    ServerNotify for a Server; None for a ServerConfig, which has no call)."""

    kind: Kind
    name: str
    message: Message | None
    document: int  # 1-based, in the file


def parse_resources(text: str) -> list[Resource]:
    """Every document of a manifest, in the file's order; ManifestError naming the document and the field of the
    first problem."""
    documents = load_yaml_documents(text)
    if not documents:
        raise ManifestError("the manifest holds no document: expected apiVersion, kind, metadata and spec")
    resources = []
    for number, document in enumerate(documents, start=1):
        where = f"document {number} " if len(documents) > 1 else ""
        try:
            resource = _resource(document, number)
            if not resource.name:  # every other rule of names is the scheduler's to say, in its words
                raise ManifestError("metadata.name is empty")
            resources.append(resource)
        except (ManifestError, ResourceSpecError, ServerSpecError) as error:
            raise ManifestError(f"{where}{_named(document)}{error}") from None
    _refuse_twice_named(resources)
    return resources


def load_order(resources: list[Resource]) -> list[Resource]:
    # sorted() is stable: within a kind, the file's order.
    return sorted(resources, key=lambda resource: resource.kind)


def unload_order(resources: list[Resource]) -> list[Resource]:
    """The load order backwards: what was loaded last goes first."""
    return load_order(resources)[::-1]


def _named(document: object) -> str:
    """``(Model iris) `` when the document says both, for the message of a problem elsewhere in it."""
    if not isinstance(document, Mapping):
        return ""
    kind, metadata = document.get("kind"), document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if isinstance(kind, str) and kind in KINDS_BY_NAME and isinstance(name, str) and name.isprintable():
        return f"({kind} {name[:_SHOWN]}) "
    return ""


def _resource(document: object, number: int) -> Resource:
    if not isinstance(document, Mapping):
        raise ManifestError("a document must be a mapping with apiVersion, kind, metadata and spec")
    kind_name = document.get("kind")
    kind = KINDS_BY_NAME.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        shown = repr(kind_name) if len(repr(kind_name)) <= _SHOWN else f"{repr(kind_name)[: _SHOWN - 3]}..."
        raise ManifestError(f"kind must be one of {_KINDS_SAID}, not {shown}")
    if kind is Kind.MODEL:
        model = model_of(dict(document))
        return Resource(kind, model.meta.name, model, number)
    if kind is Kind.PIPELINE:
        pipeline = _known_fields(pipeline_from_resource(document))
        return Resource(kind, pipeline.name, pipeline, number)
    if kind is Kind.EXPERIMENT:
        experiment = _known_fields(experiment_from_resource(document))
        return Resource(kind, experiment.name, experiment, number)
    _check_envelope(document)
    server = dict(document)
    if kind is Kind.SERVER_CONFIG:
        metadata = server.get("metadata")
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        if not isinstance(name, str) or not name:
            raise ManifestError("metadata.name is missing")
        return Resource(kind, name, None, number)
    name = server_name_of(server)
    bounds = replica_bounds(server)
    notify = pb.ServerNotify(
        name=name,
        expectedReplicas=desired_replicas(server),
        minReplicas=bounds.minimum,
        maxReplicas=_whole(server, "maxReplicas"),
        shared=True,
    )
    return Resource(kind, name, notify, number)


def _check_envelope(document: Mapping[Any, Any]) -> None:
    if document.get("apiVersion") not in API_VERSIONS:
        shown = repr(document.get("apiVersion"))[:_SHOWN]
        raise ManifestError(f"apiVersion must be one of {', '.join(API_VERSIONS)}, not {shown}")
    if not isinstance(document.get("metadata"), Mapping):
        raise ManifestError("metadata is missing")
    if not isinstance(document.get("spec"), Mapping):
        raise ManifestError("spec is missing")


def _whole(server: Mapping[str, Any], field: str) -> int:
    """A count replica_bounds has checked already (a whole number in range), or 0 when it is not set."""
    value = server["spec"].get(field)
    return value if isinstance(value, int) else 0


def _known_fields(translation: Translation[M]) -> M:
    """The message, when the document has no field the translation does not know (a manifest is typed by hand: an
    unknown field is most likely a typo, and would otherwise be dropped without a word)."""
    if translation.unknown:
        raise ManifestError(f"unknown field(s) {listed(sorted(translation.unknown))}")
    return translation.message


def _refuse_twice_named(resources: list[Resource]) -> None:
    seen: dict[tuple[Kind, str], int] = {}
    for resource in resources:
        first = seen.setdefault((resource.kind, resource.name), resource.document)
        if first != resource.document:
            raise ManifestError(
                f"documents {first} and {resource.document} are both {resource.kind.resource} {resource.name!r}: "
                "which one is meant?"
            )
