"""Start modelplane processes for tests and stop them by PID, always."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELPLANE = [sys.executable, "-m", "modelplane.cli"]

# Every process a test starts, so the autouse fixture in conftest.py stops whatever a test left running
# (an assertion or a timeout between start and stop must not leak a process).
STARTED: list[subprocess.Popen[bytes]] = []


@dataclass
class SchedulerProcess:
    process: subprocess.Popen[bytes]
    listen: str
    agent_listen: str
    state_dir: Path
    log_path: Path
    metrics_listen: str | None = None  # its /metrics (HOST:PORT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def run_modelplane(
    *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a modelplane command to completion and capture its output."""
    return subprocess.run([*MODELPLANE, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


def _start_until_ready(
    argv: list[str], ready_file: Path, log_path: Path, timeout: float, log_mode: str
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start ``modelplane ARGV`` (registered in STARTED) and wait for the ready file it writes with its pid."""
    with log_path.open(log_mode) as log:
        process = subprocess.Popen([*MODELPLANE, *argv], stdout=log, stderr=subprocess.STDOUT)
    STARTED.append(process)
    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited with {process.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            stop_process(process)
            raise TimeoutError(f"{argv[0]} not ready after {timeout}s:\n{log_path.read_text()}")
        time.sleep(0.05)
    addresses: dict[str, Any] = json.loads(ready_file.read_text())
    assert addresses["pid"] == process.pid
    return process, addresses


def start_scheduler(workdir: Path, *extra: str, ready_timeout: float = 20) -> SchedulerProcess:
    """Start `modelplane scheduler` on free loopback ports; returns once it serves."""
    state_dir = workdir / "state"
    ready_file = workdir / "ready.json"
    log_path = workdir / "scheduler.log"
    ready_file.unlink(missing_ok=True)  # left by an earlier scheduler in the same folder
    argv = [
        "scheduler",
        "--listen=127.0.0.1:0",
        "--agent-listen=127.0.0.1:0",
        "--metrics-listen=127.0.0.1:0",
        f"--state-dir={state_dir}",
        f"--ready-file={ready_file}",
        *extra,
    ]
    process, addresses = _start_until_ready(argv, ready_file, log_path, ready_timeout, "wb")
    return SchedulerProcess(
        process, addresses["listen"], addresses["agent_listen"], state_dir, log_path, addresses.get("metrics_listen")
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """SIGTERM by PID, then SIGKILL if it does not exit in time. Returns the exit status."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def stop_all_started() -> None:
    while STARTED:
        stop_process(STARTED.pop())


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    listen: str
    log_path: Path
    grpc_listen: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_gateway(workdir: Path, scheduler_listen: str, *extra: str, ready_timeout: float = 30) -> GatewayProcess:
    """Start `modelplane gateway` on a free loopback port; returns once it has its first routing table."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready_file = workdir / "gateway-ready.json"
    log_path = workdir / "gateway.log"
    ready_file.unlink(missing_ok=True)
    argv = ["gateway", f"--scheduler={scheduler_listen}", "--listen=127.0.0.1:0", f"--ready-file={ready_file}", *extra]
    process, addresses = _start_until_ready(argv, ready_file, log_path, ready_timeout, "ab")
    return GatewayProcess(process, addresses["listen"], log_path, addresses.get("grpc_listen"))


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a reaped or zombie child counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
