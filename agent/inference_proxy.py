"""The agent's inference proxy: V2 (Open Inference Protocol) REST and gRPC in front of its server.

Clients (the gateway, `modelplane model infer`) address models by their plain name ("iris"); the
server knows each version as "iris_3". The proxy maps one to the other, reloads a model evicted
by the LRU before forwarding its request, and counts the use. REST bodies and gRPC messages pass
through unchanged apart from the model name (and, in answers, the name and version given back).

What the server says when it fails stays here: a REST error answer is read by
modelplane.inference_errors (which says what MLServer's and Triton's errors mean) and passed on as
``{"error": one short line}`` with the status that puts the blame where it belongs (a request the server
found invalid: its 4xx, or 400 for a traceback of a ValueError; the model not here: 404; the server
unreachable or busy: 503; the server failed: 500); the server's own words (a traceback with its file
paths) go to the log, bounded. gRPC errors keep the server's code with their details cut to one line.

While the server is down (the agent's watch says so) every request is answered 503 (gRPC UNAVAILABLE)
with the reason, at once; a request the server cannot be reached for is answered 503 too, and asks the
watch to probe the server now. Those REST answers, and only those, carry the header
``modelplane.inference_errors.SERVER_DOWN_HEADER``: the gateway skips this whole replica for them. What
concerns one model is a plain 503 (gRPC UNAVAILABLE) with the reason: an evicted model that cannot be
loaded again, or has no room to come back (the agent was restarted with less memory than it needs);
another replica may have it. 502 is kept for a server that answered something the proxy cannot pass on,
504 for one that did not answer in time. When the server serves again the proxy opens new connections to
it (the old ones may lead to a dead process, and gRPC's reconnect backoff after an outage would delay the
first calls), letting requests still on the old ones finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import DecodeError
from grpc import aio

from agent.held_models import NoRoom
from agent.model_manager import ModelManager
from agent.server_calls import ServerDown
from generated.mlops.agent.v1 import agent_pb2
from modelplane import logs, tracing
from modelplane.http_hop import (
    AnswerTimeoutError,
    BrokenConnectionError,
    ConnectError,
    HopClient,
    HopError,
    request_target,
)
from modelplane.inference_errors import (
    SERVER_DOWN_HEADER,
    UNREADABLE_BODY,
    ErrorAnswer,
    ErrorBody,
    Verdict,
    quiet_caller_http_errors,
    read_error_answer,
    safe_reason,
    unreadable_body_answer,
)
from modelplane.inference_limits import MAX_REQUEST_BODY_BYTES
from modelplane.request_ids import is_usable_request_id
from modelplane.whole_numbers import parse_whole_number
from servers.adapter import ServerError

log = logging.getLogger(__name__)

GRPC_SERVICE = "inference.GRPCInferenceService"
# RPCs whose request names a model in field 1 (and its version in field 2).
_NAMED_RPCS = {"ModelInfer", "ModelReady", "ModelMetadata"}
_PASS_THROUGH_RPCS = {"ServerLive", "ServerReady", "ServerMetadata"}
# Not passed on: they describe this hop (the body is forwarded as read, so decoded, whatever it came as; the
# server's answer is asked for uncompressed, which is how the proxy's client reads it).
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "accept-encoding"}
# The status the proxy answers a server's error with, by verdict (INVALID keeps the server's 4xx).
_ANSWER_STATUS = {Verdict.NOT_HERE: 404, Verdict.UNAVAILABLE: 503, Verdict.TIMED_OUT: 504, Verdict.FAILED: 500}
# How long requests still on connections replaced after a restart may take to finish before those close.
_RETIRE_GRACE_SECONDS = 60.0
_REQUEST_TIMEOUT_SECONDS = 300.0
_CONNECT_TIMEOUT_SECONDS = 10.0
_SERVER_CONNECTIONS = 256  # at once, as many as the gateway keeps to one agent
REQUEST_ID_HEADER = "x-request-id"


class ModelNotHere(Exception):  # noqa: N818 - the name says what the client hit
    pass


class ModelCannotAnswer(Exception):  # noqa: N818 - the name says what the client hit
    """The model is held here but could not be brought back onto the server; the message is the reason."""


def _server_down_answer(reason: str) -> web.Response:
    """The 503 for "the server is down or unreachable", marked so the gateway skips this whole replica."""
    return web.json_response({"error": reason}, status=503, headers={SERVER_DOWN_HEADER: "1"})


def parse_version(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    number = parse_whole_number(text)
    if number is None:
        raise ModelNotHere(f"model version {text!r} is not a number")
    return number


# The V2 binary tensor data extension (Triton's; tritonclient's default): the request header giving the length of
# the JSON part of a body, and the answer header saying the same of the answer.
BINARY_HEADER_LENGTH = "Inference-Header-Content-Length"


class InferenceProxy:
    def __init__(
        self,
        manager: ModelManager,
        server_http_url: str,
        server_grpc_target: str,
        *,
        triton_extensions: bool = True,
    ) -> None:
        self.manager = manager
        # Whether the server speaks Triton's V2 extensions: binary tensor data and the model configuration (Triton
        # does, MLServer does not: a binary body, or a /config, is refused here with a 400 that says so, where
        # MLServer would fail to read the body as JSON, or answer a 404 that reads as "the model is not here").
        self.triton_extensions = triton_extensions
        self.server_http_url = server_http_url.rstrip("/")
        self.server_grpc_target = server_grpc_target
        self._session: HopClient | None = None
        self._channel: aio.Channel | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        # Called when the server could not be reached (the agent's watch probes it at once).
        self.on_unreachable: Callable[[], None] = lambda: None

    def reconnect(self) -> None:
        """The server serves again: new requests go over new connections; the old ones close after a grace."""
        session, channel = self._session, self._channel
        self._session = self._channel = None
        if session is not None or channel is not None:
            task = asyncio.create_task(self._retire(session, channel))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire(
        session: HopClient | None, channel: aio.Channel | None, grace: float = _RETIRE_GRACE_SECONDS
    ) -> None:
        try:
            if channel is not None:
                await channel.close(grace)
            else:
                await asyncio.sleep(grace)
        finally:
            if channel is not None:
                await channel.close()
            if session is not None:
                await session.close()

    def _down(self) -> ServerDown | None:
        reason = self.manager.down_reason
        return ServerDown(reason) if reason is not None else None

    async def resolve(self, name: str, version: int | None) -> str:
        """The server-side name for ``name`` (reloading it if evicted). Raises ModelNotHere, ServerDown (the
        server is down), or ModelCannotAnswer (this model could not be brought back onto the server)."""
        try:
            loaded = await self.manager.ensure_on_server(name, version)
        except ServerDown:
            raise
        except NoRoom as error:
            raise ModelCannotAnswer(safe_reason(f"no room on this replica to load {name} again: {error}")) from None
        except ServerError as error:
            raise ModelCannotAnswer(safe_reason(f"could not load {name}: {error}")) from None
        if loaded is None:
            which = f"{name} version {version}" if version is not None else name
            raise ModelNotHere(f"model {which} is not loaded on this replica")
        return loaded

    # ----------------------------------------------------------------- REST

    def rest_app(self) -> web.Application:
        quiet_caller_http_errors()
        app = web.Application(client_max_size=MAX_REQUEST_BODY_BYTES)
        app.router.add_route("*", "/v2/models/{name}/versions/{version}{rest:(/.*)?}", self._model_route)
        app.router.add_route("*", "/v2/models/{name}{rest:(/.*)?}", self._model_route)
        app.router.add_route("GET", "/v2/health/{what:live|ready}", self._pass_through)
        app.router.add_route("GET", "/v2", self._pass_through)
        app.on_cleanup.append(self._close_session)
        return app

    def _client(self) -> HopClient:
        if self._session is None:
            self._session = HopClient(
                connections=_SERVER_CONNECTIONS,
                total_timeout=_REQUEST_TIMEOUT_SECONDS,
                connect_timeout=_CONNECT_TIMEOUT_SECONDS,
            )
        return self._session

    async def _close_session(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _model_route(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        request_id = request.headers.get(REQUEST_ID_HEADER)
        request_id = request_id if request_id is not None and is_usable_request_id(request_id) else None
        # The gateway's id for the request (it always sends one), so its lines and the agent's are found by one id.
        with logs.bound(model=name, request_id=request_id) if request_id else logs.bound(model=name):
            return await self._serve_model(request, name)

    async def _serve_model(self, request: web.Request, name: str) -> web.StreamResponse:
        if not self.triton_extensions and BINARY_HEADER_LENGTH in request.headers:
            reason = (
                f"this replica's server does not read binary tensor data ({BINARY_HEADER_LENGTH}): send JSON "
                "tensors (tritonclient: binary_data=False), or call through the gateway, which converts"
            )
            return web.json_response({"error": reason}, status=400)
        if not self.triton_extensions and request.match_info.get("rest") == "/config":
            reason = "this replica's server has no model configuration (/config is Triton's): ask for its metadata"
            return web.json_response({"error": reason}, status=400)
        try:
            version = parse_version(request.match_info.get("version"))
            loaded = await self.resolve(name, version)
        except ModelNotHere as error:
            return web.json_response({"error": str(error)}, status=404)
        except ServerDown as error:
            return _server_down_answer(str(error))
        except ModelCannotAnswer as error:
            return web.json_response({"error": str(error)}, status=503)
        path = f"/v2/models/{loaded}{request.match_info.get('rest') or ''}"
        return await self._forward(request, path, rename=(loaded, name, version))

    async def _pass_through(self, request: web.Request) -> web.StreamResponse:
        return await self._forward(request, request.path, rename=None)

    async def _forward(
        self, request: web.Request, path: str, rename: tuple[str, str, int | None] | None
    ) -> web.StreamResponse:
        down = self._down()
        if down is not None:
            return _server_down_answer(str(down))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            body = await request.read()
        except UNREADABLE_BODY as error:  # a body aiohttp cannot read: bad gzip, a bad chunk
            return unreadable_body_answer(error)
        if body and not self.triton_extensions and request.content_type != "application/json":
            # The V2 REST bodies are JSON whatever the caller said (tritonclient says nothing, so its HTTP library
            # says application/octet-stream), and MLServer reads only a body marked JSON (else its 422).
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            headers["Content-Type"] = "application/json"
        span = tracing.start_hop("agent proxy", request.method, path, headers)  # None unless tracing is on
        if span is None:
            answer = await self._ask_server(request, path, body, headers)
        else:
            try:
                answer = await self._ask_server(request, path, body, headers)
            except BaseException:
                tracing.end_hop(span, None)
                raise
            tracing.end_hop(span, answer.status if isinstance(answer, web.Response) else answer[0])
        if isinstance(answer, web.Response):
            return answer
        status, content_type, payload, header_length = answer
        log.debug("%s %s answered %d by the server", request.method, path, status)
        answer_headers = {"Content-Type": content_type}
        if header_length is not None:
            # Binary tensor data: the JSON part (renamed) and then the tensors, as the server wrote them.
            head, tensors = payload[:header_length], payload[header_length:]
            if rename is not None:
                head = _rename_json(head, *rename)
            payload = head + tensors
            answer_headers[BINARY_HEADER_LENGTH] = str(len(head))
        elif rename is not None and content_type.startswith("application/json"):
            payload = _rename_json(payload, *rename)
        return web.Response(body=payload, status=status, headers=answer_headers)

    async def _ask_server(
        self, request: web.Request, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, bytes, int | None] | web.Response:
        """The server's 2xx answer as (status, content type, body, the length of its JSON part when the rest is
        binary tensor data), or the proxy's answer for anything else. (A
        request on a kept-alive connection the server had just closed, as uvicorn does after a 500, is sent once
        more on a new one by the client: inference and the V2 reads have no side effects.)"""
        try:
            target = request_target(path, request.rel_url.raw_query_string)
            answer = await self._client().request(
                request.method, self.server_http_url, target, headers=headers, body=body
            )
        except HopError as error:
            return self._failure_answer(error)
        except ValueError as error:  # a method or query that cannot go on a request line
            return web.json_response({"error": safe_reason(f"the request cannot be passed on: {error}")}, status=400)
        content_type = answer.headers.get("content-type", "application/json")
        if 200 <= answer.status < 300:
            return answer.status, content_type, answer.body, _header_length(answer.headers, len(answer.body))
        return self._error_answer(path, read_error_answer(answer.status, answer.error_body or ErrorBody()))

    def _failure_answer(self, error: HopError) -> web.Response:
        """504 for a server that did not answer in time; 503 for one the proxy could not reach (and the watch is
        asked to probe it now); 502 for an answer the proxy cannot pass on."""
        if isinstance(error, AnswerTimeoutError):
            return web.json_response({"error": "the inference server did not answer in time"}, status=504)
        if isinstance(error, ConnectError | BrokenConnectionError):
            self.on_unreachable()
            down = self._down()
            if down is not None:
                return _server_down_answer(str(down))
            return _server_down_answer(
                safe_reason(f"the inference server is unreachable: {type(error).__name__}: {error}")
            )
        reason = safe_reason(f"the inference server's answer was unusable: {error}")
        return web.json_response({"error": reason}, status=502)

    def _error_answer(self, path: str, error: ErrorAnswer) -> web.Response:
        if error.verdict is Verdict.INVALID:
            log.info("the server refused %s as invalid: %s", path, error.detail)
        else:
            log.warning("the server failed on %s (%s): %s", path, error.verdict.value, error.detail)
        return web.json_response({"error": error.reason}, status=_ANSWER_STATUS.get(error.verdict, error.status))

    # ----------------------------------------------------------------- gRPC

    def grpc_handler(self) -> grpc.GenericRpcHandler:
        return _GrpcProxyHandler(self)

    def _grpc_channel(self) -> aio.Channel:
        if self._channel is None:
            self._channel = aio.insecure_channel(self.server_grpc_target)
        return self._channel

    async def forward_grpc(self, rpc: str, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        down = self._down()
        if down is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(down))
        original: tuple[str, str] | None = None
        if rpc in _NAMED_RPCS:
            try:
                names = agent_pb2.InferenceModelName.FromString(request)
            except DecodeError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {rpc} request")
            # Unbound at the end of the RPC's own task (grpc.aio runs each in one).
            ids: logs.LogContext = {"model": names.name}
            for key, value in context.invocation_metadata() or ():
                if key == REQUEST_ID_HEADER and isinstance(value, str) and is_usable_request_id(value):
                    ids["request_id"] = value
            logs.bind(**ids)
            try:
                loaded = await self.resolve(names.name, parse_version(names.version))
            except ModelNotHere as error:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
            except ServerDown as error:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
            except ModelCannotAnswer as error:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
            original = (names.name, names.version)
            # Re-serialising keeps every other field: protobuf carries unknown fields through.
            names.name, names.version = loaded, ""
            request = names.SerializeToString()
        call: aio.UnaryUnaryMultiCallable[bytes, bytes] = self._grpc_channel().unary_unary(f"/{GRPC_SERVICE}/{rpc}")
        try:
            response: bytes = await call(
                request, timeout=context.time_remaining(), metadata=context.invocation_metadata()
            )
        except aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                self.on_unreachable()
            # The server's code stands; its details (MLServer puts an exception's whole message there, data
            # included) are cut to one line without file paths.
            log.debug("the server answered %s with %s: %s", rpc, error.code().name, (error.details() or "")[:2000])
            await context.abort(error.code(), safe_reason(error.details() or error.code().name))
        if rpc == "ModelInfer" and original is not None:
            answer = agent_pb2.InferenceModelName.FromString(response)
            answer.name, answer.version = original[0], original[1] or answer.version
            response = answer.SerializeToString()
        return response

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for task in list(self._retiring):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._channel is not None:
            await self._channel.close()
        if self._session is not None:
            await self._session.close()


class _GrpcProxyHandler(grpc.GenericRpcHandler):
    def __init__(self, proxy: InferenceProxy) -> None:
        self.proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method: str = handler_call_details.method
        service, _, rpc = method.lstrip("/").partition("/")
        if service != GRPC_SERVICE or rpc not in _NAMED_RPCS | _PASS_THROUGH_RPCS:
            return None

        async def handle(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
            return await self.proxy.forward_grpc(rpc, request, context)

        # No (de)serialisers: the proxy handles raw message bytes.
        return grpc.unary_unary_rpc_method_handler(handle)


def _header_length(headers: Mapping[str, str], body_length: int) -> int | None:
    """The length of an answer's JSON part, when the server says the rest is binary tensor data (and says it
    in a form that fits the answer; otherwise the answer is passed on as one whole)."""
    text = headers.get(BINARY_HEADER_LENGTH.lower())
    if text is None or not (text.isascii() and text.isdigit() and len(text) <= 12):
        return None
    length = int(text)
    return length if length <= body_length else None


# The start of an inference answer as MLServer and Triton write it (compact JSON, these two keys first): the
# server's name and version strings (or a null version), at most 512 characters each.
_ANSWER_START = re.compile(rb'\{"model_name":("(?:[^"\\]|\\.){0,512}"),"model_version":("(?:[^"\\]|\\.){0,512}"|null),')


def _rename_json(payload: bytes, loaded: str, name: str, version: int | None) -> bytes:
    """Give the client back the name it asked for, not the server's versioned one."""
    given_version = str(version) if version is not None else loaded.rpartition("_")[2]
    start = _ANSWER_START.match(payload)
    if start is not None and json.loads(start[1]) == loaded:
        # An inference answer: its first two values are replaced and the rest (the tensors) passes on as the
        # server wrote it, rather than being parsed and written again.
        renamed = f'{{"model_name":{json.dumps(name)},"model_version":{json.dumps(given_version)},'
        return renamed.encode() + payload[start.end() :]
    try:
        document: Any = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's recursion limit
        return payload
    if isinstance(document, dict) and document.get("model_name") == loaded:
        document["model_name"] = name
        document["model_version"] = given_version
        return json.dumps(document).encode()
    if isinstance(document, dict) and document.get("name") == loaded:
        document["name"] = name
        return json.dumps(document).encode()
    return payload
