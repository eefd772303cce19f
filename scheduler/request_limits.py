"""A server interceptor that checks every request of the Scheduler API and the RoutingService against the field
limits (modelplane/spec/limits.py) before its handler runs, so no handler ever sees an oversized or control-character
field, whatever it does with it (even fields it ignores).

The agent's stream (AgentService.Session) is checked message by message where it is read (agent_service.py):
an interceptor cannot refuse one message of a stream. Other services on the same server (health, reflection)
pass through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc import aio

from generated.mlops.routing.v1 import routing_pb2
from generated.mlops.scheduler import scheduler_pb2
from modelplane.grpc_handlers import Context, WrappedHandlers, guarded, rewrapped
from modelplane.spec import limits
from modelplane.spec.errors import FailedPrecondition, InvalidArgument, SchedulerError
from scheduler import status_codes

CHECKED_SERVICES = (
    "/" + scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name + "/",
    "/" + routing_pb2.DESCRIPTOR.services_by_name["RoutingService"].full_name + "/",
)
# Seldon's clients read FAILED_PRECONDITION as "do not retry", and Seldon answers it for an invalid pipeline.
_ERRORS: dict[str, type[SchedulerError]] = {scheduler_pb2.LoadPipelineRequest.DESCRIPTOR.full_name: FailedPrecondition}


async def _check(request: Message, context: Context) -> AbstractContextManager[object]:
    try:
        error = _ERRORS.get(request.DESCRIPTOR.full_name, InvalidArgument)
        limits.check_fields(request, request.DESCRIPTOR.name, error)
    except SchedulerError as problem:
        await status_codes.abort(context, problem)
    return nullcontext()


def _checked(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    return rewrapped(handler, lambda behavior: guarded(behavior, _check))


class RequestLimits(aio.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(CHECKED_SERVICES) or handler.request_streaming:
            return handler
        return self._wrapped.get(method, handler, _checked)
