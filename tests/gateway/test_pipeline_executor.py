"""Pipelines executed as a dataflow graph, against in-process fake models (the real MLServer path is tested
elsewhere). Timing only shapes which branch is slow; assertions are on content, never on durations."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.inference_types import InferenceError, JsonObject
from gateway.pipelines.executor import LOOP_STATUS, NO_OUTPUT_STATUS, PipelineExecutor, TriggerRule
from generated.mlops.scheduler import scheduler_pb2 as pb

Model = Callable[[JsonObject], Awaitable[JsonObject]]
J = pb.PipelineStep.JoinOp


def t(name: str, data: list[Any], datatype: str = "INT64") -> JsonObject:
    return {"name": name, "shape": [len(data)], "datatype": datatype, "data": data}


def by_name(tensors: list[JsonObject]) -> dict[str, list[Any]]:
    return {tensor["name"]: tensor["data"] for tensor in tensors}


def step(name: str, inputs: list[str] | None = None, **fields: Any) -> pb.PipelineStep:
    return pb.PipelineStep(name=name, inputs=inputs or [], **fields)


def pipeline(steps: list[pb.PipelineStep], output: list[str], name: str = "p", **fields: Any) -> pb.Pipeline:
    out = fields.pop("output_spec", {})
    return pb.Pipeline(name=name, steps=steps, output=pb.PipelineOutput(steps=output, **out), **fields)


class Models:
    """A fake ModelCaller: named async functions, recording every call and how many were in flight at once."""

    def __init__(self, **models: Model) -> None:
        self.models = models
        self.calls: list[tuple[str, JsonObject, Mapping[str, str]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled: list[str] = []

    def called(self, model: str) -> list[JsonObject]:
        return [request for name, request, _ in self.calls if name == model]

    async def __call__(self, model: str, request: JsonObject, headers: Mapping[str, str]) -> JsonObject:
        self.calls.append((model, request, headers))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.models[model](request)
        except asyncio.CancelledError:
            self.cancelled.append(model)
            raise
        finally:
            self.in_flight -= 1


def unary(function: Callable[[dict[str, list[Any]]], dict[str, list[Any]]], delay: float = 0.0) -> Model:
    """A model computing output tensors (name -> data, INT64) from its input tensors (name -> data)."""

    async def model(request: JsonObject) -> JsonObject:
        if delay:
            await asyncio.sleep(delay)
        outputs = function(by_name(request["inputs"]))
        return {"outputs": [t(name, data) for name, data in outputs.items()]}

    return model


def simple(delay: float = 0.0) -> Model:
    """Triton's `simple` model, as in Seldon's examples: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""

    def compute(x: dict[str, list[Any]]) -> dict[str, list[Any]]:
        pairs = list(zip(x["INPUT0"], x["INPUT1"], strict=True))
        return {"OUTPUT0": [a + b for a, b in pairs], "OUTPUT1": [a - b for a, b in pairs]}

    return unary(compute, delay)


def hang() -> Model:
    async def model(request: JsonObject) -> JsonObject:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return model


REQUEST = {"id": "r1", "inputs": [t("x", [1, 2, 3])]}
HEADERS = {"x-request-id": "r1"}


async def run(spec: pb.Pipeline, models: Models, request: JsonObject = REQUEST, **options: Any) -> JsonObject:
    timeout = options.pop("timeout_s", 10.0)
    return await PipelineExecutor(spec, **options).execute(request, models, HEADERS, timeout_s=timeout)


async def fails(spec: pb.Pipeline, models: Models, request: JsonObject = REQUEST, **options: Any) -> InferenceError:
    with pytest.raises(InferenceError) as caught:
        await run(spec, models, request, **options)
    return caught.value


# ----------------------------------------------------------------- data flow


