"""Seldon's ``Model`` resource (YAML) to the Scheduler API's ``Model`` message, with clear errors.

apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {name: iris, namespace: default}
spec:
  storageUri: s3://models/iris        # or a local path, file://, http(s)://...#sha256=...
  artifactVersion: 1                  # optional
  requirements: [sklearn]
  memory: 100Mi
  replicas: 1                         # also minReplicas, maxReplicas
  server: mlserver                    # optional pin
  secretName: s3-credentials          # optional: storage secret
  parameters: [{name: sha256, value: "..."}]
"""

from __future__ import annotations

from typing import Any

import yaml

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.sizes import parse_size

API_VERSIONS = ("mlops.seldon.io/v1alpha1", "mlops.seldon.io/v1")
MAX_MANIFEST_BYTES = 1024 * 1024
_SPEC_KEYS = {
    "storageUri",
    "artifactVersion",
    "requirements",
    "memory",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "server",
    "secretName",
    "parameters",
    "explainer",
    "llm",
}


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the field."""


_KIND_NAMES = {dict: "mapping", list: "list", str: "string", int: "whole number"}
_INT64 = (-(2**63), 2**63 - 1)


def _get(mapping: dict[str, Any], key: str, kind: type, where: str, *, required: bool = False) -> Any:
    field = f"{where}.{key}" if where else key
    if key not in mapping or mapping[key] is None:
        if required:
            raise ManifestError(f"{field} is missing")
        return None
    value = mapping[key]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ManifestError(f"{field} must be a {_KIND_NAMES.get(kind, kind.__name__)}, not {type(value).__name__}")
    if isinstance(value, str):
        _check_text(value, field)
    return value


def _check_text(value: str, field: str) -> str:
    """Protobuf strings must be valid UTF-8: YAML escapes can produce lone surrogates that are not."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ManifestError(f"{field} is not valid Unicode text") from None
    return value


def _scalar_text(value: object, field: str) -> str:
    """A scalar (string, number or boolean) as text, as YAML wrote it; never a nested structure."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _check_text(value, field)
    if isinstance(value, int | float):
        return str(value)
    raise ManifestError(f"{field} must be a string or a number, not {type(value).__name__}")


def _count(spec: dict[str, Any], key: str) -> int | None:
    value = _get(spec, key, int, "spec")
    if value is not None and not 0 <= value <= 1000:
        raise ManifestError(f"spec.{key} must be between 0 and 1000, not {value}")
    return value  # type: ignore[no-any-return]


def parse_model_manifest(text: str) -> pb.Model:
    """The Model message a manifest describes; raises ManifestError naming the first bad field."""
    if len(text.encode()) > MAX_MANIFEST_BYTES:
        raise ManifestError("the manifest is larger than 1 MiB")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ManifestError(f"not valid YAML: {error}") from None
    except RecursionError:
        raise ManifestError("not valid YAML: nested too deeply") from None
    if not isinstance(document, dict):
        raise ManifestError("the manifest must be a mapping with apiVersion, kind, metadata and spec")
    if document.get("apiVersion") not in API_VERSIONS:
        raise ManifestError(f"apiVersion must be one of {', '.join(API_VERSIONS)}, not {document.get('apiVersion')!r}")
    if document.get("kind") != "Model":
        raise ManifestError(f"kind must be Model, not {document.get('kind')!r}")
    metadata = _get(document, "metadata", dict, "", required=True)
    spec = _get(document, "spec", dict, "", required=True)
    unknown = sorted((str(key) for key in spec if key not in _SPEC_KEYS), key=str)
    if unknown:
        raise ManifestError(f"spec has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_SPEC_KEYS))}")
    model = pb.Model(meta=_metadata(metadata), modelSpec=_model_spec(spec))
    replicas, minimum, maximum = _count(spec, "replicas"), _count(spec, "minReplicas"), _count(spec, "maxReplicas")
    model.deploymentSpec.CopyFrom(
        pb.DeploymentSpec(
            replicas=1 if replicas is None else replicas, minReplicas=minimum or 0, maxReplicas=maximum or 0
        )
    )
    return model


def _metadata(metadata: dict[str, Any]) -> pb.MetaData:
    meta = pb.MetaData(name=_get(metadata, "name", str, "metadata", required=True), kind="Model")
    namespace = _get(metadata, "namespace", str, "metadata")
    generation = _get(metadata, "generation", int, "metadata")
    if generation is not None and not _INT64[0] <= generation <= _INT64[1]:
        raise ManifestError(f"metadata.generation {generation} is out of range")
    if namespace is not None or generation is not None:
        meta.kubernetesMeta.CopyFrom(pb.KubernetesMeta(namespace=namespace or "", generation=generation or 0))
    return meta


def _model_spec(spec: dict[str, Any]) -> pb.ModelSpec:
    model_spec = pb.ModelSpec(uri=_get(spec, "storageUri", str, "spec", required=True))
    version = _count(spec, "artifactVersion")
    if version is not None:
        model_spec.artifactVersion = version
    requirements = _get(spec, "requirements", list, "spec") or []
    if not all(isinstance(r, str) for r in requirements):
        raise ManifestError("spec.requirements must be a list of strings")
    for requirement in requirements:
        _check_text(requirement, "spec.requirements")
    model_spec.requirements.extend(requirements)
    if spec.get("memory") is not None:
        try:
            model_spec.memoryBytes = parse_size(_scalar_text(spec["memory"], "spec.memory"))
        except ValueError as error:
            raise ManifestError(f"spec.memory: {error}") from None
    server = _get(spec, "server", str, "spec")
    if server is not None:
        model_spec.server = server
    secret = _get(spec, "secretName", str, "spec")
    if secret is not None:
        model_spec.storageConfig.storageSecretName = secret
    for index, parameter in enumerate(_get(spec, "parameters", list, "spec") or []):
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise ManifestError(f"spec.parameters[{index}] must be a mapping with a name and a value")
        field = f"spec.parameters[{index}]"
        value = parameter.get("value")
        model_spec.parameters.add(
            name=_check_text(parameter["name"], f"{field}.name"),
            value="" if value is None else _scalar_text(value, f"{field}.value"),
        )
    return model_spec
