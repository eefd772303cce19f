"""Our CRDs' schemas accept Seldon-style manifests that use every field, keep fields they do not name, and
refuse what the API server must refuse: a Model without storageUri, a value of the wrong type, out of range.

Checked with jsonschema's Draft 2020-12 validator over each CRD's openAPIV3Schema (the subset of OpenAPI v3 a
CRD may use is JSON Schema; the x-kubernetes-* extensions are ignored here and covered by test_validation.py).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.deploy.rendering import Manifest, crd_schemas, render

API_VERSION = "mlops.seldon.io/v1alpha1"

MODEL: Manifest = {
    "apiVersion": API_VERSION,
    "kind": "Model",
    "metadata": {"name": "income", "namespace": "models"},
    "spec": {
        "storageUri": "s3://models/income/",
        "modelType": "sklearn",
        "artifactVersion": 2,
        "schemaUri": "s3://models/income/schema.json",
        "secretName": "modelstore",
        "requirements": ["sklearn", "mlserver"],
        "memory": "256Mi",
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": 4,
        "server": "mlserver",
        "preloaded": False,
        "dedicated": True,
        "logger": {"percent": 10},
        "explainer": {"type": "anchor_tabular", "modelRef": "income-classifier"},
        "parameters": [{"name": "sha256", "value": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}],
        "dataflow": {"cleanTopicsOnDelete": True},
    },
}

PIPELINE: Manifest = {
    "apiVersion": API_VERSION,
    "kind": "Pipeline",
    "metadata": {"name": "tfsimples"},
    "spec": {
        "input": {
            "externalInputs": ["other.outputs"],
            "externalTriggers": ["ready.outputs"],
            "joinWindowMs": 100,
            "joinType": "inner",
            "triggersJoinType": "any",
            "tensorMap": {"other.outputs.OUTPUT0": "INPUT0"},
        },
        "steps": [
            {"name": "tfsimple1"},
            {
                "name": "tfsimple2",
                "inputs": ["tfsimple1.outputs.OUTPUT0", "tfsimple1.outputs.OUTPUT1"],
                "tensorMap": {"tfsimple1.outputs.OUTPUT0": "INPUT0", "tfsimple1.outputs.OUTPUT1": "INPUT1"},
                "inputsJoinType": "outer",
                "joinWindowMs": 50,
                "triggers": ["tfsimple1.outputs.OUTPUT0"],
                "triggersJoinType": "inner",
                "batch": {"size": 8, "windowMs": 20},
            },
        ],
        "output": {"steps": ["tfsimple2"], "stepsJoin": "inner", "joinWindowMs": 0, "tensorMap": {}},
        "dataflow": {"cleanTopicsOnDelete": False},
        "allowCycles": False,
        "maxStepRevisits": 0,
    },
}

EXPERIMENT: Manifest = {
    "apiVersion": API_VERSION,
    "kind": "Experiment",
    "metadata": {"name": "iris-ab"},
    "spec": {
        "default": "iris",
        "resourceType": "model",
        "candidates": [{"name": "iris", "weight": 50}, {"name": "iris2", "weight": 50}],
        "mirror": {"name": "iris-shadow", "percent": 25},
        "config": {"stickySessions": True},
    },
}

SERVER: Manifest = {
    "apiVersion": API_VERSION,
    "kind": "Server",
    "metadata": {"name": "mlserver-big"},
    "spec": {
        "serverConfig": "mlserver",
        "extraCapabilities": ["income"],
        "capabilities": ["sklearn", "mlserver"],
        "imageOverrides": {"agent": {"image": "registry.example/modelplane:0.1.1"}},
        "podSpec": {"nodeSelector": {"pool": "cpu-large"}, "containers": [{"name": "mlserver"}]},
        "replicas": 2,
        "minReplicas": 1,
        "maxReplicas": 5,
    },
}


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(crd_schemas()[(api_version, kind)])


def problems(document: Manifest) -> list[str]:
    """What the CRD's schema finds wrong with ``document``, one line each with its path; empty when it fits."""
    validator = _validator(document["apiVersion"], document["kind"])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def changed(document: Manifest, path: str, value: Any) -> Manifest:
    """``document`` with the field at dotted ``path`` set to ``value`` (removed when value is _REMOVED)."""
    result = copy.deepcopy(document)
    *parents, last = path.split(".")
    node: Any = result
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _REMOVED:
        del node[last]
    else:
        node[last] = value
    return result


_REMOVED = object()


