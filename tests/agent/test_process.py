"""The agent process as a whole, in this process: what it does when a part of it fails.

``agent.process.run`` launches a real MLServer, as ``modelplane agent --launch-server`` does; no scheduler answers
(its session keeps trying to connect), which does not matter to what is tested here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import pytest

from agent import process
from agent.server_watch import ServerWatch
from agent.settings import build_parser, parse_settings
from servers.launch import server_venv
from tests.support.agent_processes import processes_naming

pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]  # a hang guard only

HANG_GUARD = 300.0  # seconds: ends a run that would otherwise never stop; nothing asserts how long it took


class BrokenWatch(ServerWatch):
    """A watch with a bug: it fails once the agent runs (a fault injected here; real bugs have no schedule)."""

    async def run(self) -> None:
        await asyncio.sleep(0)
        raise KeyError("a bug in the watch")


async def test_a_crashed_watch_stops_the_agent_with_an_error_and_its_server_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent whose server nobody watches any more could report a dead server serving: it must not run on
    (review 1.9). It ends with an error (the command exits non-zero), logged with the watch's traceback."""
    await asyncio.to_thread(server_venv, "mlserver")
    argv = [
        "--launch-server",
        "--scheduler=127.0.0.1:1",  # nothing listens: the session keeps trying, as with a scheduler that is down
        f"--work-dir={tmp_path / 'agent'}",
        "--proxy-http=127.0.0.1:0",
        "--proxy-grpc=127.0.0.1:0",
        "--memory=100MiB",
    ]
    settings = parse_settings(build_parser(argparse.ArgumentParser(prog="modelplane agent")), argv, {})
    monkeypatch.setattr(process, "ServerWatch", BrokenWatch)
    stop = asyncio.Event()  # never set: only the watch's failure can end the run

    with caplog.at_level(logging.ERROR, logger="agent.process"), pytest.raises(process.PartFailed) as failed:
        async with asyncio.timeout(HANG_GUARD):
            await process.run(settings, stop=stop, forced=asyncio.Event())

    assert "server-watch failed: KeyError('a bug in the watch')" in str(failed.value)
    [record] = [r for r in caplog.records if r.getMessage().startswith("server-watch failed: stopping the agent")]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)
    repository = settings.work_dir / "mlserver" / "repository"
    assert processes_naming(str(repository.resolve())) == []  # the server it launched is stopped
