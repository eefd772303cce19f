"""Seldon's custom resources (``mlops.seldon.io`` Model, Pipeline, Experiment, as JSON objects) to the Scheduler API's
messages: the one owner of that translation, shared by the controller and the CLI's ``-f`` manifests.

Model.spec -> the Scheduler API (proto/mlops/scheduler/scheduler.proto)::

    storageUri          modelSpec.uri (required)
    artifactVersion     modelSpec.artifactVersion
    secretName          modelSpec.storageConfig.storageSecretName (the agent reads the Secret; never its content)
    requirements        modelSpec.requirements
    memory              modelSpec.memoryBytes (a Kubernetes quantity: 100Mi, 1G, 1e9, or 2GiB as the CLI writes it)
    replicas            deploymentSpec.replicas (default 1), minReplicas/maxReplicas likewise
    server              modelSpec.server
    parameters          modelSpec.parameters [{name, value}]
    explainer           modelSpec.explainer {type, modelRef | pipelineRef}
    llm                 modelSpec.llm {modelRef | pipelineRef} (at most one of explainer and llm)
    logger              deploymentSpec.logPayloads = true; logger.percent has no place in the Scheduler API
    dataflow            Model.dataflowSpec {cleanTopicsOnDelete}
    modelType, schemaUri, preloaded, dedicated
                        no place in the Scheduler API: checked for type, then left to the resource
                        (``Translation.unmapped`` names the ones set)

Pipeline.spec -> Pipeline: steps [{name, inputs, triggers, joinWindowMs, tensorMap, inputsJoinType, triggersJoinType,
batch {size, windowMs}}], input {externalInputs, externalTriggers, joinWindowMs, joinType, triggersJoinType,
tensorMap}, output {steps, joinWindowMs, stepsJoin, tensorMap}, dataflow {cleanTopicsOnDelete}, allowCycles,
maxStepRevisits. A join type is inner, outer or any (any case); the proto's own names (inputsJoin, triggersJoin) are
accepted as well. batch.rolling has no place.

Experiment.spec -> Experiment: default, candidates [{name, weight}], mirror {name, percent}, resourceType (model or
pipeline, default model), config {stickySessions}.

Every message gets ``kubernetesMeta{namespace, generation}`` from the resource's metadata when it has either.

Unknown fields are not errors here: a resource keeps them (the API server preserves what its schema allows), the
translation reads what it knows and names the rest in ``Translation.unknown``; the controller logs them, the CLI
(whose manifests are typed by hand) refuses them. Any other problem raises ResourceSpecError naming the field, in one
line of bounded length; nothing else is raised for any JSON-like input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.sizes import MAX_SIZE, parse_size
from modelplane.spec.errors import InvalidArgument
from modelplane.spec.limits import MAX_GENERATION, check_fields
from modelplane.spec.names import is_namespace
from modelplane.whole_numbers import is_whole_number

__all__ = [
    "API_VERSIONS",
    "MODEL_SPEC_FIELDS",
    "ResourceSpecError",
    "Translation",
    "experiment_from_resource",
    "model_from_resource",
    "pipeline_from_resource",
]

API_VERSIONS = ("mlops.seldon.io/v1alpha1", "mlops.seldon.io/v1")
# The Model.spec fields the translation knows (Seldon's names), mapped or not.
MODEL_SPEC_FIELDS = (
    "storageUri",
    "modelType",
    "artifactVersion",
    "schemaUri",
    "secretName",
    "requirements",
    "memory",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "server",
    "preloaded",
    "dedicated",
    "logger",
    "explainer",
    "parameters",
    "llm",
    "dataflow",
)
MAX_COUNT = 1000  # replicas, artifact versions
MAX_UINT32 = 2**32 - 1
_MAX_SHOWN = 80  # characters of a user's value quoted in a message
_MAX_LISTED = 10  # unknown fields named in a message


class ResourceSpecError(ValueError):
    """The resource cannot be translated; the message names the field, on one line of bounded length."""


M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Translation(Generic[M]):
    message: M
    unknown: tuple[str, ...] = ()  # fields the translation does not know (dotted paths), kept by the resource
    unmapped: tuple[str, ...] = ()  # known fields that are set but have no place in the Scheduler API


def shown(value: object) -> str:
    """``value`` for a message: its repr (so on one line), at most _MAX_SHOWN characters."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else f"{text[: _MAX_SHOWN - 3]}..."


def _key_name(key: object) -> str:
    return key if isinstance(key, str) and key.isidentifier() and len(key) <= _MAX_SHOWN else shown(key)


