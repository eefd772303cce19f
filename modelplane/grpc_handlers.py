"""How a grpc.aio server interceptor wraps a method handler's behaviour: the access check (modelplane/auth), the
scheduler's request limits and its audit log each wrap the handler a service gave, and keep its kind.

A handler has one behaviour, under the attribute of its kind (``unary_unary``, ``unary_stream``, ``stream_unary``,
``stream_stream``). On a grpc.aio server a behaviour is a coroutine function (it returns the response, or writes
to its context) or an async generator function (it yields the responses), whatever the sync-typed stubs say, and
grpc.aio tells which by looking at the function: so a wrapper must be the same sort of function as what it wraps.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, cast

import grpc
from grpc import aio

Context = aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Any]  # a coroutine function or an async generator function
# Awaited before a behaviour starts (raising, or aborting the context, refuses the call); the behaviour then runs
# inside the context manager it returns.
Guard = Callable[[Any, Context], Awaitable[AbstractContextManager[object]]]
Deserializer = Callable[[bytes], Any] | None

_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def rewrapped(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap: Callable[[Behavior], Behavior],
    *,
    request_deserializer: Deserializer = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind and serializers whose behaviour is ``wrap(behaviour)`` (and whose requests are
    read by ``request_deserializer`` when one is given)."""
    for kind, make in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            deserializer = request_deserializer or handler.request_deserializer
            return make(wrap(behavior), deserializer, handler.response_serializer)
    return handler


def guarded(behavior: Behavior, guard: Guard) -> Behavior:
    """``behavior`` that first awaits ``guard(request, context)`` and runs inside what it returns; the same sort
    of function as ``behavior`` (module docstring)."""
    if inspect.isasyncgenfunction(behavior):
        generator = cast(Callable[[Any, Context], AsyncIterator[Any]], behavior)

        async def guarded_generator(request: Any, context: Context) -> AsyncIterator[Any]:
            with await guard(request, context):
                async for response in generator(request, context):
                    yield response

        return guarded_generator
    coroutine = cast(Callable[[Any, Context], Awaitable[Any]], behavior)

    async def guarded_coroutine(request: Any, context: Context) -> Any:
        with await guard(request, context):
            return await coroutine(request, context)

    return guarded_coroutine
