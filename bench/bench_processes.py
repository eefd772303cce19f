"""What the benchmarks that start real modelplane processes share: starting a scheduler and an agent
(``--launch-server``) the same way, reading /proc for their memory and CPU, stopping them by PID, training the
iris sample, loading models and waiting until they are Available.

Used by bench/load_latency.py and bench/gateway_inference.py (run as scripts, so ``bench/`` is on the path).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from servers.launch import server_venv

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
# tests/ is not an installed package: benchmarks reuse its helpers (process handling, models, schemas).
sys.path.insert(1, str(REPO))
MODELPLANE = [sys.executable, "-m", "modelplane.cli"]
AVAILABLE = pb.ModelStatus.ModelAvailable
FAILED = {pb.ModelStatus.ModelFailed, pb.ModelStatus.ScheduleFailed}
READY_TIMEOUT = 300.0  # hang guards, not expectations: the first start may create MLServer's venv


# --------------------------------------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, str]:
    values: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = rest.strip()
    return values


def rss_bytes(pid: int) -> int:
    """VmRSS of a process in bytes (0 once it is gone)."""
    value = proc_status(pid).get("VmRSS", "0 kB")
    return int(value.split()[0]) * 1024


def hwm_bytes(pid: int) -> int:
    """VmHWM (peak RSS) of a process in bytes (0 once it is gone)."""
    return int(proc_status(pid).get("VmHWM", "0 kB").split()[0]) * 1024


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far; 0 once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def session_pids(session: int) -> list[int]:
    """Every live process in ``session`` (a launched MLServer leads its own, with its worker processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[3]) == session:
                found.append(int(entry.name))
    return found


def session_rss_bytes(session: int) -> tuple[int, int]:
    """(sum of VmRSS, number of processes) of every process in ``session``."""
    pids = session_pids(session)
    return sum(rss_bytes(pid) for pid in pids), len(pids)


def session_cpu_seconds(session: int) -> float:
    """CPU seconds of the processes in ``session`` now (a process that exited meanwhile is not counted)."""
    return sum(cpu_seconds(pid) for pid in session_pids(session))


def children_named(parent: int, word: str) -> list[int]:
    """PIDs whose parent is ``parent`` and whose command line contains ``word``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        if proc_status(int(entry.name)).get("PPid") != str(parent):
            continue
        with contextlib.suppress(OSError):
            if word in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
    return found


# --------------------------------------------------------------------------------------------- processes


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> tuple[int, float]:
    """tests.support.processes.stop_process (SIGTERM by PID, SIGKILL after ``timeout`` s), timed: (exit status,
    seconds)."""
    from tests.support.processes import stop_process as stop_process_by_pid  # noqa: PLC0415 - tests/ joins sys.path

    started = time.monotonic()
    code = stop_process_by_pid(process, timeout)
    return code, round(time.monotonic() - started, 2)


def kill_group_if_alive(pid: int) -> bool:
    """SIGKILL the process group led by ``pid`` (a launched server) if it is still running; True if it was."""
    from tests.support.processes import alive  # noqa: PLC0415 - tests/ joins sys.path

    if not alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def read_ready_file(path: Path) -> dict[str, Any] | None:
    """The JSON a process wrote once ready (complete: it ends with a newline), or None if not there yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    data: dict[str, Any] | None = json.loads(text) if text.endswith("\n") else None
    return data


async def wait_for_json(path: Path, process: subprocess.Popen[bytes], timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (data := read_ready_file(path)) is None:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:g}s")
        await asyncio.sleep(0.05)
    return data


