"""Soak: a real scheduler under continuous load/unload churn, with subscribers that read and some that never do.

What runs (see bench/README.md for why and for recorded results):

- a real ``modelplane scheduler`` process (fresh state dir, SQLite, default settings but ``--sync-grace 0.1``
  and ``--log-level warning``, so every dropped stream shows as one warning line);
- simulated agents: one child process of fake agents (``load_model_rate.py --role agents``) speaking the
  real AgentService protocol over real gRPC, answering every LOAD/UNLOAD at once and heartbeating;
- thousands of models loaded first, then churn for ``--duration`` seconds: at ``--ops-per-second`` a random
  model that is not being changed is unloaded, given a new version (a new uri) or loaded again;
- subscribers that read everything: SubscribeModelStatus (several), WatchRoutes, SubscribeServerStatus;
- subscribers that never read, opened in waves (the first after a stretch with none, to compare): raw
  HTTP/2 clients that grant no flow-control window (tests/support/stalled_streams.py) on four streaming RPCs,
  and grpc clients that never call read (their transport takes a few MiB first);
- a probe: ``ModelStatus`` of one model every half second, timed.

Measured: the scheduler's RSS and CPU over time; stuck models (after the churn stops, every model whose
desired state the driver had reached must report it within ``--settle-timeout``: must be 0); lost events
(each reading subscriber's last status of every model must equal the scheduler's final ModelStatus, or
say the model is gone: must be 0); streams dropped for lagging (the scheduler's log) and what each
non-reader got when it finally read; probe and churn latencies before and after the first non-readers.

    .venv/bin/python bench/soak.py [--duration 600] [--models 2000] [--replicas 10] [--ops-per-second 40]
                                   [--json PATH] [--workdir DIR]

Everything listens on 127.0.0.1 ports picked by the kernel; child processes are stopped by PID (the
scheduler first). Exit status 1 if a model is stuck, an event was lost, or a process failed.

Over 400 lines on purpose: one benchmark is one script read top to bottom (readers, churn, non-readers,
sampling, the run and its verdict); what the benchmarks share is in bench_processes.py, load_model_rate.py's fake
agents and tests/support/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from bench_processes import cpu_seconds, hwm_bytes, rss_bytes, stop_process, working_directory
from google.protobuf.message import Message
from grpc import aio
from load_model_rate import spawn, wait_for_file, wait_replicas, write_json

from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.routing.v1 import routing_pb2_grpc as rpb_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.stalled_streams import StalledCall

MiB = 1 << 20
AVAILABLE = pb.ModelStatus.ModelAvailable
TERMINATED = pb.ModelStatus.ModelTerminated
THIS_DIR = Path(__file__).resolve().parent
SCHEDULER = "/seldon.mlops.scheduler.Scheduler/"
STALLED_RPCS: dict[str, Callable[[str], Message]] = {
    SCHEDULER + "SubscribeModelStatus": lambda name: pb.ModelSubscriptionRequest(subscriberName=name),
    SCHEDULER + "SubscribeServerStatus": lambda name: pb.ServerSubscriptionRequest(subscriberName=name),
    SCHEDULER + "SubscribeControlPlane": lambda name: pb.ControlPlaneSubscriptionRequest(subscriberName=name),
    "/mlops.routing.v1.RoutingService/WatchRoutes": lambda name: rpb.WatchRoutesRequest(gateway_name=name),
}
DROPPED_LINE = re.compile(r"dropped the (\S+) stream of ")
Normalized = tuple[bool, tuple[tuple[int, int, int, str], ...]]


@dataclass
class Config:
    duration: float
    models: int
    replicas: int
    ops_per_second: float
    workers: int
    model_readers: int
    wave_every: float
    first_wave_after: float
    stalled_per_wave: int
    grpc_non_readers_per_wave: int
    settle_timeout: float
    sample_every: float
    seed: int
    workdir: Path


# --------------------------------------------------------------------------------------------- statuses


def normalized(status: pb.ModelStatusResponse) -> Normalized:
    """What a status says, without its timestamps: deleted, and per version its number, state, replicas, uri."""
    versions = tuple(
        (v.version, v.state.state, v.state.availableReplicas, v.modelDefn.modelSpec.uri) for v in status.versions
    )
    return status.deleted, versions


def says_gone(status: pb.ModelStatusResponse) -> bool:
    return status.deleted and (not status.versions or status.versions[-1].state.state == TERMINATED)


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


# --------------------------------------------------------------------------------------------- readers


class ModelReader:
    """A SubscribeModelStatus stream read to the end: the last status of every model."""

    def __init__(self, stub: pb_grpc.SchedulerAsyncStub, name: str) -> None:
        self.call = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName=name))
        self.last: dict[str, pb.ModelStatusResponse] = {}
        self.messages = 0
        self.ended: str | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for status in self.call:
                self.last[status.modelName] = status
                self.messages += 1
            self.ended = "stream ended"
        except aio.AioRpcError as error:
            self.ended = f"{error.code().name}: {error.details()}"

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class CountingReader:
    """Any other stream read to the end, counting messages (WatchRoutes, SubscribeServerStatus)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.messages = 0
        self.ended: str | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for _ in self.call:
                self.messages += 1
            self.ended = "stream ended"
        except aio.AioRpcError as error:
            self.ended = f"{error.code().name}: {error.details()}"

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


