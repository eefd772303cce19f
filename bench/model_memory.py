"""Scheduler memory per model: where it goes, measured in a real scheduler process with tracemalloc and malloc's
own counters.

The scheduler runs in a child process that is this file (``--role scheduler``): it starts tracemalloc when asked
(``--trace``), then runs ``modelplane scheduler`` in-process, and on SIGUSR1 writes a snapshot: tracemalloc's
(Python's allocations, by line), glibc's ``mallinfo2`` (every malloc'd byte in use, Python's and C's: upb's
protobuf arenas, SQLite's page cache, gRPC) and VmRSS. The fake agents of load_model_rate.py register R
replicas; the LoadModel client sends N models (64 in flight) and waits until every one is Available. Snapshots
are taken once the agents are registered and after all models are Available; the difference divided by N is
what one model costs, split into:

- Python objects by allocating line (tracemalloc; only Python's own allocators are traced);
- malloc'd bytes in use beyond those (``mallinfo2().uordblks`` minus the traced ones): C libraries' memory;
- RSS beyond malloc's bytes in use: free memory malloc keeps (fragmentation) and what is not malloc'd.

Two runs in one invocation: one without tracemalloc (its RSS per model is the figure; tracemalloc's bookkeeping
inflates RSS), one with.

    .venv/bin/python bench/model_memory.py [--models 10000] [--replicas 10] [--top 25] [--json PATH]

Everything listens on 127.0.0.1 ports picked by the kernel; child processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import pickle
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench_processes import rss_bytes, stop_process, working_directory
from load_model_rate import (
    Config,
    drive_load_model,
    load_requests,
    spawn,
    start_agents,
    wait_all_available,
    wait_for_file,
    wait_replicas,
    write_json,
)

THIS_FILE = Path(__file__).resolve()
SNAPSHOT_TIMEOUT = 120.0  # a hang guard


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def malloc_in_use() -> dict[str, int]:
    """glibc's counters: bytes in use by malloc (all threads' arenas and mmapped blocks) and free bytes it keeps."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return {"in_use": info.uordblks + info.hblkhd, "free_kept": info.fordblks, "arena": info.arena}


# --------------------------------------------------------------------------------------------- the scheduler


def run_scheduler(snapshots: Path, argv: list[str], trace: bool) -> int:
    """``modelplane scheduler`` in this process, writing a snapshot to ``snapshots``/N.pickle on each SIGUSR1."""
    if trace:
        tracemalloc.start(1)
    taken = 0

    def snapshot(signum: int, frame: object) -> None:
        nonlocal taken
        gc.collect()
        data = {
            "rss": rss_bytes(os.getpid()),
            "malloc": malloc_in_use(),
            "tracemalloc": tracemalloc.take_snapshot() if trace else None,
        }
        path = snapshots / f"{taken}.pickle"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(pickle.dumps(data))
        temporary.replace(path)
        taken += 1

    signal.signal(signal.SIGUSR1, snapshot)
    from modelplane.cli.main import main  # noqa: PLC0415 - after tracemalloc started, so its imports are traced

    return main(["scheduler", *argv])


# --------------------------------------------------------------------------------------------- one run


async def take_snapshot(pid: int, folder: Path, number: int) -> dict[str, Any]:
    os.kill(pid, signal.SIGUSR1)
    path = folder / f"{number}.pickle"
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the scheduler wrote no snapshot")
        await asyncio.sleep(0.05)
    data: dict[str, Any] = pickle.loads(path.read_bytes())  # noqa: S301 - written by our own child process
    return data


