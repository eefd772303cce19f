"""Waiting in tests for a condition, never for a time: poll until it holds, fail after a hang guard."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "the condition") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds (a hang guard, not a timing check)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_async(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 20.0,
    what: str = "the condition",
    diagnostics: Callable[[], str] = str,
) -> None:
    """Like ``wait_for`` for a predicate that must await (e.g. one that asks the scheduler); ``diagnostics()`` is
    added to the failure, to say what was seen instead."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{diagnostics()}")
        await asyncio.sleep(0.05)


def read_if_present(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    assert await wait_until(lambda: bool(read_if_present(path)), timeout), f"{path} never appeared"
    return read_if_present(path)
