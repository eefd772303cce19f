"""The gateway's V2 (Open Inference Protocol) REST edge: HTTP in, InferenceRouter calls, HTTP out."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.gateway_metrics import GatewayMetrics
from gateway.inference_router import InferenceRouter, RoutedAnswer, parse_version
from gateway.inference_types import InferenceError
from modelplane.inference_errors import UNREADABLE_BODY, quiet_caller_http_errors, unreadable_body_answer
from modelplane.inference_limits import MAX_REQUEST_BODY_BYTES
from modelplane.metrics_http import add_metrics_route

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _version(request: web.Request) -> int | None:
    return parse_version(request.match_info.get("version"))


def _answer(answer: RoutedAnswer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body, content_type=None)
    response.headers["Content-Type"] = answer.content_type
    response.headers.update(answer.headers)
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON ``{"error": ...}``: the router's, aiohttp's own (no such route 404, wrong method
    405, body over the limit 413, a body it cannot decode 400), and anything unexpected as a 500 that names
    nothing of our insides (it is logged with its traceback instead)."""
    try:
        return await handler(request)
    except InferenceError as error:
        return _error(error.status, error.message)
    except UNREADABLE_BODY as error:  # a body aiohttp cannot read: bad gzip, a bad chunk
        return unreadable_body_answer(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = _error(error.status, error.text or error.reason)
        if isinstance(error, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ",".join(sorted(error.allowed_methods))
        return response
    except Exception:
        log.exception("%s %s failed inside the gateway", request.method, request.rel_url.path[:200])
        return _error(500, "the gateway failed on this request; its log says why")


def build_app(router: InferenceRouter, metrics: GatewayMetrics, is_ready: Callable[[], bool]) -> web.Application:
    quiet_caller_http_errors()
    app = web.Application(middlewares=[_errors], client_max_size=MAX_REQUEST_BODY_BYTES)

    def headers_of(request: web.Request) -> dict[str, str]:
        return {k.lower(): v for k, v in request.headers.items()}

    async def infer_model(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        return _answer(await router.infer_model(name, _version(request), body, headers_of(request)))

    async def model_metadata(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return _answer(await router.model_metadata(name, _version(request), headers_of(request)))

    async def model_ready(request: web.Request) -> web.Response:
        ready = router.model_ready(request.match_info["name"], _version(request))
        return web.Response(status=200 if ready else 503)

    async def infer_pipeline(request: web.Request) -> web.Response:
        body = await request.read()
        return _answer(await router.infer_pipeline(request.match_info["name"], body, headers_of(request)))

    async def pipeline_ready(request: web.Request) -> web.Response:
        return web.Response(status=200 if router.pipeline_ready(request.match_info["name"]) else 503)

    async def live(_request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(status=200 if is_ready() else 503)

    async def server_metadata(_request: web.Request) -> web.Response:
        return web.json_response({"name": "modelplane-gateway", "extensions": []})

    app.router.add_post("/v2/models/{name}/versions/{version}/infer", infer_model)
    app.router.add_post("/v2/models/{name}/infer", infer_model)
    app.router.add_get("/v2/models/{name}/versions/{version}/ready", model_ready)
    app.router.add_get("/v2/models/{name}/ready", model_ready)
    app.router.add_get("/v2/models/{name}/versions/{version}", model_metadata)
    app.router.add_get("/v2/models/{name}", model_metadata)
    app.router.add_post("/v2/pipelines/{name}/infer", infer_pipeline)
    app.router.add_get("/v2/pipelines/{name}/ready", pipeline_ready)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    add_metrics_route(app, metrics.registry)
    return app
