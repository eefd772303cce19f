"""The command line: clear messages and the documented exit status for every kind of bad input."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane import __version__
from tests.support.processes import SchedulerProcess, run_modelplane, start_scheduler, stop_process


def test_version() -> None:
    result = run_modelplane("version")
    assert (result.returncode, result.stdout.strip()) == (0, f"modelplane {__version__}")


def test_no_command_is_a_usage_error() -> None:
    result = run_modelplane()
    assert result.returncode == 2
    assert "required: COMMAND" in result.stderr


def test_unknown_command() -> None:
    result = run_modelplane("schedule")
    assert result.returncode == 2
    assert "invalid choice: 'schedule'" in result.stderr


def test_unknown_flag() -> None:
    result = run_modelplane("scheduler", "--listne", "127.0.0.1:9004")
    assert result.returncode == 2
    assert "unrecognized arguments: --listne" in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--listen", "localhost", "expected HOST:PORT"),
        ("--listen", "127.0.0.1:http", "port 'http' is not a number"),
        ("--listen", "127.0.0.1:70000", "out of range"),
        ("--agent-listen", "::1:9005", "IPv6 addresses in brackets"),
        ("--listen", "bad host:9004", "not a valid host name"),
        ("--listen", "[not-v6]:9004", "not an IPv6 address"),
        ("--shutdown-grace", "-1", "out of range"),
        ("--log-level", "loud", "invalid choice"),
    ],
)
def test_bad_flag_values(tmp_path: Path, flag: str, value: str, message: str) -> None:
    result = run_modelplane("scheduler", f"--state-dir={tmp_path}", flag, value)
    assert result.returncode == 2
    assert flag in result.stderr
    assert message in result.stderr


def test_same_port_for_both_listeners(tmp_path: Path) -> None:
    result = run_modelplane(
        "scheduler", f"--state-dir={tmp_path}", "--listen=127.0.0.1:9100", "--agent-listen=127.0.0.1:9100"
    )
    assert result.returncode == 2
    assert "give them different ports" in result.stderr


def test_plaintext_on_a_public_address_needs_insecure(tmp_path: Path) -> None:
    result = run_modelplane("scheduler", f"--state-dir={tmp_path}", "--listen=0.0.0.0:0")
    assert result.returncode == 2
    assert "refusing plaintext gRPC on non-loopback address 0.0.0.0:0" in result.stderr


def test_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_modelplane(
        "scheduler", f"--state-dir={blocker / 'state'}", "--listen=127.0.0.1:0", "--agent-listen=127.0.0.1:0"
    )
    assert result.returncode == 2
    assert f"cannot create state dir {blocker / 'state'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_modelplane("scheduler", f"--state-dir={blocker}", "--listen=127.0.0.1:0", "--agent-listen=127.0.0.1:0")
    assert result.returncode == 2
    assert "exists and is not a directory" in result.stderr


def test_state_dir_in_use_by_another_scheduler(scheduler: SchedulerProcess) -> None:
    result = run_modelplane(
        "scheduler", f"--state-dir={scheduler.state_dir}", "--listen=127.0.0.1:0", "--agent-listen=127.0.0.1:0"
    )
    assert result.returncode == 2
    assert "is in use by another scheduler" in result.stderr
    assert scheduler.process.poll() is None  # the first one is unharmed


def test_state_dir_is_free_again_after_kill_9(tmp_path: Path) -> None:
    first = start_scheduler(tmp_path)
    first.process.kill()
    first.process.wait()
    second = start_scheduler(tmp_path)  # same state dir; would fail if the lock outlived the process
    assert stop_process(second.process) == 0


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_in_use(tmp_path: Path, busy_port: int) -> None:
    result = run_modelplane(
        "scheduler", f"--state-dir={tmp_path}", f"--listen=127.0.0.1:{busy_port}", "--agent-listen=127.0.0.1:0"
    )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy_port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_of_a_running_scheduler(scheduler: SchedulerProcess) -> None:
    result = run_modelplane("status", "--scheduler", scheduler.listen)
    assert result.returncode == 0, result.stderr
    assert f"scheduler at {scheduler.listen}" in result.stdout
    assert f"version:  {__version__}" in result.stdout
    assert "health:   SERVING" in result.stdout
    assert "seldon.mlops.scheduler.Scheduler" in result.stdout
    assert "models:   0" in result.stdout
    assert "servers:  0 (0 replicas connected)" in result.stdout


def test_status_reads_the_address_from_the_environment(scheduler: SchedulerProcess) -> None:
    result = run_modelplane("status", env={**os.environ, "MODELPLANE_SCHEDULER": scheduler.listen})
    assert result.returncode == 0, result.stderr
    assert f"scheduler at {scheduler.listen}" in result.stdout


def test_status_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    result = run_modelplane("status", "--scheduler", f"127.0.0.1:{closed_port}", "--timeout=2")
    assert result.returncode == 1
    assert f"cannot reach the scheduler at 127.0.0.1:{closed_port}" in result.stderr
    assert "Traceback" not in result.stderr
