"""The gateway's /metrics: prometheus_client's text format, one series per label set whatever the label values hold
(escaped as the format says), read back to the same values; requests counted and timed together."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.gateway_metrics import GatewayMetrics

METRIC = "modelplane_gateway_requests_total"


def test_the_three_escapes() -> None:
    metrics = GatewayMetrics()
    metrics.request("model", 'a"b\\c\nd', "r", 200, 0.01)
    lines = generate_latest(metrics.registry).decode().split("\n")
    assert 'modelplane_gateway_requests_total{code="200",kind="model",name="a\\"b\\\\c\\nd",route="r"} 1.0' in lines


@given(st.lists(st.text(max_size=12), min_size=1, max_size=5, unique=True))
def test_any_label_value_renders_as_one_line_that_reads_back(names: list[str]) -> None:
    metrics = GatewayMetrics()
    for count, name in enumerate(names, start=1):
        for _ in range(count):
            metrics.request("model", name, "r", 200, 0.002)
    text = generate_latest(metrics.registry).decode()
    assert len([line for line in text.split("\n") if line.startswith(METRIC + "{")]) == len(names)
    read = {
        sample.labels["name"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == METRIC
    }
    assert read == {name: count for count, name in enumerate(names, start=1)}


def test_a_request_is_counted_and_timed_under_the_same_labels() -> None:
    metrics = GatewayMetrics()
    metrics.request("model", "ab", "iris-a", 200, 0.003)
    metrics.request("model", "ab", "iris-a", 200, 0.2)
    metrics.request("model", "ab", "iris-b", 503, 0.004)
    labels = {"kind": "model", "name": "ab", "route": "iris-a", "code": "200"}
    value = metrics.registry.get_sample_value
    assert value(METRIC, labels) == 2
    assert value("modelplane_gateway_request_duration_seconds_count", labels) == 2
    assert value("modelplane_gateway_request_duration_seconds_sum", labels) == pytest.approx(0.203)
    assert value("modelplane_gateway_request_duration_seconds_bucket", {**labels, "le": "0.005"}) == 1
    assert value(METRIC, {**labels, "route": "iris-b", "code": "503"}) == 1


def test_two_gateways_in_one_interpreter_keep_their_own_counts() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.retry("m")
    assert first.registry.get_sample_value("modelplane_gateway_replica_retries_total", {"model": "m"}) == 1
    assert second.registry.get_sample_value("modelplane_gateway_replica_retries_total", {"model": "m"}) is None
