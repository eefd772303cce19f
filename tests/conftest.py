from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import SchedulerProcess, start_scheduler, stop_process


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[SchedulerProcess]:
    """A `modelplane scheduler` subprocess on free loopback ports, stopped by PID afterwards."""
    running = start_scheduler(tmp_path)
    try:
        yield running
    finally:
        stop_process(running.process)