async def test_fan_out_and_join_equals_calling_the_models_by_hand() -> None:
    double = unary(lambda x: {"y": [v * 2 for v in x["x"]]})
    plus_one = unary(lambda x: {"b": [v + 1 for v in x["y"]]})
    times_three = unary(lambda x: {"c": [v * 3 for v in x["y"]]})
    add = unary(lambda x: {"sum": [b + c for b, c in zip(x["b"], x["c"], strict=True)]})
    models = Models(a=double, b=plus_one, c=times_three, d=add)
    spec = pipeline([step("a"), step("b", ["a"]), step("c", ["a.outputs"]), step("d", ["b", "c.outputs.c"])], ["d"])

    response = await run(spec, models)

    a = await double({"inputs": REQUEST["inputs"]})
    b = await plus_one({"inputs": a["outputs"]})
    c = await times_three({"inputs": a["outputs"]})
    d = await add({"inputs": b["outputs"] + c["outputs"]})
    assert response == {"model_name": "p", "id": "r1", "outputs": d["outputs"]}
    assert by_name(response["outputs"]) == {"sum": [9, 17, 25]}
    # Each model ran once; d received b's and c's tensors in reference order; the id and headers travel.
    assert [name for name, _, _ in models.calls].count("d") == 1
    assert [tensor["name"] for tensor in models.called("d")[0]["inputs"]] == ["b", "c"]
    assert all(request["id"] == "r1" and headers == HEADERS for _, request, headers in models.calls)


async def test_a_step_without_inputs_reads_the_pipeline_inputs_and_parameters_travel() -> None:
    models = Models(a=unary(lambda x: {"y": x["x"]}))
    request = {"inputs": [t("x", [5])], "parameters": {"tag": "v"}}
    response = await run(pipeline([step("a")], ["a"]), models, request)
    sent = models.called("a")[0]
    assert sent["inputs"] == request["inputs"]
    assert sent["parameters"] == {"tag": "v"}
    assert sent["id"] == response["id"]  # a generated id, shared by the steps and the response
    assert response["id"]


async def test_step_inputs_reference_reads_what_that_step_received() -> None:
    models = Models(a=unary(lambda x: {"y": [v * 10 for v in x["x"]]}), b=unary(lambda x: x))
    spec = pipeline([step("a"), step("b", ["a.inputs.x", "a.outputs"])], ["b"])
    response = await run(spec, models)
    assert by_name(response["outputs"]) == {"x": [1, 2, 3], "y": [10, 20, 30]}


async def test_output_can_join_several_steps() -> None:
    models = Models(a=unary(lambda x: {"ya": x["x"]}), b=unary(lambda x: {"yb": x["x"]}))
    spec = pipeline([step("a"), step("b")], ["a", "b.outputs.yb"])
    response = await run(spec, models)
    assert by_name(response["outputs"]) == {"ya": [1, 2, 3], "yb": [1, 2, 3]}


async def test_without_output_the_last_step_answers() -> None:
    models = Models(a=unary(lambda x: {"y": x["x"]}), b=unary(lambda x: {"z": [v + 1 for v in x["y"]]}))
    spec = pb.Pipeline(name="p", steps=[step("a"), step("b", ["a"])])
    assert by_name((await run(spec, models))["outputs"]) == {"z": [2, 3, 4]}


async def test_steps_the_output_does_not_need_are_not_run() -> None:
    models = Models(a=unary(lambda x: {"y": x["x"]}), drift=unary(lambda x: {"d": [0]}))
    spec = pipeline([step("a"), step("drift", ["a"])], ["a"])
    executor = PipelineExecutor(spec)
    assert executor.graph.unused_steps == ("drift",)
    await executor.execute(REQUEST, models, HEADERS)
    assert models.called("drift") == []


# ----------------------------------------------------------------- tensorMap


