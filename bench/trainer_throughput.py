"""Trainer throughput: training events per minute through ``modelplane trainer`` vs the same fits done directly.

What it measures, in one run on this machine (see bench/README.md for why, and for recorded results), for one
model (default: iris, 150 rows, multiclass logistic regression; ``--dataset synthetic``: 20,000 rows x 10
features, three classes, a random forest), the same design schema and dataset everywhere:

(b) The direct rungs, in and from this process:
    ``fit``         ``trainer.run.fitting.train(schema, frame)`` on a DataFrame already in memory;
    ``execute``     ``trainer.run.run_job.execute(job_dir)`` on a prepared job folder (reads the CSV, fits, writes the
                    artifact, metadata.json and result.json), in this process;
    ``subprocess``  ``python -m trainer.run.run_job JOB_DIR`` as a child process (a fresh interpreter per run), one at a
                    time and C at a time (C = the trainer's default ``--max-concurrent-runs``);
    ``launcher``    the trainer's own ``LocalProcessLauncher.run`` (the same subprocess with its rlimits and
                    process group), one at a time.
    ``warm``        ``WarmProcessLauncher.run`` (``--launcher=warm``: each run forked from a fork server that has
                    imported run_job once): its first run (the fork server's start included), then one at a time
                    and C at a time.
    The subprocess rungs run before and after (a), so drift of the shared machine shows.
(a) The trainer: Tansu (Kafka), Redis and SeaweedFS (S3) started here, and a ``modelplane trainer`` process per
    setting of ``--max-concurrent-runs`` (its default, then 1), each with its own topics, group, Redis prefix and
    bucket. After one warm-up event (the consumer group join, the bucket's creation), ``--sequential`` events one
    at a time (publish, wait for its SUCCESS) give the unqueued end-to-end latency (first setting only); then N
    events (distinct ids) are published at once, and the time from the first publish to the N-th SUCCESS on the
    status topic gives events per minute; per-event latency (publish to SUCCESS, queueing included) percentiles.
    Each run's history from the trainer's status API (queued, fetching, training, uploading, succeeded) and the
    ``duration_seconds``/``fit_seconds`` the run wrote into its metadata.json (read back from S3) split the time.
    Then the same at the default concurrency with ``--launcher=warm`` (its runs' CPU is not in the trainer's
    cutime there: the fork server reaps them).

Reported: the table of rungs, ratios trainer/direct (events per minute against runs per minute of the subprocess
rung at the same concurrency; sequential latency against each direct rung), where a trainer run's time goes,
the trainer process's CPU seconds (its own, and its waited-for children's: the runs) and RSS (idle, after the
runs, peak), and a run's peak RSS.

    .venv/bin/python bench/trainer_throughput.py [--events 8] [--sequential 3] [--repeats 4]
                                                 [--dataset iris|synthetic] [--quick] [--json PATH] [--workdir DIR]

Everything listens on 127.0.0.1; every process started here is stopped by its PID (redis-server daemonizes: by
the PID in its pidfile).

Over 400 lines on purpose: one benchmark is one script read top to bottom (the model, the direct rungs,
the components, the trainer runs, the report); the components come from tests/support/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# tests/ is not an installed package: its component starters and schema builders are reused from the checkout.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import aiohttp
import numpy as np
import pandas as pd
import redis.asyncio as aioredis
import sklearn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from bench_processes import (
    MiB,
    cpu_seconds,
    environment,
    hwm_bytes,
    rss_bytes,
    spawn,
    stop_process,
    wait_for_json,
    working_directory,
)
from load_model_rate import percentile
from minio import Minio
from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

from generated.mlops.training.v1 import training_pb2
from tests.support.kafka_broker import create_topics, start_broker
from tests.support.real_components import ACCESS_KEY, SECRET_KEY, SeaweedFS
from tests.support.redis_server import RedisServer, start_redis, stop_redis
from tests.support.training_schemas import IRIS_CLASSES, iris_multiclass_logistic, write_iris_csv
from trainer.launchers.base import LaunchVerdict
from trainer.launchers.local import LocalLauncherSettings, LocalProcessLauncher
from trainer.launchers.warm import WarmProcessLauncher
from trainer.run.fitting import train
from trainer.run.jobs import DESIGN_SCHEMA_FILE, DatasetSource, TrainingJob
from trainer.run.run_job import execute
from trainer.settings import build_parser

SUCCESS = training_pb2.TRAINING_STATUS_SUCCESS
DEFAULT_CONCURRENCY: int = build_parser(argparse.ArgumentParser()).get_default("max_concurrent_runs")
EVENT_TIMEOUT = 300.0  # hang guards, not expectations
READY_TIMEOUT = 60.0
TOKEN = "bench"  # noqa: S105 -- the design schema's Redis key token, not a password
HISTORY_STAGES = ("queued", "fetching", "training", "uploading", "succeeded")


# --------------------------------------------------------------------------------------------- helpers


def stats(seconds: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    if not ordered:
        return {"count": 0}
    ms = [round(value * 1000, 1) for value in seconds]
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(percentile(ordered, 0.9) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
        "all_ms": ms,
    }


def children_cpu_seconds(pid: int) -> float:
    """cutime + cstime of a process: the CPU of its children it has waited for (the trainer's runs)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def rusage_children() -> tuple[float, int]:
    """(CPU seconds, peak RSS in bytes) of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


# --------------------------------------------------------------------------------------------- the model


@dataclass
class Model:
    name: str
    schema: training_pb2.ModelDesignSchema
    frame: pd.DataFrame
    datasets: Path  # the trainer's --datasets-root
    file_name: str  # the CSV inside it

    @property
    def csv(self) -> Path:
        return self.datasets / self.file_name


def make_model(kind: str, folder: Path) -> Model:
    datasets = folder / "datasets"
    datasets.mkdir(parents=True)
    if kind == "iris":
        path = write_iris_csv(datasets / "iris.csv")
        schema = iris_multiclass_logistic(design_token="bench-iris")  # noqa: S106 -- an identifier
        return Model("iris, 150 rows x 4, logistic regression", schema, pd.read_csv(path), datasets, path.name)
    # Synthetic: 20,000 rows, 10 features, three classes named as the iris builder's dictionary expects.
    rows, features = 20_000, [f"x{index}" for index in range(10)]
    generator = np.random.default_rng(11)
    values = generator.normal(size=(rows, len(features)))
    score = values[:, 0] + 0.5 * values[:, 1] - values[:, 2] * values[:, 3] + generator.normal(0, 0.5, rows)
    labels = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    frame = pd.DataFrame(values, columns=features)
    frame["label"] = [IRIS_CLASSES[int(label)] for label in labels]
    frame.to_csv(datasets / "synthetic.csv", index=False)
    schema = iris_multiclass_logistic(
        design_token="bench-synthetic",  # noqa: S106 -- an identifier
        algorithm="random_forest",
        features=features,
        target="label",
        hyper={"n_estimators": 50, "random_state": 0},
    )
    name = "synthetic, 20,000 rows x 10, random forest (50 trees)"
    return Model(name, schema, pd.read_csv(datasets / "synthetic.csv"), datasets, "synthetic.csv")


def job_folder(model: Model, parent: Path, name: str) -> Path:
    """A job directory as the trainer writes it (trainer/service/consumer.py ``_train``)."""
    job_dir = parent / name
    job_dir.mkdir(parents=True)
    TrainingJob(run_id=name, event_id=name, dataset=DatasetSource(path=str(model.csv))).write(job_dir)
    (job_dir / DESIGN_SCHEMA_FILE).write_bytes(model.schema.SerializeToString())
    return job_dir


# --------------------------------------------------------------------------------------------- (b) direct


def direct_in_process(model: Model, work: Path, repeats: int) -> dict[str, Any]:
    """``fit`` and ``execute`` in this process; one untimed warm-up of each first (imports, caches)."""
    train(model.schema, model.frame)
    fits = []
    for _ in range(repeats):
        started = time.perf_counter()
        trained = train(model.schema, model.frame)
        fits.append(time.perf_counter() - started)
    execute(job_folder(model, work, "execute-warm-up"))
    executes = []
    for index in range(repeats):
        job_dir = job_folder(model, work, f"execute-{index}")
        started = time.perf_counter()
        result = execute(job_dir)
        executes.append(time.perf_counter() - started)
        if not result.succeeded:
            raise RuntimeError(f"execute failed: {result.errors}")
    return {"fit": stats(fits), "execute": stats(executes), "metrics": trained.metrics}


async def run_subprocess(job_dir: Path) -> float:
    started = time.perf_counter()
    with (job_dir / "run.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "trainer.run.run_job", str(job_dir),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT, cwd=job_dir,
        )  # fmt: skip
        code = await process.wait()
    if code != 0:
        raise RuntimeError(f"python -m trainer.run.run_job {job_dir} exited {code}")
    return time.perf_counter() - started


async def direct_subprocesses(model: Model, work: Path, count: int, concurrency: int) -> dict[str, Any]:
    """``count`` runs of ``python -m trainer.run.run_job``, ``concurrency`` at a time."""
    jobs = [job_folder(model, work, f"subprocess-c{concurrency}-{index}") for index in range(count)]
    gate = asyncio.Semaphore(concurrency)

    async def one(job_dir: Path) -> float:
        async with gate:
            return await run_subprocess(job_dir)

    cpu_before, _ = rusage_children()
    started = time.perf_counter()
    times = await asyncio.gather(*(one(job_dir) for job_dir in jobs))
    elapsed = time.perf_counter() - started
    cpu_after, peak_rss = rusage_children()
    return {
        "concurrency": concurrency,
        "runs": count,
        "elapsed_s": round(elapsed, 2),
        "runs_per_min": round(count / elapsed * 60, 1),
        "latency": stats(times),
        "cpu_s_per_run": round((cpu_after - cpu_before) / count, 3),
        "children_peak_rss_bytes": peak_rss,
    }


async def direct_launcher(model: Model, work: Path, count: int) -> dict[str, Any]:
    """The trainer's LocalProcessLauncher, one run at a time (what the trainer does per run, minus the rest)."""
    launcher = LocalProcessLauncher(LocalLauncherSettings())
    times = []
    for index in range(count):
        job_dir = job_folder(model, work, f"launcher-{index}")
        started = time.perf_counter()
        outcome = await launcher.run(job_dir, model.schema)
        times.append(time.perf_counter() - started)
        if outcome.verdict is not LaunchVerdict.SUCCEEDED:
            raise RuntimeError(f"launcher run failed: {outcome.detail}")
    return {"latency": stats(times)}


async def direct_warm_launcher(model: Model, work: Path, count: int, burst: int) -> dict[str, Any]:
    """WarmProcessLauncher: the first run (fork server start + imports), ``count`` runs one at a time, then
    ``burst`` runs DEFAULT_CONCURRENCY at a time. The runs' CPU is the fork server's cutime + cstime (it reaps
    them), not ours."""
    launcher = WarmProcessLauncher()

    async def one(job_dir: Path) -> float:
        started = time.perf_counter()
        outcome = await launcher.run(job_dir, model.schema)
        if outcome.verdict is not LaunchVerdict.SUCCEEDED:
            raise RuntimeError(f"warm launcher run failed: {outcome.detail}")
        return time.perf_counter() - started

    try:
        first = await one(job_folder(model, work, "warm-first"))
        server = launcher.server_pid
        if server is None:
            raise RuntimeError("the warm launcher has no fork server after a run")
        cpu_before = children_cpu_seconds(server)
        times = [await one(job_folder(model, work, f"warm-c1-{index}")) for index in range(count)]
        cpu_c1 = children_cpu_seconds(server) - cpu_before
        gate = asyncio.Semaphore(DEFAULT_CONCURRENCY)

        async def gated(job_dir: Path) -> float:
            async with gate:
                return await one(job_dir)

        jobs = [job_folder(model, work, f"warm-c{DEFAULT_CONCURRENCY}-{index}") for index in range(burst)]
        started = time.perf_counter()
        burst_times = await asyncio.gather(*(gated(job_dir) for job_dir in jobs))
        elapsed = time.perf_counter() - started
        server_rss = rss_bytes(server)
    finally:
        await launcher.aclose()
    return {
        "first_run_ms": round(first * 1000, 1),
        "c1": {"latency": stats(times), "cpu_s_per_run": round(cpu_c1 / count, 3)},
        f"c{DEFAULT_CONCURRENCY}": {
            "runs": burst,
            "elapsed_s": round(elapsed, 2),
            "runs_per_min": round(burst / elapsed * 60, 1),
            "latency": stats(burst_times),
        },
        "fork_server_rss_bytes": server_rss,
    }


# --------------------------------------------------------------------------------------------- components


@dataclass
class Components:
    bootstrap: str
    redis: RedisServer
    s3_endpoint: str  # host:port
    s3: Minio
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextlib.contextmanager
def components(work: Path) -> Iterator[Components]:
    """Tansu, Redis and SeaweedFS, started as the tests start them (tests/support/kafka_broker.py, redis_server.py,
    real_components.py); stopped by PID on the way out."""
    started: list[subprocess.Popen[bytes]] = []
    redis: RedisServer | None = None
    seaweedfs: SeaweedFS | None = None
    try:
        (work / "tansu").mkdir(parents=True)
        tansu, broker = start_broker(work / "tansu")
        started.append(tansu)
        (work / "redis").mkdir()
        redis = start_redis(work / "redis")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        seaweedfs = SeaweedFS.in_folder(work / "seaweedfs", env)
        client = seaweedfs.start()  # stops what it started if it fails
        yield Components(broker.bootstrap, redis, f"127.0.0.1:{seaweedfs.s3_port}", client, started)
    finally:
        if seaweedfs is not None:
            seaweedfs.stop()
        for process in reversed(started):
            stop_process(process)
        if redis is not None:
            stop_redis(redis)


# --------------------------------------------------------------------------------------------- (a) trainer


class StatusReader:
    """Reads the status topic from the beginning (no group); notes when each event id's status arrives."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        self.seen: dict[str, tuple[float, int, dict[str, str], list[str]]] = {}  # id -> (time, status, headers, errs)
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            now = time.time()
            async with self._changed:
                for records in batches.values():
                    for record in records:
                        headers = {name: value.decode() for name, value in record.headers}
                        status = training_pb2.ModelTrainingStatus()
                        status.ParseFromString(record.value)
                        event_id = headers.get("modelplane-event-id", "")
                        self.seen.setdefault(event_id, (now, status.status, headers, list(status.errors)))
                self._changed.notify_all()

    async def wait_for(self, event_ids: Sequence[str], timeout: float = EVENT_TIMEOUT) -> None:
        async with asyncio.timeout(timeout), self._changed:
            while not set(event_ids) <= set(self.seen):
                if self._task is not None and self._task.done():
                    self._task.result()
                await self._changed.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


def event_bytes(event_id: str, model: Model) -> bytes:
    message = training_pb2.ModelTrainingEvent(event_id=event_id, model_key_token=TOKEN, dataset_path=model.file_name)
    return message.SerializeToString()


async def publish(producer: Any, topic: str, event_ids: Sequence[str], model: Model) -> dict[str, float]:
    """Send the events back to back (acks=all); returns each one's wall-clock send time."""
    sent: dict[str, float] = {}
    futures = []
    for event_id in event_ids:
        sent[event_id] = time.time()
        futures.append(await producer.send(topic, event_bytes(event_id, model)))
    await asyncio.gather(*futures)
    return sent


async def runs_from_api(address: str, limit: int) -> dict[str, dict[str, Any]]:
    """The trainer's run records (status API), by event id."""
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.get(f"http://{address}/runs?limit={limit}") as response,
    ):
        body = await response.json()
    return {run["event_id"]: run for run in body["runs"]}


