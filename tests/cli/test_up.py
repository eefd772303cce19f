"""``modelplane up``: the all-in-one stack as a process, with the sample model, from start to Ctrl-C.

The tests marked ``servers`` start a real MLServer (through the agent inside ``up``) and train the sample
with the MLServer venv's Python. Every process is stopped by PID: ``up`` is in tests.support.processes.STARTED,
and whatever an ``up`` left of its MLServer (found by its state dir) is killed after each test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from servers.launch import server_venv
from tests.support.processes import MODELPLANE, STARTED, run_modelplane, stop_all_started

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 300.0  # hang guards, not performance bounds: the first start may create MLServer's venv
AVAILABLE_TIMEOUT = 120
STOP_TIMEOUT = 90.0


@dataclass
class Sample:
    folder: Path
    manifest: Path
    request: dict[str, Any]
    expected: list[int]


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


def _alive(pid: int) -> bool:
    """Running (a zombie, waiting only to be reaped, does not count)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


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
        if (marker in cmdline or cwd.startswith(marker)) and _alive(pid):
            found.add(pid)
    sessions = {pid for pid in found if _session(pid) == pid}
    found.update(pid for pid in pids if _session(pid) in sessions)
    found.discard(os.getpid())
    return found


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """The up state dir; afterwards any process left under it is killed by PID (a failed test must not
    leave an MLServer running)."""
    path = tmp_path / "up"
    yield path
    stop_all_started()  # up first (SIGTERM: it stops its MLServer itself), then whatever is still left
    for pid in server_processes(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """The iris sample, trained once with the MLServer venv's Python."""
    folder = tmp_path_factory.mktemp("iris")
    python = server_venv("mlserver") / "bin" / "python"
    trained = subprocess.run(
        [str(python), str(REPO / "samples" / "train_iris.py"), str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert trained.returncode == 0, trained.stderr
    printed = json.loads(trained.stdout)
    return Sample(folder, folder / "model.yaml", printed["request"], printed["expected"])


def load_and_wait(up: Up, sample: Sample) -> None:
    loaded = run_modelplane("model", "load", "-f", str(sample.manifest), "--scheduler", up.listen)
    assert loaded.returncode == 0, loaded.stderr
    assert "model iris accepted" in loaded.stdout
    wait_available(up)


def wait_available(up: Up) -> None:
    watched = run_modelplane(
        "model",
        "status",
        "iris",
        "--watch",
        "--wait-timeout",
        str(AVAILABLE_TIMEOUT),
        "--scheduler",
        up.listen,
        timeout=AVAILABLE_TIMEOUT + 30,
    )
    assert watched.returncode == 0, (watched.stdout, watched.stderr, up.stderr())
    assert watched.stdout.strip().splitlines()[-1] == "model iris is ModelAvailable"


def assert_predicts(up: Up, sample: Sample) -> None:
    inferred = run_modelplane(
        "model", "infer", "iris", "--data", json.dumps(sample.request), "--scheduler", up.listen, timeout=60
    )
    assert inferred.returncode == 0, inferred.stderr
    answer = json.loads(inferred.stdout)
    assert answer["model_name"] == "iris"
    [output] = answer["outputs"]
    assert output["data"] == sample.expected


def assert_predicts_through_the_gateway(up: Up, sample: Sample) -> None:
    url = f"http://{up.addresses['gateway']}/v2/models/iris/infer"
    request = urllib.request.Request(url, data=json.dumps(sample.request).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    deadline = time.monotonic() + 60  # the gateway's route arrives a moment after ModelAvailable
    while True:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback URL
                answer = json.load(response)
            break
        except urllib.error.HTTPError as error:
            if error.code != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert answer["model_name"] == "iris"
    assert answer["outputs"][0]["data"] == sample.expected


def assert_stops_cleanly(up: Up) -> None:
    started = server_processes(up.state_dir)
    assert started, "no MLServer process found under the state dir while up was running"
    assert interrupt(up) == 0, up.stderr()
    assert "modelplane is down" in up.stdout()
    assert "Traceback" not in up.stderr()
    # The MLServer is stopped before up exits: nothing it started is left.
    leftover = server_processes(up.state_dir)
    assert not leftover, f"left running after up exited: {sorted(leftover)}"
    assert not [pid for pid in started if _alive(pid)]


@pytest.mark.servers
@pytest.mark.timeout(900)
def test_up_serves_the_sample_and_stops_on_ctrl_c(tmp_path: Path, state_dir: Path, sample: Sample) -> None:
    up = start_up(tmp_path, state_dir, "up")
    assert set(up.addresses) == {"listen", "agent_listen", "http", "grpc", "gateway"}
    assert all(address.startswith("127.0.0.1:") for address in up.addresses.values())
    printed = up.stdout()
    assert "modelplane is up; Ctrl-C stops it" in printed
    assert f"scheduler    {up.listen} (Scheduler API)" in printed
    # Zero configuration on loopback, and it says so.
    assert "auth         off: everything listens on loopback only" in printed

    load_and_wait(up, sample)
    assert_predicts(up, sample)
    assert_predicts_through_the_gateway(up, sample)
    servers = run_modelplane("server", "status", "--scheduler", up.listen)
    assert servers.returncode == 0, servers.stderr
    assert servers.stdout.startswith("mlserver")
    assert "loaded model replicas 1" in servers.stdout

    assert_stops_cleanly(up)
    gone = run_modelplane("model", "status", "--scheduler", up.listen, "--timeout", "5")
    assert gone.returncode == 1
    assert "cannot reach the scheduler" in gone.stderr
    # The load is in the stack's audit log, where `modelplane audit` reads it (up has no access check: anonymous).
    audited = run_modelplane("audit", f"--audit-log={state_dir / 'scheduler' / 'audit.log'}", "--output=json")
    assert audited.returncode == 0, audited.stderr
    lines = [json.loads(line) for line in audited.stdout.splitlines()]
    assert [(line["rpc"].rsplit("/", 1)[-1], line["code"], line["identity"]) for line in lines][:1] == [
        ("LoadModel", "OK", "")
    ]
    assert lines[0]["resource"]["name"] == "iris"


@pytest.mark.servers
@pytest.mark.timeout(900)
def test_a_second_up_restores_the_model(tmp_path: Path, state_dir: Path, sample: Sample) -> None:
    first = start_up(tmp_path, state_dir, "first")
    load_and_wait(first, sample)
    assert_stops_cleanly(first)

    # Same state dir: the scheduler remembers the model and places it again on the new agent's MLServer,
    # which loads it from the sample's local folder. Nothing is loaded by hand this time.
    second = start_up(tmp_path, state_dir, "second")
    wait_available(second)
    assert_predicts(second, sample)
    status = run_modelplane("model", "status", "iris", "--scheduler", second.listen)
    assert status.returncode == 0, status.stderr
    assert "ModelAvailable" in status.stdout
    assert_stops_cleanly(second)


@pytest.mark.parametrize(
    ("flag", "address"),
    [
        ("--listen", "10.1.2.3:9004"),
        ("--agent-listen", "0.0.0.0:0"),
        ("--proxy-http", "192.168.1.1:9100"),
        ("--proxy-grpc", "[2001:db8::1]:9500"),
    ],
)
def test_up_listens_on_loopback_only(tmp_path: Path, flag: str, address: str) -> None:
    state_dir, ready_file = tmp_path / "up", tmp_path / "up.json"
    result = run_modelplane("up", "--state-dir", str(state_dir), "--ready-file", str(ready_file), flag, address)
    assert result.returncode == 2
    assert f"argument {flag}: {address}: `modelplane up` listens on loopback addresses only" in result.stderr
    assert "Traceback" not in result.stderr
    # Refused before anything started: no state dir, no ready file, nothing running under it.
    assert not state_dir.exists()
    assert not ready_file.exists()
    assert result.stdout == ""
    assert not server_processes(state_dir)
