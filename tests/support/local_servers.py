"""Real MLServer and Triton processes in tests: stopped by PID at exit if pytest dies before a fixture's teardown,
and an adapter to one that is closed after use. The fixtures that start them are in tests/support/mlserver_fixtures.py
(one MLServer per test module) and in the test modules that need a server of their own."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator

from servers.adapter import InferenceServer
from servers.launch import LocalServer


def stop_at_exit(server: LocalServer) -> None:
    """Last resort if pytest dies before the fixture's teardown: stop by PID, synchronously."""
    if server.process.poll() is None:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.process.wait()


@contextlib.contextmanager
def stopped_at_exit(server: LocalServer) -> Iterator[LocalServer]:
    """``server`` for the block, stopped when it ends (and at exit, if the block never ends)."""
    atexit.register(stop_at_exit, server)
    try:
        yield server
    finally:
        asyncio.run(server.stop())
        atexit.unregister(stop_at_exit)


@contextlib.asynccontextmanager
async def adapter_to(server: LocalServer) -> AsyncIterator[InferenceServer]:
    """The adapter to a launched server (generous load timeout: a loaded machine), closed afterwards."""
    adapter = server.adapter(load_timeout=120)
    try:
        yield adapter
    finally:
        await adapter.close()
