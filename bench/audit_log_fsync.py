"""What the audit log's fsync-before-answer costs a mutation (modelplane/audit/audit_log.py).

Measured on the disk of ``--dir`` (default: a temporary folder under the current directory, where a scheduler's
state dir would be):

1. raw: one audit line written and fsynced, N times in a row: the disk's write+fsync latency.
2. sequential: ``AuditLog.record`` N times, one at a time (one mutation at a time: a person, a CI job).
3. concurrent: ``AuditLog.record`` N times, C in flight (a controller syncing many resources): lines recorded
   while an fsync runs share the next one (group commit).

Reported: records/s and latency percentiles of each, and for the concurrent run how many fsyncs it took.
Compare with bench/load_model_rate.py's LoadModel latency (p50 around 150-200 ms at 64 in flight here): the
audit line is a small part of it.

    .venv/bin/python bench/audit_log_fsync.py [--records 2000] [--concurrency 64] [--dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelplane.audit import AuditLog, Resource, RotatingFile, audit_record
from modelplane.auth.caller import Caller, CredentialKind

CALLER = Caller("spiffe://example.org/ci", CredentialKind.CERTIFICATE, roles=frozenset({"operator"}), peer="ipv4:x")


def _line(number: int) -> Any:
    return audit_record(
        CALLER, "/seldon.mlops.scheduler.Scheduler/LoadModel", Resource("model", f"m-{number:05d}"), "OK", "",
        version_before=None, version_after=1,
    )  # fmt: skip


def _summary(latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "records_per_second": round(len(latencies) / seconds, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


def raw_fsync(folder: Path, count: int) -> dict[str, float]:
    fd = os.open(folder / "raw.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    line = _line(0).to_line()
    latencies = []
    begun = time.perf_counter()
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, line)
            os.fsync(fd)
            latencies.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    return _summary(latencies, time.perf_counter() - begun)


async def recorded(folder: Path, name: str, count: int, concurrency: int) -> dict[str, float]:
    sink = RotatingFile(folder / name)
    audit = AuditLog(sink)
    lines = [_line(number) for number in range(count)]
    latencies: list[float] = []
    slots = asyncio.Semaphore(concurrency)

    async def one(line: Any) -> None:
        async with slots:
            start = time.perf_counter()
            await audit.record(line)
            latencies.append(time.perf_counter() - start)

    begun = time.perf_counter()
    await asyncio.gather(*(one(line) for line in lines))
    seconds = time.perf_counter() - begun
    audit.close()
    return {**_summary(latencies, seconds), "fsyncs": sink.fsyncs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=options.dir, prefix="audit-bench-") as work:
        folder = Path(work)
        result = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
            "records": options.records,
            "concurrency": options.concurrency,
            "raw_write_fsync": raw_fsync(folder, options.records),
            "sequential": asyncio.run(recorded(folder, "sequential.log", options.records, 1)),
            "concurrent": asyncio.run(recorded(folder, "concurrent.log", options.records, options.concurrency)),
        }
    for name in ("raw_write_fsync", "sequential", "concurrent"):
        print(f"{name:16} {result[name]}")
    if options.json is not None:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