async def test_tensor_map_renames_as_seldon_does() -> None:
    """Seldon's tfsimples-join: two models' outputs renamed into a third model's inputs."""
    models = Models(tfsimple1=simple(), tfsimple2=simple(), tfsimple3=simple())
    spec = pipeline(
        [
            step("tfsimple1"),
            step("tfsimple2"),
            step(
                "tfsimple3",
                ["tfsimple1.outputs.OUTPUT0", "tfsimple2.outputs.OUTPUT1"],
                tensorMap={"tfsimple1.outputs.OUTPUT0": "INPUT0", "tfsimple2.outputs.OUTPUT1": "INPUT1"},
            ),
        ],
        ["tfsimple3"],
    )
    request = {"inputs": [t("INPUT0", [5, 7]), t("INPUT1", [1, 2])]}
    response = await run(spec, models, request)
    sent = models.called("tfsimple3")[0]["inputs"]
    assert by_name(sent) == {"INPUT0": [6, 9], "INPUT1": [4, 5]}
    assert by_name(response["outputs"]) == {"OUTPUT0": [10, 14], "OUTPUT1": [2, 4]}


async def test_tensor_map_applies_to_whole_side_references_and_pipeline_inputs() -> None:
    models = Models(a=unary(lambda x: {"OUT": x["renamed"]}), b=unary(lambda x: x))
    spec = pipeline(
        [
            step("a", ["p"], tensorMap={"p.inputs.x": "renamed"}),
            step("b", ["a"], tensorMap={"a.outputs.OUT": "IN", "a.outputs.unrelated": "zzz"}),
        ],
        ["b"],
        output_spec={"tensorMap": {"b.outputs.IN": "final"}},
    )
    response = await run(spec, models)
    assert by_name(models.called("a")[0]["inputs"]) == {"renamed": [1, 2, 3]}
    assert by_name(models.called("b")[0]["inputs"]) == {"IN": [1, 2, 3]}
    assert by_name(response["outputs"]) == {"final": [1, 2, 3]}


async def test_colliding_tensor_names_ask_for_a_tensor_map() -> None:
    models = Models(a=simple(), b=simple(), c=simple())
    spec = pipeline([step("a"), step("b"), step("c", ["a", "b"])], ["c"])
    error = await fails(spec, models, {"inputs": [t("INPUT0", [1]), t("INPUT1", [1])]})
    assert error.status == 500
    assert "step 'c'" in error.message
    assert "'OUTPUT0'" in error.message
    assert "tensorMap" in error.message


# ----------------------------------------------------------------- joins


async def test_inner_join_waits_for_the_slow_branch() -> None:
    models = Models(
        fast=unary(lambda x: {"f": [1]}), slow=unary(lambda x: {"s": [2]}, delay=0.05), j=unary(lambda x: x)
    )
    spec = pipeline([step("fast"), step("slow"), step("j", ["fast", "slow"], joinWindowMs=1)], ["j"])
    assert by_name((await run(spec, models))["outputs"]) == {"f": [1], "s": [2]}


async def test_outer_join_goes_on_without_a_branch_slower_than_its_window() -> None:
    models = Models(fast=unary(lambda x: {"f": [1]}), slow=hang(), j=unary(lambda x: x))
    spec = pipeline(
        [step("fast"), step("slow"), step("j", ["fast", "slow"], inputsJoin=J.OUTER, joinWindowMs=20)], ["j"]
    )
    response = await run(spec, models)
    assert by_name(response["outputs"]) == {"f": [1]}
    assert models.cancelled == ["slow"]  # answered, so the straggler was cancelled


async def test_outer_join_takes_every_branch_that_arrives_within_its_window() -> None:
    models = Models(
        fast=unary(lambda x: {"f": [1]}), slow=unary(lambda x: {"s": [2]}, delay=0.02), j=unary(lambda x: x)
    )
    spec = pipeline(
        [step("fast"), step("slow"), step("j", ["fast", "slow"], inputsJoin=J.OUTER, joinWindowMs=60_000)], ["j"]
    )
    assert by_name((await run(spec, models))["outputs"]) == {"f": [1], "s": [2]}


