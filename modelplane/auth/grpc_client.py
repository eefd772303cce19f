"""A client's bearer token on every call of a channel (``authorization: Bearer ...`` metadata), for the gateway,
the agents and the trainer calling the scheduler. Interceptors rather than call credentials: gRPC sends call
credentials only over TLS, and a loopback token over plaintext is still a token. The token is asked for on every
call (client_token.py): a token file the kubelet rotates is followed without a new channel.

One interceptor per kind of call: grpc.aio files each interceptor under the first kind it implements only, so
one class implementing all four would add the token to unary calls alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

from grpc import aio

from modelplane.auth.client_token import ClientToken

__all__ = ["bearer_token_interceptors"]

Continuation = Callable[[aio.ClientCallDetails, Any], Awaitable[Any]]


class _WithToken:
    def __init__(self, token: ClientToken) -> None:
        self._token = token

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<hidden>)"

    def _details(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        metadata = aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", f"Bearer {self._token.current()}")
        return aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_WithToken, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Continuation, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_WithToken, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Continuation, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_WithToken, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Continuation, details: Any, request_iterator: AsyncIterable[Any] | Iterable[Any]
    ) -> Any:
        return await continuation(self._details(details), request_iterator)


class _StreamStream(_WithToken, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Continuation, details: Any, request_iterator: AsyncIterable[Any] | Iterable[Any]
    ) -> Any:
        return await continuation(self._details(details), request_iterator)


def bearer_token_interceptors(token: ClientToken) -> list[aio.ClientInterceptor]:
    return [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
