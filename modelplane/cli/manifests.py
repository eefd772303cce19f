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
    """The manifest cannot be used; the message names the field, on one line of bounded length."""


_MAX_SHOWN = 80  # characters of a user's value quoted in a message
_MAX_LISTED = 10  # unknown fields named in a message


def _shown(value: object) -> str:
    """``value`` for a message: its repr (so on one line), at most _MAX_SHOWN characters."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else f"{text[: _MAX_SHOWN - 3]}..."


def _key_name(key: object) -> str:
    return key if isinstance(key, str) and key.isidentifier() and len(key) <= _MAX_SHOWN else _shown(key)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what, on one line: PyYAML's own text spans several lines and quotes the input."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(part for part in (error.context, error.problem) if part)
        return f"not valid YAML{where}: {_one_line(what or type(error).__name__)}"
    return f"not valid YAML: {_one_line(str(error))}"


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 2 * _MAX_SHOWN else f"{flat[: 2 * _MAX_SHOWN - 3]}..."


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
        raise ManifestError(f"spec.{key} must be between 0 and 1000, not {_shown(value)}")
    return value  # type: ignore[no-any-return]


def parse_model_manifest(text: str) -> pb.Model:
    """The Model message a manifest describes; raises ManifestError naming the first bad field."""
    if len(text.encode()) > MAX_MANIFEST_BYTES:
        raise ManifestError("the manifest is larger than 1 MiB")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ManifestError(_yaml_problem(error)) from None
    except RecursionError:
        raise ManifestError("not valid YAML: nested too deeply") from None
    except Exception as error:
        # A tagged or implicit value PyYAML cannot build (a timestamp 2020-13-45, !!float abc, an integer
        # of 5,000 digits, an empty !!timestamp): its constructors raise plain Python errors (ValueError,
        # AttributeError, ...), not YAMLError. The text is the user's, so each is theirs to fix.
        if isinstance(error, ValueError | OverflowError):
            detail = _one_line(str(error))
        else:
            detail = f"a tagged value is malformed ({type(error).__name__} in the YAML library)"
        raise ManifestError(f"not valid YAML: a value cannot be read: {detail}") from None
    if not isinstance(document, dict):
        raise ManifestError("the manifest must be a mapping with apiVersion, kind, metadata and spec")
    if document.get("apiVersion") not in API_VERSIONS:
        raise ManifestError(
            f"apiVersion must be one of {', '.join(API_VERSIONS)}, not {_shown(document.get('apiVersion'))}"
        )
    if document.get("kind") != "Model":
        raise ManifestError(f"kind must be Model, not {_shown(document.get('kind'))}")
    metadata = _get(document, "metadata", dict, "", required=True)
    spec = _get(document, "spec", dict, "", required=True)
    unknown = sorted(_key_name(key) for key in spec if key not in _SPEC_KEYS)
    if unknown:
        listed = ", ".join(unknown[:_MAX_LISTED]) + (
            f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
        )
        raise ManifestError(f"spec has unknown field(s) {listed}; known: {', '.join(sorted(_SPEC_KEYS))}")
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
        raise ManifestError(f"metadata.generation {_shown(generation)} is out of range")
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
        memory = _scalar_text(spec["memory"], "spec.memory")
        try:
            model_spec.memoryBytes = parse_size(memory)
        except ValueError as error:
            problem = str(error) if len(str(error)) <= 2 * _MAX_SHOWN else f"{_shown(memory)} is not a size"
            raise ManifestError(f"spec.memory: {problem}") from None
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