async def test_any_join_goes_with_the_first_arrival_and_runs_once() -> None:
    models = Models(
        fast=unary(lambda x: {"f": [1]}), slow=unary(lambda x: {"s": [2]}, delay=0.02), j=unary(lambda x: x)
    )
    spec = pipeline([step("fast"), step("slow"), step("j", ["fast", "slow"], inputsJoin=J.ANY)], ["j"])
    response = await run(spec, models)
    assert by_name(response["outputs"]) == {"f": [1]}
    assert len(models.called("j")) == 1


async def test_output_outer_join_with_window() -> None:
    models = Models(fast=unary(lambda x: {"f": [1]}), slow=hang())
    spec = pipeline(
        [step("fast"), step("slow")], ["fast", "slow"], output_spec={"stepsJoin": J.OUTER, "joinWindowMs": 20}
    )
    assert by_name((await run(spec, models))["outputs"]) == {"f": [1]}


async def test_an_outer_window_that_closed_still_waits_for_a_running_trigger() -> None:
    models = Models(
        fast=unary(lambda x: {"f": [1]}),
        slow=hang(),
        flag=unary(lambda x: {"go": [1]}, delay=0.03),
        j=unary(lambda x: x),
    )
    spec = pipeline(
        [
            step("fast"),
            step("slow"),
            step("flag"),
            step("j", ["fast", "slow"], inputsJoin=J.OUTER, joinWindowMs=1, triggers=["flag"]),
        ],
        ["j"],
    )
    response = await run(spec, models)
    assert by_name(response["outputs"]) == {"f": [1]}
    assert len(models.called("j")) == 1


# ----------------------------------------------------------------- triggers


def conditional() -> Model:
    """Seldon's conditional model: returns OUTPUT0 when CHOICE is 0, else OUTPUT1 (never both)."""

    async def model(request: JsonObject) -> JsonObject:
        x = by_name(request["inputs"])
        name = "OUTPUT0" if x["CHOICE"] == [0] else "OUTPUT1"
        return {"outputs": [t(name, x["INPUT"])]}

    return model


def conditional_pipeline() -> pb.Pipeline:
    return pipeline(
        [
            step("choose"),
            step("mul10", ["p.inputs.INPUT"], triggers=["choose.outputs.OUTPUT0"]),
            step("add10", ["p.inputs.INPUT"], triggers=["choose.outputs.OUTPUT1"]),
            step("after-add", ["add10"]),
        ],
        ["mul10", "after-add"],
        output_spec={"stepsJoin": J.ANY},
    )


@pytest.mark.parametrize(("choice", "expected"), [(0, [10, 20]), (1, [11, 12])])
async def test_a_trigger_picks_one_branch_and_the_other_does_not_run(choice: int, expected: list[int]) -> None:
    models = Models(
        choose=conditional(),
        mul10=unary(lambda x: {"y": [v * 10 for v in x["INPUT"]]}),
        add10=unary(lambda x: {"z": [v + 10 for v in x["INPUT"]]}),
        **{"after-add": unary(lambda x: {"y": x["z"]})},
    )
    request = {"inputs": [t("INPUT", [1, 2]), t("CHOICE", [choice])]}
    response = await run(conditional_pipeline(), models, request, default_join_window_ms=60_000)
    assert by_name(response["outputs"]) == {"y": expected}
    ran = {name for name, _, _ in models.calls}
    assert ran == ({"choose", "mul10"} if choice == 0 else {"choose", "add10", "after-add"})


async def test_when_every_path_is_gated_off_the_error_names_the_untriggered_steps() -> None:
    models = Models(choose=conditional(), mul10=unary(lambda x: x), add10=unary(lambda x: x))
    spec = pipeline(
        [
            step("choose"),
            step("mul10", ["p.inputs.INPUT"], triggers=["choose.outputs.OUTPUT0"]),
            step("add10", ["mul10"]),
        ],
        ["add10"],
    )
    error = await fails(spec, models, {"inputs": [t("INPUT", [1]), t("CHOICE", [1])]})
    assert error.status == NO_OUTPUT_STATUS
    assert "produced no output" in error.message
    assert "steps not triggered: mul10" in error.message
    assert "steps whose inputs never arrived: add10" in error.message
    assert [name for name, _, _ in models.calls] == ["choose"]


