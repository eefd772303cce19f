"""Status relays for tests: in this process (``in_process_relay``: its caches can be checked) or as a real
``modelplane status-relay`` process (``start_status_relay``), on an ephemeral loopback port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from status_relay.process import RelayServing, serve
from status_relay.settings import build_parser, parse_settings
from tests.support.processes import _start_until_ready

START_TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def in_process_relay(scheduler: str, *flags: str) -> AsyncIterator[RelayServing]:
    """A relay of ``scheduler`` (HOST:PORT) serving on 127.0.0.1:0 in this event loop, with ``flags`` added."""
    argv = [f"--scheduler={scheduler}", "--listen=127.0.0.1:0", *flags]
    settings = parse_settings(build_parser(argparse.ArgumentParser()), argv, environ={})
    stop = asyncio.Event()
    serving: asyncio.Future[RelayServing] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, stop, serving))
    try:
        first: list[asyncio.Future[Any]] = [task, serving]
        await asyncio.wait(first, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what stopped it
        yield serving.result()
    finally:
        stop.set()
        await task


@dataclass
class RelayProcess:
    process: subprocess.Popen[bytes]
    listen: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_status_relay(workdir: Path, scheduler: str, *flags: str) -> RelayProcess:
    """Start ``modelplane status-relay`` on a free loopback port; returns once it listens (it may not have its
    snapshot yet: the scheduler may not be there)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready_file = workdir / "relay-ready.json"
    log_path = workdir / "relay.log"
    ready_file.unlink(missing_ok=True)
    argv = ["status-relay", f"--scheduler={scheduler}", "--listen=127.0.0.1:0", f"--ready-file={ready_file}", *flags]
    process, addresses = _start_until_ready(argv, ready_file, log_path, START_TIMEOUT, "ab")
    return RelayProcess(process, addresses["listen"], log_path)
