"""The registry's aiohttp application: ROUTES at the root, /openapi.json, JSON errors, a body-size limit, and
/metrics with every request counted (registry/api/registry_metrics.py)."""

from __future__ import annotations

from functools import partial
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from modelplane import logs
from modelplane.inference_errors import quiet_caller_http_errors
from modelplane.metrics_http import add_metrics_route
from registry.api.errors import json_errors
from registry.api.openapi import openapi_document
from registry.api.registry_metrics import RegistryMetrics
from registry.api.routes import ROUTES
from registry.service.registry_service import RegistryService

# The largest body any call takes: 1,000 directives of 1 KiB fit; a split's schema is small. Over it: 413.
MAX_BODY_BYTES: Final = 1024 * 1024


@web.middleware
async def _log_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every line logged for a request about one model or experiment names it (modelplane/logs.py's keys); the
    request's id is its caller's (the access check's), as in every process."""
    info = request.match_info
    resource = info.route.resource
    path = resource.canonical if resource is not None else ""
    if path.startswith("/models/{model}"):
        with logs.bound(model=info["model"]):
            return await handler(request)
    if path.startswith("/experiments/{name}"):
        with logs.bound(experiment=info["name"]):
            return await handler(request)
    return await handler(request)


def build_app(service: RegistryService, metrics: RegistryMetrics | None = None) -> web.Application:
    """The application; with ``metrics``, every request is counted and timed and /metrics serves them."""
    quiet_caller_http_errors()
    middlewares = [json_errors, _log_ids] if metrics is None else [metrics.middleware, json_errors, _log_ids]
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
