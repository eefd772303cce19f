"""What the resource commands (pipeline, experiment, model list, server, load/unload/status -f) share: how to reach
the scheduler for one command, and following a status stream until a resource settles.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from grpc import aio

from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.cli.model_commands import CommandError
from modelplane.transport import TransportSecurity, open_channel

SUBSCRIBER = "modelplane-cli"


@dataclass(frozen=True, slots=True)
class Scheduler:
    """One command's way to the scheduler: its address, transport, per-call deadline and token."""

    address: Address
    security: TransportSecurity
    timeout: float
    token: str | None

    @asynccontextmanager
    async def stub(self) -> AsyncIterator[pb_grpc.SchedulerAsyncStub]:
        async with open_channel(self.address, self.security, self.token) as channel:
            yield pb_grpc.SchedulerStub(channel)


async def follow(
    stream: aio.UnaryStreamCall[Any, Any],
    *,
    first: Any,
    name_of: Callable[[Any], str],
    name: str,
    settled: Callable[[Any], str | None],
    show: Callable[[Any], str],
    wait_seconds: float,
    what: str,
    goal: str = "settle",
) -> str:
    """Print each state of ``name`` (``first``, then the stream's updates of it) until ``settled`` returns the
    closing line (it raises CommandError for a state that will not settle), or ``wait_seconds`` pass (CommandError:
    ``{what} did not {goal} within ...``)."""
    deadline = time.monotonic() + wait_seconds
    update: Any = first
    try:
        while True:
            if update is not None and name_of(update) == name:
                print(show(update), flush=True)
                done = settled(update)
                if done is not None:
                    return done
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandError(f"{what} did not {goal} within {wait_seconds:g}s")
            try:
                async with asyncio.timeout(remaining):
                    message = await stream.read()
            except TimeoutError:
                update = None
                continue
            if message is aio.EOF:
                raise CommandError("the scheduler closed the status stream")
            update = message
    finally:
        stream.cancel()