async def one_run(options: argparse.Namespace, workdir: Path, *, trace: bool) -> dict[str, Any]:
    config = Config(options.models, options.replicas, 64, 600.0, workdir)
    ready = workdir / "ready.json"
    snapshots = workdir / "snapshots"
    snapshots.mkdir()
    argv = ["--listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
    argv += ["--state-dir", str(workdir / "state")]
    argv += ["--ready-file", str(ready), "--sync-grace", "0.1", "--shutdown-grace", "2", "--log-level", "warning"]
    command = [sys.executable, str(THIS_FILE), "--role", "scheduler", "--snapshots", str(snapshots)]
    command += ["--trace"] if trace else []
    scheduler = spawn([*command, "--", *argv], workdir / "scheduler.log")
    agents = None
    try:
        info = wait_for_file(ready, scheduler, 60, "the scheduler")
        agents = start_agents(config, info["agent_listen"])
        await wait_replicas(info["listen"], options.replicas, 60)
        await asyncio.sleep(0.5)
        before = await take_snapshot(scheduler.pid, snapshots, 0)
        requests = load_requests(options.models)
        drive = await drive_load_model(info["listen"], requests, 64, scheduler.pid)
        names = {request.model.meta.name for request in requests}
        done_at, states = await wait_all_available(info["listen"], names, 600)
        if done_at is None or drive.errors:
            raise RuntimeError(f"not every model loaded: {states}, {drive.errors}")
        await asyncio.sleep(2)
        after = await take_snapshot(scheduler.pid, snapshots, 1)
    finally:
        stop_process(scheduler)
        if agents is not None:
            stop_process(agents)
    return summarize(before, after, options.models, options.top)


def summarize(before: dict[str, Any], after: dict[str, Any], models: int, top: int) -> dict[str, Any]:
    def per_model(value: float) -> float:
        return round(value / models, 1)

    rss = after["rss"] - before["rss"]
    in_use = after["malloc"]["in_use"] - before["malloc"]["in_use"]
    result: dict[str, Any] = {
        "rss_bytes_per_model": per_model(rss),
        "malloc_in_use_bytes_per_model": per_model(in_use),
        "malloc_free_kept_bytes_per_model": per_model(after["malloc"]["free_kept"] - before["malloc"]["free_kept"]),
    }
    if after["tracemalloc"] is not None:
        ignore = [tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__)]
        old = before["tracemalloc"].filter_traces(ignore)
        new = after["tracemalloc"].filter_traces(ignore)
        lines = new.compare_to(old, "lineno")
        traced = sum(stat.size_diff for stat in lines)
        result["python_traced_bytes_per_model"] = per_model(traced)
        result["malloc_not_python_bytes_per_model"] = per_model(in_use - traced)
        result["python_by_line"] = [
            {"bytes_per_model": per_model(stat.size_diff), "blocks_per_model": per_model(stat.count_diff),
             "where": str(stat.traceback[0])}
            for stat in lines[:top]
        ]  # fmt: skip
    return result


async def benchmark(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    loadavg = os.getloadavg()
    plain_dir, traced_dir = workdir / "plain", workdir / "traced"
    plain_dir.mkdir()
    traced_dir.mkdir()
    plain = await one_run(options, plain_dir, trace=False)
    traced = await one_run(options, traced_dir, trace=True)
    return {
        "config": {"models": options.models, "replicas": options.replicas},
        "environment": {"nproc": os.cpu_count(), "loadavg_start": loadavg, "loadavg_end": os.getloadavg()},
        "without_tracemalloc": plain,
        "with_tracemalloc": traced,
    }


def render(result: dict[str, Any]) -> str:
    plain, traced = result["without_tracemalloc"], result["with_tracemalloc"]
    lines = [
        f"{result['config']['models']} models, {result['config']['replicas']} replicas; load average "
        f"{result['environment']['loadavg_start'][0]:.1f} -> {result['environment']['loadavg_end'][0]:.1f}",
        f"without tracemalloc: RSS {plain['rss_bytes_per_model']} B/model, malloc in use "
        f"{plain['malloc_in_use_bytes_per_model']} B/model, malloc free kept "
        f"{plain['malloc_free_kept_bytes_per_model']} B/model",
        f"with tracemalloc: RSS {traced['rss_bytes_per_model']} B/model, malloc in use "
        f"{traced['malloc_in_use_bytes_per_model']}, Python objects {traced['python_traced_bytes_per_model']}, "
        f"malloc'd by C code {traced['malloc_not_python_bytes_per_model']}",
        "Python objects per model, by line:",
    ]
    lines += [
        f"  {row['bytes_per_model']:8.1f} B {row['blocks_per_model']:5.2f} blocks  {row['where']}"
        for row in traced["python_by_line"]
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Scheduler memory per model, by where it goes.")
    parser.add_argument("--models", type=int, default=10_000, help="models loaded (default 10000)")
    parser.add_argument("--replicas", type=int, default=10, help="agent sessions registered (default 10)")
    parser.add_argument("--top", type=int, default=25, help="allocating lines shown (default 25)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep logs in a new folder in DIR (default: temporary)")
    parser.add_argument("--role", choices=("main", "scheduler"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--snapshots", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.role == "scheduler":
        return run_scheduler(options.snapshots, options.rest, options.trace)
    with working_directory(options.workdir, "memory") as workdir:
        result = asyncio.run(benchmark(options, workdir))
    print(render(result))
    if options.json is not None:
        write_json(options.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
