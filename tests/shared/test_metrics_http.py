"""modelplane/metrics_http.py's own listener (the scheduler's --metrics-listen): GET /metrics answers every registry
given, in the text format; any other path or method is refused as HTTP says, never answered with an error of ours;
a port in use is a TransportError naming the address."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from modelplane.addresses import Address
from modelplane.metrics_http import CONTENT_TYPE, serve_metrics
from modelplane.transport import TransportError

PATH_CHARACTERS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#%")


async def test_one_listener_serves_several_registries_and_refuses_the_rest() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    Counter("first_things", "Things.", registry=first).inc(3)
    Counter("second_things", "Things.", registry=second).inc()
    runner, address = await serve_metrics(Address("127.0.0.1", 0), first, second)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{address}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == CONTENT_TYPE
                text = await response.text()
            values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
            assert values["first_things_total"] == 3
            assert values["second_things_total"] == 1
            async with http.post(f"http://{address}/metrics", data=b"x") as response:
                assert response.status == 405
    finally:
        await runner.cleanup()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(PATH_CHARACTERS, min_size=1, max_size=60), method=st.sampled_from(["GET", "PUT", "DELETE"]))
async def test_any_other_path_is_a_404_or_405(path: str, method: str) -> None:
    runner, address = await serve_metrics(Address("127.0.0.1", 0), CollectorRegistry())
    try:
        async with aiohttp.ClientSession() as http, http.request(method, f"http://{address}/{path}") as response:
            if path == "metrics":
                assert response.status == (200 if method == "GET" else 405)
            else:
                assert response.status in (404, 405), (path, response.status)
    finally:
        await runner.cleanup()


async def test_a_port_in_use_is_refused_by_name() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TransportError, match=f"cannot listen on 127.0.0.1:{port}"):
            await serve_metrics(Address("127.0.0.1", port), CollectorRegistry())
