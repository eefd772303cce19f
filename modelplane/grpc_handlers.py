"""How a grpc.aio server interceptor wraps a method handler's behaviour: the access check (modelplane/auth), the
scheduler's request limits and its audit log each wrap the handler a service gave, and keep its kind.

A handler has one behaviour, under the attribute of its kind (``unary_unary``, ``unary_stream``, ``stream_unary``,
``stream_stream``). On a grpc.aio server a behaviour is a coroutine function (it returns the response, or writes
to its context) or an async generator function (it yields the responses), whatever the sync-typed stubs say, and
grpc.aio tells which by looking at the function: so a wrapper must be the same sort of function as what it wraps.

A method whose handler has no response serializer sends what its behaviour gives as it is, which must be bytes
(``add_with_raw_responses``).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar, cast

import grpc
from grpc import aio

Context = aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Any]  # a coroutine function or an async generator function
# Awaited before a behaviour starts (raising, or aborting the context, refuses the call); the behaviour then runs
# inside the context manager it returns.
Guard = Callable[[Any, Context], Awaitable[AbstractContextManager[object]]]
Deserializer = Callable[[bytes], Any] | None
Serializer = Callable[[Any], bytes] | None
S = TypeVar("S")

_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


_KEEP: Any = object()  # rewrapped's default: keep the handler's response serializer


def rewrapped(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap: Callable[[Behavior], Behavior],
    *,
    request_deserializer: Deserializer = None,
    response_serializer: Serializer = _KEEP,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind and serializers whose behaviour is ``wrap(behaviour)`` (and whose requests are
    read by ``request_deserializer`` when one is given; whose responses are written by ``response_serializer`` when
    one is given: None sends bytes as they are)."""
    for kind, make in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            deserializer = request_deserializer or handler.request_deserializer
            serializer = handler.response_serializer if response_serializer is _KEEP else response_serializer
            return make(wrap(behavior), deserializer, serializer)
    return handler


MAX_WRAPPED_METHODS = 1024  # far more than any server here serves; a bound all the same


class WrappedHandlers:
    """Per method, the handler an interceptor made from the one it was given, made again only when it is given
    another. grpc.aio asks every interceptor for the handler on every call, and the services' handlers stay the
    same (the generated registrations), so the wrapping (closures and a new RpcMethodHandler per interceptor) is
    done once per method rather than once per call: ~3 % of the scheduler's CPU per LoadModel otherwise.

    Only what ``make`` does with the handler and its method may be kept: nothing of one call (its metadata, its
    caller) goes into the wrapper. Methods without a handler are never kept (their names are the caller's words);
    past ``MAX_WRAPPED_METHODS`` methods the oldest is forgotten."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    def get(
        self,
        method: str,
        handler: grpc.RpcMethodHandler[Any, Any],
        make: Callable[[grpc.RpcMethodHandler[Any, Any]], grpc.RpcMethodHandler[Any, Any]],
    ) -> grpc.RpcMethodHandler[Any, Any]:
        kept = self._made.get(method)
        if kept is not None and kept[0] is handler:
            return kept[1]
        made = make(handler)
        if method not in self._made and len(self._made) >= MAX_WRAPPED_METHODS:
            del self._made[next(iter(self._made))]
        self._made[method] = (handler, made)
        return made


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


class _Registrations:
    """Stands in for a server while a generated ``add_*Servicer_to_server`` registers its handlers
    (``add_with_raw_responses``)."""

    def __init__(self) -> None:
        self.service: str | None = None
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        pass  # the same handlers come again through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_with_raw_responses(
    add_to_server: Callable[[S, Any], None], servicer: S, server: aio.Server, raw: Collection[str]
) -> None:
    """Register ``servicer`` as the generated ``add_to_server`` does, except that the methods named in ``raw`` send
    what their behaviour gives as it is: bytes the servicer has serialised already (a status serialised once for
    every subscriber, modelplane/event_hub.py). The bytes on the wire are the same as if gRPC had serialised the
    message, so clients see no difference."""
    registrations = _Registrations()
    add_to_server(servicer, registrations)
    service, handlers = registrations.service, registrations.handlers
    if service is None or not set(raw) <= handlers.keys():
        raise ValueError(f"{add_to_server.__name__} registered no methods {sorted(set(raw) - handlers.keys())}")
    for method in raw:
        handlers[method] = rewrapped(handlers[method], lambda behavior: behavior, response_serializer=None)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
