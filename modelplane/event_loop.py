"""The event loop the data path's processes (the gateway, the agent with its inference proxy) run on: uvloop
where it is installed, else asyncio's own.

Every inference request crosses two of these processes (the gateway, then an agent's proxy) and each hop is
mostly event-loop work: reading a request, writing it on, reading the answer, writing it back. uvloop does
that work in C (libuv): measured with bench/gateway_inference.py (bench/README.md) it cuts the CPU each
hop spends per request. It is a dependency on the platforms it supports; where it cannot be imported the
processes run unchanged on asyncio's loop, which behaves the same, only slower.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None (asyncio's default) when uvloop is not installed."""
    try:
        import uvloop  # noqa: PLC0415 - optional at run time: absent where no wheel exists
    except ImportError:
        log.debug("uvloop is not installed: running on asyncio's event loop")
        return None
    return uvloop.new_event_loop


def run_on_fast_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on :func:`fast_loop_factory`'s loop."""
    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
        return runner.run(main)
