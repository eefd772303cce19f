"""Token files, policy files and servers with the access check, for the identity and role tests."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from modelplane.auth.access_table import Role
from modelplane.auth.caller import Caller, current_caller

TOKENS = {role: f"token-of-the-{role.value}-0123456789abcdef" for role in Role}
IDENTITIES = {role: f"id-{role.value}" for role in Role}


def token_line(token: str, identity: str, groups: str = "") -> str:
    return f"{hashlib.sha256(token.encode()).hexdigest()} {identity} {groups}".rstrip() + "\n"


def write_replacing(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` the way the token and policy files should be changed: a new file renamed over
    the old one (a new inode, so the change is seen even within one timestamp tick)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def one_identity_per_role(folder: Path) -> tuple[Path, Path]:
    """A token file with one token per role and a policy giving each identity its role: (tokens, policy)."""
    tokens = folder / "tokens"
    tokens.write_text("# one token per role\n\n" + "".join(token_line(TOKENS[r], IDENTITIES[r]) for r in Role))
    policy = folder / "policy.yaml"
    policy.write_text("identities:\n" + "".join(f"  {IDENTITIES[r]}: [{r.value}]\n" for r in Role))
    return tokens, policy


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Admissions:
    """What the handlers behind the access check saw: (method, caller) of every call it let through."""

    seen: list[tuple[str, Caller]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, method: str) -> None:
        self.seen.append((method, current_caller()))
        self.changed.set()

    async def wait_for(self, method: str, since: int) -> Caller:
        while True:
            for seen_method, caller in self.seen[since:]:
                if seen_method == method:
                    return caller
            self.changed.clear()
            await self.changed.wait()


class RecordingInterceptor(aio.ServerInterceptor):
    """Placed after the access check: its wrapper runs only for admitted calls, inside the caller's context."""

    def __init__(self, admissions: Admissions) -> None:
        self.admissions = admissions

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        record = self.admissions.record
        for kind, make in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        ):
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            if inspect.isasyncgenfunction(behavior):

                async def generator(request: Any, context: Any, inner: Any = behavior) -> AsyncIterator[Any]:
                    record(method)
                    async for response in inner(request, context):
                        yield response

                return make(generator, handler.request_deserializer, handler.response_serializer)

            async def coroutine(request: Any, context: Any, inner: Any = behavior) -> Any:
                record(method)
                return await inner(request, context)

            return make(coroutine, handler.request_deserializer, handler.response_serializer)
        return handler


@contextlib.asynccontextmanager
async def cancelled_on_exit(call: Any) -> AsyncIterator[Any]:
    try:
        yield call
    finally:
        call.cancel()
