"""The gateway's /metrics text: one line per series whatever the label values hold, escaped as the Prometheus
text format says (backslash, double quote, line feed), and read back to the same values."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from gateway.gateway_metrics import GatewayMetrics

METRIC = "modelplane_gateway_requests_total"
# A label value in the text format: anything but a bare backslash, double quote or line feed, or an escape.
_SERIES = re.compile(r'^modelplane_gateway_requests_total\{code="200",name="((?:[^"\\\n]|\\[\\"n])*)"\} (\d+)$')


def _unescape(text: str) -> str:
    return re.sub(r"\\([\\\"n])", lambda match: {"\\": "\\", '"': '"', "n": "\n"}[match.group(1)], text)


def test_the_three_escapes() -> None:
    metrics = GatewayMetrics()
    metrics.count(METRIC, name='a"b\\c\nd', code="200")
    assert 'modelplane_gateway_requests_total{code="200",name="a\\"b\\\\c\\nd"} 1' in metrics.render().split("\n")


@given(st.lists(st.text(max_size=12), min_size=1, max_size=5, unique=True))
def test_any_label_value_renders_as_one_line_that_reads_back(names: list[str]) -> None:
    metrics = GatewayMetrics()
    for count, name in enumerate(names, start=1):
        for _ in range(count):
            metrics.count(METRIC, name=name, code="200")
    series = [line for line in metrics.render().split("\n") if line.startswith(METRIC)]  # lines end at LF only
    assert len(series) == len(names)
    read = {}
    for line in series:
        match = _SERIES.match(line)
        assert match is not None, line
        read[_unescape(match.group(1))] = int(match.group(2))
    assert read == {name: count for count, name in enumerate(names, start=1)}
