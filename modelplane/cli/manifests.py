"""A Model manifest file (YAML) to the Scheduler API's ``Model`` message, with clear errors.

The YAML is read here; the resource's translation is modelplane/spec/seldon_resources/'s, the same the controller
uses, so ``modelplane model load -f`` and a Model applied to Kubernetes make the same LoadModel. One difference: a
manifest is typed by hand, so a field the translation does not know (a typo, most likely) is refused here, where the
controller leaves it to the resource and logs it.

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
from modelplane import bounded_yaml
from modelplane.spec.seldon_resources import MODEL_SPEC_FIELDS, ResourceSpecError, listed, model_from_resource

MAX_MANIFEST_BYTES = 1024 * 1024
MAX_DOCUMENTS = 100  # in one manifest file (``---`` between them)
_MAX_SHOWN = 80  # characters of a message quoted from PyYAML


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the field, on one line of bounded length."""


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


def load_yaml_documents(text: str) -> list[Any]:
    """Every YAML document of ``text`` (``---`` between them; empty ones left out); ManifestError for anything
    PyYAML cannot read, said on one line."""
    if len(text.encode()) > MAX_MANIFEST_BYTES:
        raise ManifestError("the manifest is larger than 1 MiB")
    try:
        documents = [document for document in bounded_yaml.safe_load_all(text) if document is not None]
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
    if len(documents) > MAX_DOCUMENTS:
        raise ManifestError(f"the manifest holds {len(documents)} documents; at most {MAX_DOCUMENTS} are taken")
    return documents


def model_of(document: object) -> pb.Model:
    """The Model message of one Model document; ManifestError naming the first bad or unknown field."""
    if not isinstance(document, dict):
        raise ManifestError("the manifest must be a mapping with apiVersion, kind, metadata and spec")
    try:
        translation = model_from_resource(document)
    except ResourceSpecError as error:
        raise ManifestError(str(error)) from None
    if translation.unknown:
        unknown = sorted(field.removeprefix("spec.") for field in translation.unknown)
        raise ManifestError(f"spec has unknown field(s) {listed(unknown)}; known: {', '.join(MODEL_SPEC_FIELDS)}")
    return translation.message


def parse_model_manifest(text: str) -> pb.Model:
    """The Model message a manifest describes; raises ManifestError naming the first bad field."""
    documents = load_yaml_documents(text)
    if not documents:
        return model_of(None)
    if len(documents) != 1:
        raise ManifestError(
            f"the manifest holds {len(documents)} documents, not one Model; `modelplane load -f` takes several"
        )
    return model_of(documents[0])