# --------------------------------------------------------------------------------------------- churn


@dataclass
class Desired:
    loaded: bool
    uri: str
    generation: int = 0  # how many uris the model has had


@dataclass
class Churn:
    """The driver: what each model should be, and the calls that made it so."""

    stub: pb_grpc.SchedulerAsyncStub
    rng: random.Random
    desired: dict[str, Desired] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))

    @staticmethod
    def request(name: str, uri: str) -> pb.LoadModelRequest:
        return pb.LoadModelRequest(
            model=pb.Model(
                meta=pb.MetaData(name=name),
                modelSpec=pb.ModelSpec(uri=uri, requirements=["sklearn"], memoryBytes=MiB),
                deploymentSpec=pb.DeploymentSpec(replicas=1),
            )
        )

    async def load_all(self, names: Sequence[str], concurrency: int = 32) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def load(name: str) -> None:
            async with gate:
                uri = f"file:///models/{name}/0"
                await self.stub.LoadModel(self.request(name, uri), timeout=120)
                self.desired[name] = Desired(True, uri)

        await asyncio.gather(*(load(name) for name in names))

    async def one(self) -> None:
        """Change one random model that is not being changed now."""
        name = self.rng.choice(sorted(self.desired.keys() - self.busy))
        self.busy.add(name)
        try:
            current = self.desired[name]
            if current.loaded and self.rng.random() < 0.5:
                kind = "unload"
                call: Callable[[], Any] = lambda: self.stub.UnloadModel(  # noqa: E731
                    pb.UnloadModelRequest(model=pb.ModelReference(name=name)), timeout=60
                )
                after = Desired(False, current.uri, current.generation)
            else:
                kind = "new version" if current.loaded else "load again"
                uri = f"file:///models/{name}/{current.generation + 1}"
                call = lambda: self.stub.LoadModel(self.request(name, uri), timeout=60)  # noqa: E731
                after = Desired(True, uri, current.generation + 1)
            started = time.perf_counter()
            try:
                await call()
            except aio.AioRpcError as error:
                # Refused (e.g. loading a model whose deletion is still running): its desired state is unchanged.
                self.refused[f"{kind}: {error.code().name}"] += 1
                return
            self.latencies[kind].append((time.monotonic(), time.perf_counter() - started))
            self.calls[kind] += 1
            self.desired[name] = after
        finally:
            self.busy.discard(name)

    async def run(self, until: float, ops_per_second: float, workers: int) -> None:
        interval = 1 / ops_per_second
        next_start = time.monotonic()
        running: set[asyncio.Task[None]] = set()
        while time.monotonic() < until:
            next_start += interval
            await asyncio.sleep(max(0.0, next_start - time.monotonic()))
            if len(running) >= workers:
                self.refused["skipped: all workers busy"] += 1
                continue
            task = asyncio.create_task(self.one())
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running)

    def matches(self, name: str, status: pb.ModelStatusResponse | None) -> bool:
        """Whether the scheduler's status says what the driver last made of ``name``."""
        wanted = self.desired[name]
        if not wanted.loaded:
            return status is None or says_gone(status)
        if status is None or status.deleted or not status.versions:
            return False
        latest = status.versions[-1]
        return latest.state.state == AVAILABLE and latest.modelDefn.modelSpec.uri == wanted.uri


