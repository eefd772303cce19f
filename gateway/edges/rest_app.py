"""The gateway's V2 (Open Inference Protocol) REST edge: HTTP in, InferenceRouter calls, HTTP out."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager

from aiohttp import web

from gateway.edges import v2_binary_data
from gateway.gateway_metrics import GatewayMetrics
from gateway.inference_router import InferenceRouter, RoutedAnswer, parse_version
from gateway.inference_types import InferenceError
from gateway.request_ids import REQUEST_ID_HEADER, take_request_id
from gateway.seldon_targets import Target, TargetKind, target_of
from gateway.server_identity import server_metadata_document
from modelplane import logs
from modelplane.inference_errors import UNREADABLE_BODY, quiet_caller_http_errors, unreadable_body_answer
from modelplane.inference_limits import MAX_REQUEST_BODY_BYTES
from modelplane.metrics_http import add_metrics_route

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The router's model_metadata or model_config: (name, version, headers) to the replica's answer.
ModelDocumentFetch = Callable[[str, int | None, Mapping[str, str]], Awaitable[RoutedAnswer]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _version(request: web.Request) -> int | None:
    return parse_version(request.match_info.get("version"))


async def _infer(
    call: Callable[[bytes], Awaitable[RoutedAnswer]], body: bytes, headers: dict[str, str], request_id: str
) -> web.Response:
    """One infer, plain JSON passed through as it came; a request using the binary data extension
    (gateway.edges.v2_binary_data) goes on as plain JSON, and its answer comes back as the caller wished."""
    if not v2_binary_data.may_use_binary_data(body, headers):
        return _answer(await call(body), request_id)
    request, wish = v2_binary_data.read_request(body, headers)
    answer = await call(json.dumps(request).encode())
    if not wish.any or answer.status != 200:
        return _answer(answer, request_id)
    packed, header_length = v2_binary_data.write_response(answer.json(), wish)
    response = _answer(
        RoutedAnswer(answer.status, packed, v2_binary_data.BINARY_CONTENT_TYPE, answer.headers), request_id
    )
    response.headers[v2_binary_data.HEADER_LENGTH_NAME] = str(header_length)
    return response


def _answer(answer: RoutedAnswer, request_id: str) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body, content_type=None)
    response.headers["Content-Type"] = answer.content_type
    response.headers.update(answer.headers)
    response.headers[REQUEST_ID_HEADER] = request_id
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


def _log_context(target: Target, request_id: str) -> AbstractContextManager[None]:
    """The request's id and the model, pipeline or experiment it names, on every line logged while it is served."""
    if target.kind is TargetKind.PIPELINE:
        return logs.bound(request_id=request_id, pipeline=target.name)
    if target.kind is TargetKind.EXPERIMENT:
        return logs.bound(request_id=request_id, experiment=target.name)
    return logs.bound(request_id=request_id, model=target.name)


def _model_named(target: Target) -> str:
    """Metadata and configuration are a model's (a replica's); Seldon's other names have none here."""
    if target.kind is not TargetKind.MODEL:
        raise InferenceError(404, f"a {target.kind.value} has no model metadata: name one of its models")
    return target.name


def build_app(router: InferenceRouter, metrics: GatewayMetrics, is_ready: Callable[[], bool]) -> web.Application:
    quiet_caller_http_errors()
    app = web.Application(middlewares=[_errors], client_max_size=MAX_REQUEST_BODY_BYTES)

    def headers_of(request: web.Request) -> dict[str, str]:
        return {k.lower(): v for k, v in request.headers.items()}

    async def infer_model(request: web.Request) -> web.Response:
        headers = headers_of(request)
        request_id = take_request_id(headers)
        target = target_of(request.match_info["name"], headers)
        version = _version(request)
        with _log_context(target, request_id):
            body = await request.read()
            return await _infer(
                lambda given: router.infer_target(target, version, given, headers), body, headers, request_id
            )

    async def model_document(request: web.Request, fetch: ModelDocumentFetch) -> web.Response:
        """A model's metadata or configuration, as the serving replica gives it (``fetch``)."""
        headers = headers_of(request)
        request_id = take_request_id(headers)
        name = _model_named(target_of(request.match_info["name"], headers))
        with logs.bound(request_id=request_id, model=name):
            return _answer(await fetch(name, _version(request), headers), request_id)

    async def model_metadata(request: web.Request) -> web.Response:
        return await model_document(request, router.model_metadata)

    async def model_config(request: web.Request) -> web.Response:
        return await model_document(request, router.model_config)

    async def model_ready(request: web.Request) -> web.Response:
        target = target_of(request.match_info["name"], headers_of(request))
        ready = router.target_ready(target, _version(request))
        return web.Response(status=200 if ready else 503)

    async def infer_pipeline(request: web.Request) -> web.Response:
        headers = headers_of(request)
        request_id = take_request_id(headers)
        name = request.match_info["name"]
        with logs.bound(request_id=request_id, pipeline=name):
            body = await request.read()
            return await _infer(lambda given: router.infer_pipeline(name, given, headers), body, headers, request_id)

    async def pipeline_ready(request: web.Request) -> web.Response:
        return web.Response(status=200 if router.pipeline_ready(request.match_info["name"]) else 503)

    async def live(_request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(status=200 if is_ready() else 503)

    async def server_metadata(_request: web.Request) -> web.Response:
        return web.json_response(server_metadata_document())

    app.router.add_post("/v2/models/{name}/versions/{version}/infer", infer_model)
    app.router.add_post("/v2/models/{name}/infer", infer_model)
    app.router.add_get("/v2/models/{name}/versions/{version}/ready", model_ready)
    app.router.add_get("/v2/models/{name}/ready", model_ready)
    app.router.add_get("/v2/models/{name}/versions/{version}/config", model_config)
    app.router.add_get("/v2/models/{name}/config", model_config)
    app.router.add_get("/v2/models/{name}/versions/{version}", model_metadata)
    app.router.add_get("/v2/models/{name}", model_metadata)
    app.router.add_post("/v2/pipelines/{name}/infer", infer_pipeline)
    app.router.add_get("/v2/pipelines/{name}/ready", pipeline_ready)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    add_metrics_route(app, metrics.registry)
    return app
