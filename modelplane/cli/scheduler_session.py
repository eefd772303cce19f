"""What the resource commands (pipeline, experiment, model list, server, load/unload/status -f) share: how to reach
the scheduler for one command, reading a manifest file or stdin, and following a status stream until a resource
settles.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from grpc import aio

from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.cli.manifests import MAX_MANIFEST_BYTES
from modelplane.cli.model_commands import CommandError
from modelplane.command_line import EXIT_USAGE
from modelplane.transport import TransportSecurity, open_channel

SUBSCRIBER = "modelplane-cli"
STDIN = "-"


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


def read_manifest_text(source: str) -> str:
    """The text of the manifest file ``source`` (``-``: standard input): at most 1 MiB, UTF-8; anything wrong with
    it is bad input (exit status 2). One byte more than the limit is read, so ``-f /dev/zero`` costs nothing."""
    try:
        if source == STDIN:
            raw = sys.stdin.buffer.read(MAX_MANIFEST_BYTES + 1)
        else:
            with open(source, "rb") as file:
                raw = file.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise CommandError(f"cannot read {label(source)}: {error.strerror or error}", EXIT_USAGE) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CommandError(f"{label(source)}: the manifest is larger than 1 MiB", EXIT_USAGE)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CommandError(
            f"cannot read {label(source)}: it is not UTF-8 text (byte {error.start} is {raw[error.start]:#04x})",
            EXIT_USAGE,
        ) from None


def label(source: str) -> str:
    """How a manifest's source is named in a message."""
    return "standard input" if source == STDIN else source


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
) -> str:
    """Print each state of ``name`` (``first``, then the stream's updates of it) until ``settled`` returns the
    closing line (it raises CommandError for a state that will not settle), or ``wait_seconds`` pass."""
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
                raise CommandError(f"{what} did not settle within {wait_seconds:g}s")
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
