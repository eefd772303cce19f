"""Seldon's Model resource to the Scheduler API's Model (the field map is in the package's docstring)."""

from __future__ import annotations

import math
import re

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.sizes import MAX_SIZE, parse_size
from modelplane.spec.seldon_resources.fields import (
    MAX_COUNT,
    MAX_SHOWN,
    Fields,
    ResourceSpecError,
    Translation,
    check_text,
    checked_limits,
    kubernetes_meta,
    name_of,
    resource_parts,
    shown,
)
from modelplane.whole_numbers import is_whole_number

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


_KUBERNETES_EXPONENT = re.compile(r"\s*(\d+(?:\.\d+)?)[eE]\+?(\d{1,2})\s*", re.ASCII)


def memory_bytes(value: object, field: str) -> int:
    """A memory size as a Kubernetes quantity (100Mi, 1G, 1e9, a plain number) or as the CLI writes it (2GiB)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ResourceSpecError(f"{field} must be a size such as 100Mi or 1G, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ResourceSpecError(f"{field} must be a size such as 100Mi or 1G, not {shown(value)}")
    text = str(value) if not isinstance(value, float) else repr(value)
    check_text(text, field)
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
        problem = str(error) if len(str(error)) <= 2 * MAX_SHOWN else f"{shown(value)} is not a size"
        raise ResourceSpecError(f"{field}: {problem}") from None


def _text_value(value: object, field: str) -> str:
    """A parameter's value: a scalar (string, number or boolean) as text, as YAML wrote it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return check_text(value, field)
    if isinstance(value, int | float):
        return str(value)
    raise ResourceSpecError(f"{field} must be a string or a number, not {type(value).__name__}")


def _references(fields: Fields, what: str) -> tuple[str | None, str | None]:
    model, pipeline = fields.text("modelRef"), fields.text("pipelineRef")
    if model is not None and pipeline is not None:
        raise ResourceSpecError(f"{fields.where} names both a modelRef and a pipelineRef; {what} takes one")
    return model, pipeline


def model_from_resource(resource: object) -> Translation[pb.Model]:
    """The LoadModel message of a Model resource; raises ResourceSpecError naming the first bad field."""
    metadata, spec, unknown = resource_parts(resource, "Model")
    meta = pb.MetaData(name=name_of(metadata), kind="Model")
    kubernetes = kubernetes_meta(metadata)
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
    return Translation(checked_limits(model, "model"), tuple(spec_unknown), tuple(unmapped))


def _model_spec(spec: Fields) -> pb.ModelSpec:
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
