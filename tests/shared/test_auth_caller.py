"""The caller of the request being served (modelplane/auth/caller.py) in the shapes handlers have."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from modelplane.auth.caller import ANONYMOUS, Caller, CredentialKind, current_caller, serving

ALICE = Caller("alice", CredentialKind.TOKEN)


async def test_a_stream_closed_from_another_task_ends_cleanly() -> None:
    """grpc.aio ends a cancelled server stream by closing its async generator from another task: leaving
    ``serving`` there must not raise (it did: "Token ... was created in a different Context")."""
    seen: list[Caller] = []

    async def stream() -> AsyncGenerator[int]:
        with serving(ALICE):
            seen.append(current_caller())
            yield 1
            yield 2

    responses = stream()

    async def first() -> int:
        return await anext(responses)

    assert await asyncio.create_task(first()) == 1
    await asyncio.create_task(responses.aclose())  # another task, another context
    assert seen == [ALICE]
    assert current_caller() == ANONYMOUS


async def test_the_caller_is_set_only_inside() -> None:
    with serving(ALICE):
        assert current_caller() == ALICE
    assert current_caller() == ANONYMOUS
