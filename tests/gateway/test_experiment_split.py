"""gateway.experiment_split and the router's use of it: traffic goes only to candidates (and a mirror) that
can answer now, with the others' weights renormalised; none left is a 503 that says why, never a 404.

Statistical bounds are about 4.5 standard deviations from the expected count: a correct split fails them
about once in 150,000 runs (and the draws are seeded, so a run repeats exactly)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.experiment_split import ExperimentSplitter
from gateway.gateway_metrics import GatewayMetrics
from gateway.inference_router import InferenceRouter
from gateway.inference_types import InferenceError
from gateway.pipelines.runner import PipelineRunner
from gateway.replica_client import ReplicaClient
from gateway.routing_table import ROUTE_HEADER, Endpoint, ModelRoute, PipelineRoute, RoutingTable
from generated.mlops.scheduler import scheduler_pb2 as pb


def experiment(*weights: tuple[str, int], mirror: str | None = None, sticky: bool = False) -> pb.Experiment:
    spec = pb.Experiment(
        name="exp",
        candidates=[pb.ExperimentCandidate(name=name, weight=weight) for name, weight in weights],
        resourceType=pb.MODEL,
    )
    if mirror is not None:
        spec.mirror.CopyFrom(pb.ExperimentMirror(name=mirror, percent=100))
    if sticky:
        spec.config.stickySessions = True
    return spec


def seeded() -> ExperimentSplitter:
    return ExperimentSplitter(random.Random(7))  # noqa: S311 - a repeatable draw, not a secret


def serving(*names: str) -> set[str]:
    return set(names)


def test_a_candidate_that_cannot_answer_gets_nothing_and_the_rest_share_by_weight() -> None:
    splitter = seeded()
    spec = experiment(("a", 1), ("b", 1), ("c", 2))
    served = serving("a", "c")
    picks = Counter(splitter.decide(spec, {}, served.__contains__).candidate for _ in range(3000))
    assert set(picks) == {"a", "c"}
    # a: 1/3 of 3000 = 1000, sd = sqrt(3000 * 1/3 * 2/3) = 25.8.
    assert 884 <= picks["a"] <= 1116, picks


def test_sticky_sessions_follow_the_header_only_to_a_candidate_that_can_answer() -> None:
    splitter = seeded()
    spec = experiment(("a", 1), ("b", 1), sticky=True)
    assert {splitter.decide(spec, {ROUTE_HEADER: "b"}, serving("a", "b").__contains__).candidate} == {"b"}
    decisions = [splitter.decide(spec, {ROUTE_HEADER: "b"}, serving("a").__contains__) for _ in range(20)]
    assert {d.candidate for d in decisions} == {"a"}
    assert all(d.sticky for d in decisions)


def test_a_mirror_that_cannot_answer_gets_no_copy() -> None:
    splitter = seeded()
    spec = experiment(("a", 1), mirror="m")
    assert splitter.decide(spec, {}, serving("a", "m").__contains__).mirror == "m"
    assert splitter.decide(spec, {}, serving("a").__contains__).mirror is None


def test_nothing_that_can_answer_is_no_candidate() -> None:
    splitter = seeded()
    assert splitter.decide(experiment(("a", 1), ("b", 1)), {}, serving().__contains__).candidate is None
    mirror_only = pb.Experiment(name="exp", default="d", mirror=pb.ExperimentMirror(name="m", percent=50))
    assert splitter.decide(mirror_only, {}, serving("d").__contains__).candidate == "d"
    assert splitter.decide(mirror_only, {}, serving("m").__contains__).candidate is None


def route(name: str) -> ModelRoute:
    return ModelRoute(name, {1: (Endpoint("mlserver", 0, "http://127.0.0.1:1", ""),)})


async def test_the_router_answers_503_naming_the_experiment_when_no_candidate_can_answer() -> None:
    table = RoutingTable()
    table.experiments["exp"] = experiment(("a", 1), ("b", 1))
    table.models["b"] = ModelRoute("b", {})  # known, but no replica serves it
    client = ReplicaClient()
    router = InferenceRouter(lambda: table, client, GatewayMetrics())
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}'
    try:
        with pytest.raises(InferenceError) as raised:
            await router.infer_model("exp", None, body, {})
        assert raised.value.status == 503
        assert "'exp'" in raised.value.message
        assert "a, b" in raised.value.message
        assert not router.model_ready("exp", None)
        table.models["a"] = route("a")
        assert router.model_ready("exp", None), "a candidate can answer, so the experiment is ready"
    finally:
        await router.close()
        await client.close()


def test_a_pipeline_candidate_can_answer_when_every_step_model_can() -> None:
    table = RoutingTable()
    steps = pb.Pipeline(name="p", steps=[pb.PipelineStep(name="m1"), pb.PipelineStep(name="m2")])
    table.pipelines["p"] = PipelineRoute("p", 1, "uid", steps)
    table.models["m1"] = route("m1")
    assert not table.serves("p", pb.PIPELINE)
    table.models["m2"] = route("m2")
    assert table.serves("p", pb.PIPELINE)
    assert not table.serves("q", pb.PIPELINE)
    assert table.serves("m1", pb.MODEL)
    assert not table.serves("p", pb.MODEL)


async def test_a_pipeline_request_that_fails_is_counted_with_its_status() -> None:
    # Before: only a pipeline's 200s reached modelplane_gateway_requests_total (and the dashboard's traffic share),
    # so a pipeline whose step cannot answer looked idle on /metrics.
    table = RoutingTable()
    table.pipelines["p"] = PipelineRoute("p", 1, "uid", pb.Pipeline(name="p", steps=[pb.PipelineStep(name="m1")]))
    table.models["m1"] = ModelRoute("m1", {})  # known, but no replica serves it: the step fails
    metrics = GatewayMetrics()
    client = ReplicaClient()
    router = InferenceRouter(lambda: table, client, metrics)
    router.pipelines = PipelineRunner(lambda: table, router.call_model, 30.0)
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}'
    try:
        with pytest.raises(InferenceError) as raised:
            await router.infer_pipeline("p", body, {})
        with pytest.raises(InferenceError):
            await router.infer_pipeline("made-up", body, {})
    finally:
        await router.close()
        await client.close()
    labels = {"kind": "pipeline", "name": "p", "route": "p", "code": str(raised.value.status)}
    assert metrics.registry.get_sample_value("modelplane_gateway_requests_total", labels) == 1
    names = {
        sample.labels["name"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "modelplane_gateway_requests_total" and sample.labels["kind"] == "pipeline"
    }
    assert names == {"p"}, "a name no pipeline has stays out of the labels"
