"""modelplane/spec/seldon_resources/: Seldon's Model, Pipeline and Experiment resources to the Scheduler API.

Every field maps (or is named as having no place); unknown fields are named, not refused; every bad resource is a
ResourceSpecError that names the field on one bounded line; and (Hypothesis) no JSON-like body raises anything else.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.seldon_resources import (
    MODEL_SPEC_FIELDS,
    ResourceSpecError,
    experiment_from_resource,
    model_from_resource,
    pipeline_from_resource,
)

V = "mlops.seldon.io/v1alpha1"


def resource(kind: str, spec: dict[str, Any], name: str = "r", **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": V, "kind": kind, "metadata": {"name": name, **metadata}, "spec": spec}


EVERY_MODEL_FIELD = {
    "storageUri": "s3://models/iris",
    "modelType": "sklearn",
    "artifactVersion": 3,
    "schemaUri": "gs://schemas/iris.json",
    "secretName": "store",
    "requirements": ["sklearn", "mlserver"],
    "memory": "100Mi",
    "replicas": 2,
    "minReplicas": 1,
    "maxReplicas": 4,
    "server": "mlserver",
    "preloaded": True,
    "dedicated": True,
    "logger": {"percent": 10},
    "parameters": [{"name": "a", "value": "1"}, {"name": "b", "value": 2}, {"name": "c", "value": True}],
    "llm": {"modelRef": "base"},
    "dataflow": {"cleanTopicsOnDelete": True},
}


def test_every_model_field_maps_or_is_named_as_having_no_place() -> None:
    assert set(EVERY_MODEL_FIELD) | {"explainer"} == set(MODEL_SPEC_FIELDS)
    translation = model_from_resource(resource("Model", EVERY_MODEL_FIELD, "iris", namespace="ns", generation=7))
    model = translation.message
    assert model.meta == pb.MetaData(
        name="iris", kind="Model", kubernetesMeta=pb.KubernetesMeta(namespace="ns", generation=7)
    )
    spec = model.modelSpec
    assert (spec.uri, spec.artifactVersion, spec.memoryBytes, spec.server) == (
        "s3://models/iris",
        3,
        100 * 2**20,
        "mlserver",
    )
    assert spec.storageConfig == pb.StorageConfig(storageSecretName="store")
    assert list(spec.requirements) == ["sklearn", "mlserver"]
    assert [(p.name, p.value) for p in spec.parameters] == [("a", "1"), ("b", "2"), ("c", "true")]
    assert spec.llm == pb.LlmSpec(modelRef="base")
    assert model.deploymentSpec == pb.DeploymentSpec(replicas=2, minReplicas=1, maxReplicas=4, logPayloads=True)
    assert model.dataflowSpec == pb.DataflowSpec(cleanTopicsOnDelete=True)
    assert translation.unknown == ()
    assert set(translation.unmapped) == {
        "spec.modelType",
        "spec.schemaUri",
        "spec.preloaded",
        "spec.dedicated",
        "spec.logger.percent",
    }
    explainer = model_from_resource(
        resource("Model", {"storageUri": "/m", "explainer": {"type": "anchor_tabular", "pipelineRef": "p"}})
    ).message
    assert explainer.modelSpec.explainer == pb.ExplainerSpec(type="anchor_tabular", pipelineRef="p")


@pytest.mark.parametrize(
    ("memory", "expected"),
    [("100Mi", 100 * 2**20), ("1G", 10**9), ("1e9", 10**9), ("2GiB", 2 * 2**30), (2048, 2048), ("1.5Gi", 3 * 2**29)],
)
def test_memory_is_a_kubernetes_quantity(memory: object, expected: int) -> None:
    assert (
        model_from_resource(resource("Model", {"storageUri": "/m", "memory": memory})).message.modelSpec.memoryBytes
        == expected
    )


def test_unknown_fields_are_named_not_refused() -> None:
    translation = model_from_resource(
        resource("Model", {"storageUri": "/m", "gpu": 1, "logger": {"percent": 5, "sink": "x"}})
    )
    assert translation.unknown == ("spec.logger.sink", "spec.gpu")
    assert translation.message.modelSpec.uri == "/m"


BAD = [
    ("Model", {"storageUri": 5}, "spec.storageUri must be a string, not int"),
    ("Model", {}, "spec.storageUri is missing"),
    ("Model", {"storageUri": "/m", "replicas": -1}, "spec.replicas must be between 0 and 1000"),
    ("Model", {"storageUri": "/m", "memory": "128m"}, "milli-bytes"),
    ("Model", {"storageUri": "/m", "memory": "lots"}, "spec.memory"),
    ("Model", {"storageUri": "/m", "memory": "1e30"}, "more than 1 PiB"),
    ("Model", {"storageUri": "/m", "explainer": {"type": "a"}, "llm": {}}, "cannot both be set"),
    ("Model", {"storageUri": "/m", "llm": {"modelRef": "a", "pipelineRef": "b"}}, "spec.llm names both"),
    ("Model", {"storageUri": "/m", "logger": {"percent": 101}}, "spec.logger.percent must be between 0 and 100"),
    ("Model", {"storageUri": "/m", "preloaded": "yes"}, "spec.preloaded must be a true or false"),
    ("Model", {"storageUri": "/m", "parameters": [{"value": "x"}]}, "spec.parameters[0].name is missing"),
    ("Model", {"storageUri": "x" * 5000}, "model.modelSpec.uri is 5000 characters long"),
    ("Pipeline", {"steps": [{"name": "a", "inputsJoinType": "sideways"}]}, "must be inner, outer or any"),
    ("Pipeline", {"steps": [{"name": "a", "inputsJoinType": "any", "inputsJoin": "any"}]}, "give one"),
    ("Pipeline", {"steps": [{}]}, "spec.steps[0].name is missing"),
    ("Pipeline", {"steps": "a"}, "spec.steps must be a list"),
    ("Experiment", {"candidates": [{"name": "a", "weight": -1}]}, "spec.candidates[0].weight"),
    ("Experiment", {"resourceType": "server"}, "spec.resourceType must be model or pipeline"),
    ("Experiment", {"mirror": {"name": "m", "percent": 200}}, "spec.mirror.percent"),
]
TRANSLATE = {"Model": model_from_resource, "Pipeline": pipeline_from_resource, "Experiment": experiment_from_resource}


@pytest.mark.parametrize(("kind", "spec", "problem"), BAD, ids=[row[2][:40] for row in BAD])
def test_a_bad_resource_names_the_field(kind: str, spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(ResourceSpecError) as caught:
        TRANSLATE[kind](resource(kind, spec))
    assert problem in str(caught.value)


def test_pipeline_fields_in_seldons_and_the_protos_names() -> None:
    spec = {
        "input": {
            "externalInputs": ["other"],
            "externalTriggers": ["trigger"],
            "joinWindowMs": 5,
            "joinType": "outer",
            "triggersJoinType": "any",
            "tensorMap": {"other.outputs.a": "x"},
        },
        "steps": [
            {"name": "a", "inputs": ["p.inputs"], "joinWindowMs": 7, "tensorMap": {"p.inputs.x": "y"}},
            {
                "name": "b",
                "inputs": ["a"],
                "triggers": ["p.inputs.t"],
                "inputsJoin": "OUTER",
                "triggersJoinType": "any",
                "batch": {"size": 4, "windowMs": 9, "rolling": True},
            },
        ],
        "output": {"steps": ["b"], "joinWindowMs": 3, "stepsJoin": "any", "tensorMap": {"b.outputs.o": "out"}},
        "dataflow": {"cleanTopicsOnDelete": True},
        "allowCycles": True,
        "maxStepRevisits": 3,
    }
    translation = pipeline_from_resource(resource("Pipeline", spec, "p", namespace="ns", generation=2))
    pipeline = translation.message
    assert pipeline.kubernetesMeta == pb.KubernetesMeta(namespace="ns", generation=2)
    assert pipeline.input == pb.PipelineInput(
        externalInputs=["other"],
        externalTriggers=["trigger"],
        joinWindowMs=5,
        joinType=pb.PipelineInput.OUTER,
        triggersJoin=pb.PipelineInput.ANY,
        tensorMap={"other.outputs.a": "x"},
    )
    a, b = pipeline.steps
    assert (a.name, list(a.inputs), a.joinWindowMs, dict(a.tensorMap)) == ("a", ["p.inputs"], 7, {"p.inputs.x": "y"})
    assert (b.inputsJoin, b.triggersJoin, list(b.triggers)) == (
        pb.PipelineStep.OUTER,
        pb.PipelineStep.ANY,
        ["p.inputs.t"],
    )
    assert (b.batch.size, b.batch.windowMs) == (4, 9)
    assert pipeline.output == pb.PipelineOutput(
        steps=["b"], joinWindowMs=3, stepsJoin=pb.PipelineOutput.ANY, tensorMap={"b.outputs.o": "out"}
    )
    assert (pipeline.dataflowSpec.cleanTopicsOnDelete, pipeline.allowCycles, pipeline.maxStepRevisits) == (
        True,
        True,
        3,
    )
    assert translation.unmapped == ("spec.steps[1].batch.rolling",)


def test_experiment_fields() -> None:
    spec = {
        "default": "a",
        "resourceType": "pipeline",
        "candidates": [{"name": "a", "weight": 60}, {"name": "b", "weight": 40}],
        "mirror": {"name": "c", "percent": 25},
        "config": {"stickySessions": True},
    }
    experiment = experiment_from_resource(resource("Experiment", spec, "ab", namespace="ns", generation=4)).message
    assert experiment == pb.Experiment(
        name="ab",
        default="a",
        resourceType=pb.PIPELINE,
        candidates=[pb.ExperimentCandidate(name="a", weight=60), pb.ExperimentCandidate(name="b", weight=40)],
        mirror=pb.ExperimentMirror(name="c", percent=25),
        config=pb.ExperimentConfig(stickySessions=True),
        kubernetesMeta=pb.KubernetesMeta(namespace="ns", generation=4),
    )


# ------------------------------------------------------------------------------------- properties

MAX_MESSAGE = 600

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)
MODEL_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "storageUri": st.text(min_size=1, max_size=30),
    "memory": st.one_of(st.text(alphabet="0123456789.eEkKMGTPi m", max_size=8), st.integers(), st.floats()),
    "replicas": st.integers(min_value=-3, max_value=1003),
    "parameters": st.lists(st.fixed_dictionaries({"name": st.text(max_size=5), "value": json_scalars}), max_size=3),
    "explainer": st.fixed_dictionaries({"type": st.text(max_size=5)}, optional={"modelRef": st.text(max_size=5)}),
    "llm": st.fixed_dictionaries({}, optional={"modelRef": st.text(max_size=5), "pipelineRef": st.text(max_size=5)}),
}


def _check(kind: str, body: object) -> None:
    try:
        TRANSLATE[kind](body)
    except ResourceSpecError as error:
        assert str(error)
        assert "\n" not in str(error)
        assert len(str(error)) <= MAX_MESSAGE, str(error)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(sorted(TRANSLATE)),
    spec=st.dictionaries(
        st.sampled_from([*MODEL_SPEC_FIELDS, "steps", "input", "output", "candidates", "mirror", "default", "x"]),
        json_values,
        max_size=6,
    ),
    metadata=st.dictionaries(st.sampled_from(["name", "namespace", "generation", "uid"]), json_values, max_size=4),
)
def test_any_json_body_translates_or_names_its_problem(
    kind: str, spec: dict[str, Any], metadata: dict[str, Any]
) -> None:
    _check(kind, {"apiVersion": V, "kind": kind, "metadata": metadata, "spec": spec})


@settings(max_examples=400, deadline=None)
@given(spec=st.fixed_dictionaries({}, optional=MODEL_VALUES), body=json_values)
def test_plausible_models_and_any_body_translate_or_name_their_problem(spec: dict[str, Any], body: object) -> None:
    _check("Model", resource("Model", spec, "m", namespace="ns", generation=1))
    _check("Model", body)