# --------------------------------------------------------------------------------------------- non-readers


@dataclass
class NonReaders:
    """Streams that never read, opened in waves; read to their end only when the run is over."""

    listen: str
    stalled: list[StalledCall] = field(default_factory=list)
    grpc_calls: list[Any] = field(default_factory=list)
    channels: list[aio.Channel] = field(default_factory=list)
    opened_at: list[float] = field(default_factory=list)

    async def wave(self, number: int, stalled: int, grpc_calls: int) -> None:
        paths = list(STALLED_RPCS)
        for index in range(stalled):
            path = paths[index % len(paths)]
            call = StalledCall(self.listen, path, STALLED_RPCS[path](f"stalled-{number}-{index}"))
            await call.open()
            self.stalled.append(call)
        channel = aio.insecure_channel(self.listen)  # each wave's grpc non-readers share a connection
        self.channels.append(channel)
        stub = pb_grpc.SchedulerStub(channel)
        for index in range(grpc_calls):
            request = pb.ModelSubscriptionRequest(subscriberName=f"never-reads-{number}-{index}")
            self.grpc_calls.append(stub.SubscribeModelStatus(request))
        self.opened_at.append(time.monotonic())

    @property
    def count(self) -> int:
        return len(self.stalled) + len(self.grpc_calls)

    async def read_all(self, timeout: float) -> dict[str, int]:
        """Read every one to its end, all at once (giving up on each after ``timeout``): how each ended.

        One that the scheduler has not dropped yet (its lag had not run out) starts reading here and so is
        not behind any more: it stays open. A grpc one has up to a few MiB of statuses in its transport to read
        first, so one still reading when ``timeout`` runs out is counted as "not read to the end" (the
        scheduler's log tells whether it was dropped)."""

        async def raw(call: StalledCall) -> str:
            try:
                end = await call.read_to_end(timeout)
            except TimeoutError:
                return "raw HTTP/2: not ended (not dropped, reads now)"
            names = {code.value[0]: code.name for code in grpc.StatusCode}
            return f"raw HTTP/2: {names.get(end.status or 0, end.status)}"

        async def grpc_client(call: Any) -> str:
            async def drain() -> str:
                try:
                    async for _ in call:
                        pass
                except aio.AioRpcError as error:
                    return f"grpc: {error.code().name}"
                return "grpc: OK"

            try:
                return await asyncio.wait_for(drain(), timeout)
            except TimeoutError:
                return f"grpc: not read to the end in {timeout:g} s"

        ends = await asyncio.gather(*map(raw, self.stalled), *map(grpc_client, self.grpc_calls))
        return dict(Counter(ends))

    async def close(self) -> None:
        for call in self.stalled:
            await call.close()
        for grpc_call in self.grpc_calls:
            grpc_call.cancel()
        for channel in self.channels:
            await channel.close()


# --------------------------------------------------------------------------------------------- sampling


