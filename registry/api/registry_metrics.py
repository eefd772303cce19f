"""The registry's Prometheus metrics, on a registry of its own, served as /metrics on its REST port: every request
counted and timed by method, route (the route's pattern, never a name from the path) and status."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from modelplane.metrics_http import METRICS_PATH

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "(no route)"  # a path no route takes: its text stays out of the labels

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RegistryMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "modelplane_registry_requests",
            "REST requests answered, by method, route pattern and HTTP status.",
            ("method", "route", "code"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "modelplane_registry_request_duration_seconds",
            "Time to answer a REST request, by method and route pattern.",
            ("method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500  # what the caller gets when the handler raises something not HTTP
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else UNMATCHED
            if route != METRICS_PATH:
                self._requests.labels(request.method, route, str(status)).inc()
                self._latency.labels(request.method, route).observe(time.perf_counter() - started)
