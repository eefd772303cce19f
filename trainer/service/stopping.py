"""The trainer service's rule for waiting on infrastructure: retry until it works or the service stops, and then
raise StoppingError, so that the event being handled is left uncommitted and redelivered to the next owner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from modelplane.backoff import Backoff
from trainer.service.design_store import REDIS_RETRYABLE

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class StoppingError(Exception):
    """The service is stopping while an event waits on infrastructure: leave the event uncommitted."""


class UntilStopped:
    """Retries, waits and sleeps that give up with StoppingError once ``stopping`` is set."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping

    async def retrying(
        self,
        what: str,
        call: Callable[[], Awaitable[_T]],
        retryable: tuple[type[BaseException], ...] = REDIS_RETRYABLE,
    ) -> _T:
        """``call()`` until it succeeds, backing off while the infrastructure is away; raises StoppingError when
        the service stops meanwhile (the event then stays uncommitted and is redelivered)."""
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                return await call()
            except retryable as error:
                if self._stopping.is_set():
                    raise StoppingError(what) from error
                delay = backoff.next()
                logger.warning(f"cannot {what}; retrying", extra={"fields": {"error": str(error), "retry_in": delay}})
                await self.sleep(delay)

    async def cancellable(self, call: Awaitable[_T]) -> _T:
        """Await ``call`` (which retries by itself), but give up with StoppingError once stopping is asked."""
        task = asyncio.ensure_future(call)
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise StoppingError("fetching the design schema")
        return task.result()

    async def sleep(self, seconds: float) -> None:
        """Sleep, cut short (with StoppingError) when the service stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        if self._stopping.is_set():
            raise StoppingError("stopping")