async def test_inner_join_on_a_skipped_step_skips_but_outer_goes_on_without_waiting() -> None:
    models = Models(
        choose=conditional(),
        gated=unary(lambda x: {"g": [1]}),
        free=unary(lambda x: {"f": [2]}),
        inner=unary(lambda x: x),
        outer=unary(lambda x: x),
    )
    spec = pipeline(
        [
            step("choose"),
            step("gated", ["p.inputs.INPUT"], triggers=["choose.outputs.OUTPUT0"]),
            step("free", ["p.inputs.INPUT"]),
            step("inner", ["gated", "free"]),
            # A window far longer than the request's deadline: only knowing 'gated' will never run lets this go.
            step("outer", ["gated", "free"], inputsJoin=J.OUTER, joinWindowMs=3_600_000),
        ],
        ["inner", "outer"],
        output_spec={"stepsJoin": J.OUTER},
    )
    request = {"inputs": [t("INPUT", [1]), t("CHOICE", [1])]}
    response = await run(spec, models, request, timeout_s=5.0)
    assert by_name(response["outputs"]) == {"f": [2]}
    assert models.called("inner") == []
    assert by_name(models.called("outer")[0]["inputs"]) == {"f": [2]}


def flag_pipeline(triggers_join: int = J.INNER) -> pb.Pipeline:
    return pipeline(
        [
            step("flag"),
            step("flag2"),
            step("act", ["p.inputs.x"], triggers=["flag.outputs.go", "flag2"], triggersJoin=triggers_join),
        ],
        ["act"],
    )


def flag_models(go: list[Any], go2: list[Any]) -> Models:
    return Models(
        flag=unary(lambda x: {"go": go}), flag2=unary(lambda x: {"go2": go2}), act=unary(lambda x: {"y": x["x"]})
    )


@pytest.mark.parametrize(
    ("rule", "go", "runs"),
    [
        (TriggerRule.PRESENT, [0], True),  # Seldon: the tensor's presence is the signal
        (TriggerRule.TRUTHY, [0], False),
        (TriggerRule.TRUTHY, [0, 3], True),
        (TriggerRule.TRUTHY, [], False),
    ],
)
async def test_trigger_truthiness_rules(rule: TriggerRule, go: list[Any], runs: bool) -> None:
    models = flag_models(go, [1])
    if runs:
        await run(flag_pipeline(), models, trigger_rule=rule)
    else:
        error = await fails(flag_pipeline(), models, trigger_rule=rule)
        assert "steps not triggered: act" in error.message
    assert bool(models.called("act")) is runs


@pytest.mark.parametrize(("join", "runs"), [(J.INNER, False), (J.OUTER, True), (J.ANY, True)])
async def test_triggers_join(join: int, runs: bool) -> None:
    models = flag_models([0], [1])
    spec = flag_pipeline(join)
    if runs:
        await run(spec, models, trigger_rule=TriggerRule.TRUTHY)
    else:
        await fails(spec, models, trigger_rule=TriggerRule.TRUTHY)
    assert bool(models.called("act")) is runs
    # Triggers gate, they do not feed: act only ever sees its inputs.
    assert all(by_name(request["inputs"]) == {"x": [1, 2, 3]} for request in models.called("act"))


# ----------------------------------------------------------------- concurrency, failures, deadlines


async def test_independent_steps_run_concurrently() -> None:
    models = Models(
        a=unary(lambda x: {"a": [1]}, delay=0.05),
        b=unary(lambda x: {"b": [2]}, delay=0.05),
        c=unary(lambda x: x),
    )
    spec = pipeline([step("a"), step("b"), step("c", ["a", "b"])], ["c"])
    await run(spec, models)
    assert models.max_in_flight == 2


