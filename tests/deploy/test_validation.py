"""Every object deploy/ renders to is valid: built-in kinds against Kubernetes 1.32's own schemas (strict: an
unknown or misspelt field fails), our CRDs as apiextensions.k8s.io/v1 objects with structural schemas, and every
instance of our CRDs (ServerConfigs, the samples) against the openAPIV3Schema of its CRD, with jsonschema.

Both use jsonschema (kubernetes-validate is its Draft 2020-12 validator over the published Kubernetes schemas);
the CRD instances are checked the same way with our CRDs' schemas as the schema.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.rendering import Manifest, crd_schemas, kustomizations, render

KUBERNETES_VERSION = "1.32"
OUR_GROUP = "mlops.seldon.io"


def test_every_kustomization_is_found() -> None:
    assert set(kustomizations()) == {"crds", "base", "samples", "overlays/single-node", "overlays/tls"}


@pytest.mark.parametrize("folder", kustomizations())
def test_every_rendered_object_validates(folder: str) -> None:
    documents = render(folder)
    assert documents, f"deploy/{folder} renders nothing"
    schemas = crd_schemas()
    kinds: Counter[str] = Counter()
    for document in documents:
        name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
        if document["apiVersion"].split("/")[0] == OUR_GROUP:
            schema = schemas.get((document["apiVersion"], document["kind"]))
            assert schema is not None, (
                f"{name}: no CRD in deploy/crds defines {document['apiVersion']} {document['kind']}"
            )
            errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(document)]
            assert not errors, f"deploy/{folder} {name} does not fit its CRD: {errors}"
        else:
            try:
                kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                pytest.fail(
                    f"deploy/{folder} {name} is not a valid {KUBERNETES_VERSION} object at {path}: {error.message}"
                )
        kinds[document["kind"]] += 1
    # kubernetes-validate raises SchemaNotFoundError for a kind it does not know: none got through unchecked.
    assert sum(kinds.values()) == len(documents)


def test_the_crds_define_the_five_kinds_served_and_stored() -> None:
    crds = render("crds")
    assert sorted(crd["spec"]["names"]["kind"] for crd in crds) == [
        "Experiment",
        "Model",
        "Pipeline",
        "Server",
        "ServerConfig",
    ]
    for crd in crds:
        assert crd["spec"]["group"] == OUR_GROUP
        assert crd["spec"]["scope"] == "Namespaced"
        assert [(v["name"], v["served"], v["storage"]) for v in crd["spec"]["versions"]] == [("v1alpha1", True, True)]
        assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.{OUR_GROUP}"


def test_status_and_printer_columns_as_seldons_users_read_them() -> None:
    ready = {"Model": "ModelReady", "Pipeline": "PipelineReady", "Experiment": "ExperimentReady", "Server": "Ready"}
    for crd in render("crds"):
        kind = crd["spec"]["names"]["kind"]
        version = crd["spec"]["versions"][0]
        columns = {column["name"]: column["jsonPath"] for column in version.get("additionalPrinterColumns", [])}
        assert columns.get("Age") == ".metadata.creationTimestamp", kind
        if kind == "ServerConfig":
            continue
        assert version["subresources"]["status"] == {}, kind
        assert columns["Ready"] == f'.status.conditions[?(@.type=="{ready[kind]}")].status', kind
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        condition = status["conditions"]["items"]["properties"]
        assert {"type", "status", "reason", "message", "lastTransitionTime"} <= set(condition), kind
        assert "observedGeneration" in status, kind
        if kind in ("Model", "Server"):
            assert {"replicas", "availableReplicas", "selector"} <= set(status), kind
            scale = version["subresources"]["scale"]
            assert scale["specReplicasPath"] == ".spec.replicas"
            assert scale["labelSelectorPath"] == ".status.selector"


# The rules of a structural schema (Kubernetes' "Specifying a structural schema"): the API server refuses a CRD
# that breaks them, and kubernetes-validate's CRD schema does not check them.
_VALUE_VALIDATION_FORBIDDEN = {"type", "description", "default", "additionalProperties", "nullable"}


def _node_problems(node: Manifest, path: str) -> list[str]:
    """The rules about one node's own keywords."""
    problems: list[str] = []
    preserved = node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("x-kubernetes-int-or-string") is True:
        if "type" in node or node.get("anyOf") not in (None, [{"type": "integer"}, {"type": "string"}]):
            problems.append(f"{path}: an int-or-string takes no type and only anyOf [integer, string]")
    elif "type" not in node and not preserved:
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    if node.get("type") in ("string", "integer", "number", "boolean") and ("properties" in node or "items" in node):
        problems.append(f"{path}: a scalar with properties or items")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{path}: an array without items")
    return problems


def _value_validation_problems(node: Manifest, path: str) -> list[str]:
    """anyOf/allOf/oneOf/not may only validate values, never say what the structure is."""
    problems: list[str] = []
    for keyword in ("anyOf", "allOf", "oneOf", "not"):
        if keyword not in node or (keyword == "anyOf" and node.get("x-kubernetes-int-or-string") is True):
            continue
        for branch in node[keyword] if isinstance(node[keyword], list) else [node[keyword]]:
            forbidden = _VALUE_VALIDATION_FORBIDDEN & set(branch) | {k for k in branch if k.startswith("x-kubernetes")}
            if forbidden:
                problems.append(f"{path}.{keyword}: {sorted(forbidden)} inside a value validation")
    return problems


def structural_problems(node: Any, path: str, *, root: bool = False) -> list[str]:
    """Why ``node`` (an openAPIV3Schema) is not structural; empty when it is."""
    if not isinstance(node, dict):
        return [f"{path}: not a schema object"]
    problems = _node_problems(node, path) + _value_validation_problems(node, path)
    for name, child in (node.get("properties") or {}).items():
        if root and name == "metadata" and set(child) - {"type"}:
            problems.append(f"{path}.metadata: only its type may be given")
        problems += structural_problems(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}{{}}")
    return problems


def test_every_crd_schema_is_structural() -> None:
    for (api_version, kind), schema in crd_schemas().items():
        assert structural_problems(schema, f"{kind}({api_version})", root=True) == []


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "object", "properties": {"a": {}}}, "X.a: no type"),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, "X.a: an array without items"),
        (
            {"type": "object", "properties": {"m": {"x-kubernetes-int-or-string": True, "type": "string"}}},
            "X.m: an int-or-string takes no type and only anyOf [integer, string]",
        ),
        (
            {"type": "object", "not": {"type": "object", "required": ["a"]}},
            "X.not: ['type'] inside a value validation",
        ),
        (
            {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "X: properties and additionalProperties together",
        ),
    ],
)
def test_the_structural_check_can_fail(schema: Manifest, problem: str) -> None:
    assert problem in structural_problems(schema, "X")


def test_every_spec_object_keeps_unknown_fields() -> None:
    """Seldon's manifests, and newer ones, must be stored whole: no object in a spec may prune fields."""

    def pruning(node: Manifest, path: str) -> list[str]:
        found = []
        keeps = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields") is True
        if node.get("type") == "object" and not keeps:
            found.append(path)
        for name, child in (node.get("properties") or {}).items():
            found += pruning(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            found += pruning(node["items"], f"{path}[]")
        return found

    for (_, kind), schema in crd_schemas().items():
        assert pruning(schema["properties"]["spec"], f"{kind}.spec") == []
