"""State store writes: what an acknowledged write costs the scheduler's process, beside bare SQLite doing the same.

1. ``SqliteStateStore`` (the scheduler's store: WAL, synchronous=FULL, group commit) in a fresh folder: W writers
   (asyncio tasks on one event loop, as concurrent LoadModel calls are) each ``apply()`` one Put of a model-sized
   record (``--value-bytes``) and await it, until N writes are acknowledged.
2. The reference, in the same run and on the same disk: one thread with a bare ``sqlite3`` connection (same
   pragmas and table) writing the same N rows in transactions of the average group size the store committed:
   the least any durable store on SQLite can do for them.

Reported: acknowledged writes/s, commits (groups) and their mean size, CPU per write of the event loop's thread
(``time.thread_time``), of the rest of the process (the writer thread), and of the bare SQLite thread; the ratios.

    .venv/bin/python bench/state_store_writes.py [--writes 20000] [--writers 64] [--value-bytes 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from scheduler.persistence import Put, SqliteStateStore


def process_cpu() -> float:
    return time.process_time()


async def store_run(folder: Path, writes: int, writers: int, value: bytes) -> dict[str, Any]:
    store = await SqliteStateStore.open(folder)
    keys = iter(range(writes))

    async def writer() -> None:
        for index in keys:  # shared: next() never awaits, so no two writers take the same key
            await store.apply([Put("models", f"m-{index:07d}", value)])

    try:
        loop_cpu, cpu, started = time.thread_time(), process_cpu(), time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        seconds = time.perf_counter() - started
        loop_cpu, cpu = time.thread_time() - loop_cpu, process_cpu() - cpu
        commits = store.commit_count
    finally:
        await store.close()
    return {
        "writes_per_second": round(writes / seconds),
        "commits": commits,
        "mean_group": round(writes / max(1, commits), 1),
        "loop_thread_us_per_write": round(loop_cpu / writes * 1e6, 1),
        "other_threads_us_per_write": round((cpu - loop_cpu) / writes * 1e6, 1),
        "process_us_per_write": round(cpu / writes * 1e6, 1),
    }


def bare_run(folder: Path, writes: int, group: int, value: bytes) -> dict[str, Any]:
    """The same rows through a bare connection on one thread, ``group`` per transaction."""
    result: dict[str, Any] = {}

    def work() -> None:
        connection = sqlite3.connect(folder / "bare.sqlite3", isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("CREATE TABLE records (tbl TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, "
                           "PRIMARY KEY (tbl, key))")  # fmt: skip
        upsert = (
            "INSERT INTO records (tbl, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value"
        )
        cpu, started = time.thread_time(), time.perf_counter()
        for first in range(0, writes, group):
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(
                upsert, [("models", f"m-{i:07d}", value) for i in range(first, min(writes, first + group))]
            )
            connection.execute("COMMIT")
        result["seconds"] = time.perf_counter() - started
        result["cpu"] = time.thread_time() - cpu
        connection.close()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return {
        "writes_per_second": round(writes / result["seconds"]),
        "thread_us_per_write": round(result["cpu"] / writes * 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="State store writes beside bare SQLite.")
    parser.add_argument("--writes", type=int, default=20_000)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--value-bytes", type=int, default=200)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    value = os.urandom(options.value_bytes)
    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="modelplane-store-") as folder:
        store = asyncio.run(store_run(Path(folder), options.writes, options.writers, value))
        bare = bare_run(Path(folder), options.writes, max(1, round(store["mean_group"])), value)
    result = {
        "config": {"writes": options.writes, "writers": options.writers, "value_bytes": options.value_bytes},
        "environment": {"nproc": os.cpu_count(), "loadavg_start": loadavg, "loadavg_end": os.getloadavg()},
        "store": store,
        "bare_sqlite": bare,
        "process_cpu_over_bare": round(store["process_us_per_write"] / bare["thread_us_per_write"], 2),
    }
    print(json.dumps(result, indent=2))
    if options.json:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
