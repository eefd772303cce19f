"""The gateway's V2 gRPC edge: ``inference.GRPCInferenceService`` (the Open Inference Protocol) served
with grpc.aio, in front of the transport-agnostic routing callables the gateway already has.

Each RPC converts at the boundary (gateway.edges.v2_grpc_codec) and calls one of the callables the gateway
gives the constructor; the gateway decides whether a name is a model, an experiment or a pipeline.
InferenceError statuses become gRPC codes (:func:`grpc_code_for`); anything else a callable raises is
logged and answered INTERNAL without its details.

    service = V2InferenceService(infer=..., model_ready=..., model_metadata=..., server_ready=...)
    add_v2_inference_service(server, service)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import grpc
from google.protobuf.message import DecodeError, Message
from grpc import aio

from gateway.edges.v2_grpc_codec import decode_infer_request, encode_infer_response, encode_model_metadata
from gateway.inference_types import InferenceError, JsonObject
from generated.inference.v2 import grpc_predict_v2_pb2 as pb
from generated.inference.v2 import grpc_predict_v2_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Context = aio.ServicerContext[Any, Any]

SERVICE_NAME: Final = "inference.GRPCInferenceService"


@dataclass(frozen=True, slots=True)
class InferResult:
    """What an infer callable answers: the V2 JSON response, and headers for the caller (sent as gRPC
    initial metadata; e.g. a sticky-session route). A callable may also answer the bare JSON."""

    body: JsonObject
    headers: Mapping[str, str] = field(default_factory=dict)


# (name, version or None, V2 JSON request, request headers with lower-case keys) -> response.
InferCallable = Callable[[str, str | None, JsonObject, Mapping[str, str]], Awaitable[JsonObject | InferResult]]
ModelReadyCallable = Callable[[str, str | None], Awaitable[bool]]
ModelMetadataCallable = Callable[[str, str | None], Awaitable[JsonObject]]
ServerReadyCallable = Callable[[], Awaitable[bool]]

# InferenceError.status (HTTP) -> gRPC code, as google.rpc's code-to-HTTP table read backwards.
# 502 (a replica or pipeline step failed) is INTERNAL, not UNAVAILABLE: UNAVAILABLE tells clients and
# gRPC retry policies that the same call may succeed if retried, which holds for "no replica now" (503)
# but not for a model that answered with an error; the gateway retries what is retryable itself.
_CODES: Final[Mapping[int, grpc.StatusCode]] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Response headers that belong to HTTP or to gRPC itself and must not be sent as metadata.
_RESERVED_HEADERS: Final = frozenset(
    {"content-type", "content-length", "content-encoding", "te", "trailer", "transfer-encoding", "connection",
     "keep-alive", "host", "upgrade", "user-agent"}
)  # fmt: skip
# Used with fullmatch: a pattern ending in "$" would also match before a final newline.
_METADATA_KEY: Final = re.compile(r"[0-9a-z_.\-]+")
_METADATA_VALUE: Final = re.compile(r"[\x20-\x7e]*")


def grpc_code_for(status: int) -> grpc.StatusCode:
    """The gRPC code for an InferenceError status: the table above, else INVALID_ARGUMENT for 4xx and
    INTERNAL for 5xx; UNKNOWN for anything else."""
    code = _CODES.get(status)
    if code is not None:
        return code
    if 400 <= status < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    if 500 <= status < 600:
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.UNKNOWN


def request_headers(metadata: Any) -> dict[str, str]:
    """Invocation metadata as headers: lower-case keys; binary (``-bin``) entries are left out, and a
    key sent more than once has its values joined with ", " as HTTP does."""
    headers: dict[str, str] = {}
    for key, value in metadata or ():
        name = str(key).lower()
        if name.endswith("-bin") or not isinstance(value, str):
            continue
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def response_metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Response headers that can travel as gRPC metadata (lower-case ASCII keys, printable values), in
    order; HTTP transport headers, ``grpc-*`` keys and anything invalid are dropped (and logged)."""
    pairs: list[tuple[str, str]] = []
    for key, value in headers.items():
        name = key.lower()
        if name in _RESERVED_HEADERS or name.startswith(("grpc-", ":")):
            continue
        if not _METADATA_KEY.fullmatch(name) or name.endswith("-bin") or not _METADATA_VALUE.fullmatch(value):
            log.warning("dropping response header %r: not valid as gRPC metadata", key)
            continue
        pairs.append((name, value))
    return tuple(pairs)


