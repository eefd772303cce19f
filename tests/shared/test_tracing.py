"""modelplane/tracing.py with tracing on, against the OpenTelemetry SDK's in-memory exporter: two hops make one
trace, the second hop's span the child of the first's; whatever trace headers a caller sends, a hop neither fails
nor passes them on unchecked (tests/e2e/test_tracing.py runs the real processes)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modelplane import tracing

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this module's tests only: the module's state is put back afterwards."""
    saved = (tracing._tracer, tracing._propagator, tracing._trace)
    memory = InMemorySpanExporter()
    tracing.configure("test", None, exporter=memory)
    try:
        yield memory
    finally:
        tracing._tracer, tracing._propagator, tracing._trace = saved


def test_two_hops_are_one_trace_parent_and_child(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    caller = {"Traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "content-type": "application/json"}
    gateway = tracing.start_hop("gateway", "POST", "/v2/models/iris/infer", caller)
    agent = tracing.start_hop("agent proxy", "POST", "/v2/models/iris_1/infer", dict(caller))
    tracing.end_hop(agent, 200)
    tracing.end_hop(gateway, 503)
    first, second = sorted(exporter.get_finished_spans(), key=lambda span: span.name)
    assert (first.name, second.name) == (
        "agent proxy POST /v2/models/iris_1/infer",
        "gateway POST /v2/models/iris/infer",
    )
    assert second.context.trace_id == first.context.trace_id == int("a" * 32, 16)
    assert second.parent is not None
    assert second.parent.span_id == int("b" * 16, 16)
    assert first.parent is not None
    assert first.parent.span_id == second.context.span_id
    assert second.status.is_ok is False  # a 503 marks the hop failed
    assert "Traceparent" not in caller  # one traceparent goes on, this hop's
    assert caller["content-type"] == "application/json"


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


header_text = st.text(max_size=300) | st.from_regex(TRACEPARENT, fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(traceparent=header_text | st.none(), tracestate=st.text(max_size=300) | st.none())
def test_any_trace_headers_give_a_span_and_one_valid_traceparent_on(
    exporter: InMemorySpanExporter, traceparent: str | None, tracestate: str | None
) -> None:
    headers = {name: value for name, value in (("traceparent", traceparent), ("tracestate", tracestate)) if value}
    warned = _Warnings()
    logging.getLogger().addHandler(warned)
    try:
        span = tracing.start_hop("gateway", "POST", "/v2/models/iris/infer", headers)
        tracing.end_hop(span, None)
    finally:
        logging.getLogger().removeHandler(warned)
    assert not warned.messages  # what a caller sends fills no log
    sent = TRACEPARENT.fullmatch(headers["traceparent"])
    assert sent is not None, headers
    assert int(sent[2], 16) == span.get_span_context().span_id
    given_context = TRACEPARENT.fullmatch(traceparent or "")
    if given_context is not None and int(given_context[1], 16) and int(given_context[2], 16):
        assert sent[1] == given_context[1]  # the caller's trace, continued