async def test_a_step_starts_as_soon_as_its_own_inputs_are_ready() -> None:
    """b needs only a: it runs while the unrelated, slower c is still in flight."""
    seen_in_flight: list[int] = []

    async def b(request: JsonObject) -> JsonObject:
        seen_in_flight.append(models.in_flight)
        return {"outputs": [t("b", [1])]}

    models = Models(a=unary(lambda x: {"a": [1]}), b=b, c=unary(lambda x: {"c": [2]}, delay=0.05), d=unary(lambda x: x))
    spec = pipeline([step("a"), step("b", ["a"]), step("c"), step("d", ["b", "c"])], ["d"])
    response = await run(spec, models)
    assert seen_in_flight == [2]  # b itself and c
    assert by_name(response["outputs"]) == {"b": [1], "c": [2]}


async def test_a_chain_runs_one_step_at_a_time() -> None:
    models = Models(a=unary(lambda x: {"y": [1]}, delay=0.01), b=unary(lambda x: x, delay=0.01))
    await run(pipeline([step("a"), step("b", ["a"])], ["b"]), models)
    assert models.max_in_flight == 1


def failing(error: Exception) -> Model:
    async def model(request: JsonObject) -> JsonObject:
        raise error

    return model


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InferenceError(503, "no replica available"), 503),
        (InferenceError(400, "bad input shape"), 400),
        (InferenceError(500, "replica crashed"), 502),
        (RuntimeError("connection reset"), 502),
    ],
)
async def test_a_failing_step_fails_the_request_naming_step_and_model(error: Exception, status: int) -> None:
    models = Models(a=unary(lambda x: {"y": [1]}), b=failing(error), slow=hang(), c=unary(lambda x: x))
    spec = pipeline([step("a"), step("b", ["a"]), step("slow"), step("c", ["b", "slow"])], ["c"])
    caught = await fails(spec, models)
    assert caught.status == status
    assert caught.message.startswith("pipeline 'p' step 'b' (model 'b') failed: ")
    assert str(error) in caught.message or getattr(error, "message", "") in caught.message
    assert models.cancelled == ["slow"]


async def test_a_malformed_step_response_is_a_502() -> None:
    async def broken(request: JsonObject) -> JsonObject:
        return {"outputs": [{"name": "y", "shape": [2], "datatype": "INT64", "data": [1]}]}

    caught = await fails(pipeline([step("a")], ["a"]), Models(a=broken))
    assert caught.status == 502
    assert "step 'a' (model 'a') failed: malformed response: tensor 'y'" in caught.message


async def test_a_reference_to_a_tensor_the_step_did_not_produce() -> None:
    models = Models(a=unary(lambda x: {"y": [1]}), b=unary(lambda x: x))
    caught = await fails(pipeline([step("a"), step("b", ["a.outputs.nope"])], ["b"]), models)
    assert caught.status == 502
    assert "step 'b'" in caught.message
    assert "'nope'" in caught.message
    assert "step 'a' produced only: 'y'" in caught.message


async def test_a_reference_to_an_input_tensor_the_request_lacks_is_a_400() -> None:
    caught = await fails(pipeline([step("a", ["p.inputs.nope"])], ["a"]), Models(a=unary(lambda x: x)))
    assert caught.status == 400
    assert "'p.inputs.nope'" in caught.message


async def test_the_overall_deadline_cancels_everything() -> None:
    models = Models(a=hang(), b=hang())
    caught = await fails(pipeline([step("a"), step("b")], ["a", "b"]), models, timeout_s=0.05)
    assert caught.status == 504
    assert "still running: a, b" in caught.message
    assert sorted(models.cancelled) == ["a", "b"]


async def test_cancelling_the_caller_cancels_the_steps() -> None:
    started = asyncio.Event()

    async def a(request: JsonObject) -> JsonObject:
        started.set()
        return await hang()(request)

    models = Models(a=a)
    task = asyncio.create_task(run(pipeline([step("a")], ["a"]), models))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert models.cancelled == ["a"]


