"""Calls from the agent to its inference server, each ended at once when the server goes down.

The agent's watch of its server says when it stops serving (``went_down``); every call in flight on it then ends
with ServerDown instead of waiting for a dead process, and no call is made until the server answers again. Each
time it does (``answering_again``) the calls get a new down event, so a call to the server that answers now is not
cut short by an earlier death. ``busy()`` is what the watch asks: while a call is in flight (a load can block the
server's event loop for long) it does not count failed probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from servers.adapter import ServerError

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServerDown(ServerError):  # noqa: N818 - it says what is the matter
    """The inference server is down: a call to it could not be made, or was cut short."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the inference server is down: {reason}", retryable=False)


class ServerCalls:
    """The gate every call to the server goes through, and whether the server serves."""

    def __init__(self, *, retries: int, retry_delay_seconds: float) -> None:
        self.retries = retries
        self.retry_delay = retry_delay_seconds
        # Why the server does not serve; None while it does (set by went_down, cleared by serving_again).
        self.down_reason: str | None = None
        self._down = asyncio.Event()
        self._in_flight = 0

    def busy(self) -> bool:
        """True while a call is in flight on the server."""
        return self._in_flight > 0

    def went_down(self, reason: str) -> None:
        """The server stopped serving: every call in flight on it ends now, with ServerDown."""
        self.down_reason = reason
        self._down.set()

    def answering_again(self) -> asyncio.Event:
        """The server answers again: calls from now on go to it. The returned event is set if it dies again."""
        down = self._down = asyncio.Event()
        return down

    def serving_again(self) -> None:
        """The server holds again what it should: it serves (until the next ``went_down``)."""
        self.down_reason = None

    async def call(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` to the server, ended at once with ServerDown when the server goes (or is) down."""
        down = self._down  # the death of the server this call goes to
        if down.is_set():
            raise ServerDown(self.down_reason or "it is down")
        self._in_flight += 1
        work = asyncio.ensure_future(call())
        went_down = asyncio.ensure_future(down.wait())
        try:
            await asyncio.wait({work, went_down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._in_flight -= 1
            went_down.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, ServerError):
                    await work
        if down.is_set():
            # Cut short, or answered as the server went: either way nothing it did is on a server now.
            raise ServerDown(self.down_reason or "it went down")
        return work.result()

    async def retrying(self, call: Callable[[], Awaitable[None]]) -> None:
        """``call()`` through the gate, again (a bounded number of times) while it fails in a way worth retrying."""
        for attempt in range(1, self.retries + 1):
            try:
                await self.call(call)
                return
            except ServerError as error:
                if not error.retryable or attempt == self.retries:
                    raise
                log.warning("server call failed (attempt %d of %d): %s", attempt, self.retries, error)
                await asyncio.sleep(self.retry_delay * attempt)
