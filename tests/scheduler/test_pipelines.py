"""The pipeline control plane's domain: validation, references, the state table, versions, refresh."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import FailedPrecondition, IllegalTransition
from modelplane.spec.limits import MAX_REFERENCES, MAX_STEPS
from scheduler.pipelines import (
    TRANSITIONS,
    PipelineRecord,
    PipelineRegistry,
    PipelineStatus,
    Reference,
    check_transition,
    parse_external_reference,
    parse_reference,
    pipeline_models,
    validate_pipeline,
)

S = PipelineStatus
PS = pb.PipelineVersionState.PipelineStatus


def step(name: str, inputs: list[str] | None = None, triggers: list[str] | None = None) -> pb.PipelineStep:
    return pb.PipelineStep(name=name, inputs=inputs or [], triggers=triggers or [])


def pipeline(name: str = "p", steps: list[pb.PipelineStep] | None = None, **fields: object) -> pb.Pipeline:
    if steps is None:
        steps = [step("a", [f"{name}.inputs"]), step("b", ["a"])]
    return pb.Pipeline(name=name, steps=steps, **fields)  # type: ignore[arg-type]


# ----------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", Reference("p", "a", "outputs")),
        ("a.outputs", Reference("p", "a", "outputs")),
        ("a.inputs", Reference("p", "a", "inputs")),
        ("a.outputs.t1", Reference("p", "a", "outputs", "t1")),
        ("a.inputs.INPUT_0", Reference("p", "a", "inputs", "INPUT_0")),
        ("p", Reference("p", None, "inputs")),
        ("p.inputs", Reference("p", None, "inputs")),
        ("p.inputs.x", Reference("p", None, "inputs", "x")),
    ],
)
def test_parse_reference(text: str, expected: Reference) -> None:
    assert parse_reference(text, "p") == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("a.", "empty part"),
        (".a", "empty part"),
        ("a..outputs", "empty part"),
        ("a.middle", "'inputs' or 'outputs'"),
        ("a.outputs.", "empty part"),
        ("p.outputs", "pipeline's inputs"),
        ("Bad_Step", "Bad_Step"),
        ("a b", "white space"),
        ("x" * 600, "longer than"),
    ],
)
def test_parse_reference_rejects(text: str, fragment: str) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        parse_reference(text, "p")
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("other", Reference("other", None, "outputs")),
        ("other.outputs", Reference("other", None, "outputs")),
        ("other.inputs.t", Reference("other", None, "inputs", "t")),
        ("other.step.s1", Reference("other", "s1", "outputs")),
        ("other.step.s1.inputs", Reference("other", "s1", "inputs")),
        ("other.step.s1.outputs.out", Reference("other", "s1", "outputs", "out")),
    ],
)
def test_parse_external_reference(text: str, expected: Reference) -> None:
    assert parse_external_reference(text, "p") == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("p", "names this pipeline"),
        ("p.step.a", "names this pipeline"),
        ("Other", "Other"),
        ("other.step", "after 'step'"),
        ("other.step.S!", "S!"),
        ("other.sideways", "'inputs' or 'outputs'"),
    ],
)
def test_parse_external_reference_rejects(text: str, fragment: str) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        parse_external_reference(text, "p")
    assert fragment in str(caught.value)


def test_reference_text_form() -> None:
    assert str(Reference("p", "a", "outputs", "t")) == "p.step.a.outputs.t"
    assert str(Reference("p", None, "inputs")) == "p.inputs"


# ----------------------------------------------------------------- validation


def _with_input(**fields: object) -> pb.Pipeline:
    return pipeline(input=pb.PipelineInput(**fields))  # type: ignore[arg-type]


GOOD = [
    pipeline(),
    pipeline(steps=[step("a")]),
    pipeline(steps=[step("a", ["p"]), step("b", ["a.outputs.t"], ["p.inputs.go"])]),
    pipeline(steps=[step("a"), step("b", ["a"])], output=pb.PipelineOutput(steps=["b", "a.outputs.x"])),
    pipeline(steps=[step("a", ["b"]), step("b", ["a"])], allowCycles=True, maxStepRevisits=3),
    pipeline(steps=[step("a", ["a.outputs"])], allowCycles=True, maxStepRevisits=1000),
    _with_input(externalInputs=["other", "other.step.s.outputs.t"], externalTriggers=["third.inputs"]),
    pipeline(steps=[pb.PipelineStep(name="a", tensorMap={"a.outputs.t": "x"})]),
]


@pytest.mark.parametrize("spec", GOOD)
def test_valid_pipelines(spec: pb.Pipeline) -> None:
    validate_pipeline(spec)


BAD: list[tuple[pb.Pipeline, str]] = [
    (pipeline(name=""), "pipeline name is empty"),
    (pipeline(name="Bad"), "'Bad'"),
    (pipeline(steps=[]), "no steps"),
    (pipeline(steps=[step(f"s{i}") for i in range(MAX_STEPS + 1)]), "limit is 256"),
    (pipeline(steps=[step("ok"), step("Not_ok")]), "'Not_ok'"),
    (pipeline(steps=[step("a"), step("a")]), "'a' is used more than once"),
    (pipeline(steps=[step("p")]), "step 'p' has the pipeline's name"),
    (pipeline(steps=[step("a", ["missing"])]), "'missing'"),
    (pipeline(steps=[step("a", triggers=["ghost.outputs"])]), "'ghost'"),
    (pipeline(steps=[step("a", ["x..y"])]), "step 'a' inputs"),
    (pipeline(steps=[step("a"), step("b", ["a", "a.outputs"])]), "listed twice"),
    (pipeline(steps=[step("a"), step("b", ["a.outputs.t"], ["a.outputs.t"])]), "both an input and a trigger"),
    (pipeline(steps=[step("a"), step("b", ["a"], ["a.outputs"])]), "both an input and a trigger"),
    (pipeline(steps=[step("a"), step("b", [f"a.outputs.t{i}" for i in range(MAX_REFERENCES + 1)])]), "limit is 64"),
    (pipeline(output=pb.PipelineOutput(steps=["nope"])), "output"),
    (pipeline(output=pb.PipelineOutput(steps=["p.inputs"])), "not a step"),
    (pipeline(steps=[step("a", ["b"]), step("b", ["a"])]), "cycle through steps a -> b -> a"),
    (pipeline(steps=[step("a", ["a"])]), "cycle through steps a -> a"),
    (pipeline(steps=[step("a"), step("b", ["a", "c"]), step("c", triggers=["b"])]), "cycle through steps b -> c -> b"),
    (pipeline(steps=[step("a", ["b"]), step("b", ["a"])], allowCycles=True), "maxStepRevisits"),
    (pipeline(steps=[step("a")], allowCycles=True, maxStepRevisits=1001), "got 1001"),
    (_with_input(externalInputs=["p.step.a"]), "names this pipeline"),
    (_with_input(externalTriggers=["Other"]), "externalTriggers"),
    (_with_input(externalInputs=["o", "o.outputs"]), "listed twice"),
    (_with_input(tensorMap={"": "x"}), "empty key or value"),
    (pipeline(steps=[pb.PipelineStep(name="a", tensorMap={"k": ""})]), "step 'a'"),
    (pipeline(output=pb.PipelineOutput(steps=["b"], tensorMap={"": ""})), "output"),
]


@pytest.mark.parametrize(("spec", "fragment"), BAD)
def test_invalid_pipelines(spec: pb.Pipeline, fragment: str) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        validate_pipeline(spec)
    assert fragment in str(caught.value)


def test_pipeline_models_are_the_step_names() -> None:
    assert pipeline_models(pipeline()) == {"a", "b"}


NAMES = st.sampled_from(["p", "a", "b", "c", "a", "b", "c", "Bad", "", "x-y", "step", "inputs"])
PARTS = st.sampled_from(["a", "b", "c", "p", "inputs", "outputs", "step", "t", "", "X_1", "other"])
# Mostly well-formed references (so that many pipelines validate), some arbitrary ones.
WELL_FORMED = st.builds(
    "".join, st.tuples(st.sampled_from(["a", "b", "c", "p"]), st.sampled_from(["", ".outputs", ".inputs", ".inputs.t"]))
)
EXTERNAL = st.one_of(
    st.sampled_from(["other", "other.step.s", "other.step.s.outputs.t", "o2.inputs"]),
    st.lists(PARTS, min_size=1, max_size=5).map(".".join),
)
REFERENCES = st.one_of(WELL_FORMED, WELL_FORMED, st.lists(PARTS, min_size=1, max_size=5).map(".".join))


@st.composite
def random_pipelines(draw: st.DrawFn) -> pb.Pipeline:
    steps = [
        pb.PipelineStep(
            name=draw(NAMES),
            inputs=draw(st.lists(REFERENCES, max_size=3)),
            triggers=draw(st.lists(REFERENCES, max_size=2)),
            tensorMap=draw(st.dictionaries(st.sampled_from(["k", "t", ""]), st.sampled_from(["v", "w"]), max_size=1)),
        )
        for _ in range(draw(st.integers(0, 4)))
    ]
    spec = pb.Pipeline(
        name=draw(st.sampled_from(["p", "p", "a", "Bad", ""])),
        steps=steps,
        allowCycles=draw(st.booleans()),
        maxStepRevisits=draw(st.sampled_from([0, 1, 1000, 1001, 5])),
    )
    if draw(st.booleans()):
        spec.output.steps.extend(draw(st.lists(REFERENCES, max_size=3)))
    if draw(st.booleans()):
        spec.input.externalInputs.extend(draw(st.lists(EXTERNAL, max_size=3)))
        spec.input.externalTriggers.extend(draw(st.lists(EXTERNAL, max_size=2)))
    return spec


@settings(max_examples=400, deadline=None)
@given(random_pipelines())
def test_any_pipeline_validates_or_fails_precondition(spec: pb.Pipeline) -> None:
    try:
        validate_pipeline(spec)
    except FailedPrecondition as error:
        assert str(error)
    else:
        # A valid pipeline's references all parse and name steps that exist.
        names = {s.name for s in spec.steps}
        for s in spec.steps:
            for text in [*s.inputs, *s.triggers]:
                reference = parse_reference(text, spec.name)
                assert reference.step is None or reference.step in names


# ----------------------------------------------------------------- state table


def _normal(name: str) -> str:
    return name.lower().replace("_", "").removeprefix("pipelinestatus").removeprefix("pipeline")


def test_status_values_are_the_wire_values() -> None:
    assert [(_normal(n), v) for n, v in PS.items()] == [(_normal(s.name), s.value) for s in PipelineStatus]


ALLOWED = [
    (S.UNKNOWN, S.CREATE),
    (S.CREATE, S.CREATING),
    (S.CREATING, S.READY),
    (S.CREATING, S.FAILED),
    (S.READY, S.REBALANCING),
    (S.REBALANCING, S.READY),
    (S.REBALANCING, S.FAILED),
    (S.FAILED, S.CREATING),
    (S.TERMINATE, S.TERMINATING),
    (S.TERMINATING, S.TERMINATED),
    *[(live, S.TERMINATE) for live in (S.CREATE, S.CREATING, S.READY, S.REBALANCING, S.FAILED)],
]


@pytest.mark.parametrize(("current", "new"), ALLOWED)
def test_allowed_transitions(current: PipelineStatus, new: PipelineStatus) -> None:
    check_transition(current, new)


ILLEGAL = [
    (S.CREATE, S.READY),
    (S.TERMINATED, S.CREATE),
    (S.TERMINATED, S.CREATING),
    (S.TERMINATING, S.READY),
    (S.TERMINATE, S.TERMINATED),
    (S.READY, S.CREATING),
    (S.FAILED, S.READY),
    (S.UNKNOWN, S.READY),
]


@pytest.mark.parametrize(("current", "new"), ILLEGAL)
def test_illegal_transitions(current: PipelineStatus, new: PipelineStatus) -> None:
    with pytest.raises(IllegalTransition, match=f"{current.name} cannot change to {new.name}"):
        check_transition(current, new)


def test_table_is_complete_and_only_ending_states_lead_to_terminated() -> None:
    assert set(TRANSITIONS) == set(PipelineStatus)
    for current, new in itertools.product(PipelineStatus, PipelineStatus):
        if new == S.TERMINATED:
            assert (new in TRANSITIONS[current]) == (current == S.TERMINATING)


# ----------------------------------------------------------------- registry


def load(registry: PipelineRegistry, spec: pb.Pipeline) -> PipelineRecord | None:
    prepared = registry.prepare_load(spec)
    if prepared is not None:
        registry.apply_load(prepared)
    return prepared


def unload(registry: PipelineRegistry, name: str) -> None:
    registry.prepare_unload(name)
    registry.apply_unload(name)


def statuses(registry: PipelineRegistry, name: str) -> list[tuple[int, PipelineStatus]]:
    return [(v.version, v.status) for v in registry.records[name].versions]


class Models:
    def __init__(self, *available: str) -> None:
        self.available = set(available)

    def __call__(self, name: str) -> bool:
        return name in self.available


def test_versioning() -> None:
    registry = PipelineRegistry()
    first = load(registry, pipeline())
    assert first is not None
    assert first.latest.version == 1
    assert first.latest.spec.version == 1
    assert first.latest.spec.uid == first.latest.uid != ""
    # Identical, ignoring the fields the scheduler assigns and the Kubernetes generation.
    again = pipeline(uid="whatever", version=7, kubernetesMeta=pb.KubernetesMeta(namespace="ns", generation=3))
    assert load(registry, pipeline(kubernetesMeta=pb.KubernetesMeta(namespace="ns", generation=1))) is not None
    same_generation = pipeline(
        uid="whatever", version=7, kubernetesMeta=pb.KubernetesMeta(namespace="ns", generation=1)
    )
    assert registry.prepare_load(same_generation) is None
    # A new generation of the same spec is recorded on the same version (tests/scheduler/test_pipeline_generation.py).
    patched = load(registry, again)
    assert patched is not None
    assert (patched.latest.version, patched.latest.spec.kubernetesMeta.generation) == (2, 3)
    changed = load(registry, pipeline(steps=[step("a")]))
    assert changed is not None
    assert [v.version for v in changed.versions] == [1, 2, 3]
    assert len({v.uid for v in changed.versions}) == 3
    assert registry.records["p"].latest.version == 3


def test_invalid_load_changes_nothing() -> None:
    registry = PipelineRegistry()
    with pytest.raises(FailedPrecondition, match="no steps"):
        registry.prepare_load(pipeline(steps=[]))
    assert registry.records == {}


def test_delete_then_load_again() -> None:
    registry = PipelineRegistry()
    load(registry, pipeline())
    load(registry, pipeline(steps=[step("a")]))
    unload(registry, "p")
    with pytest.raises(FailedPrecondition, match="in process of deletion"):
        registry.prepare_load(pipeline())
    # Unloading again is a no-op.
    assert registry.prepare_unload("p").deleted
    registry.apply_unload("p")
    assert registry.refresh(Models()) == {"p"}
    assert "p" not in registry.records
    [removed] = registry.pop_removed()
    assert [v.status for v in removed.versions] == [S.TERMINATED, S.TERMINATED]
    assert registry.pop_removed() == []
    reloaded = load(registry, pipeline())
    assert reloaded is not None
    assert reloaded.latest.version == 1


def test_unknown_pipeline() -> None:
    registry = PipelineRegistry()
    with pytest.raises(FailedPrecondition, match="pipeline 'x' not found"):
        registry.prepare_unload("x")
    with pytest.raises(FailedPrecondition, match="pipeline 'x' not found"):
        registry.status("x")


def test_refresh_create_creating_ready_rebalancing() -> None:
    registry = PipelineRegistry()
    load(registry, pipeline())
    assert statuses(registry, "p") == [(1, S.CREATE)]
    models = Models("a")
    assert registry.refresh(models) == {"p"}
    version = registry.records["p"].latest
    assert (version.status, version.reason, version.models_ready) == (
        S.CREATING,
        "models not available: b",
        False,
    )
    assert registry.refresh(models) == set()
    models.available.add("b")
    assert registry.refresh(models) == {"p"}
    assert (version.status, version.reason, version.models_ready) == (S.READY, "", True)
    models.available.discard("a")
    assert registry.refresh(models) == {"p"}
    assert (version.status, version.reason) == (S.REBALANCING, "models not available: a")
    models.available.add("a")
    registry.refresh(models)
    assert version.status == S.READY


def test_all_ready_goes_straight_to_ready() -> None:
    registry = PipelineRegistry()
    load(registry, pipeline())
    assert registry.refresh(Models("a", "b")) == {"p"}
    assert statuses(registry, "p") == [(1, S.READY)]


def test_old_versions_terminate_once_the_new_one_is_ready() -> None:
    registry = PipelineRegistry()
    models = Models("a", "b")
    load(registry, pipeline())
    registry.refresh(models)
    load(registry, pipeline(steps=[step("a"), step("c", ["a"])]))
    registry.refresh(models)
    # v2 waits for model c; v1 keeps serving.
    assert statuses(registry, "p") == [(1, S.READY), (2, S.CREATING)]
    models.available.add("c")
    assert registry.refresh(models) == {"p"}
    assert statuses(registry, "p") == [(1, S.TERMINATED), (2, S.READY)]
    assert registry.records["p"].versions[0].reason == "replaced by version 2"


def test_failed_and_retry() -> None:
    registry = PipelineRegistry()
    load(registry, pipeline())
    registry.refresh(Models())
    assert registry.mark_failed("p", 1, "gateway said no")
    assert not registry.mark_failed("p", 9, "stale")
    registry.refresh(Models("a", "b"))
    assert statuses(registry, "p") == [(1, S.FAILED)]
    assert registry.retry("p")
    assert not registry.retry("p")
    registry.refresh(Models("a", "b"))
    assert statuses(registry, "p") == [(1, S.READY)]


def test_gateway_ack() -> None:
    registry = PipelineRegistry()
    load(registry, pipeline())
    registry.refresh(Models("a", "b"))
    assert registry.record_gateway_ack("p", 1, success=False, reason="kafka down")
    version = registry.records["p"].latest
    assert (version.status, version.gateway_status, version.gateway_reason) == (S.READY, S.FAILED, "kafka down")
    assert registry.record_gateway_ack("p", 1, success=True)
    assert version.gateway_status == S.READY
    assert not registry.record_gateway_ack("p", 2, success=True)
    assert not registry.record_gateway_ack("q", 1, success=True)


def test_status_messages() -> None:
    registry = PipelineRegistry()
    load(registry, pipeline(name="z"))
    load(registry, pipeline())
    load(registry, pipeline(steps=[step("a")]))
    registry.refresh(Models("a"))
    registry.record_gateway_ack("p", 2, success=True, reason="ok")
    [latest] = registry.status("p")
    assert latest.pipelineName == "p"
    assert latest.operation == pb.PipelineStatusResponse.PipelineOperation.PipelineCreate
    assert latest.timestamp > 0
    [only] = latest.versions
    assert only.pipeline.version == 2
    assert only.pipeline.uid == registry.records["p"].latest.uid
    assert only.state.pipelineVersion == 2
    assert only.state.status == PS.PipelineReady
    assert only.state.modelsReady
    assert only.state.pipelineGwStatus == PS.PipelineReady
    assert only.state.pipelineGwReason == "ok"
    assert only.state.lastChangeTimestamp.seconds > 0
    [every] = registry.status("p", all_versions=True)
    assert [(v.state.pipelineVersion, v.state.status) for v in every.versions] == [
        (1, PS.PipelineTerminated),
        (2, PS.PipelineReady),
    ]
    assert [r.pipelineName for r in registry.status()] == ["p", "z"]
    unload(registry, "z")
    [deleting] = registry.status("z")
    assert deleting.operation == pb.PipelineStatusResponse.PipelineOperation.PipelineDelete


def test_durable_round_trip() -> None:
    registry = PipelineRegistry()
    load(registry, pipeline())
    load(registry, pipeline(steps=[step("a")], kubernetesMeta=pb.KubernetesMeta(namespace="ns", generation=2)))
    registry.refresh(Models("a", "b"))
    record = registry.records["p"]
    record.deleted = True
    restored = PipelineRecord.from_bytes("p", record.to_bytes())
    assert restored.name == "p"
    assert restored.deleted
    assert [(v.version, v.uid, v.spec) for v in restored.versions] == [
        (v.version, v.uid, v.spec) for v in record.versions
    ]
    # Observed state is not durable.
    assert all(v.status == S.CREATE and not v.models_ready for v in restored.versions)
    with pytest.raises(ValueError, match="no versions"):
        PipelineRecord.from_bytes("p", b'{"deleted":false,"versions":[]}')


def test_restored_registry_converges() -> None:
    registry = PipelineRegistry()
    load(registry, pipeline())
    load(registry, pipeline(steps=[step("a")]))
    restored = PipelineRegistry()
    restored.records["p"] = PipelineRecord.from_bytes("p", registry.records["p"].to_bytes())
    restored.refresh(Models("a", "b"))
    assert statuses(restored, "p") == [(1, S.TERMINATED), (2, S.READY)]


@st.composite
def acyclic_pipelines(draw: st.DrawFn) -> pb.Pipeline:
    count = draw(st.integers(1, 8))
    steps = []
    for index in range(count):
        earlier = st.sets(st.integers(0, index - 1), max_size=3) if index else st.just(set[int]())
        # Every step reads the one before it, so the steps form a chain (plus random shortcuts).
        chain = {index - 1} if index else set()
        inputs = [f"s{i}.outputs" for i in sorted(draw(earlier) | chain)] or ["p.inputs"]
        triggers = [f"s{i}.inputs" for i in sorted(draw(earlier))]
        steps.append(step(f"s{index}", inputs, triggers))
    return pb.Pipeline(name="p", steps=steps, output=pb.PipelineOutput(steps=[f"s{count - 1}"]))


@settings(max_examples=200, deadline=None)
@given(acyclic_pipelines())
def test_acyclic_pipelines_validate(spec: pb.Pipeline) -> None:
    validate_pipeline(spec)
    # Closing the chain from the last step back to the first is a cycle, unless cycles are allowed.
    looped = pb.Pipeline()
    looped.CopyFrom(spec)
    looped.steps[0].inputs.append(f"s{len(spec.steps) - 1}")
    with pytest.raises(FailedPrecondition, match="cycle"):
        validate_pipeline(looped)
    looped.allowCycles, looped.maxStepRevisits = True, 10
    validate_pipeline(looped)