async def test_external_inputs_are_refused_when_compiling() -> None:
    spec = pipeline([step("a")], ["a"], input=pb.PipelineInput(externalInputs=["other.outputs"]))
    with pytest.raises(InferenceError) as caught:
        PipelineExecutor(spec)
    assert caught.value.status == 501
    assert "other.outputs" in caught.value.message


async def test_an_invalid_spec_is_refused_when_compiling() -> None:
    with pytest.raises(InferenceError) as caught:
        PipelineExecutor(pipeline([step("a", ["ghost"])], ["a"]))
    assert caught.value.status == 500
    assert "ghost" in caught.value.message


# ----------------------------------------------------------------- cycles


def counter_models() -> Models:
    """Seldon's cyclic example: counter adds one and says 'continue' below 10, 'stop' from 10 on."""

    async def counter(request: JsonObject) -> JsonObject:
        x = by_name(request["inputs"])
        value = next(iter(x.values()))[0] + 1
        word = "continue" if value < 10 else "stop"
        return {"outputs": [t("output", [value]), t(word, [""], "BYTES")]}

    return Models(counter=counter, **{"identity-loop": _echo, "identity-output": _echo})


def counter_pipeline(max_revisits: int) -> pb.Pipeline:
    return pipeline(
        [
            step("counter", ["counter-pipeline.inputs", "identity-loop.outputs"], inputsJoin=J.ANY),
            step("identity-output", ["counter.outputs"], triggers=["counter.outputs.stop"], joinWindowMs=1),
            step("identity-loop", ["counter.outputs.output"], triggers=["counter.outputs.continue"], joinWindowMs=1),
        ],
        ["identity-output.outputs"],
        name="counter-pipeline",
        allowCycles=True,
        maxStepRevisits=max_revisits,
    )


async def test_seldons_counter_cycle_runs_until_stop() -> None:
    models = counter_models()
    response = await run(counter_pipeline(100), models, {"inputs": [t("start", [1])]})
    assert by_name(response["outputs"]) == {"output": [10], "stop": [""]}
    assert len(models.called("counter")) == 9  # 2, 3, ..., 10
    assert len(models.called("identity-loop")) == 8
    assert len(models.called("identity-output")) == 1


async def test_the_counter_cycle_under_the_truthy_rule_never_triggers() -> None:
    """Why Seldon's presence rule is the default: its own example signals with an empty-string tensor."""
    models = counter_models()
    caught = await fails(counter_pipeline(100), models, {"inputs": [t("start", [1])]}, trigger_rule=TriggerRule.TRUTHY)
    assert caught.status == NO_OUTPUT_STATUS
    assert "steps not triggered: identity-output, identity-loop" in caught.message
    assert len(models.called("counter")) == 1


async def test_a_cycle_stops_at_max_step_revisits() -> None:
    models = counter_models()
    caught = await fails(counter_pipeline(3), models, {"inputs": [t("start", [1])]})
    assert caught.status == LOOP_STATUS
    assert "step 'counter' would run a 5th time; maxStepRevisits is 3" in caught.message
    assert len(models.called("counter")) == 4  # the first run and three revisits


async def test_a_cycle_that_ends_early_needs_no_revisits() -> None:
    models = counter_models()
    response = await run(counter_pipeline(1), models, {"inputs": [t("start", [20])]})
    assert by_name(response["outputs"]) == {"output": [21], "stop": [""]}


