"""The registry's /metrics on its REST port, scraped from a live registry: each request counted and timed under its
route's pattern and status, never under a name the caller put in the path."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.metrics_reading import sample_sum
from tests.support.processes import stop_process
from tests.support.registry_process import start_registry


def test_requests_are_counted_by_route_pattern_and_status(tmp_path: Path) -> None:
    registry = start_registry(tmp_path)
    try:
        assert registry.call("GET", "/experiments").status == 200
        assert registry.call("GET", "/experiments").status == 200
        assert registry.call("GET", "/experiments/no-such-experiment").status == 404
        assert registry.call("GET", "/not/a/route/secret-ish-name").status == 404
        scraped = registry.call("GET", "/metrics")
        assert scraped.status == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert isinstance(scraped.body, str)
        families = list(text_string_to_metric_families(scraped.body))
    finally:
        stop_process(registry.process)
    requests = "modelplane_registry_requests_total"
    assert sample_sum(families, requests, method="GET", route="/experiments", code="200") == 2
    assert sample_sum(families, requests, method="GET", route="/experiments/{name}", code="404") == 1
    assert sample_sum(families, requests, route="(no route)", code="404") == 1
    assert sample_sum(families, requests) == 4  # the scrape itself is not counted
    timed = "modelplane_registry_request_duration_seconds_count"
    assert sample_sum(families, timed, method="GET", route="/experiments") == 2
    assert "secret-ish-name" not in scraped.body
    assert "no-such-experiment" not in scraped.body
