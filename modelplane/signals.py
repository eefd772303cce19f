"""How every modelplane process stops: the first SIGTERM/SIGINT asks for a graceful stop, a second one
says stop now (skip what is left of the grace)."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals(stop: asyncio.Event, forced: asyncio.Event | None = None) -> None:
    """Set ``stop`` on the first SIGTERM/SIGINT and ``forced`` (when given) on the next."""

    def on_signal() -> None:
        (forced if stop.is_set() and forced is not None else stop).set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
