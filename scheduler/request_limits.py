"""A server interceptor that checks every request of the Scheduler API and the RoutingService against the field
limits (modelplane/spec/limits.py) before its handler runs, so no handler ever sees an oversized or control-character
field, whatever it does with it (even fields it ignores).

The agent's stream (AgentService.Session) is checked message by message where it is read (agent_service.py):
an interceptor cannot refuse one message of a stream. Other services on the same server (health, reflection)
pass through untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf.message import Message
from grpc import aio

from generated.mlops.routing.v1 import routing_pb2
from generated.mlops.scheduler import scheduler_pb2
from modelplane.spec import limits
from modelplane.spec.errors import FailedPrecondition, InvalidArgument, SchedulerError
from scheduler import status_codes

CHECKED_SERVICES = (
    "/" + scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name + "/",
    "/" + routing_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name + "/",
)
# Seldon's clients read FAILED_PRECONDITION as "do not retry", and Seldon answers it for an invalid pipeline.
_ERRORS: dict[str, type[SchedulerError]] = {scheduler_pb2.LoadPipelineRequest.DESCRIPTOR.full_name: FailedPrecondition}

Context = aio.ServicerContext[Any, Any]


async def _check(request: Message, context: Context) -> None:
    try:
        error = _ERRORS.get(request.DESCRIPTOR.full_name, InvalidArgument)
        limits.check_fields(request, request.DESCRIPTOR.name, error)
    except SchedulerError as problem:
        await status_codes.abort(context, problem)


def _unary(behavior: Callable[[Any, Context], Awaitable[Any]]) -> Callable[[Any, Context], Awaitable[Any]]:
    async def checked(request: Message, context: Context) -> Any:
        await _check(request, context)
        return await behavior(request, context)

    return checked


def _stream(behavior: Callable[[Any, Context], AsyncIterator[Any]]) -> Callable[[Any, Context], AsyncIterator[Any]]:
    # grpc.aio recognises a streaming handler by its being an async generator function: so is this one.
    async def checked(request: Message, context: Context) -> AsyncIterator[Any]:
        await _check(request, context)
        async for response in behavior(request, context):
            yield response

    return checked


class RequestLimits(aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(CHECKED_SERVICES) or handler.request_streaming:
            return handler
        if handler.unary_unary is not None:
            # On a grpc.aio server, handlers are coroutine functions (unary) and async generator functions
            # (streams), whatever the sync-typed stubs say.
            unary = cast(Callable[[Any, Context], Awaitable[Any]], handler.unary_unary)
            return grpc.unary_unary_rpc_method_handler(
                _unary(unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream = cast(Callable[[Any, Context], AsyncIterator[Any]], handler.unary_stream)
            return grpc.unary_stream_rpc_method_handler(
                _stream(stream), handler.request_deserializer, handler.response_serializer
            )
        return handler
