"""LoadModel rate: modelplane's scheduler side by side with an empty grpc.aio handler, in one run.

What it measures (see bench/README.md for why and for recorded results):

1. Baseline: a grpc.aio server in its own process whose ``Scheduler.LoadModel`` returns
   ``LoadModelResponse()`` at once. The client below sends it N LoadModel calls, C in flight: the
   ceiling that Python gRPC on this machine puts on any Python LoadModel handler. Run before and after
   the modelplane run, so drift of a noisy machine shows.
2. modelplane: a real ``modelplane scheduler`` process with R replicas registered by R agent sessions
   (one process of fake agents that answer every LOAD with LOADED at once and send heartbeats). The
   same client sends N LoadModel calls for N distinct models; then a SubscribeModelStatus stream counts
   models until every one is ModelAvailable.

Reported: calls/s of both and their ratio, LoadModel latency percentiles, time until all N models are
Available, the scheduler's RSS before loading and after all are Available (bytes per tracked model),
CPU seconds used by each process, and the fsync latency of the disk the state store is on (every
acknowledged LoadModel waits for a SQLite group commit, one fsync per group).

    .venv/bin/python bench/load_model_rate.py [--models 10000] [--replicas 100] [--concurrency 64]
                                              [--quick] [--json PATH] [--workdir DIR]
                                              [--py-spy BIN [--profile-out PATH]]

``--py-spy`` samples the scheduler from the first LoadModel until all models are Available and prints
its top functions; sampling slows the scheduler, so take figures from runs without it.

Everything listens on 127.0.0.1 ports picked by the kernel. Child processes are stopped by PID
(SIGTERM, then SIGKILL). The same file is also the entry point of the child processes (``--role``).

Over 400 lines on purpose: one benchmark is one script read top to bottom, and it is also the entry point of
its own child processes (the baseline server and the fake agents, which soak.py reuses), so that one file is the whole
benchmark; what the benchmarks share is in bench_processes.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from bench_processes import cpu_seconds, stop_process
from grpc import aio

from generated.mlops.agent.v1 import agent_pb2, agent_pb2_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.backoff import Backoff
from modelplane.transport import TransportSecurity, bind, new_server

MiB = 1 << 20
GiB = 1 << 30
SERVER_NAME = "mlserver"
PROTOCOL_VERSION = 1
MODEL_MEMORY = 1 * MiB
# The real agent's reconnect backoff (agent/scheduler_session.py's defaults): 0.2 s doubling to 10 s, jittered to
# 50-100 %. ``--backoff-max`` (scheduler_restart.py's ``--agent-backoff-max``) tries another cap: a question of the
# real agent's, asked of the simulated ones.
AGENT_BACKOFF_INITIAL = 0.2
AGENT_BACKOFF_MAX = 10.0
REPLICA_MEMORY = 64 * GiB
AVAILABLE = pb.ModelStatus.ModelAvailable
THIS_FILE = Path(__file__).resolve()
Operation = agent_pb2.ModelOperation
Event = agent_pb2.ModelEvent


# --------------------------------------------------------------------------------------------- helpers


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write then rename, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)


def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes, from /proc/PID/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024  # reported in kB
    return values["VmRSS"], values["VmHWM"]


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (longest matching mount point in /proc/mounts)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        mount = parts[1]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def fsync_latency_ms(directory: Path, rounds: int = 40) -> float:
    """Median time of write(4 KiB) + fsync on ``directory``'s disk: what one group commit at least costs."""
    path = directory / "fsync-probe"
    samples: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples)


def wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:g}s")
        time.sleep(0.02)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def spawn(args: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 - our own commands


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


# --------------------------------------------------------------------------------------------- client


def load_requests(count: int) -> list[pb.LoadModelRequest]:
    """The N LoadModel requests both sides get: distinct names, 1 MiB sklearn models, one replica each."""
    width = max(5, len(str(count - 1)))
    return [
        pb.LoadModelRequest(
            model=pb.Model(
                meta=pb.MetaData(name=f"m-{index:0{width}d}"),
                modelSpec=pb.ModelSpec(uri="file:///models/x", requirements=["sklearn"], memoryBytes=MODEL_MEMORY),
                deploymentSpec=pb.DeploymentSpec(replicas=1),
            )
        )
        for index in range(count)
    ]


@dataclass
class DriveResult:
    calls: int
    concurrency: int
    seconds: float
    calls_per_second: float
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_max: float
    errors: dict[str, int]
    client_cpu_seconds: float
    server_cpu_seconds: float
    started_monotonic: float  # CLOCK_MONOTONIC is system-wide, so other processes' timestamps compare
    finished_monotonic: float
    # Each tenth of the calls: [calls answered so far, seconds since the first call, server CPU seconds since
    # the first call], so the cost of a call can be compared as the models accumulate.
    segments: list[list[float]] = field(default_factory=list)


async def drive_load_model(
    target: str, requests: Sequence[pb.LoadModelRequest], concurrency: int, server_pid: int
) -> DriveResult:
    """Send every request as a LoadModel call, ``concurrency`` in flight, over one channel."""
    async with aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
        stub = pb_grpc.SchedulerStub(channel)
        indexes = iter(range(len(requests)))  # shared by the workers: next() never awaits, so no races
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        segments: list[list[float]] = []
        tenth = max(1, len(requests) // 10)

        async def worker() -> None:
            for index in indexes:
                sent = time.perf_counter()
                try:
                    await stub.LoadModel(requests[index], timeout=120)
                except aio.AioRpcError as error:
                    errors[f"{error.code().name}: {error.details()}"[:200]] += 1
                now = time.perf_counter()
                latencies.append(now - sent)
                if len(latencies) % tenth == 0 or len(latencies) == len(requests):
                    used = cpu_seconds(server_pid) - server_cpu
                    segments.append([len(latencies), round(now - started, 3), round(used, 2)])

        client_cpu = time.process_time()
        server_cpu = cpu_seconds(server_pid)
        started_monotonic = time.monotonic()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        finished_monotonic = time.monotonic()
        server_cpu = cpu_seconds(server_pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
    latencies.sort()
    return DriveResult(
        calls=len(requests),
        concurrency=concurrency,
        seconds=round(seconds, 3),
        calls_per_second=round(len(requests) / seconds, 1),
        latency_ms_p50=round(percentile(latencies, 0.50) * 1000, 2),
        latency_ms_p90=round(percentile(latencies, 0.90) * 1000, 2),
        latency_ms_p99=round(percentile(latencies, 0.99) * 1000, 2),
        latency_ms_max=round(latencies[-1] * 1000, 2) if latencies else float("nan"),
        errors=dict(errors),
        client_cpu_seconds=round(client_cpu, 2),
        server_cpu_seconds=round(server_cpu, 2),
        started_monotonic=started_monotonic,
        finished_monotonic=finished_monotonic,
        segments=segments,
    )


async def wait_all_available(
    target: str,
    names: set[str],
    timeout: float,
    dropped: list[str] | None = None,
    received: Counter[str] | None = None,
) -> tuple[float | None, dict[str, int]]:
    """Subscribe to model status (snapshot first, then changes) until every model in ``names`` is Available.

    A stream the scheduler drops for lagging (RESOURCE_EXHAUSTED, "subscribe again") is subscribed again, as the
    scheduler asks and as a real client would; each drop's message is appended to ``dropped`` when given. The
    statuses read are counted in ``received`` when given (``statuses``, and ``not_available`` of them).
    Returns (monotonic time when the last one was seen Available, or None on timeout or when the stream ended;
    the latest state of every model by state name, for the report).
    """
    latest: dict[str, int] = {}
    available: set[str] = set()
    done_at: float | None = None
    counts: Counter[str] = Counter() if received is None else received
    request = pb.ModelSubscriptionRequest(subscriberName="bench-load-model-rate")
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        try:
            async with asyncio.timeout(timeout):
                while done_at is None:
                    call = stub.SubscribeModelStatus(request)
                    try:
                        async for status in call:
                            if status.modelName not in names:
                                continue
                            state = (
                                status.versions[-1].state.state if status.versions else pb.ModelStatus.ModelStateUnknown
                            )
                            counts["statuses"] += 1
                            counts["not_available"] += state != AVAILABLE
                            latest[status.modelName] = state
                            if state == AVAILABLE:
                                available.add(status.modelName)
                            else:
                                available.discard(status.modelName)
                            if len(available) == len(names):
                                done_at = time.monotonic()
                                break
                        else:
                            break  # the scheduler ended the stream (it is stopping)
                    except aio.AioRpcError as error:
                        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        if dropped is not None:
                            dropped.append(f"{error.details()}"[:300])
                    finally:
                        call.cancel()
        except TimeoutError:
            pass
    states = Counter(pb.ModelStatus.ModelState.Name(s) for s in latest.values())  # type: ignore[arg-type]
    states["(never reported)"] = len(names) - len(latest)
    return done_at, {k: v for k, v in states.items() if v}


async def wait_replicas(target: str, replicas: int, timeout: float) -> None:
    """Wait until the scheduler's server status shows ``replicas`` connected replicas (SubscribeServerStatus)."""
    seen = 0
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        call = stub.SubscribeServerStatus(pb.ServerSubscriptionRequest(subscriberName="bench-load-model-rate"))
        try:
            async with asyncio.timeout(timeout):
                async for status in call:
                    if status.serverName == SERVER_NAME and status.type == pb.ServerStatusResponse.StatusUpdate:
                        seen = status.availableReplicas
                        if seen >= replicas:
                            return
        except TimeoutError:
            pass
        finally:
            call.cancel()
    raise TimeoutError(f"the scheduler lists {seen} of {replicas} replicas after {timeout:g}s")


# --------------------------------------------------------------------------------------------- baseline server


class EmptyScheduler(pb_grpc.SchedulerServicer):
    """LoadModel answers at once; nothing else is served."""

    async def LoadModel(  # noqa: N802 - named by the .proto
        self, request: pb.LoadModelRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.LoadModelResponse:
        return pb.LoadModelResponse()


async def serve_baseline(ready_file: Path) -> None:
    server = new_server()  # the project's server factory, with the scheduler's own server options
    # Abstract for mypy only: the other RPCs keep the generated base's UNIMPLEMENTED answer, as wanted here.
    pb_grpc.add_SchedulerServicer_to_server(EmptyScheduler(), server)  # type: ignore[abstract]
    port = bind(server, Address("127.0.0.1", 0), TransportSecurity(insecure=True))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    write_json(ready_file, {"pid": os.getpid(), "listen": f"127.0.0.1:{port}"})
    await stop.wait()
    await server.stop(None)


# --------------------------------------------------------------------------------------------- fake agents


@dataclass
class AgentStats:
    registered: int = 0  # accepted registrations, reconnections included
    loads: int = 0
    unloads: int = 0
    other_operations: int = 0
    rejected: int = 0
    heartbeats_received: int = 0
    heartbeats_sent: int = 0
    drain_completes: int = 0
    session_endings: int = 0  # SessionEnding messages: the scheduler ended the session (it is stopping, say)
    # Accepted sessions that ended before the agents were told to stop, with when (monotonic) and how.
    session_ends: list[float] = field(default_factory=list)
    end_reasons: dict[str, int] = field(default_factory=dict)
    # Every accepted session: [agent index, registered at, ended at (0: open until the agents stopped),
    # LOADs answered on it, models it reported held when it registered, how it ended].
    sessions: list[list[Any]] = field(default_factory=list)
    failed_attempts: int = 0  # with --reconnect: sessions that ended before the scheduler accepted them
    failed_reasons: dict[str, int] = field(default_factory=dict)
    heartbeat_interval_ms: int = 0
    first_load_monotonic: float = 0.0
    last_loaded_monotonic: float = 0.0


@dataclass
class AgentSession:
    """One session of a simulated agent: the queue its requests are sent from and, once the scheduler accepted
    it, its record in AgentStats.sessions, its heartbeat task and how long a silence of the scheduler it bears."""

    outbox: asyncio.Queue[agent_pb2.SessionRequest | None]
    record: list[Any] | None = None
    heartbeats: asyncio.Task[None] | None = None
    silence: float | None = None  # with reconnect: three heartbeat intervals, as the real agent


class FakeAgent:
    """One replica's agent: registers, answers LOAD with LOADED and UNLOAD with UNLOADED at once, heartbeats.

    With ``reconnect`` it behaves as the real agent does when its session ends (agent/scheduler_session.py):
    it ends a session on which the scheduler has said nothing for three heartbeat intervals, reconnects with
    the same jittered exponential backoff (0.2 s doubling to 10 s) and registers again reporting every model
    it holds. Without it, a session that ends stays ended (what load_model_rate and soak measure)."""

    def __init__(
        self,
        target: str,
        index: int,
        memory: int,
        stats: AgentStats,
        *,
        reconnect: bool = False,
        backoff_max: float = AGENT_BACKOFF_MAX,
    ) -> None:
        self.target = target
        self.backoff_max = backoff_max
        self.index = index
        self.memory = memory
        self.held: dict[str, tuple[int, int]] = {}  # model name -> (version, memory bytes)
        self.stats = stats
        self.reconnect = reconnect
        self.outbox: asyncio.Queue[agent_pb2.SessionRequest | None] = asyncio.Queue()
        self.stopping = False

    @property
    def used(self) -> int:
        return sum(memory for _version, memory in self.held.values())

    async def _requests(self, outbox: asyncio.Queue[agent_pb2.SessionRequest | None]) -> AsyncIterator[Any]:
        while (message := await outbox.get()) is not None:
            yield message

    async def _heartbeats(self, outbox: asyncio.Queue[agent_pb2.SessionRequest | None], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            outbox.put_nowait(
                agent_pb2.SessionRequest(heartbeat=agent_pb2.Heartbeat(available_memory_bytes=self.memory - self.used))
            )
            self.stats.heartbeats_sent += 1

    def _answer(self, operation: agent_pb2.ModelOperation, session: list[Any]) -> None:
        name, size = operation.model.meta.name, operation.model.modelSpec.memoryBytes
        if operation.kind == Operation.KIND_LOAD:
            self.stats.loads += 1
            session[3] += 1
            if not self.stats.first_load_monotonic:
                self.stats.first_load_monotonic = time.monotonic()
            self.held[name] = (operation.version, size)
            kind = Event.KIND_LOADED
        elif operation.kind == Operation.KIND_UNLOAD:
            self.stats.unloads += 1
            self.held.pop(name, None)
            kind = Event.KIND_UNLOADED
        else:
            self.stats.other_operations += 1
            return
        event = Event(
            operation_id=operation.operation_id,
            kind=kind,
            model_name=name,
            model_version=operation.version,
            available_memory_bytes=self.memory - self.used,
        )
        self.outbox.put_nowait(agent_pb2.SessionRequest(event=event))
        if kind == Event.KIND_LOADED:
            self.stats.last_loaded_monotonic = time.monotonic()

    def _register(self) -> agent_pb2.Register:
        return agent_pb2.Register(
            protocol_version=PROTOCOL_VERSION,
            agent_id=f"bench-agent-{self.index}",
            replica=agent_pb2.ReplicaConfig(
                server_name=SERVER_NAME,
                replica_idx=self.index,
                shared=True,
                server_kind=agent_pb2.SERVER_KIND_MLSERVER,
                capabilities=["sklearn"],
                total_memory_bytes=self.memory,
                endpoints=agent_pb2.InferenceEndpoints(
                    http_url=f"http://127.0.0.1:1/{self.index}", grpc_target="127.0.0.1:1"
                ),
            ),
            loaded_models=[
                agent_pb2.LoadedModel(name=name, version=version, memory_bytes=memory)
                for name, (version, memory) in self.held.items()
            ],
            available_memory_bytes=self.memory - self.used,
        )

    async def run(self, registered: Callable[[int], None]) -> None:
        backoff = Backoff(AGENT_BACKOFF_INITIAL, self.backoff_max)
        while not self.stopping:
            accepted = await self._session(registered)
            if not self.reconnect or self.stopping:
                return
            if accepted:
                backoff.reset()
            else:
                self.stats.failed_attempts += 1  # its reason is in failed_reasons
            await asyncio.sleep(backoff.next_jittered())

    async def _session(self, registered: Callable[[int], None]) -> bool:
        """One session, until it ends; True if the scheduler accepted the registration."""
        session = AgentSession(asyncio.Queue())
        self.outbox = session.outbox
        session.outbox.put_nowait(agent_pb2.SessionRequest(register=self._register()))
        # Its own connection, as separate agent processes would have (no shared subchannel).
        async with aio.insecure_channel(self.target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            call = agent_pb2_grpc.AgentServiceStub(channel).Session(self._requests(session.outbox))
            try:
                while True:
                    async with asyncio.timeout(session.silence):
                        response = await call.read()
                    if not isinstance(response, agent_pb2.SessionResponse):  # aio.EOF: the stream ended
                        break
                    self._receive(response, session, registered)
                reason = f"OK: {await call.code()}"
            except aio.AioRpcError as error:
                reason = f"{error.code().name}: {error.details()}"
            except TimeoutError:
                reason = f"no message from the scheduler for {session.silence:g}s"
            finally:
                if session.heartbeats is not None:
                    session.heartbeats.cancel()
                session.outbox.put_nowait(None)  # ends the request iterator gRPC is still reading from
                call.cancel()
        if session.record is None and not self.stopping:
            self.stats.failed_reasons[reason[:120]] = self.stats.failed_reasons.get(reason[:120], 0) + 1
        if session.record is not None and not self.stopping:
            session.record[2], session.record[5] = time.monotonic(), reason
            self.stats.session_ends.append(session.record[2])
            self.stats.end_reasons[reason] = self.stats.end_reasons.get(reason, 0) + 1
        return session.record is not None

    def _receive(
        self, response: agent_pb2.SessionResponse, session: AgentSession, registered: Callable[[int], None]
    ) -> None:
        kind = response.WhichOneof("message")
        if kind == "operation" and session.record is not None:
            self._answer(response.operation, session.record)
        elif kind == "register_accepted":
            interval = max(response.register_accepted.heartbeat_interval_ms, 100) / 1000
            self.stats.heartbeat_interval_ms = response.register_accepted.heartbeat_interval_ms
            session.heartbeats = asyncio.create_task(self._heartbeats(session.outbox, interval))
            session.record = [self.index, time.monotonic(), 0.0, 0, len(self.held), ""]
            self.stats.sessions.append(session.record)
            self.stats.registered += 1
            session.silence = 3 * interval if self.reconnect else None
            registered(self.index)
        elif kind == "heartbeat":
            self.stats.heartbeats_received += 1
        elif kind == "event_rejected":
            self.stats.rejected += 1
        elif kind == "drain_complete":
            self.stats.drain_completes += 1
        elif kind == "session_ending":  # agent.proto: stop writing, half-close, then read the status
            self.stats.session_endings += 1
            if session.heartbeats is not None:
                session.heartbeats.cancel()
            session.outbox.put_nowait(None)

    def stop(self) -> None:
        self.stopping = True
        self.outbox.put_nowait(None)  # half-close: the scheduler sees the agent leave


async def run_agents(
    target: str,
    replicas: int,
    memory: int,
    ready_file: Path,
    stats_file: Path,
    *,
    reconnect: bool = False,
    hold: int = 0,
    backoff_max: float = AGENT_BACKOFF_MAX,
) -> None:
    """R simulated agents; with ``hold``, each starts holding (and registers reporting) its share of the models
    ``load_requests(hold)`` names, model i on replica i mod R (a seeded state store's models: scheduler_restart.py)."""
    stats = AgentStats()
    agents = [
        FakeAgent(target, index, memory, stats, reconnect=reconnect, backoff_max=backoff_max)
        for index in range(replicas)
    ]
    for index, request in enumerate(load_requests(hold)):
        agents[index % replicas].held[request.model.meta.name] = (1, request.model.modelSpec.memoryBytes)
    ever_registered: set[int] = set()

    def registered(index: int) -> None:
        ever_registered.add(index)
        if len(ever_registered) == replicas and not ready_file.exists():
            write_json(ready_file, {"pid": os.getpid(), "registered": replicas})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(agent.run(registered)) for agent in agents]
    await stop.wait()
    for agent in agents:
        agent.stop()
    _done, pending = await asyncio.wait(tasks, timeout=5)
    for task in pending:
        task.cancel()
    write_json(stats_file, asdict(stats))


# --------------------------------------------------------------------------------------------- the benchmark


@dataclass
class Config:
    models: int
    replicas: int
    concurrency: int
    available_timeout: float
    workdir: Path
    py_spy: str | None = None  # a py-spy binary: profile the scheduler from the first LoadModel to all Available
    profile_out: Path | None = None


async def baseline_run(config: Config, requests: Sequence[pb.LoadModelRequest], label: str) -> DriveResult:
    ready = config.workdir / f"baseline-{label}.json"
    process = spawn(
        [sys.executable, str(THIS_FILE), "--role", "baseline-server", "--ready-file", str(ready)],
        config.workdir / f"baseline-{label}.log",
    )
    try:
        info = wait_for_file(ready, process, 20, "the baseline server")
        return await drive_load_model(info["listen"], requests, config.concurrency, process.pid)
    finally:
        stop_process(process)


def start_scheduler(config: Config) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """``modelplane scheduler`` on free loopback ports; returns once its ready file names it."""
    ready = config.workdir / "ready.json"
    command = [sys.executable, "-m", "modelplane.cli", "scheduler", "--listen", "127.0.0.1:0"]
    command += ["--agent-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
    command += ["--state-dir", str(config.workdir / "state")]
    command += ["--ready-file", str(ready), "--sync-grace", "0.1", "--shutdown-grace", "2", "--log-level", "warning"]
    scheduler = spawn(command, config.workdir / "scheduler.log")
    try:
        info = wait_for_file(ready, scheduler, 30, "the scheduler")
        if info.get("pid") != scheduler.pid:
            raise RuntimeError(f"ready file names pid {info.get('pid')}, not the scheduler's {scheduler.pid}")
    except BaseException:
        stop_process(scheduler)
        raise
    return scheduler, info


def start_agents(config: Config, agent_listen: str) -> subprocess.Popen[bytes]:
    """The fake agents' process; returns once every session has been accepted."""
    ready = config.workdir / "agents-ready.json"
    command = [sys.executable, str(THIS_FILE), "--role", "agents", "--target", agent_listen]
    command += ["--replicas", str(config.replicas), "--ready-file", str(ready)]
    command += ["--stats-file", str(config.workdir / "agents-stats.json")]
    agents = spawn(command, config.workdir / "agents.log")
    try:
        wait_for_file(ready, agents, 60, "the fake agents")
    except BaseException:
        stop_process(agents)
        raise
    return agents


async def measure_modelplane(
    config: Config,
    requests: Sequence[pb.LoadModelRequest],
    scheduler: subprocess.Popen[bytes],
    listen: str,
    agents_pid: int,
) -> dict[str, Any]:
    """LoadModel calls, then wait for all Available; CPU and RSS around it. Scheduler and agents are up."""
    await asyncio.sleep(0.5)  # let the scheduler settle after the registrations
    rss_before, _ = rss_bytes(scheduler.pid)
    agents_cpu = cpu_seconds(agents_pid)
    scheduler_cpu = cpu_seconds(scheduler.pid)
    profile_raw = config.workdir / "scheduler-profile.txt"
    profiler = start_profiler(config.py_spy, scheduler.pid, profile_raw) if config.py_spy else None
    try:
        drive = await drive_load_model(listen, requests, config.concurrency, scheduler.pid)
        names = {request.model.meta.name for request in requests}
        done_at, states = await wait_all_available(listen, names, config.available_timeout)
    finally:
        if profiler is not None:
            stop_profiler(profiler)
    scheduler_cpu = cpu_seconds(scheduler.pid) - scheduler_cpu
    agents_cpu = cpu_seconds(agents_pid) - agents_cpu
    rss_after, hwm_after = rss_bytes(scheduler.pid)
    await asyncio.sleep(2)
    rss_settled, _ = rss_bytes(scheduler.pid)
    result: dict[str, Any] = {
        "load_model": asdict(drive),
        "all_available": done_at is not None,
        "seconds_to_all_available": round(done_at - drive.started_monotonic, 3) if done_at else None,
        "seconds_after_last_ack_to_all_available": round(done_at - drive.finished_monotonic, 3) if done_at else None,
        "model_states_at_end": states,
        "scheduler_cpu_seconds_load_to_available": round(scheduler_cpu, 2),
        "agents_cpu_seconds_load_to_available": round(agents_cpu, 2),
        "scheduler_rss_bytes": {
            "agents_registered": rss_before,
            "all_available": rss_after,
            "all_available_plus_2s": rss_settled,
            "peak_hwm": hwm_after,
        },
        "bytes_per_model": round((rss_after - rss_before) / len(requests)),
    }
    if profiler is not None:
        result["profile"] = summarize_profile(profile_raw)
        if config.profile_out is not None and profile_raw.exists():
            shutil.copyfile(profile_raw, config.profile_out)
    return result


async def modelplane_run(config: Config, requests: Sequence[pb.LoadModelRequest]) -> dict[str, Any]:
    scheduler, info = start_scheduler(config)
    result: dict[str, Any] = {"scheduler_rss_bytes_at_start": rss_bytes(scheduler.pid)[0]}
    agents: subprocess.Popen[bytes] | None = None
    try:
        registering = time.monotonic()
        agents = start_agents(config, info["agent_listen"])
        await wait_replicas(info["listen"], config.replicas, 60)
        result["replicas_registered_seconds"] = round(time.monotonic() - registering, 3)
        result |= await measure_modelplane(config, requests, scheduler, info["listen"], agents.pid)
    finally:
        # The scheduler first: agents leaving first would make it reschedule every model they held.
        result["scheduler_stop_monotonic"] = time.monotonic()
        status, shutdown_seconds = stop_process(scheduler)
        result["scheduler_exit_status"] = status
        result["scheduler_shutdown_seconds"] = round(shutdown_seconds, 2)
        if agents is not None:
            stop_process(agents)
        result |= after_run(config, result)
    return result


def after_run(config: Config, result: dict[str, Any]) -> dict[str, Any]:
    """What the processes left behind: the agents' counts, the scheduler's log, the state file's size."""
    found: dict[str, Any] = {}
    stats_path = config.workdir / "agents-stats.json"
    agents = json.loads(stats_path.read_text()) if stats_path.exists() else None
    if agents and agents["last_loaded_monotonic"] and "load_model" in result:
        started = result["load_model"]["started_monotonic"]
        agents["last_loaded_after_start_seconds"] = round(agents["last_loaded_monotonic"] - started, 3)
    if agents:
        ends = agents.pop("session_ends")
        agents["sessions_ended_before_scheduler_stop"] = sum(1 for t in ends if t < result["scheduler_stop_monotonic"])
        agents.pop("sessions")  # one entry per session: what scheduler_restart.py reads, not needed here
    found["agents"] = agents
    log_path = config.workdir / "scheduler.log"
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    found["scheduler_log_lines"] = len(lines)
    found["scheduler_log_head"] = lines[:8]
    state_file = config.workdir / "state" / "state.sqlite3"
    found["state_file_bytes"] = state_file.stat().st_size if state_file.exists() else None
    return found


def start_profiler(py_spy: str, pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy record of ``pid`` (all its Python threads), raw collapsed stacks, until stop_profiler."""
    command = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--format", "raw"]
    return spawn([*command, "--output", str(out)], out.with_suffix(".log"))


def stop_profiler(profiler: subprocess.Popen[bytes]) -> None:
    """py-spy writes its output on SIGINT."""
    if profiler.poll() is None:
        os.kill(profiler.pid, signal.SIGINT)
        try:
            profiler.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(profiler.pid, signal.SIGKILL)
            profiler.wait()


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """The functions with the most samples on CPU, by self time and inclusive time, from py-spy's raw output."""
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return {"samples": 0}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # "function (path/to/file.py:123)": keep the function and the file's last two parts, drop the line.
        frames = []
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            path = where.rstrip(")").rpartition(":")[0]
            frames.append(f"{name} ({'/'.join(Path(path).parts[-2:])})")
        total += count
        self_samples[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / total, 1)) for frame, n in counter.most_common(top)]

    return {"samples": total, "self_percent": share(self_samples), "inclusive_percent": share(inclusive)}


def environment(workdir: Path) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "workdir_filesystem": filesystem_of(workdir),
        "fsync_ms_median": round(fsync_latency_ms(workdir), 3),
    }


async def benchmark(config: Config) -> dict[str, Any]:
    env = environment(config.workdir)
    requests = load_requests(config.models)
    before = await baseline_run(config, requests, "before")
    modelplane = await modelplane_run(config, requests)
    after = await baseline_run(config, requests, "after")
    baseline_rate = (before.calls_per_second + after.calls_per_second) / 2
    rate = modelplane.get("load_model", {}).get("calls_per_second")
    return {
        "config": {"models": config.models, "replicas": config.replicas, "concurrency": config.concurrency},
        "environment": env,
        "baseline": {"before": asdict(before), "after": asdict(after), "calls_per_second_mean": baseline_rate},
        "modelplane": modelplane,
        "ratio_modelplane_to_baseline": round(rate / baseline_rate, 3) if rate else None,
    }


def per_call_cpu_ms(load: dict[str, Any]) -> str:
    """Scheduler CPU ms per LoadModel in the second and in the last tenth of the calls (the first tenth includes
    the warm-up of the first calls in flight), "?" with fewer than three tenths."""
    segments = load.get("segments") or []
    if len(segments) < 3:
        return "?"

    def tenth(k: int) -> float:
        (calls_0, _, cpu_0), (calls_1, _, cpu_1) = segments[k - 1], segments[k]
        return float(1000 * (cpu_1 - cpu_0) / max(1, calls_1 - calls_0))

    return f"{tenth(1):.2f} / {tenth(len(segments) - 1):.2f}"


def render(result: dict[str, Any]) -> str:
    """A short human table of the result."""
    env, config, mp = result["environment"], result["config"], result["modelplane"]
    before, after = result["baseline"]["before"], result["baseline"]["after"]
    load = mp.get("load_model", {})
    rss = mp.get("scheduler_rss_bytes", {})
    agents = mp.get("agents") or {}

    def mib(key: str) -> str:
        return f"{rss.get(key, 0) / MiB:.1f} MiB"

    rows = [
        ("machine", f"nproc {env['nproc']}, Python {env['python']}, grpcio {env['grpcio']}"),
        ("state dir", f"{env['workdir_filesystem']}, write+fsync median {env['fsync_ms_median']} ms"),
        ("workload", f"{config['models']} LoadModel calls, {config['concurrency']} in flight"),
        ("baseline: empty handler", f"{before['calls_per_second']:.0f} calls/s before, "
                                    f"{after['calls_per_second']:.0f} after (p50 {before['latency_ms_p50']} ms)"),
        ("modelplane LoadModel", f"{load.get('calls_per_second')} calls/s, {config['replicas']} replicas registered"),
        ("  latency", f"p50 {load.get('latency_ms_p50')} ms, p99 {load.get('latency_ms_p99')} ms, "
                      f"max {load.get('latency_ms_max')} ms"),
        ("  errors", f"{load.get('errors')}"),
        ("ratio modelplane / baseline", f"{result['ratio_modelplane_to_baseline']}"),
        ("all Available after", f"{mp.get('seconds_to_all_available')} s from the first call, "
                                f"{mp.get('seconds_after_last_ack_to_all_available')} s after the last ack"),
        ("  final states", f"{mp.get('model_states_at_end')}"),
        ("  agents", f"{agents.get('loads')} loads, {agents.get('rejected')} rejected events, "
                     f"{agents.get('sessions_ended_before_scheduler_stop')} sessions lost before the end"),
        ("CPU seconds", f"scheduler {load.get('server_cpu_seconds')} during the calls, "
                        f"{mp.get('scheduler_cpu_seconds_load_to_available')} until all Available; "
                        f"client {load.get('client_cpu_seconds')}; "
                        f"agents {mp.get('agents_cpu_seconds_load_to_available')}"),
        ("  per call", f"{per_call_cpu_ms(load)} ms of scheduler CPU per LoadModel (second tenth / last "
                       "tenth of the calls)"),
        ("scheduler RSS", f"{mib('agents_registered')} before loading, {mib('all_available')} all Available, "
                          f"{mib('all_available_plus_2s')} 2 s later, peak {mib('peak_hwm')}"),
        ("  per tracked model", f"{mp.get('bytes_per_model')} bytes"),
        ("scheduler exit", f"status {mp.get('scheduler_exit_status')} after {mp.get('scheduler_shutdown_seconds')} s, "
                           f"{mp.get('scheduler_log_lines')} warning/error log lines"),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    profile = mp.get("profile")
    if profile:
        lines.append(f"scheduler profile (py-spy, {profile['samples']} samples), top self time:")
        lines += [f"  {percent:5.1f}%  {frame}" for frame, percent in profile.get("self_percent", [])[:10]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LoadModel calls/s: modelplane's scheduler vs an empty handler.")
    parser.add_argument("--models", type=int, default=None, help="LoadModel calls / models (default 10000)")
    parser.add_argument("--replicas", type=int, default=None, help="agent sessions registered (default 100)")
    parser.add_argument("--concurrency", type=int, default=64, help="LoadModel calls in flight (default 64)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1000 models, 10 replicas")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument(
        "--workdir", type=Path, help="keep logs and state in a new folder in DIR (default: a temporary dir, removed)"
    )
    parser.add_argument(
        "--py-spy",
        metavar="BIN",
        help="profile the scheduler with this py-spy binary from the first LoadModel until all are Available "
        "(slows it down: figures from such a run are for the profile only)",
    )
    parser.add_argument("--profile-out", type=Path, metavar="PATH", help="with --py-spy: keep the raw stacks here")
    parser.add_argument(
        "--available-timeout", type=float, default=120, help="seconds to wait for all models to be Available"
    )
    # The child processes.
    parser.add_argument("--role", choices=("main", "baseline-server", "agents"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stats-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--reconnect", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backoff-max", type=float, default=AGENT_BACKOFF_MAX, help=argparse.SUPPRESS)
    parser.add_argument("--hold", type=int, default=0, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.models is None:
        options.models = 1000 if options.quick else 10_000
    if options.replicas is None:
        options.replicas = 10 if options.quick else 100
    if options.models < 1 or options.replicas < 1 or options.concurrency < 1:
        parser.error("--models, --replicas and --concurrency must be at least 1")
    if options.replicas * REPLICA_MEMORY < options.models * MODEL_MEMORY:
        parser.error("the replicas cannot hold that many models")
    return options


@contextlib.contextmanager
def working_directory(keep: Path | None) -> Iterator[Path]:
    if keep is not None:  # a fresh folder inside it, so no earlier run's ready file or state is reused
        keep.mkdir(parents=True, exist_ok=True)
        yield Path(tempfile.mkdtemp(prefix="run-", dir=keep))
        return
    path = Path(tempfile.mkdtemp(prefix="modelplane-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options.role == "baseline-server":
        asyncio.run(serve_baseline(options.ready_file))
        return 0
    if options.role == "agents":
        asyncio.run(
            run_agents(
                options.target,
                options.replicas,
                REPLICA_MEMORY,
                options.ready_file,
                options.stats_file,
                reconnect=options.reconnect,
                hold=options.hold,
                backoff_max=options.backoff_max,
            )
        )
        return 0
    with working_directory(options.workdir) as workdir:
        config = Config(
            options.models,
            options.replicas,
            options.concurrency,
            options.available_timeout,
            workdir,
            options.py_spy,
            options.profile_out,
        )
        result = asyncio.run(benchmark(config))
    print(render(result))
    if options.json is not None:
        write_json(options.json, result)
    modelplane = result["modelplane"]
    healthy = modelplane.get("all_available") and not modelplane.get("load_model", {}).get("errors")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