# ----------------------------------------------------------------- bad input


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
tensor_like = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=4) | json_values,
        "shape": st.lists(st.integers(min_value=-2, max_value=4), max_size=3) | json_values,
        "datatype": st.sampled_from(["INT64", "FP32", "BOOL", "BYTES", "int", ""]) | json_values,
        "data": st.lists(st.integers() | st.booleans() | st.text(max_size=2), max_size=6) | json_values,
    },
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None, max_examples=200)
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries({"inputs": st.lists(tensor_like, max_size=3) | json_values}),
        st.fixed_dictionaries({"id": json_values, "inputs": st.just([t("x", [1])])}),
    )
)
def test_malformed_requests_are_400_and_reach_no_model(request: Any) -> None:
    models = Models(a=unary(lambda x: x))
    executor = PipelineExecutor(pipeline([step("a")], ["a"]))
    try:
        response = asyncio.run(executor.execute(request, models, HEADERS))
    except InferenceError as error:
        assert error.status == 400
        assert error.message.startswith("pipeline 'p': malformed request: ")
        assert models.calls == []
    else:
        # What got through is a well-formed request, forwarded untouched.
        assert models.called("a")[0]["inputs"] == request["inputs"]
        assert response["outputs"] == request["inputs"]


@settings(deadline=None, max_examples=100)
@given(
    st.lists(
        st.tuples(st.sampled_from(["INT64", "FP64", "BOOL", "BYTES"]), st.integers(min_value=0, max_value=5)),
        min_size=1,
        max_size=4,
    )
)
def test_well_formed_tensors_pass_through_an_identity_pipeline_unchanged(specs: list[tuple[str, int]]) -> None:
    element = {"INT64": 7, "FP64": 0.5, "BOOL": True, "BYTES": "s"}
    inputs = [t(f"t{i}", [element[datatype]] * size, datatype) for i, (datatype, size) in enumerate(specs)]
    models = Models(a=_echo, b=_echo)
    spec = pipeline([step("a"), step("b", ["a.inputs"])], ["b"])
    response = asyncio.run(PipelineExecutor(spec).execute({"inputs": inputs}, models, HEADERS))
    assert response["outputs"] == inputs


async def _echo(request: JsonObject) -> JsonObject:
    return {"outputs": request["inputs"]}


# ----------------------------------------------------------------- the steps' tensors on request (pipeline inspect)


async def test_the_steps_tensors_are_in_the_answer_only_when_asked() -> None:
    """``x-modelplane-inspect: steps``: each step that ran, with what its model received (after tensorMap) and
    answered; a step still running when the output was complete is marked cancelled; without the header the
    answer has no ``steps``."""
    spec = pipeline(
        [
            step("double", ["p.inputs.x"]),
            step("inc", ["double.outputs.y"], tensorMap={"double.outputs.y": "z"}),
            step("slow", ["p.inputs.x"]),
        ],
        ["inc", "slow"],  # ANY: the output fires on inc's answer while slow still runs
        output_spec={"stepsJoin": J.Value("ANY")},
    )
    models = Models(
        double=unary(lambda x: {"y": [2 * v for v in x["x"]]}),
        inc=unary(lambda x: {"w": [v + 1 for v in x["z"]]}),
        slow=hang(),
    )
    plain = await run(spec, models)
    assert "steps" not in plain
    answer = await PipelineExecutor(spec).execute(REQUEST, models, {**HEADERS, "x-modelplane-inspect": "steps"})
    assert by_name(answer["outputs"]) == by_name(plain["outputs"]) == {"w": [3, 5, 7]}
    steps = {entry["step"]: entry for entry in answer["steps"]}
    assert [entry["step"] for entry in answer["steps"]][-1] == "inc"  # in the order the steps started
    assert (by_name(steps["double"]["inputs"]), by_name(steps["double"]["outputs"])) == (
        {"x": [1, 2, 3]},
        {"y": [2, 4, 6]},
    )
    assert (by_name(steps["inc"]["inputs"]), by_name(steps["inc"]["outputs"])) == ({"z": [2, 4, 6]}, {"w": [3, 5, 7]})
    assert steps["inc"]["model"] == "inc"
    assert (steps["slow"]["outputs"], steps["slow"].get("cancelled")) == (None, True)
    assert "cancelled" not in steps["double"]
