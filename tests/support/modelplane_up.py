"""``modelplane up`` as a process for tests: started on free loopback ports (returns once its ready file is
written), the processes it started found by its state dir, and a clean stop on Ctrl-C checked. Used by the up
tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import MODELPLANE, STARTED, alive

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 300.0  # hang guards, not performance bounds: the first start may create MLServer's venv
STOP_TIMEOUT = 90.0


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    state_dir: Path
    addresses: dict[str, str]
    stdout_path: Path
    stderr_path: Path

    @property
    def listen(self) -> str:
        return self.addresses["listen"]

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def start_up(workdir: Path, state_dir: Path, label: str, *extra: str, env: dict[str, str] | None = None) -> Up:
    """Start ``modelplane up`` on free loopback ports (with ``extra`` flags and ``env`` added to the
    environment); returns once its ready file is written."""
    ready_file = workdir / f"{label}.json"
    stdout_path, stderr_path = workdir / f"{label}.out", workdir / f"{label}.err"
    ready_file.unlink(missing_ok=True)
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [
                *MODELPLANE,
                "up",
                "--state-dir",
                str(state_dir),
                "--listen",
                "127.0.0.1:0",
                "--agent-listen",
                "127.0.0.1:0",
                "--proxy-http",
                "127.0.0.1:0",
                "--proxy-grpc",
                "127.0.0.1:0",
                "--gateway",
                "127.0.0.1:0",
                "--gateway-grpc",
                "127.0.0.1:0",
                "--registry-listen",
                "127.0.0.1:0",
                "--dashboard-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--ready-file",
                str(ready_file),
                *extra,
            ],
            stdout=out,
            stderr=err,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
    STARTED.append(process)
    deadline = time.monotonic() + READY_TIMEOUT
    while not (ready_file.exists() and ready_file.read_text().endswith("\n")):
        if process.poll() is not None:
            raise AssertionError(f"up exited with {process.returncode}:\n{stderr_path.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise AssertionError(f"up not ready after {READY_TIMEOUT:g}s:\n{stderr_path.read_text(errors='replace')}")
        time.sleep(0.1)
    addresses: dict[str, str] = json.loads(ready_file.read_text())
    return Up(process, state_dir, addresses, stdout_path, stderr_path)


def interrupt(up: Up) -> int:
    """Ctrl-C (SIGINT by PID) and wait for the exit; returns the exit status."""
    os.kill(up.process.pid, signal.SIGINT)
    try:
        return up.process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"up did not stop within {STOP_TIMEOUT:g}s of SIGINT:\n{up.stderr()}") from None


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/PID/stat (state, ppid, pgrp, session, ...), or None once it is gone."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    return None if stat is None else stat[stat.rindex(")") + 2 :].split()


def _session(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[3])


def server_processes(state_dir: Path) -> set[int]:
    """PIDs of what ``up`` started under ``state_dir`` (its MLServer, by its command line or working folder)
    and of every process in those processes' sessions (MLServer leads its own session)."""
    marker = str(state_dir.resolve() / "agent")
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    found: set[int] = set()
    for pid in pids:
        cmdline = _read(Path(f"/proc/{pid}/cmdline")) or ""
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if (marker in cmdline or cwd.startswith(marker)) and alive(pid):
            found.add(pid)
    sessions = {pid for pid in found if _session(pid) == pid}
    found.update(pid for pid in pids if _session(pid) in sessions)
    found.discard(os.getpid())
    return found


def assert_stops_cleanly(up: Up) -> None:
    started = server_processes(up.state_dir)
    assert started, "no MLServer process found under the state dir while up was running"
    assert interrupt(up) == 0, up.stderr()
    assert "modelplane is down" in up.stdout()
    assert "Traceback" not in up.stderr()
    # The MLServer is stopped before up exits: nothing it started is left.
    leftover = server_processes(up.state_dir)
    assert not leftover, f"left running after up exited: {sorted(leftover)}"
    assert not [pid for pid in started if alive(pid)]