def sample_once(run: Observed, started: float) -> dict[str, Any]:
    return {
        "t": round(time.monotonic() - started, 1),
        "rss_mib": round(rss_bytes(run.scheduler_pid) / MiB, 1),
        "cpu_s": round(cpu_seconds(run.scheduler_pid), 1),
        "non_readers_opened": run.non_readers.count,
        "streams_dropped": len(run.dropped()),
    }


async def sample(run: Observed) -> None:
    started = time.monotonic()
    while True:
        run.samples.append(sample_once(run, started))
        await asyncio.sleep(run.config.sample_every)


async def probe(stub: pb_grpc.SchedulerAsyncStub, names: Sequence[str], out: list[tuple[float, float]]) -> None:
    """ModelStatus of one model every half second (a model of the first half: some are loaded, some not)."""
    rng = random.Random(1)  # noqa: S311 - a reproducible workload
    while True:
        request = pb.ModelStatusRequest(subscriberName="probe", model=pb.ModelReference(name=rng.choice(names)))
        started = time.perf_counter()
        with contextlib.suppress(aio.AioRpcError):  # FAILED_PRECONDITION for a model that is gone
            [_ async for _ in stub.ModelStatus(request, timeout=60)]
        out.append((time.monotonic(), time.perf_counter() - started))
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------------------------------- the run


