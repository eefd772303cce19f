"""The registry's aiohttp application: ROUTES at the root, /openapi.json, JSON errors, a body-size limit, and
/metrics with every request counted (registry/api/registry_metrics.py)."""

from __future__ import annotations

from functools import partial
from typing import Final

from aiohttp import web

from modelplane.inference_errors import quiet_caller_http_errors
from modelplane.metrics_http import add_metrics_route
from registry.api.errors import json_errors
from registry.api.openapi import openapi_document
from registry.api.registry_metrics import RegistryMetrics
from registry.api.routes import ROUTES
from registry.service.registry_service import RegistryService

# The largest body any call takes: 1,000 directives of 1 KiB fit; a split's schema is small. Over it: 413.
MAX_BODY_BYTES: Final = 1024 * 1024


def build_app(service: RegistryService, metrics: RegistryMetrics | None = None) -> web.Application:
    """The application; with ``metrics``, every request is counted and timed and /metrics serves them."""
    quiet_caller_http_errors()
    middlewares = [json_errors] if metrics is None else [metrics.middleware, json_errors]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, partial(route.handler, service))
    document = openapi_document()

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/openapi.json", openapi)
    if metrics is not None:
        add_metrics_route(app, metrics.registry)
    return app
