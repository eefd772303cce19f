from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.processes import SchedulerProcess, start_scheduler, stop_all_started, stop_process

# Every scheduler a test starts (as a child process, which inherits this) serves its metrics on a free port: the
# flag's default, 127.0.0.1:9006, is one port for the whole machine, and tests (and other people's test runs) start
# many schedulers at once.
os.environ.setdefault("MODELPLANE_SCHEDULER_METRICS_LISTEN", "127.0.0.1:0")
os.environ.setdefault("MODELPLANE_UP_METRICS_LISTEN", "127.0.0.1:0")

# Hypothesis fails an example that runs longer than 200 ms by default, and fails the test as flaky when the replay is
# quicker: a timed assertion, which this project keeps out of tests (speed lives in bench/). On two shared cores one
# example of a few milliseconds is sometimes held up that long. Loaded here, before any test module is imported, so
# that every @settings(...) without a deadline of its own inherits None.
settings.register_profile("modelplane", deadline=None)
settings.load_profile("modelplane")


def pytest_configure(config: pytest.Config) -> None:
    # Registered here because pyproject's --strict-markers rejects unknown marks.
    config.addinivalue_line(
        "markers", "servers: starts real MLServer/Triton processes (the first run builds their venvs, ~2 min)"
    )


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[SchedulerProcess]:
    """A `modelplane scheduler` subprocess on free loopback ports, stopped by PID afterwards."""
    running = start_scheduler(tmp_path)
    try:
        yield running
    finally:
        stop_process(running.process)


@pytest.fixture(autouse=True)
def _stop_leftover_processes() -> Iterator[None]:
    """Whatever a test started and did not stop (it failed or timed out midway) is stopped by PID here."""
    yield
    stop_all_started()
