"""OpenTelemetry traces from the gateway through the agent's proxy (issue 16, Observability), end to end: a
scheduler, an agent with a real MLServer and a gateway, the gateway and the agent sending their spans over OTLP/HTTP
to a small receiver on 127.0.0.1 that this test runs (the real exporter, the real wire format).

One inference makes a gateway span and an agent-proxy span of one trace, the agent's the child of the gateway's; a
caller's W3C ``traceparent`` makes the gateway's span the child of the caller's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.cluster_fixtures import Cluster, Iris, api_of, model, until
from tests.support.processes import start_gateway, stop_process

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a trace's root


@dataclass
class Receiver:
    url: str
    spans: list[Span]

    def of(self, service: str, trace_id: str) -> list[Span]:
        return [span for span in self.spans if span.service == service and span.trace_id == trace_id]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """An OTLP/HTTP traces endpoint: it keeps every span it is sent."""
    spans: list[Span] = []

    async def export(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in message.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                spans.extend(
                    Span(
                        attributes.get("service.name", ""),
                        span.name,
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                    )
                    for span in scope_spans.spans
                )
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Receiver(f"http://127.0.0.1:{port}/v1/traces", spans)
    finally:
        await runner.cleanup()


async def test_one_inference_is_one_trace_from_the_gateway_through_the_agent_proxy(
    cluster: Cluster, iris: Iris, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export each batch within 0.1 s, not 5 s
    traced = f"--otel-endpoint={receiver.url}"
    scheduler = cluster.start_scheduler()
    await asyncio.to_thread(cluster.start_agents, cluster.agent(0, extra=(traced,)))
    async with api_of(cluster) as api:
        await api.load(model("iris", str(iris.folder)))
        await api.available("iris")
    gateway = await asyncio.to_thread(start_gateway, cluster.root / "gateway", scheduler.listen, traced)
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            url = f"{gateway.url}/v2/models/iris/infer"
            traceparent = {"traceparent": f"00-{caller_trace}-{caller_span}-01"}
            async with http.post(url, json=iris.request, headers=traceparent) as response:
                assert response.status == 200, await response.text()
            async with http.post(url, json=iris.request) as response:  # no trace context: the gateway starts one
                assert response.status == 200, await response.text()

        async def both_hops_of_both_traces() -> bool:
            gateway_roots = [s for s in receiver.spans if s.service == "modelplane-gateway" and not s.parent_id]
            return (
                bool(receiver.of("modelplane-agent", caller_trace))
                and len(gateway_roots) == 1
                and bool(receiver.of("modelplane-agent", gateway_roots[0].trace_id))
            )

        await until(both_hops_of_both_traces, "the spans of both requests", lambda: f"{receiver.spans}")
    finally:
        stop_process(gateway.process)

    [gateway_span] = receiver.of("modelplane-gateway", caller_trace)
    [agent_span] = receiver.of("modelplane-agent", caller_trace)
    assert gateway_span.parent_id == caller_span
    assert agent_span.parent_id == gateway_span.span_id
    assert gateway_span.name == "gateway POST /v2/models/iris/infer"
    assert agent_span.name.startswith("agent proxy POST /v2/models/iris_1/infer")
    [root] = [s for s in receiver.spans if s.service == "modelplane-gateway" and not s.parent_id]
    [child] = receiver.of("modelplane-agent", root.trace_id)
    assert child.parent_id == root.span_id


def test_with_tracing_off_no_process_loads_opentelemetry(tmp_path: Path) -> None:
    """Off by default: a gateway's and an agent's code, run through a hop, never import opentelemetry."""
    script = tmp_path / "off.py"
    script.write_text(
        "import sys\n"
        "from modelplane import tracing\n"
        "import agent.inference_proxy, gateway.replica_client, modelplane.cli.main\n"
        "tracing.configure('gateway', None)\n"
        "headers = {'traceparent': '00-' + '1' * 32 + '-' + '2' * 16 + '-01'}\n"
        "span = tracing.start_hop('gateway', 'POST', '/v2/models/iris/infer', headers)\n"
        "tracing.end_hop(span, 200)\n"
        "assert span is None and headers['traceparent'].startswith('00-111'), (span, headers)\n"
        "loaded = sorted(name for name in sys.modules if name.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