def start_scheduler(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    ready = work / "ready.json"
    command = [sys.executable, "-m", "modelplane.cli", "scheduler", "--listen=127.0.0.1:0"]
    command += ["--agent-listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0"]
    command += [f"--state-dir={work / 'state'}", f"--ready-file={ready}"]
    command += ["--sync-grace=0.1", "--shutdown-grace=2", "--log-level=warning"]
    scheduler = spawn(command, work / "scheduler.log")
    try:
        return scheduler, wait_for_file(ready, scheduler, 30, "the scheduler")
    except BaseException:
        stop_process(scheduler)
        raise


def start_agents(config: Config, agent_listen: str) -> subprocess.Popen[bytes]:
    ready = config.workdir / "agents-ready.json"
    command = [sys.executable, str(THIS_DIR / "load_model_rate.py"), "--role", "agents", "--target", agent_listen]
    command += ["--replicas", str(config.replicas), "--ready-file", str(ready)]
    command += ["--stats-file", str(config.workdir / "agents-stats.json")]
    agents = spawn(command, config.workdir / "agents.log")
    try:
        wait_for_file(ready, agents, 60, "the fake agents")
    except BaseException:
        stop_process(agents)
        raise
    return agents


async def settle(churn: Churn, stub: pb_grpc.SchedulerAsyncStub, timeout: float) -> tuple[float, list[str]]:
    """Wait until every model reports what the driver made of it: (seconds it took, names still stuck)."""
    started = time.monotonic()
    while True:
        final = {s.modelName: s async for s in stub.ModelStatus(pb.ModelStatusRequest(subscriberName="x"), timeout=120)}
        stuck = [name for name in churn.desired if not churn.matches(name, final.get(name))]
        if not stuck or time.monotonic() - started > timeout:
            return round(time.monotonic() - started, 2), stuck
        await asyncio.sleep(1)


async def lost_events(readers: list[ModelReader], stub: pb_grpc.SchedulerAsyncStub, timeout: float) -> dict[str, Any]:
    """Per reader, the models whose last status differs from the scheduler's final one (after up to ``timeout``
    for the readers to catch up)."""
    started = time.monotonic()
    while True:
        final = {s.modelName: s async for s in stub.ModelStatus(pb.ModelStatusRequest(subscriberName="x"), timeout=120)}
        lost: dict[str, list[str]] = {}
        for index, reader in enumerate(readers):
            seen = reader.last
            wrong = [n for n, s in final.items() if n not in seen or normalized(seen[n]) != normalized(s)]
            wrong += [n for n, s in seen.items() if n not in final and not says_gone(s)]
            if wrong:
                lost[f"reader-{index}"] = sorted(wrong)
        if not lost or time.monotonic() - started > timeout:
            return {
                "models_compared": len(final),
                "lost": sum(len(v) for v in lost.values()),
                "examples": {reader: names[:20] for reader, names in lost.items()},
                "seconds_to_agree": round(time.monotonic() - started, 2),
            }
        await asyncio.sleep(1)


@dataclass
class Observed:
    """Everything one run watches, from the first load to the checks at the end."""

    config: Config
    scheduler_pid: int
    log_path: Path
    stub: pb_grpc.SchedulerAsyncStub
    churn: Churn
    non_readers: NonReaders
    readers: list[ModelReader] = field(default_factory=list)
    others: dict[str, CountingReader] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    probes: list[tuple[float, float]] = field(default_factory=list)

    def dropped(self) -> list[str]:
        return DROPPED_LINE.findall(self.log_path.read_text(errors="replace"))


async def load_first(run: Observed, names: Sequence[str]) -> dict[str, Any]:
    loading = time.monotonic()
    await run.churn.load_all(names)
    loaded = time.monotonic() - loading
    _, stuck = await settle(run.churn, run.stub, run.config.settle_timeout)
    if stuck:
        raise RuntimeError(f"{len(stuck)} models never became Available after the first load")
    return {
        "initial_load_seconds": round(loaded, 1),
        "initial_all_available_seconds": round(time.monotonic() - loading, 1),
        "scheduler_rss_mib_after_initial_load": round(rss_bytes(run.scheduler_pid) / MiB, 1),
    }


async def churn_phase(run: Observed, names: Sequence[str]) -> dict[str, Any]:
    """Churn for the configured duration with readers, waves of non-readers, the probe and the sampler."""
    config = run.config
    started = time.monotonic()
    until = started + config.duration
    cpu_at_start = cpu_seconds(run.scheduler_pid)

    async def waves() -> None:
        await asyncio.sleep(config.first_wave_after)
        number = 0
        while time.monotonic() < until - config.wave_every / 2:
            await run.non_readers.wave(number, config.stalled_per_wave, config.grpc_non_readers_per_wave)
            number += 1
            await asyncio.sleep(config.wave_every)

    tasks = [
        asyncio.create_task(sample(run)),
        asyncio.create_task(probe(run.stub, names, run.probes)),
        asyncio.create_task(waves()),
    ]
    try:
        await run.churn.run(until, config.ops_per_second, config.workers)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    seconds = time.monotonic() - started
    return {
        "churn_seconds": round(seconds, 1),
        "calls": dict(run.churn.calls),
        "calls_per_second": round(sum(run.churn.calls.values()) / seconds, 1),
        "refused_or_skipped": dict(run.churn.refused),
        "scheduler_cpu_seconds_during_churn": round(cpu_seconds(run.scheduler_pid) - cpu_at_start, 1),
    }


async def checks(run: Observed) -> dict[str, Any]:
    """Stuck models, lost events, what the non-readers got, and memory once they are gone."""
    settled, stuck = await settle(run.churn, run.stub, run.config.settle_timeout)
    lost = await lost_events(run.readers, run.stub, 60)
    rss_with_non_readers = rss_bytes(run.scheduler_pid)
    ends = await run.non_readers.read_all(timeout=180)
    await run.non_readers.close()
    await asyncio.sleep(5)
    rss_after = rss_bytes(run.scheduler_pid)
    first_wave = run.non_readers.opened_at[0] if run.non_readers.opened_at else float("inf")

    def split(values: Sequence[tuple[float, float]]) -> dict[str, Any]:
        return {
            "before_first_non_reader": percentiles([d for t, d in values if t < first_wave]),
            "with_non_readers": percentiles([d for t, d in values if t >= first_wave]),
        }

    samples = run.samples or [{"rss_mib": 0.0}]
    return {
        "stuck_models": len(stuck),
        "stuck_examples": stuck[:20],
        "settle_seconds_after_churn": settled,
        "lost_events": lost,
        "readers": {
            "model_readers_messages": [r.messages for r in run.readers],
            "model_readers_ended": [r.ended for r in run.readers],
            **{f"{name}_messages": reader.messages for name, reader in run.others.items()},
            **{f"{name}_ended": reader.ended for name, reader in run.others.items()},
        },
        "non_readers": {
            "opened": run.non_readers.count,
            "waves": len(run.non_readers.opened_at),
            "dropped_by_rpc": dict(Counter(run.dropped())),
            "how_they_ended_when_read": ends,
        },
        "probe_model_status": split(run.probes),
        "churn_call_latency": {kind: split(values) for kind, values in run.churn.latencies.items()},
        "scheduler_rss_mib": {
            "min_during_churn": min(s["rss_mib"] for s in samples),
            "max_during_churn": max(s["rss_mib"] for s in samples),
            "last_during_churn": samples[-1]["rss_mib"],
            "with_non_readers_open_at_end": round(rss_with_non_readers / MiB, 1),
            "after_non_readers_closed": round(rss_after / MiB, 1),
            "peak_hwm": round(hwm_bytes(run.scheduler_pid) / MiB, 1),
        },
        "samples": run.samples,
    }


async def soak(config: Config) -> dict[str, Any]:
    result: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}}
    result["environment"] = _environment()
    scheduler, info = start_scheduler(config.workdir)
    agents: subprocess.Popen[bytes] | None = None
    log_path = config.workdir / "scheduler.log"
    non_readers = NonReaders(info["listen"])
    try:
        agents = start_agents(config, info["agent_listen"])
        await wait_replicas(info["listen"], config.replicas, 60)
        async with aio.insecure_channel(info["listen"]) as channel:
            stub: pb_grpc.SchedulerAsyncStub = pb_grpc.SchedulerStub(channel)
            churn = Churn(stub, random.Random(config.seed))  # noqa: S311 - a reproducible workload
            run = Observed(config, scheduler.pid, log_path, stub, churn, non_readers)
            run.readers = [ModelReader(stub, f"reader-{i}") for i in range(config.model_readers)]
            watch = rpb.WatchRoutesRequest(gateway_name="soak")
            run.others["routes"] = CountingReader(rpb_grpc.RoutingServiceStub(channel).WatchRoutes(watch))
            servers = pb.ServerSubscriptionRequest(subscriberName="soak")
            run.others["servers"] = CountingReader(stub.SubscribeServerStatus(servers))
            names = [f"m-{index:05d}" for index in range(config.models)]
            result |= await load_first(run, names)
            result |= await churn_phase(run, names)
            result |= await checks(run)
            result["scheduler_rss_mib"]["after_initial_load"] = result["scheduler_rss_mib_after_initial_load"]
            for reader in run.readers:
                await reader.close()
            for other in run.others.values():
                await other.close()
    finally:
        await non_readers.close()
        result["scheduler_exit_status"], _ = stop_process(scheduler)  # first: agents leaving would move models
        if agents is not None:
            stop_process(agents)
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        result["scheduler_log_lines_other_than_drops"] = [line for line in lines if not DROPPED_LINE.search(line)][:20]
        stats = config.workdir / "agents-stats.json"
        result["agents"] = json.loads(stats.read_text()) if stats.exists() else None
    return result


