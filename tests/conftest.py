from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import SchedulerProcess, start_scheduler, stop_all_started, stop_process


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
