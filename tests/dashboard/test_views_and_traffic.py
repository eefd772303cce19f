"""The scheduler's status messages as the page's views, and the gateway's request counters as each experiment
route's share: bounded, and what cannot be read is left out rather than an error."""

from __future__ import annotations

import contextlib
import math

from hypothesis import given
from hypothesis import strategies as st

from dashboard.http_sources import run_view
from dashboard.status_views import MAX_LIST_ITEMS, MAX_TEXT_CHARS, experiment_spec_view, model_view, pipeline_view
from dashboard.traffic_metrics import MAX_LINE_CHARS, Scrape, TrafficWindow, parse_route_counts
from gateway.gateway_metrics import GatewayMetrics
from gateway.inference_router import InferenceRouter
from gateway.inference_types import InferenceError
from gateway.replica_client import ReplicaClient
from gateway.routing_table import Endpoint, ModelRoute, RoutingTable
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.metrics_http import render


def test_a_model_shows_its_latest_version_state_and_replicas_and_none_once_deleted() -> None:
    status = pb.ModelStatusResponse(modelName="iris")
    old = status.versions.add(version=1, serverName="mlserver")
    old.state.state = pb.ModelStatus.ModelAvailable
    new = status.versions.add(version=2, serverName="mlserver")
    new.state.state = pb.ModelStatus.ModelProgressing
    new.state.reason = "loading\nsecond line" + "x" * 2000
    new.modelReplicaState[0].state = pb.ModelReplicaStatus.Loading
    view = model_view(status)
    assert view is not None
    assert (view["version"], view["state"]) == (2, "ModelProgressing")
    assert view["replicas"] == [{"index": 0, "state": "Loading", "reason": ""}]
    assert "\n" not in view["reason"]
    assert len(view["reason"]) <= MAX_TEXT_CHARS
    assert model_view(pb.ModelStatusResponse(modelName="iris", deleted=True)) is None


def test_a_pipeline_shows_its_steps_by_the_step_each_input_comes_from() -> None:
    pipeline = pb.Pipeline(name="flowers", version=1)
    pipeline.steps.add(name="first")
    pipeline.steps.add(name="second", inputs=["first.outputs.predict", "flowers.inputs"], triggers=["first"])
    pipeline.output.steps.append("second.outputs")
    status = pb.PipelineStatusResponse(pipelineName="flowers")
    version = status.versions.add(pipeline=pipeline)
    version.state.pipelineVersion = 1
    version.state.status = pb.PipelineVersionState.PipelineReady
    view = pipeline_view(status)
    assert view is not None
    assert view["state"] == "PipelineReady"
    assert view["steps"] == [{"name": "first", "inputs": []}, {"name": "second", "inputs": ["first", "flowers"]}]
    assert view["outputs"] == ["second"]
    version.state.status = pb.PipelineVersionState.PipelineTerminated
    assert pipeline_view(status) is None


def test_an_experiment_spec_shows_its_weights_default_and_mirror() -> None:
    experiment = pb.Experiment(name="ab", default="a", resourceType=pb.MODEL)
    experiment.candidates.add(name="a", weight=30)
    experiment.candidates.add(name="b", weight=70)
    experiment.mirror.CopyFrom(pb.ExperimentMirror(name="c", percent=10))
    assert experiment_spec_view(experiment) == {
        "name": "ab",
        "resourceType": "model",
        "default": "a",
        "candidates": [{"name": "a", "weight": 30}, {"name": "b", "weight": 70}],
        "mirror": {"name": "c", "percent": 10},
    }
    many = pb.Experiment(name="many")
    for index in range(MAX_LIST_ITEMS + 10):
        many.candidates.add(name=f"m{index}", weight=1)
    assert len(experiment_spec_view(many)["candidates"]) == MAX_LIST_ITEMS


METRICS = """# HELP modelplane_gateway_experiment_routes_total Requests an experiment sent to each candidate.
# TYPE modelplane_gateway_experiment_routes_total counter
modelplane_gateway_experiment_routes_total{experiment="ab",route="a"} 3
modelplane_gateway_experiment_routes_total{experiment="ab",route="b"} 4.0
modelplane_gateway_experiment_routes_total{experiment="we\\"ird\\\\",route="b"} 2
modelplane_gateway_experiment_routes_total{experiment="ab",route="c"} NaN
modelplane_gateway_experiment_routes_total{experiment="ab" broken} 9
modelplane_gateway_experiment_routes_created{experiment="ab",route="a"} 1.7e+09
modelplane_gateway_requests_total{code="200",kind="model",name="a",route="a"} 7.0
modelplane_gateway_mirror_requests_total{experiment="ab",mirror="c",outcome="ok"} 5
"""