def spawn(args: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``modelplane ARGS`` with its output in ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen([*MODELPLANE, *args], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)  # noqa: S603


def spawn_scheduler(work: Path, ready_file: Path) -> subprocess.Popen[bytes]:
    """A ``modelplane scheduler`` on kernel-picked loopback ports, state in ``work/state``; not waited for."""
    return spawn(
        [
            "scheduler",
            "--listen=127.0.0.1:0",
            "--agent-listen=127.0.0.1:0",
            "--metrics-listen=127.0.0.1:0",
            f"--state-dir={work / 'state'}",
            f"--ready-file={ready_file}",
            "--sync-grace=0.1",
            "--shutdown-grace=2",
            "--log-level=warning",
        ],
        work / "scheduler.log",
    )


def spawn_agent(work: Path, agent_listen: str, ready_file: Path) -> subprocess.Popen[bytes]:
    """A ``modelplane agent --launch-server`` (it starts its own MLServer) in ``work/agent``; not waited for."""
    return spawn(
        [
            "agent",
            f"--scheduler={agent_listen}",
            "--launch-server",
            f"--work-dir={work / 'agent'}",
            "--proxy-http=127.0.0.1:0",
            "--proxy-grpc=127.0.0.1:0",
            f"--ready-file={ready_file}",
            "--memory=2GiB",
            "--drain-timeout=5",
        ],
        work / "agent.log",
    )


@contextlib.contextmanager
def working_directory(keep: Path | None, prefix: str) -> Iterator[Path]:
    """A fresh folder: inside ``keep`` (kept), or a temporary one (removed afterwards)."""
    if keep is not None:  # a fresh folder inside it, so nothing of an earlier run is reused
        keep.mkdir(parents=True, exist_ok=True)
        yield Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=keep)).resolve()
        return
    path = Path(tempfile.mkdtemp(prefix=f"modelplane-{prefix}-")).resolve()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def environment() -> dict[str, Any]:
    mlserver_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        mlserver_version = subprocess.run(  # noqa: S603 - fixed argv
            [str(server_venv("mlserver") / "bin" / "mlserver"), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout.strip()
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "mlserver": mlserver_version,
        "loadavg_start": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------------------------- models


def train_sample(folder: Path) -> dict[str, Any]:
    """The iris sample (samples/train_iris.py) trained with the MLServer venv's Python."""
    python = server_venv("mlserver") / "bin" / "python"
    trained = subprocess.run(  # noqa: S603 - fixed argv
        [str(python), str(REPO / "samples" / "train_iris.py"), str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    printed: dict[str, Any] = json.loads(trained.stdout)
    return printed


def load_request(name: str, folder: Path) -> pb.LoadModelRequest:
    """What ``modelplane model load`` sends for samples/train_iris.py's manifest, under another name."""
    return pb.LoadModelRequest(
        model=pb.Model(
            meta=pb.MetaData(name=name, kind="Model"),
            modelSpec=pb.ModelSpec(uri=str(folder), requirements=["sklearn"], memoryBytes=10 * MiB),
            deploymentSpec=pb.DeploymentSpec(replicas=1),
        )
    )


class StatusWatch:
    """One SubscribeModelStatus stream; tells when a model's latest version is first seen Available."""

    def __init__(self, stub: pb_grpc.SchedulerAsyncStub, subscriber: str = "bench-load-latency") -> None:
        self._call = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName=subscriber))
        self.available_at: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for status in self._call:
            if not status.versions:
                continue
            now = time.perf_counter()
            latest = status.versions[-1].state
            async with self._changed:
                if latest.state == AVAILABLE:
                    self.available_at.setdefault(status.modelName, now)
                elif latest.state in FAILED:
                    self.failed[status.modelName] = latest.reason
                self._changed.notify_all()

    async def wait_available(self, name: str, timeout: float) -> float:
        async with asyncio.timeout(timeout), self._changed:
            while name not in self.available_at:
                if name in self.failed:
                    raise RuntimeError(f"model {name} failed: {self.failed[name]}")
                if self._task.done():
                    self._task.result()
                    raise RuntimeError("the status stream ended")
                await self._changed.wait()
        return self.available_at[name]

    async def close(self) -> None:
        self._call.cancel()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aio.AioRpcError):
            await self._task


def source_fingerprint(files: Sequence[Path]) -> dict[str, Any]:
    """Which source was measured (sha256 of ``files``, names and bytes), as the tree changes often."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    newest = max(path.stat().st_mtime for path in files)
    return {
        "sha256_12": digest.hexdigest()[:12],
        "files": len(files),
        "newest_mtime_utc": datetime.datetime.fromtimestamp(newest, datetime.UTC).isoformat(timespec="seconds"),
    }