def run_metadata(client: Minio, model_uri: str) -> dict[str, Any]:
    bucket, _, folder = model_uri.removeprefix("s3://").partition("/")
    response = client.get_object(bucket, f"{folder}/metadata.json")
    try:
        metadata: dict[str, Any] = json.loads(response.read())
    finally:
        response.close()
        response.release_conn()
    return metadata


def breakdown(
    event_ids: Sequence[str],
    sent: dict[str, float],
    reader: StatusReader,
    runs: dict[str, dict[str, Any]],
    metadata: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Where each run's time went, medians over ``event_ids`` (all wall-clock, time.time())."""
    parts: dict[str, list[float]] = {
        "publish_to_queued": [],
        "queued_to_fetching": [],
        "fetching_to_training": [],
        "training_to_uploading": [],
        "uploading_to_succeeded": [],
        "succeeded_to_seen": [],
        "run_job_duration": [],
        "run_job_fit": [],
        "subprocess_outside_run_job": [],
        # queued to seen minus training_to_uploading: the trainer's own work per event (Redis, job folder, S3
        # upload, status publish), without the pickup (publish_to_queued, which holds a burst's queueing).
        "trainer_own_after_pickup": [],
    }
    for event_id in event_ids:
        run = runs.get(event_id)
        if run is None:
            continue
        at = {state: when for state, when in run["history"]}
        if not all(stage in at for stage in HISTORY_STAGES):
            continue
        parts["publish_to_queued"].append(at["queued"] - sent[event_id])
        for before, after in itertools.pairwise(HISTORY_STAGES):
            parts[f"{before}_to_{after}"].append(at[after] - at[before])
        parts["succeeded_to_seen"].append(reader.seen[event_id][0] - at["succeeded"])
        parts["trainer_own_after_pickup"].append(
            reader.seen[event_id][0] - at["queued"] - (at["uploading"] - at["training"])
        )
        meta = metadata.get(event_id)
        if meta is not None:
            parts["run_job_duration"].append(float(meta["duration_seconds"]))
            parts["run_job_fit"].append(float(meta["fit_seconds"]))
            parts["subprocess_outside_run_job"].append(
                at["uploading"] - at["training"] - float(meta["duration_seconds"])
            )
    return {name: round(statistics.median(values) * 1000, 1) if values else None for name, values in parts.items()}


@dataclass
class TrainerTopics:
    training: str
    status: str
    argv: list[str]  # ``modelplane trainer`` and its flags


async def trainer_setup(
    model: Model, comps: Components, folder: Path, concurrency: int | None, launcher: str = "local"
) -> TrainerTopics:
    """Fresh topics, consumer group, Redis prefix (the schema stored under it) and bucket; the trainer's flags."""
    suffix = uuid.uuid4().hex[:8]
    training, status, inference = f"training-{suffix}", f"status-{suffix}", f"inference-{suffix}"
    prefix = f"bench{suffix}:"
    await create_topics(comps.bootstrap, [training, status, inference])
    client = aioredis.Redis.from_url(comps.redis.url)
    try:
        await client.set(f"{prefix}design:{TOKEN}", model.schema.SerializeToString())
    finally:
        await client.aclose()
    argv = [
        "trainer",
        f"--kafka-bootstrap={comps.bootstrap}",
        f"--training-topic={training}",
        f"--status-topic={status}",
        f"--inference-store-topic={inference}",
        f"--consumer-group=bench-{suffix}",
        "--session-timeout-ms=3000",
        f"--redis-url={comps.redis.url}",
        f"--redis-prefix={prefix}trainer:",
        f"--design-key-template={prefix}design:{{token}}",
        f"--s3-endpoint={comps.s3_endpoint}",
        f"--s3-access-key={ACCESS_KEY}",
        f"--s3-bucket=models-{suffix}",
        f"--work-dir={folder / 'work'}",
        f"--datasets-root={model.datasets}",
        "--status-listen=127.0.0.1:0",
        f"--ready-file={folder / 'ready.json'}",
        *([f"--max-concurrent-runs={concurrency}"] if concurrency is not None else []),
        f"--launcher={launcher}",
    ]
    return TrainerTopics(training, status, argv)


async def trainer_part(
    model: Model,
    comps: Components,
    work: Path,
    *,
    concurrency: int | None,
    events: int,
    sequential: int,
    launcher: str = "local",
) -> dict[str, Any]:
    """One ``modelplane trainer`` process: warm-up, ``sequential`` events one at a time, then ``events`` at once."""
    folder = work / f"trainer-{launcher}-c{concurrency or DEFAULT_CONCURRENCY}"
    folder.mkdir(parents=True)
    setup = await trainer_setup(model, comps, folder, concurrency, launcher)
    training, status, ready_file = setup.training, setup.status, folder / "ready.json"
    os.environ["MODELPLANE_TRAINER_S3_SECRET_KEY"] = SECRET_KEY  # inherited by the trainer, kept off its argv
    process = spawn(setup.argv, folder / "trainer.log")
    result: dict[str, Any] = {"max_concurrent_runs": concurrency or DEFAULT_CONCURRENCY, "launcher": launcher}
    reader = StatusReader(comps.bootstrap, status)
    producer = AIOKafkaProducer(bootstrap_servers=comps.bootstrap, acks="all", enable_idempotence=False, linger_ms=0)
    try:
        ready = await wait_for_json(ready_file, process, READY_TIMEOUT, "trainer")
        await reader.start()
        await producer.start()
        rss = {"started": rss_bytes(process.pid)}
        # Warm-up: the consumer group join (seconds on Tansu), the bucket's creation.
        sent = await publish(producer, training, ["warm-up"], model)
        await reader.wait_for(["warm-up"])
        result["warm_up_s"] = round(reader.seen["warm-up"][0] - sent["warm-up"], 2)
        rss["after_warm_up"] = rss_bytes(process.pid)
        sequential_ids = [f"seq-{index}" for index in range(sequential)]
        for event_id in sequential_ids:
            sent |= await publish(producer, training, [event_id], model)
            await reader.wait_for([event_id])
        burst_ids = [f"event-{index:03d}" for index in range(events)]
        cpu_before, children_before = cpu_seconds(process.pid), children_cpu_seconds(process.pid)
        sent |= await publish(producer, training, burst_ids, model)
        await reader.wait_for(burst_ids)
        cpu_after, children_after = cpu_seconds(process.pid), children_cpu_seconds(process.pid)
        rss["after_runs"] = rss_bytes(process.pid)
        rss["peak_hwm"] = hwm_bytes(process.pid)
        first, last = min(sent[i] for i in burst_ids), max(reader.seen[i][0] for i in burst_ids)
        all_ids = ["warm-up", *sequential_ids, *burst_ids]
        failures = {i: reader.seen[i][3] for i in all_ids if reader.seen[i][1] != SUCCESS}
        runs = await runs_from_api(ready["status"], len(all_ids) + 5)
        metadata = {}
        for event_id in [*sequential_ids, *burst_ids]:
            uri = reader.seen[event_id][2].get("modelplane-model-uri")
            if uri:
                metadata[event_id] = await asyncio.to_thread(run_metadata, comps.s3, uri)
        result |= {
            "burst": {
                "events": events,
                "elapsed_s": round(last - first, 2),
                "events_per_min": round(events / (last - first) * 60, 1),
                "latency": stats([reader.seen[i][0] - sent[i] for i in burst_ids]),
                "trainer_cpu_s": round(cpu_after - cpu_before, 2),
                "trainer_cpu_s_per_event": round((cpu_after - cpu_before) / events, 3),
                "runs_cpu_s_per_event": round((children_after - children_before) / events, 3),
                "breakdown_ms": breakdown(burst_ids, sent, reader, runs, metadata),
            },
            "failures": failures,
            "rss_bytes": rss,
        }
        if sequential_ids:
            result["sequential"] = {
                "latency": stats([reader.seen[i][0] - sent[i] for i in sequential_ids]),
                "breakdown_ms": breakdown(sequential_ids, sent, reader, runs, metadata),
            }
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
        with contextlib.suppress(Exception):
            await reader.close()
        result["trainer_exit"] = stop_process(process)
    return result


# --------------------------------------------------------------------------------------------- the run


@dataclass
class Config:
    dataset: str
    events: int
    sequential: int
    repeats: int
    workdir: Path


async def timed(what: str, call: Callable[[], Awaitable[Any]]) -> Any:
    started = time.perf_counter()
    print(f"... {what}", file=sys.stderr, flush=True)
    value = await call()
    print(f"    {what}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return value


async def benchmark(config: Config) -> dict[str, Any]:
    work = config.workdir
    env = await asyncio.to_thread(environment)
    env |= {"scikit-learn": sklearn.__version__, "pandas": pd.__version__, "numpy": np.__version__}
    # BLAS/OpenMP threads per process: runs inherit these from the trainer (and from this process).
    env |= {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env["threadpools"] = [f"{pool['internal_api']}:{pool['num_threads']}" for pool in threadpool_info()]
    model = make_model(config.dataset, work)
    result: dict[str, Any] = {
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "environment": env,
        "model": model.name,
        "events": config.events,
        "sequential": config.sequential,
        "repeats": config.repeats,
        "default_max_concurrent_runs": DEFAULT_CONCURRENCY,
    }
    direct = work / "direct"

    async def in_process() -> dict[str, Any]:
        return direct_in_process(model, direct, config.repeats)

    result["in_process"] = await timed("fit and execute in this process", in_process)

    async def subprocess_rungs(label: str) -> dict[str, Any]:
        return {
            "c1": await direct_subprocesses(model, direct / label, config.repeats, 1),
            f"c{DEFAULT_CONCURRENCY}": await direct_subprocesses(
                model, direct / label, config.events, DEFAULT_CONCURRENCY
            ),
        }

    result["launcher"] = await timed("LocalProcessLauncher", lambda: direct_launcher(model, direct, config.repeats))
    result["warm_launcher"] = await timed(
        "WarmProcessLauncher", lambda: direct_warm_launcher(model, direct, config.repeats, config.events)
    )
    result["subprocess_before"] = await timed("python -m trainer.run.run_job", lambda: subprocess_rungs("before"))
    with components(work / "components") as comps:
        result["trainer"] = {}
        for concurrency in (None, 1):
            label = f"c{concurrency or DEFAULT_CONCURRENCY}"
            part = functools.partial(
                trainer_part,
                model,
                comps,
                work,
                concurrency=concurrency,
                events=config.events,
                sequential=config.sequential if concurrency is None else 0,
            )
            result["trainer"][label] = await timed(f"modelplane trainer, {label}", part)
        # The same trainer at its default concurrency with --launcher=warm (runs forked from a warm fork server).
        warm_part = functools.partial(
            trainer_part,
            model,
            comps,
            work,
            concurrency=None,
            events=config.events,
            sequential=config.sequential,
            launcher="warm",
        )
        result["trainer_warm"] = await timed("modelplane trainer --launcher=warm", warm_part)
    result["subprocess_after"] = await timed("python -m trainer.run.run_job again", lambda: subprocess_rungs("after"))
    result["environment"]["loadavg_end"] = os.getloadavg()[0]
    result["ratios"] = ratios(result)
    return result


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """trainer / direct: throughput against the subprocess rung at the same concurrency (mean of before and
    after); the trainer's unqueued latency against each direct rung."""
    found: dict[str, Any] = {}
    for label, part in result["trainer"].items():
        before, after = (result[side][label]["runs_per_min"] for side in ("subprocess_before", "subprocess_after"))
        rate = part["burst"]["events_per_min"]
        found[f"events_per_min_{label}_vs_subprocess"] = round(rate / statistics.mean([before, after]), 3)
        found[f"events_per_min_{label}_vs_subprocess_before_after"] = [round(rate / before, 3), round(rate / after, 3)]
    warm, c = result["warm_launcher"], f"c{DEFAULT_CONCURRENCY}"
    subprocess_c = statistics.mean(
        result[side][c]["runs_per_min"] for side in ("subprocess_before", "subprocess_after")
    )
    found["warm_vs_local_launcher_latency_c1"] = round(
        warm["c1"]["latency"]["p50_ms"] / result["launcher"]["latency"]["p50_ms"], 3
    )
    found[f"warm_vs_subprocess_runs_per_min_{c}"] = round(warm[c]["runs_per_min"] / subprocess_c, 2)
    trainer_warm, trainer_local = result["trainer_warm"], result["trainer"][c]
    found[f"trainer_warm_vs_local_events_per_min_{c}"] = round(
        trainer_warm["burst"]["events_per_min"] / trainer_local["burst"]["events_per_min"], 2
    )
    if "sequential" in trainer_warm and "sequential" in trainer_local:
        found["trainer_warm_vs_local_sequential_latency"] = round(
            trainer_warm["sequential"]["latency"]["p50_ms"] / trainer_local["sequential"]["latency"]["p50_ms"], 3
        )
    sequential = result["trainer"][f"c{DEFAULT_CONCURRENCY}"].get("sequential")
    if sequential is not None and sequential["latency"]["count"]:
        latency = sequential["latency"]["p50_ms"]
        subprocess_ms = statistics.mean(
            result[side]["c1"]["latency"]["p50_ms"] for side in ("subprocess_before", "subprocess_after")
        )
        found["sequential_latency_vs"] = {
            "fit": round(latency / result["in_process"]["fit"]["p50_ms"], 1),
            "execute": round(latency / result["in_process"]["execute"]["p50_ms"], 1),
            "subprocess": round(latency / subprocess_ms, 2),
            "launcher": round(latency / result["launcher"]["latency"]["p50_ms"], 2),
        }
    return found


def render(result: dict[str, Any]) -> str:
    env = result["environment"]
    c = f"c{result['default_max_concurrent_runs']}"
    ip, before, after = result["in_process"], result["subprocess_before"], result["subprocess_after"]

    def lat(part: dict[str, Any]) -> str:
        return f"p50 {part['p50_ms']} ms, p90 {part['p90_ms']}, min {part['min_ms']}, max {part['max_ms']}"

    lines = [
        f"machine: nproc {env['nproc']}, Python {env['python']}, scikit-learn {env['scikit-learn']}, load average "
        f"{env['loadavg_start']:.2f} -> {env['loadavg_end']:.2f}",
        f"threads: {env['threadpools']}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, "
        f"OPENBLAS_NUM_THREADS={env['OPENBLAS_NUM_THREADS']}",
        f"model: {result['model']}; metrics {ip['metrics']}",
        "",
        f"{'rung':<44} {'runs/min':>9}  latency per run",
        f"{'fit (trainer.run.fitting.train), in process':<44} {60_000 / ip['fit']['p50_ms']:>9.0f}  {lat(ip['fit'])}",
        f"{'execute(job_dir), in process':<44} {60_000 / ip['execute']['p50_ms']:>9.0f}  {lat(ip['execute'])}",
        f"{'launcher (LocalProcessLauncher), c1':<44} {60_000 / result['launcher']['latency']['p50_ms']:>9.0f}  "
        f"{lat(result['launcher']['latency'])}",
    ]
    warm = result["warm_launcher"]
    lines += [
        f"{'warm launcher (WarmProcessLauncher), c1':<44} {60_000 / warm['c1']['latency']['p50_ms']:>9.0f}  "
        f"{lat(warm['c1']['latency'])}; CPU {warm['c1']['cpu_s_per_run']} s/run; first run (fork server start) "
        f"{warm['first_run_ms']} ms",
        f"{f'warm launcher, {c}':<44} {warm[c]['runs_per_min']:>9}  {lat(warm[c]['latency'])}; fork server RSS "
        f"{warm['fork_server_rss_bytes'] / MiB:.1f} MiB",
    ]
    for side, part in (("before", before), ("after", after)):
        for label in ("c1", c):
            rung, name = part[label], f"python -m trainer.run.run_job, {label}, {side}"
            lines.append(
                f"{name:<44} {rung['runs_per_min']:>9}  {lat(rung['latency'])}; CPU {rung['cpu_s_per_run']} s/run"
            )
    for label, part in result["trainer"].items():
        burst = part["burst"]
        name = f"modelplane trainer, {label}, {burst['events']} at once"
        lines.append(f"{name:<44} {burst['events_per_min']:>9}  {lat(burst['latency'])} (queueing included)")
        if "sequential" in part:
            name = f"modelplane trainer, {label}, one at a time"
            lines.append(f"{name:<44} {'':>9}  {lat(part['sequential']['latency'])}")
    warm_trainer = result["trainer_warm"]
    name = f"modelplane trainer --launcher=warm, {c}, {warm_trainer['burst']['events']} at once"
    lines.append(
        f"{name:<44} {warm_trainer['burst']['events_per_min']:>9}  {lat(warm_trainer['burst']['latency'])} "
        "(queueing included)"
    )
    if "sequential" in warm_trainer:
        name = f"modelplane trainer --launcher=warm, {c}, one at a time"
        lines.append(f"{name:<44} {'':>9}  {lat(warm_trainer['sequential']['latency'])}")
    lines += ["", f"ratios trainer/direct: {json.dumps(result['ratios'])}", ""]
    for label, part in [*result["trainer"].items(), (f"warm {c}", warm_trainer)]:
        burst, rss = part["burst"], part["rss_bytes"]
        lines += [
            f"trainer {label}: warm-up (group join) {part['warm_up_s']} s; failures {len(part['failures'])}; exit "
            f"{part['trainer_exit']}",
            f"  CPU per event: trainer {burst['trainer_cpu_s_per_event']} s, "
            f"its runs {burst['runs_cpu_s_per_event']} s",
            f"  RSS: started {rss['started'] / MiB:.1f} MiB, after warm-up {rss['after_warm_up'] / MiB:.1f}, "
            f"after runs {rss['after_runs'] / MiB:.1f}, peak {rss['peak_hwm'] / MiB:.1f}",
            f"  burst breakdown (medians, ms): {json.dumps(burst['breakdown_ms'])}",
        ]
        if "sequential" in part:
            lines.append(f"  one-at-a-time breakdown (medians, ms): {json.dumps(part['sequential']['breakdown_ms'])}")
    lines.append(
        f"a run's peak RSS (python -m trainer.run.run_job): {before['c1']['children_peak_rss_bytes'] / MiB:.1f} MiB"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Training events per minute through the trainer vs direct fits.")
    parser.add_argument("--dataset", choices=("iris", "synthetic"), default="iris")
    parser.add_argument("--events", type=int, default=None, help="events published at once per trainer (8)")
    parser.add_argument("--sequential", type=int, default=None, help="events one at a time, default trainer (3)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per direct rung at concurrency 1 (4)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 events, 1 sequential, 2 repeats")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument(
        "--workdir", type=Path, help="keep logs and job folders in a new folder in DIR (default: a temporary dir)"
    )
    options = parser.parse_args(argv)
    defaults = (4, 1, 2) if options.quick else (8, 3, 4)
    for name, default in zip(("events", "sequential", "repeats"), defaults, strict=True):
        if getattr(options, name) is None:
            setattr(options, name, default)
    if not 1 <= options.events <= 500 or not 0 <= options.sequential <= 100 or not 1 <= options.repeats <= 100:
        parser.error("--events 1-500, --sequential 0-100, --repeats 1-100")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    with working_directory(options.workdir, "trainer-throughput") as workdir:
        config = Config(options.dataset, options.events, options.sequential, options.repeats, workdir)
        result = asyncio.run(benchmark(config))
    print(render(result))
    if options.json is not None:
        options.json.write_text(json.dumps(result, indent=2) + "\n")
    parts = [*result["trainer"].values(), result["trainer_warm"]]
    healthy = all(not part["failures"] and part["trainer_exit"][0] == 0 for part in parts)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