def listed(names: list[str]) -> str:
    """At most _MAX_LISTED names, then how many more."""
    more = len(names) - _MAX_LISTED
    return ", ".join(names[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


_KIND_NAMES = {dict: "mapping", list: "list", str: "string", int: "whole number", bool: "true or false"}


class _Fields:
    """One mapping of the resource, read field by field; remembers what was read, so the rest is "unknown"."""

    def __init__(self, mapping: Mapping[Any, Any], where: str, unknown: list[str]) -> None:
        self._mapping = mapping
        self._where = where
        self._read: set[str] = set()
        self._unknown = unknown  # shared by every _Fields of one resource

    @property
    def where(self) -> str:
        return self._where

    def path(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def _get(self, key: str, kind: type) -> Any:
        self._read.add(key)
        value = self._mapping.get(key)
        if value is None:
            return None
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            name = _KIND_NAMES.get(kind, kind.__name__)
            raise ResourceSpecError(f"{self.path(key)} must be a {name}, not {type(value).__name__}")
        return value

    def text(self, key: str) -> str | None:
        value = self._get(key, str)
        return None if value is None else _check_text(value, self.path(key))

    def required_text(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise ResourceSpecError(f"{self.path(key)} is missing")
        return value

    def whole(self, key: str, low: int, high: int) -> int | None:
        value = self._get(key, int)
        if value is not None and not low <= value <= high:
            raise ResourceSpecError(f"{self.path(key)} must be between {low} and {high}, not {shown(value)}")
        return value  # type: ignore[no-any-return]

    def flag(self, key: str) -> bool | None:
        return self._get(key, bool)  # type: ignore[no-any-return]

    def texts(self, key: str) -> list[str]:
        values = self._get(key, list) or []
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise ResourceSpecError(
                    f"{self.path(key)} must be a list of strings ({self.path(key)}[{index}] is not)"
                )
            _check_text(value, f"{self.path(key)}[{index}]")
        return list(values)

    def text_map(self, key: str) -> dict[str, str]:
        values = self._get(key, dict) or {}
        for name, value in values.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ResourceSpecError(f"{self.path(key)} must map strings to strings ({shown(name)} does not)")
            _check_text(name, f"{self.path(key)} key")
            _check_text(value, f"{self.path(key)}[{shown(name)}]")
        return dict(values)

    def scalar(self, key: str) -> Any:
        """Any scalar (quantities may be written as numbers); None when absent."""
        self._read.add(key)
        return self._mapping.get(key)

    def mapping(self, key: str) -> _Fields | None:
        value = self._get(key, dict)
        return None if value is None else _Fields(value, self.path(key), self._unknown)

    def items(self, key: str) -> list[_Fields]:
        values = self._get(key, list) or []
        fields: list[_Fields] = []
        for index, value in enumerate(values):
            if not isinstance(value, dict):
                raise ResourceSpecError(f"{self.path(key)}[{index}] must be a mapping, not {type(value).__name__}")
            fields.append(_Fields(value, f"{self.path(key)}[{index}]", self._unknown))
        return fields

    def done(self) -> None:
        """Note the keys nobody read as unknown (call after reading every known key)."""
        self._unknown.extend(self.path(_key_name(key)) for key in self._mapping if key not in self._read)


def _check_text(value: str, field: str) -> str:
    """Protobuf strings must be valid UTF-8: JSON and YAML escapes can produce lone surrogates that are not."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ResourceSpecError(f"{field} is not valid Unicode text") from None
    return value


def _checked_limits(message: M, where: str) -> M:
    """The scheduler's own field limits (lengths, counts, characters), checked here so the error names the field."""
    try:
        check_fields(message, where)
    except InvalidArgument as error:
        raise ResourceSpecError(_one_line(str(error))) from None
    return message


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 4 * _MAX_SHOWN else f"{flat[: 4 * _MAX_SHOWN - 3]}..."


# ------------------------------------------------------------------------------------------ the resource around


def _resource(resource: object, kind: str) -> tuple[_Fields, _Fields, list[str]]:
    """(metadata, spec) of a resource of ``kind``, checked: apiVersion, kind, a mapping each."""
    if not isinstance(resource, Mapping):
        raise ResourceSpecError(f"a {kind} resource must be a mapping with apiVersion, kind, metadata and spec")
    if resource.get("apiVersion") not in API_VERSIONS:
        raise ResourceSpecError(
            f"apiVersion must be one of {', '.join(API_VERSIONS)}, not {shown(resource.get('apiVersion'))}"
        )
    if resource.get("kind") != kind:
        raise ResourceSpecError(f"kind must be {kind}, not {shown(resource.get('kind'))}")
    unknown: list[str] = []
    top = _Fields(resource, "", unknown)
    metadata = top.mapping("metadata")
    if metadata is None:
        raise ResourceSpecError("metadata is missing")
    spec = top.mapping("spec")
    if spec is None:
        raise ResourceSpecError("spec is missing")
    return metadata, spec, unknown


def _name(metadata: _Fields) -> str:
    """The name as given: whether it makes a valid name is the scheduler's to say (INVALID_ARGUMENT)."""
    return metadata.required_text("name")


def _kubernetes_meta(metadata: _Fields) -> pb.KubernetesMeta | None:
    namespace = metadata.text("namespace")
    generation = metadata.whole("generation", -(2**63), 2**63 - 1)
    if namespace is None and generation is None:
        return None
    if namespace is not None and not is_namespace(namespace):
        raise ResourceSpecError(f"metadata.namespace {shown(namespace)} is not a Kubernetes namespace name")
    if generation is not None and not 0 <= generation <= MAX_GENERATION:
        raise ResourceSpecError(f"metadata.generation {shown(generation)} is out of range")
    return pb.KubernetesMeta(namespace=namespace or "", generation=generation or 0)


# -------------------------------------------------------------------------------------------------- Model


_KUBERNETES_EXPONENT = re.compile(r"\s*(\d+(?:\.\d+)?)[eE]\+?(\d{1,2})\s*", re.ASCII)


def memory_bytes(value: object, field: str) -> int:
    """A memory size as a Kubernetes quantity (100Mi, 1G, 1e9, a plain number) or as the CLI writes it (2GiB)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ResourceSpecError(f"{field} must be a size such as 100Mi or 1G, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ResourceSpecError(f"{field} must be a size such as 100Mi or 1G, not {shown(value)}")
    text = str(value) if not isinstance(value, float) else repr(value)
    _check_text(text, field)
    stripped = text.strip()
    if stripped.endswith("m") and is_whole_number(stripped[:-1].replace(".", "", 1)):
        # Kubernetes reads a lower-case m as milli: "128m" is 0.128 bytes, certainly not what was meant.
        raise ResourceSpecError(f"{field}: {shown(text)} is milli-bytes in Kubernetes' notation; write M or Mi")
    exponent = _KUBERNETES_EXPONENT.fullmatch(text)
    if exponent is not None:
        number = float(exponent.group(1)) * 10 ** int(exponent.group(2))
        if not number <= MAX_SIZE:
            raise ResourceSpecError(f"{field}: {shown(text)} is more than 1 PiB")
        return int(number)
    try:
        return parse_size(text)
    except ValueError as error:
        problem = str(error) if len(str(error)) <= 2 * _MAX_SHOWN else f"{shown(value)} is not a size"
        raise ResourceSpecError(f"{field}: {problem}") from None


def _text_value(value: object, field: str) -> str:
    """A parameter's value: a scalar (string, number or boolean) as text, as YAML wrote it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _check_text(value, field)
    if isinstance(value, int | float):
        return str(value)
    raise ResourceSpecError(f"{field} must be a string or a number, not {type(value).__name__}")


def _references(fields: _Fields, what: str) -> tuple[str | None, str | None]:
    model, pipeline = fields.text("modelRef"), fields.text("pipelineRef")
    if model is not None and pipeline is not None:
        raise ResourceSpecError(f"{fields.where} names both a modelRef and a pipelineRef; {what} takes one")
    return model, pipeline


def model_from_resource(resource: object) -> Translation[pb.Model]:
    """The LoadModel message of a Model resource; raises ResourceSpecError naming the first bad field."""
    metadata, spec, unknown = _resource(resource, "Model")
    meta = pb.MetaData(name=_name(metadata), kind="Model")
    kubernetes = _kubernetes_meta(metadata)
    if kubernetes is not None:
        meta.kubernetesMeta.CopyFrom(kubernetes)
    model = pb.Model(meta=meta, modelSpec=_model_spec(spec))
    replicas = spec.whole("replicas", 0, MAX_COUNT)
    minimum, maximum = spec.whole("minReplicas", 0, MAX_COUNT), spec.whole("maxReplicas", 0, MAX_COUNT)
    deployment = pb.DeploymentSpec(
        replicas=1 if replicas is None else replicas, minReplicas=minimum or 0, maxReplicas=maximum or 0
    )
    logger = spec.mapping("logger")
    unmapped: list[str] = []
    if logger is not None:
        if logger.whole("percent", 0, 100) is not None:  # checked; the Scheduler API logs all payloads or none
            unmapped.append(logger.path("percent"))
        logger.done()
        deployment.logPayloads = True
    model.deploymentSpec.CopyFrom(deployment)
    dataflow = spec.mapping("dataflow")
    if dataflow is not None:
        model.dataflowSpec.CopyFrom(pb.DataflowSpec(cleanTopicsOnDelete=bool(dataflow.flag("cleanTopicsOnDelete"))))
        dataflow.done()
    for key, value in (
        ("modelType", spec.text("modelType")),
        ("schemaUri", spec.text("schemaUri")),
        ("preloaded", spec.flag("preloaded")),
        ("dedicated", spec.flag("dedicated")),
    ):
        if value:
            unmapped.append(spec.path(key))
    spec.done()
    spec_unknown = [field for field in unknown if field.startswith("spec.")]
    return Translation(_checked_limits(model, "model"), tuple(spec_unknown), tuple(unmapped))


def _model_spec(spec: _Fields) -> pb.ModelSpec:
    model_spec = pb.ModelSpec(uri=spec.required_text("storageUri"))
    version = spec.whole("artifactVersion", 0, MAX_COUNT)
    if version is not None:
        model_spec.artifactVersion = version
    model_spec.requirements.extend(spec.texts("requirements"))
    memory = spec.scalar("memory")
    if memory is not None:
        model_spec.memoryBytes = memory_bytes(memory, spec.path("memory"))
    server = spec.text("server")
    if server is not None:
        model_spec.server = server
    secret = spec.text("secretName")
    if secret is not None:
        model_spec.storageConfig.storageSecretName = secret
    for parameter in spec.items("parameters"):
        name = parameter.required_text("name")
        model_spec.parameters.add(name=name, value=_text_value(parameter.scalar("value"), parameter.path("value")))
        parameter.done()
    explainer, llm = spec.mapping("explainer"), spec.mapping("llm")
    if explainer is not None and llm is not None:
        raise ResourceSpecError("spec.explainer and spec.llm cannot both be set: a model is one or the other")
    if explainer is not None:
        kind = explainer.required_text("type")
        model, pipeline = _references(explainer, "an explainer")
        model_spec.explainer.CopyFrom(pb.ExplainerSpec(type=kind, modelRef=model, pipelineRef=pipeline))
        explainer.done()
    if llm is not None:
        model, pipeline = _references(llm, "an llm")
        model_spec.llm.CopyFrom(pb.LlmSpec(modelRef=model, pipelineRef=pipeline))
        llm.done()
    return model_spec


# ----------------------------------------------------------------------------------------------- Pipeline


_JOINS = {"inner": pb.PipelineStep.INNER, "outer": pb.PipelineStep.OUTER, "any": pb.PipelineStep.ANY}


def _join(fields: _Fields, seldon_key: str, proto_key: str | None = None) -> Any:
    """A join type (inner, outer, any; default inner) under Seldon's key or the proto's (not both)."""
    values = [(key, fields.text(key)) for key in (seldon_key, proto_key) if key is not None]
    given = [(key, value) for key, value in values if value is not None]
    if len(given) > 1:
        raise ResourceSpecError(f"{fields.path(seldon_key)} and {fields.path(str(proto_key))} are the same; give one")
    if not given:
        return pb.PipelineStep.INNER
    key, value = given[0]
    join = _JOINS.get(str(value).lower())
    if join is None:
        raise ResourceSpecError(f"{fields.path(key)} must be inner, outer or any, not {shown(value)}")
    return join


def pipeline_from_resource(resource: object) -> Translation[pb.Pipeline]:
    """The LoadPipeline message of a Pipeline resource; raises ResourceSpecError naming the first bad field.

    Whether the steps make a valid pipeline (references, cycles) is the scheduler's to say
    (modelplane/spec/pipelines.py), with FAILED_PRECONDITION as Seldon's does.
    """
    metadata, spec, unknown = _resource(resource, "Pipeline")
    pipeline = pb.Pipeline(name=_name(metadata))
    kubernetes = _kubernetes_meta(metadata)
    if kubernetes is not None:
        pipeline.kubernetesMeta.CopyFrom(kubernetes)
    unmapped: list[str] = []
    for step in spec.items("steps"):
        added = pipeline.steps.add(
            name=step.required_text("name"),
            inputs=step.texts("inputs"),
            triggers=step.texts("triggers"),
            tensorMap=step.text_map("tensorMap"),
            inputsJoin=_join(step, "inputsJoinType", "inputsJoin"),
            triggersJoin=_join(step, "triggersJoinType", "triggersJoin"),
        )
        window = step.whole("joinWindowMs", 0, MAX_UINT32)
        if window is not None:
            added.joinWindowMs = window
        batch = step.mapping("batch")
        if batch is not None:
            size, batch_window = batch.whole("size", 0, MAX_UINT32), batch.whole("windowMs", 0, MAX_UINT32)
            if size is not None:
                added.batch.size = size
            if batch_window is not None:
                added.batch.windowMs = batch_window
            if batch.flag("rolling"):
                unmapped.append(f"{batch.path('rolling')}")
            batch.done()
        step.done()
    pipeline_input = spec.mapping("input")
    if pipeline_input is not None:
        given = pb.PipelineInput(
            externalInputs=pipeline_input.texts("externalInputs"),
            externalTriggers=pipeline_input.texts("externalTriggers"),
            joinType=_join(pipeline_input, "joinType"),
            triggersJoin=_join(pipeline_input, "triggersJoinType", "triggersJoin"),
            tensorMap=pipeline_input.text_map("tensorMap"),
        )
        window = pipeline_input.whole("joinWindowMs", 0, MAX_UINT32)
        if window is not None:
            given.joinWindowMs = window
        pipeline.input.CopyFrom(given)
        pipeline_input.done()
    output = spec.mapping("output")
    if output is not None:
        pipeline.output.CopyFrom(
            pb.PipelineOutput(
                steps=output.texts("steps"),
                joinWindowMs=output.whole("joinWindowMs", 0, MAX_UINT32) or 0,
                stepsJoin=_join(output, "stepsJoin", "stepsJoinType"),
                tensorMap=output.text_map("tensorMap"),
            )
        )
        output.done()
    dataflow = spec.mapping("dataflow")
    if dataflow is not None:
        pipeline.dataflowSpec.CopyFrom(pb.DataflowSpec(cleanTopicsOnDelete=bool(dataflow.flag("cleanTopicsOnDelete"))))
        dataflow.done()
    pipeline.allowCycles = bool(spec.flag("allowCycles"))
    pipeline.maxStepRevisits = spec.whole("maxStepRevisits", 0, MAX_UINT32) or 0
    spec.done()
    spec_unknown = [field for field in unknown if field.startswith("spec.")]
    return Translation(_checked_limits(pipeline, "pipeline"), tuple(spec_unknown), tuple(unmapped))


# --------------------------------------------------------------------------------------------- Experiment


_RESOURCE_TYPES = {"model": pb.MODEL, "pipeline": pb.PIPELINE}


def experiment_from_resource(resource: object) -> Translation[pb.Experiment]:
    """The StartExperiment message of an Experiment resource; raises ResourceSpecError naming the first bad field."""
    metadata, spec, unknown = _resource(resource, "Experiment")
    experiment = pb.Experiment(name=_name(metadata))
    kubernetes = _kubernetes_meta(metadata)
    if kubernetes is not None:
        experiment.kubernetesMeta.CopyFrom(kubernetes)
    default = spec.text("default")
    if default is not None:
        experiment.default = default
    for candidate in spec.items("candidates"):
        experiment.candidates.add(
            name=candidate.required_text("name"), weight=candidate.whole("weight", 0, MAX_UINT32) or 0
        )
        candidate.done()
    mirror = spec.mapping("mirror")
    if mirror is not None:
        experiment.mirror.CopyFrom(
            pb.ExperimentMirror(name=mirror.required_text("name"), percent=mirror.whole("percent", 0, 100) or 0)
        )
        mirror.done()
    resource_type = spec.text("resourceType")
    if resource_type is not None:
        if resource_type.lower() not in _RESOURCE_TYPES:
            raise ResourceSpecError(f"spec.resourceType must be model or pipeline, not {shown(resource_type)}")
        experiment.resourceType = _RESOURCE_TYPES[resource_type.lower()]
    config = spec.mapping("config")
    if config is not None:
        experiment.config.CopyFrom(pb.ExperimentConfig(stickySessions=bool(config.flag("stickySessions"))))
        config.done()
    spec.done()
    spec_unknown = [field for field in unknown if field.startswith("spec.")]
    return Translation(_checked_limits(experiment, "experiment"), tuple(spec_unknown))