@pytest.mark.parametrize("document", [MODEL, PIPELINE, EXPERIMENT, SERVER], ids=lambda d: d["kind"])
def test_a_manifest_using_every_field_fits(document: Manifest) -> None:
    assert problems(document) == []


def test_a_model_with_llm_instead_of_explainer_fits() -> None:
    model = changed(MODEL, "spec.explainer", _REMOVED)
    assert problems(changed(model, "spec.llm", {"modelRef": "chat"})) == []


@pytest.mark.parametrize("document", [MODEL, PIPELINE, EXPERIMENT, SERVER], ids=lambda d: d["kind"])
def test_unknown_fields_fit_anywhere_in_a_spec(document: Manifest) -> None:
    with_unknown = changed(document, "spec.fieldFromANewerSeldon", {"anything": [1, "two"]})
    assert problems(with_unknown) == []


@pytest.mark.parametrize(
    ("document", "path", "value", "why"),
    [
        (MODEL, "spec.storageUri", _REMOVED, "'storageUri' is a required property"),
        (MODEL, "spec", _REMOVED, "'spec' is a required property"),
        (MODEL, "spec.storageUri", 5, "5 is not of type 'string'"),
        (MODEL, "spec.storageUri", "", "should be non-empty"),
        (MODEL, "spec.replicas", "two", "'two' is not of type 'integer'"),
        (MODEL, "spec.replicas", -1, "-1 is less than the minimum of 0"),
        (MODEL, "spec.artifactVersion", 2**32, "is greater than the maximum of 4294967295"),
        (MODEL, "spec.memory", "lots", "does not match"),
        (MODEL, "spec.memory", True, "is not valid under any of the given schemas"),
        (MODEL, "spec.requirements", "sklearn", "'sklearn' is not of type 'array'"),
        (MODEL, "spec.parameters", [{"value": "x"}], "'name' is a required property"),
        (MODEL, "spec.logger.percent", 101, "101 is greater than the maximum of 100"),
        (MODEL, "spec.preloaded", "yes", "'yes' is not of type 'boolean'"),
        (MODEL, "spec.llm", {"modelRef": "chat"}, "should not be valid under"),  # beside the explainer: a oneof
        (SERVER, "spec.serverConfig", _REMOVED, "'serverConfig' is a required property"),
        (SERVER, "spec.maxReplicas", 2.5, "2.5 is not of type 'integer'"),
        (PIPELINE, "spec.steps", [], "should be non-empty"),
        (PIPELINE, "spec.steps.0.name", _REMOVED, "'name' is a required property"),
        (PIPELINE, "spec.steps.1.inputsJoinType", "sideways", "'sideways' is not one of ['inner', 'outer', 'any']"),
        (PIPELINE, "spec.output.stepsJoin", "INNER", "'INNER' is not one of ['inner', 'outer', 'any']"),
        (PIPELINE, "spec.input.tensorMap", {"a": 1}, "1 is not of type 'string'"),
        (EXPERIMENT, "spec.candidates.0.weight", _REMOVED, "'weight' is a required property"),
        (EXPERIMENT, "spec.mirror.percent", 150, "150 is greater than the maximum of 100"),
        (EXPERIMENT, "spec.resourceType", "service", "'service' is not one of ['model', 'pipeline']"),
    ],
)
def test_bad_manifests_are_refused(document: Manifest, path: str, value: Any, why: str) -> None:
    found = problems(changed(document, path, value))
    assert any(why in problem for problem in found), f"expected {why!r}, got {found}"


# A Model's declared scalar fields and the JSON type each must have.
_SCALARS = {
    "storageUri": str,
    "modelType": str,
    "schemaUri": str,
    "secretName": str,
    "server": str,
    "artifactVersion": int,
    "replicas": int,
    "minReplicas": int,
    "maxReplicas": int,
    "preloaded": bool,
    "dedicated": bool,
}
_JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _fits(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(_SCALARS)), value=_JSON_VALUES)
def test_a_value_of_the_wrong_type_in_any_model_field_is_refused(field: str, value: Any) -> None:
    document = changed(MODEL, f"spec.{field}", value)
    if _fits(value, _SCALARS[field]):
        return  # right type: range checks are the table's
    assert problems(document), f"spec.{field} = {value!r} was accepted"


def test_kubernetes_validate_in_strict_mode_refuses_a_misspelt_field() -> None:
    """The check test_validation.py relies on for built-in kinds can fail: a typo is not silently dropped."""
    deployment = next(d for d in render("base") if d["kind"] == "Deployment")
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(deployment, "1.32", strict=True)