def test_the_route_counters_are_read_by_experiment_and_route_and_the_rest_skipped() -> None:
    assert parse_route_counts(METRICS) == {("ab", "a"): 3.0, ("ab", "b"): 4.0, ('we"ird\\', "b"): 2.0}
    too_long = 'modelplane_gateway_experiment_routes_total{experiment="' + "n" * MAX_LINE_CHARS + '",route="a"} 1'
    assert parse_route_counts(too_long) == {}


@given(st.text(max_size=2000))
def test_any_metrics_text_parses_to_finite_non_negative_counts(body: str) -> None:
    counts = parse_route_counts(body)
    assert all(math.isfinite(value) and value >= 0 for value in counts.values())


SPEC = {"name": "ab", "resourceType": "model", "default": "a", "candidates": [{"name": "a"}, {"name": "b"}]}


def test_each_route_share_is_its_growth_over_the_window() -> None:
    window = TrafficWindow(3)
    window.add(Scrape(0.0, {("ab", "a"): 10.0, ("ab", "b"): 10.0}))
    window.add(Scrape(5.0, {("ab", "a"): 15.0, ("ab", "b"): 13.0, ("other", "a"): 4.0}))
    traffic = window.experiment_traffic(SPEC)
    assert traffic["windowSeconds"] == 5.0
    assert traffic["total"] == 8.0
    assert traffic["routes"] == [
        {"name": "a", "requests": 5.0, "share": 5 / 8},
        {"name": "b", "requests": 3.0, "share": 3 / 8},
    ]
    # A gateway restarted: its counters start again from zero, counted as they are.
    window.add(Scrape(10.0, {("ab", "a"): 2.0}))
    window.add(Scrape(15.0, {("ab", "a"): 1.0}))
    assert window.experiment_traffic(SPEC)["routes"][0]["requests"] == 1.0


def test_no_traffic_is_no_share_rather_than_a_division_by_zero() -> None:
    window = TrafficWindow(2)
    window.add(Scrape(0.0, {}))
    assert window.experiment_traffic(SPEC)["routes"] == [
        {"name": "a", "requests": 0.0, "share": None},
        {"name": "b", "requests": 0.0, "share": None},
    ]


def test_a_training_run_keeps_only_finite_metrics_and_something_else_is_no_run() -> None:
    raw = {
        "run_id": "r1",
        "state": "succeeded",
        "metrics": {"accuracy": 0.97, "loss": float("inf"), "note": "text", "flag": True},
        "errors": ["first", "last\nline"],
        "model_uri": "s3://models/r1",
        "updated_at": 1700000000.5,
        "attempts": 1,
    }
    view = run_view(raw)
    assert view is not None
    assert view["metrics"] == {"accuracy": 0.97}
    assert view["lastError"] == "last line"
    assert run_view({"state": "queued"}) is None
    assert run_view(["not", "a", "run"]) is None


async def test_requests_that_bypass_the_experiment_are_no_share_of_its_traffic() -> None:
    """A live router's metrics, read as the dashboard reads them: a request for the experiment's default by
    version does not go through the experiment (the gateway's routing), so it is no share of its traffic; one
    for the experiment's name is."""
    table = RoutingTable()
    table.experiments["ab"] = pb.Experiment(
        name="ab",
        default="a",
        candidates=[pb.ExperimentCandidate(name="a", weight=1)],
        resourceType=pb.MODEL,
    )
    for name in ("a", "b"):
        table.models[name] = ModelRoute(name, {1: (Endpoint("mlserver", 0, "http://127.0.0.1:1", ""),)})
    metrics = GatewayMetrics()
    client = ReplicaClient(max_attempts=1)
    router = InferenceRouter(lambda: table, client, metrics)
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}'
    window = TrafficWindow(2)
    spec = experiment_spec_view(table.experiments["ab"])
    try:
        window.add(Scrape(0.0, parse_route_counts(render([metrics.registry]).decode())))
        for name, version in (("a", 1), ("a", 1), ("ab", None)):
            with contextlib.suppress(InferenceError):  # nothing listens on port 1: answered 503, counted all the same
                await router.infer_model(name, version, body, {})
        window.add(Scrape(5.0, parse_route_counts(render([metrics.registry]).decode())))
    finally:
        await router.close()
        await client.close()
    traffic = window.experiment_traffic(spec)
    assert traffic["total"] == 1.0, traffic
    assert traffic["routes"] == [{"name": "a", "requests": 1.0, "share": 1.0}]