class V2InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService over the gateway's routing callables."""

    def __init__(
        self,
        *,
        infer: InferCallable,
        model_ready: ModelReadyCallable,
        model_metadata: ModelMetadataCallable,
        server_ready: ServerReadyCallable,
        server_name: str = "modelplane",
        server_version: str = "",
        extensions: tuple[str, ...] = (),
    ) -> None:
        self._infer = infer
        self._model_ready = model_ready
        self._model_metadata = model_metadata
        self._server_ready = server_ready
        self._server_metadata = pb.ServerMetadataResponse(
            name=server_name, version=server_version, extensions=list(extensions)
        )

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)  # answering at all is being live

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        try:
            ready = await self._server_ready()
        except Exception as error:  # every failure becomes a status
            await _abort(context, error, "ServerReady")
        return pb.ServerReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        return self._server_metadata

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is empty: name the model to check")
        try:
            ready = await self._model_ready(request.name, request.version or None)
        except Exception as error:  # every failure becomes a status
            await _abort(context, error, "ModelReady")
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is empty: name the model to describe")
        try:
            body = await self._model_metadata(request.name, request.version or None)
            return encode_model_metadata(body, name=request.name)
        except Exception as error:  # every failure becomes a status
            await _abort(context, error, "ModelMetadata")

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        try:
            decoded = decode_infer_request(request)
            headers = request_headers(context.invocation_metadata())
            answer = await self._infer(decoded.model_name, decoded.model_version, decoded.body, headers)
            result = answer if isinstance(answer, InferResult) else InferResult(answer)
            response = encode_infer_response(
                result.body, model_name=decoded.model_name, model_version=decoded.model_version, raw=decoded.raw_output
            )
        except Exception as error:  # every failure becomes a status
            await _abort(context, error, "ModelInfer")
        metadata = response_metadata(result.headers)
        if metadata:
            await context.send_initial_metadata(metadata)
        return response


# The RPCs served and the message each one takes.
_REQUEST_TYPES: Final[Mapping[str, type[Message]]] = {
    "ServerLive": pb.ServerLiveRequest,
    "ServerReady": pb.ServerReadyRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ServerMetadata": pb.ServerMetadataRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelInfer": pb.ModelInferRequest,
}


def add_v2_inference_service(server: aio.Server, service: V2InferenceService) -> None:
    """Mount the service on a grpc.aio server (before it starts).

    Requests arrive as bytes and are parsed here rather than by gRPC: bytes that are not the RPC's message
    are the caller's mistake (INVALID_ARGUMENT), where gRPC's own deserialiser would answer UNKNOWN with
    protobuf's exception in the details."""
    handlers: dict[str, grpc.RpcMethodHandler[bytes, Message]] = {
        rpc: grpc.unary_unary_rpc_method_handler(
            _parsing(request_type, getattr(service, rpc)), response_serializer=_serialize
        )
        for rpc, request_type in _REQUEST_TYPES.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _parsing(
    request_type: type[Message], method: Callable[[Any, Context], Awaitable[Message]]
) -> Callable[[bytes, Context], Awaitable[Message]]:
    async def handle(request: bytes, context: Context) -> Message:
        try:
            message = request_type.FromString(request)
        except DecodeError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid {request_type.DESCRIPTOR.full_name} message",
            )
        return await method(message, context)

    return handle


async def _abort(context: Context, error: Exception, rpc: str) -> NoReturn:
    if isinstance(error, InferenceError):
        await context.abort(grpc_code_for(error.status), error.message)
    log.exception("%s failed unexpectedly", rpc, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed inside the gateway; see its log")