def _environment() -> dict[str, Any]:
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
        "memory_total_mib": _memory_total_mib(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
        "commit": _commit(),
    }


def _memory_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def _commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(  # noqa: S603 - fixed argv
            ["git", "-C", str(THIS_DIR), "rev-parse", "HEAD"],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603 - fixed argv
            ["git", "-C", str(THIS_DIR), "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    return "unknown"


def render(result: dict[str, Any]) -> str:
    rss = result.get("scheduler_rss_mib", {})
    probe_figures = result.get("probe_model_status", {})
    non = result.get("non_readers", {})
    rows = [
        ("machine", f"nproc {result['environment']['nproc']}, {result['environment']['memory_total_mib']} MiB, "
                    f"Python {result['environment']['python']}, commit {result['environment']['commit'][:12]}"),
        ("workload", f"{result['config']['models']} models, {result['config']['replicas']} replicas, "
                     f"{result.get('churn_seconds')} s of churn, {result.get('calls_per_second')} calls/s: "
                     f"{result.get('calls')}"),
        ("refused or skipped", f"{result.get('refused_or_skipped')}"),
        ("stuck models", f"{result.get('stuck_models')} (settled {result.get('settle_seconds_after_churn')} s "
                         "after the churn stopped)"),
        ("lost events", f"{result.get('lost_events', {}).get('lost')} of "
                        f"{result.get('lost_events', {}).get('models_compared')} models x readers"),
        ("non-readers", f"{non.get('opened')} opened in {non.get('waves')} waves; dropped {non.get('dropped_by_rpc')}; "
                        f"when read: {non.get('how_they_ended_when_read')}"),
        ("scheduler RSS MiB", f"{rss.get('after_initial_load')} after loading, {rss.get('min_during_churn')}-"
                              f"{rss.get('max_during_churn')} during churn, {rss.get('after_non_readers_closed')} "
                              f"after the non-readers closed, peak {rss.get('peak_hwm')}"),
        ("ModelStatus probe", f"before non-readers {probe_figures.get('before_first_non_reader')}, "
                              f"with them {probe_figures.get('with_non_readers')}"),
        ("scheduler CPU", f"{result.get('scheduler_cpu_seconds_during_churn')} s during the churn; "
                          f"exit status {result.get('scheduler_exit_status')}"),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Soak a real scheduler: churn, readers and never-readers.")
    parser.add_argument("--duration", type=float, default=600, help="seconds of churn (default 600)")
    parser.add_argument("--models", type=int, default=2000, help="models loaded before the churn (default 2000)")
    parser.add_argument("--replicas", type=int, default=10, help="fake agent sessions (default 10)")
    parser.add_argument("--ops-per-second", type=float, default=40, help="churn calls per second (default 40)")
    parser.add_argument("--workers", type=int, default=16, help="churn calls in flight at most (default 16)")
    parser.add_argument("--model-readers", type=int, default=3, help="SubscribeModelStatus readers (default 3)")
    parser.add_argument("--wave-every", type=float, default=60, help="seconds between waves of non-readers")
    parser.add_argument("--first-wave-after", type=float, help="seconds before the first wave (default: a tenth)")
    parser.add_argument("--stalled-per-wave", type=int, default=12, help="raw HTTP/2 non-readers per wave")
    parser.add_argument("--grpc-non-readers-per-wave", type=int, default=8, help="grpc non-readers per wave")
    parser.add_argument("--settle-timeout", type=float, default=120, help="seconds for models to settle at the end")
    parser.add_argument("--sample-every", type=float, default=2, help="seconds between RSS samples")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep logs and state in a new folder in DIR")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    with working_directory(options.workdir, "soak") as work:
        config = Config(
            duration=options.duration,
            models=options.models,
            replicas=options.replicas,
            ops_per_second=options.ops_per_second,
            workers=options.workers,
            model_readers=options.model_readers,
            wave_every=options.wave_every,
            first_wave_after=options.first_wave_after
            if options.first_wave_after is not None
            else options.duration / 10,
            stalled_per_wave=options.stalled_per_wave,
            grpc_non_readers_per_wave=options.grpc_non_readers_per_wave,
            settle_timeout=options.settle_timeout,
            sample_every=options.sample_every,
            seed=options.seed,
            workdir=work,
        )
        result = asyncio.run(soak(config))
    if options.json is not None:
        write_json(options.json, result)
    print(render(result))
    failed = result.get("stuck_models") != 0 or result.get("lost_events", {}).get("lost") != 0
    return 1 if failed or result.get("scheduler_exit_status") != 0 else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
