"""The one server interceptor that applies the access check (access_check.py) to every gRPC server of every
process: it is given to modelplane.transport.new_server.

A call without a credential ends with UNAUTHENTICATED, one whose caller lacks the role with PERMISSION_DENIED
naming that role, before its handler runs; a stream is checked once, when it starts. An admitted handler runs
with its caller set (caller.serving), for the audit log and the logs. The check runs inside the handler because
only the handler's context knows the peer's certificate; a method no service serves is left to gRPC
(UNIMPLEMENTED).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import grpc
from grpc import aio

from modelplane.auth.access_check import AccessCheck, Credentials, Refusal
from modelplane.auth.access_table import rule_for_grpc
from modelplane.auth.caller import Caller, CredentialKind, serving
from modelplane.auth.certificates import SanKind
from modelplane.auth.request_resource import resource_of
from modelplane.grpc_handlers import Context, WrappedHandlers, guarded, rewrapped

__all__ = ["AccessInterceptor", "RefusalRecorder", "bearer_token"]


# gRPC's auth context names a verified peer certificate's SANs by kind.
_SAN_PROPERTIES = {SanKind.URI: "peer_uri", SanKind.DNS: "peer_dns", SanKind.EMAIL: "peer_email"}
_MAX_HEADER_CHARS = 8192


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` value; None without the header, "" when it is not a
    bearer token (refused as a bad credential rather than ignored)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or len(authorization) > _MAX_HEADER_CHARS:
        return ""
    return token.strip()


def _credentials(context: Context) -> Credentials:
    authorization: str | None = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            authorization = value
    properties = context.auth_context() or {}
    sans: dict[SanKind, list[str]] = {}
    for kind, name in _SAN_PROPERTIES.items():
        values = [raw.decode("utf-8", "replace") for raw in properties.get(name, ())]
        if values:
            sans[kind] = values
    return Credentials(peer=context.peer() or "", bearer=bearer_token(authorization), certificate_sans=sans)


class RefusalRecorder(Protocol):
    """Told of every call the check refuses, before the refusal is sent (the scheduler's audit log): ``request``
    is None for a streamed request, ``code`` the gRPC status code's name."""

    async def __call__(self, method: str, request: object | None, caller: Caller, code: str, message: str) -> None: ...


class AccessInterceptor(aio.ServerInterceptor):
    def __init__(self, check: AccessCheck, record_refusal: RefusalRecorder | None = None) -> None:
        self.check = check
        self._record_refusal = record_refusal
        self._wrapped = WrappedHandlers()

    async def _admit(self, method: str, request: object, context: Context) -> Caller:
        rule = rule_for_grpc(method)
        credentials = _credentials(context)
        verdict = await self.check.admit(
            method,
            rule,
            credentials,
            lambda: resource_of(request, rule.resource if rule is not None else None),
        )
        if isinstance(verdict, Refusal):
            code = grpc.StatusCode.UNAUTHENTICATED if verdict.unauthenticated else grpc.StatusCode.PERMISSION_DENIED
            if self._record_refusal is not None:
                # Before abort: grpc.aio sends the status inside it, and a refusal is recorded before it is answered.
                refused = verdict.caller or Caller("", CredentialKind.NONE, peer=credentials.peer)
                await self._record_refusal(method, request, refused, code.name, verdict.message)
            await context.abort(code, verdict.message)  # raises
            raise AssertionError("context.abort returned")
        return verdict

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        return self._wrapped.get(method, handler, lambda given: self._checked(method, given))

    def _checked(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        # A streamed request has no resource to read before its handler starts: the check is given None.
        streaming_request = handler.request_streaming
        admit = self._admit

        async def check(request: Any, context: Context) -> AbstractContextManager[object]:
            return serving(await admit(method, None if streaming_request else request, context))

        return rewrapped(handler, lambda behavior: guarded(behavior, check))
