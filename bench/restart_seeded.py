"""Scheduler restart from a seeded state store: how soon a scheduler holding many models answers again after kill -9,
how soon every model is Available again, how long its event loop is held up, and whether any agent session is
dropped while the agents re-register.

The benchmark suite's scheduler_restart.py loads its models through LoadModel first; this one writes them into the
state store directly (100,000 in two seconds), so that the largest size can be set up on any scheduler, one whose
LoadModel is slow included (main before issue 14's indexes: 124 calls/s at 1,000 replicas, 13 minutes of loading).

The set-up (see bench/README.md, "Restart with a seeded state store", for why and for recorded results):

1. The state store is seeded with N model records (one version each, 1 MiB, 1 replica; the records the scheduler
   itself writes, through its own StateStore and ModelRecord code) and the server ``mlserver`` with R replicas seen.
2. One process of R fake agents (real gRPC, one connection each) holds the models: model i on replica i mod R.
   Each agent registers reporting what it holds (``loaded_models``), answers operations at once, sends heartbeats
   at the interval the scheduler gives, and when its session ends reconnects with the real agent's jittered
   exponential backoff (0.2 s doubling to 10 s) and registers again.
3. ``modelplane scheduler`` starts on that state (first start: the agents connect for the first time), every model
   becomes Available, then it is killed with SIGKILL and started again on the same addresses (the restart).

Measured for both starts, from the moment the process is spawned: when it first answers an RPC (a ModelStatus
for one model, tried every 10 ms); when a SubscribeModelStatus stream (opened at once) has seen every model
Available; the scheduler's CPU seconds and RSS meanwhile; the slowest answer of a probe that asks ModelStatus
every 50 ms from the first answer until all are Available (how long the event loop was held up at most); and
agent sessions that ended although nobody killed the scheduler (dropped).

    .venv/bin/python bench/restart_seeded.py [--models 100000] [--replicas 1000] [--json PATH] [--workdir DIR]
                                                [--py-spy BIN [--profile-out PATH]]

``--py-spy`` samples the restarted scheduler from its spawn until all models are Available (it slows it: take the
figures from runs without it). Everything listens on 127.0.0.1. Children are stopped by PID. This file is also the
fake agents' entry point (``--role agents``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_processes import cpu_seconds, hwm_bytes, rss_bytes, stop_process, working_directory
from grpc import aio
from load_model_rate import start_profiler, stop_profiler, summarize_profile, write_json

from generated.mlops.agent.v1 import agent_pb2, agent_pb2_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.backoff import Backoff
from scheduler.models.model_records import ModelRecord, ModelVersion
from scheduler.models.server_records import ServerRecord
from scheduler.persistence import Put, SqliteStateStore
from scheduler.write_behind import MODELS_TABLE, SERVERS_TABLE

MiB = 1 << 20
GiB = 1 << 30
SERVER_NAME = "mlserver"
PROTOCOL_VERSION = 1
MODEL_MEMORY = 1 * MiB
REPLICA_MEMORY = 64 * GiB
AVAILABLE = pb.ModelStatus.ModelAvailable
THIS_FILE = Path(__file__).resolve()
SEED_CHUNK = 5000
WAIT = 600.0  # seconds: a hang guard for every wait, never an expectation
Operation = agent_pb2.ModelOperation
Event = agent_pb2.ModelEvent


def model_name(index: int) -> str:
    return f"m-{index:06d}"


def model_spec(name: str) -> pb.Model:
    return pb.Model(
        meta=pb.MetaData(name=name),
        modelSpec=pb.ModelSpec(uri="file:///models/x", requirements=["sklearn"], memoryBytes=MODEL_MEMORY),
        deploymentSpec=pb.DeploymentSpec(replicas=1),
    )


def free_port() -> int:
    """A port the kernel picks: the scheduler must come back on the same addresses, so they cannot be port 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------- seeding


async def seed_state(state_dir: Path, models: int, replicas: int) -> float:
    """The records a scheduler would have written for ``models`` LoadModels; returns the seconds it took."""
    started = time.monotonic()
    store = await SqliteStateStore.open(state_dir)
    try:
        server = ServerRecord(SERVER_NAME, seen_replicas=replicas)
        await store.apply([Put(SERVERS_TABLE, SERVER_NAME, server.to_bytes())])
        for first in range(0, models, SEED_CHUNK):
            changes = []
            for index in range(first, min(first + SEED_CHUNK, models)):
                name = model_name(index)
                record = ModelRecord(name, [ModelVersion(1, model_spec(name))])
                changes.append(Put(MODELS_TABLE, name, record.to_bytes()))
            await store.apply(changes)
    finally:
        await store.close()
    return time.monotonic() - started


# --------------------------------------------------------------------------------------------- fake agents


@dataclass
class SessionEnd:
    registered_at: float  # monotonic
    ended_at: float
    reason: str


@dataclass
class AgentStats:
    registrations: list[float] = field(default_factory=list)  # monotonic time of each RegisterAccepted
    ended: list[SessionEnd] = field(default_factory=list)  # registered sessions that ended
    loads: int = 0
    unloads: int = 0
    rejected: int = 0


class ReconnectingAgent:
    """One replica's agent holding ``held``: registers with it, answers at once, heartbeats, reconnects."""

    def __init__(self, target: str, index: int, held: list[str], stats: AgentStats) -> None:
        self.target = target
        self.index = index
        self.held = {name: 1 for name in held}  # name -> version
        self.stats = stats
        self.stopping = asyncio.Event()

    def _register(self) -> agent_pb2.SessionRequest:
        loaded = [
            agent_pb2.LoadedModel(name=name, version=version, memory_bytes=MODEL_MEMORY)
            for name, version in self.held.items()
        ]
        return agent_pb2.SessionRequest(
            register=agent_pb2.Register(
                protocol_version=PROTOCOL_VERSION,
                agent_id=f"bench-agent-{self.index}",
                replica=agent_pb2.ReplicaConfig(
                    server_name=SERVER_NAME,
                    replica_idx=self.index,
                    shared=True,
                    server_kind=agent_pb2.SERVER_KIND_MLSERVER,
                    capabilities=["sklearn"],
                    total_memory_bytes=REPLICA_MEMORY,
                    endpoints=agent_pb2.InferenceEndpoints(
                        http_url=f"http://127.0.0.1:1/{self.index}", grpc_target="127.0.0.1:1"
                    ),
                ),
                loaded_models=loaded,
                available_memory_bytes=REPLICA_MEMORY - len(loaded) * MODEL_MEMORY,
            )
        )

    def _answer(
        self, operation: agent_pb2.ModelOperation, outbox: asyncio.Queue[agent_pb2.SessionRequest | None]
    ) -> None:
        name = operation.model.meta.name
        if operation.kind == Operation.KIND_LOAD:
            self.stats.loads += 1
            self.held[name] = operation.version
            kind = Event.KIND_LOADED
        elif operation.kind == Operation.KIND_UNLOAD:
            self.stats.unloads += 1
            self.held.pop(name, None)
            kind = Event.KIND_UNLOADED
        else:
            return
        event = Event(operation_id=operation.operation_id, kind=kind, model_name=name, model_version=operation.version)
        outbox.put_nowait(agent_pb2.SessionRequest(event=event))

    async def _session(self) -> None:
        outbox: asyncio.Queue[agent_pb2.SessionRequest | None] = asyncio.Queue()
        outbox.put_nowait(self._register())
        registered_at: float | None = None
        heartbeats: asyncio.Task[None] | None = None

        async def requests() -> AsyncIterator[agent_pb2.SessionRequest]:
            while (message := await outbox.get()) is not None:
                yield message

        async def beat(interval: float) -> None:
            while True:
                await asyncio.sleep(interval)
                outbox.put_nowait(agent_pb2.SessionRequest(heartbeat=agent_pb2.Heartbeat()))

        stop = asyncio.create_task(self.stopping.wait())
        async with aio.insecure_channel(self.target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            call = agent_pb2_grpc.AgentServiceStub(channel).Session(requests())
            stop.add_done_callback(lambda _: outbox.put_nowait(None))  # half-close: the agent leaves
            try:
                async for response in call:
                    kind = response.WhichOneof("message")
                    if kind == "operation":
                        self._answer(response.operation, outbox)
                    elif kind == "register_accepted":
                        registered_at = time.monotonic()
                        self.stats.registrations.append(registered_at)
                        interval = max(response.register_accepted.heartbeat_interval_ms, 100) / 1000
                        heartbeats = asyncio.create_task(beat(interval))
                    elif kind == "event_rejected":
                        self.stats.rejected += 1
                reason = "OK"
            except aio.AioRpcError as error:
                reason = f"{error.code().name}: {(error.details() or '')[:120]}"
            finally:
                stop.cancel()
                if heartbeats is not None:
                    heartbeats.cancel()
        if registered_at is not None and not self.stopping.is_set():
            self.stats.ended.append(SessionEnd(registered_at, time.monotonic(), reason))

    async def run(self) -> None:
        backoff = Backoff(0.2, 10.0)  # the real agent's (agent/scheduler_session.py)
        while not self.stopping.is_set():
            before = len(self.stats.registrations)
            await self._session()
            if len(self.stats.registrations) > before:
                backoff.reset()  # it was registered: start over, as the real agent does after a session that lasted
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff.next_jittered())


async def run_agents(target: str, models: int, replicas: int, ready_file: Path, stats_file: Path) -> None:
    held: list[list[str]] = [[] for _ in range(replicas)]
    for index in range(models):
        held[index % replicas].append(model_name(index))
    stats = [AgentStats() for _ in range(replicas)]
    agents = [ReconnectingAgent(target, index, held[index], stats[index]) for index in range(replicas)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(agent.run()) for agent in agents]
    write_json(ready_file, {"pid": os.getpid()})
    await stop.wait()
    for agent in agents:
        agent.stopping.set()
    _done, pending = await asyncio.wait(tasks, timeout=10)
    for task in pending:
        task.cancel()
    write_json(stats_file, {"agents": [asdict(s) for s in stats]})


# --------------------------------------------------------------------------------------------- measuring


@dataclass
class Config:
    models: int
    replicas: int
    workdir: Path
    listen: str
    agent_listen: str
    py_spy: str | None = None
    profile_out: Path | None = None


def spawn_scheduler(config: Config, label: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "modelplane.cli", "scheduler", "--listen", config.listen]
    command += ["--agent-listen", config.agent_listen, "--state-dir", str(config.workdir / "state")]
    # The defaults of a real deployment: a 10 s synchroniser grace, 5 s heartbeats (three missed end a session).
    command += ["--sync-grace", "10", "--heartbeat", "5", "--shutdown-grace", "2", "--log-level", "warning"]
    with (config.workdir / f"scheduler-{label}.log").open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 - fixed argv


def spawn_agents(config: Config, ready_file: Path, stats_file: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(THIS_FILE), "--role", "agents", "--target", config.agent_listen]
    command += ["--models", str(config.models), "--replicas", str(config.replicas)]
    command += ["--ready-file", str(ready_file), "--stats-file", str(stats_file)]
    with (config.workdir / "agents.log").open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 - fixed argv


async def first_answer(stub: pb_grpc.SchedulerAsyncStub, process: subprocess.Popen[bytes]) -> float:
    """Monotonic time of the first ModelStatus answer (any status code but UNAVAILABLE counts as an answer)."""
    request = pb.ModelStatusRequest(subscriberName="bench-restart", model=pb.ModelReference(name=model_name(0)))
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the scheduler exited with status {process.returncode}")
        try:
            async for _status in stub.ModelStatus(request, timeout=1):
                pass
            return time.monotonic()
        except aio.AioRpcError as error:
            if error.code().name not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                return time.monotonic()
        await asyncio.sleep(0.01)
    raise TimeoutError("the scheduler never answered")


async def all_available(stub: pb_grpc.SchedulerAsyncStub, models: int) -> tuple[float | None, dict[str, int]]:
    """Monotonic time when a status stream has seen every model Available (None on time-out), and the last states."""
    latest: dict[str, int] = {}
    available: set[str] = set()
    call = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="bench-restart"))
    done_at = None
    try:
        async with asyncio.timeout(WAIT):
            async for status in call:
                state = status.versions[-1].state.state if status.versions else pb.ModelStatus.ModelStateUnknown
                latest[status.modelName] = state
                if state == AVAILABLE:
                    available.add(status.modelName)
                else:
                    available.discard(status.modelName)
                if len(available) == models:
                    done_at = time.monotonic()
                    break
    except TimeoutError:
        pass
    finally:
        call.cancel()
    states = Counter(pb.ModelStatus.ModelState.Name(s) for s in latest.values())  # type: ignore[arg-type]
    return done_at, dict(states)


async def probe(stub: pb_grpc.SchedulerAsyncStub, stop: asyncio.Event) -> list[float]:
    """ModelStatus of one model every 50 ms until ``stop``: each answer's seconds."""
    request = pb.ModelStatusRequest(subscriberName="bench-probe", model=pb.ModelReference(name=model_name(0)))
    latencies = []
    while not stop.is_set():
        started = time.monotonic()
        with contextlib.suppress(aio.AioRpcError):
            async for _status in stub.ModelStatus(request, timeout=60):
                pass
        latencies.append(time.monotonic() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    return latencies


async def measure_start(config: Config, label: str, profile: bool) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    spawned = time.monotonic()
    process = spawn_scheduler(config, label)
    profiler = None
    raw = config.workdir / f"profile-{label}.txt"
    if profile and config.py_spy:
        await asyncio.sleep(0.3)  # py-spy needs the Python process to exist
        profiler = start_profiler(config.py_spy, process.pid, raw)
    async with aio.insecure_channel(config.listen) as channel:
        stub: pb_grpc.SchedulerAsyncStub = pb_grpc.SchedulerStub(channel)
        answered = await first_answer(stub, process)
        stop_probe = asyncio.Event()
        probing = asyncio.create_task(probe(stub, stop_probe))
        done_at, states = await all_available(stub, config.models)
        stop_probe.set()
        latencies = await probing
    cpu = cpu_seconds(process.pid)  # all of it: the process is new
    result: dict[str, Any] = {
        "spawned_monotonic": spawned,
        "seconds_to_first_answer": round(answered - spawned, 3),
        "all_available": done_at is not None,
        "seconds_to_all_available": round(done_at - spawned, 3) if done_at else None,
        "model_states_at_end": states,
        "scheduler_cpu_seconds_spawn_to_available": round(cpu, 2),
        "scheduler_rss_bytes_all_available": rss_bytes(process.pid),
        "scheduler_peak_rss_bytes": hwm_bytes(process.pid),
        "probe_answers": len(latencies),
        "probe_slowest_answer_seconds": round(max(latencies), 3) if latencies else None,
    }
    if profiler is not None:
        stop_profiler(profiler)
        result["profile"] = summarize_profile(raw)
        if config.profile_out is not None and raw.exists():
            raw.replace(config.profile_out)
    return process, result


def session_report(stats: dict[str, Any], since: float, until: float) -> dict[str, Any]:
    """Registrations and dropped sessions of the agents between ``since`` and ``until`` (monotonic)."""
    registrations = [t for agent in stats["agents"] for t in agent["registrations"] if since <= t <= until]
    dropped = [  # ended before the scheduler was killed or stopped: ended by the scheduler on its own
        end
        for agent in stats["agents"]
        for end in agent["ended"]
        if since <= end["registered_at"] <= until and end["ended_at"] < until
    ]
    per_agent = Counter(sum(1 for t in agent["registrations"] if since <= t <= until) for agent in stats["agents"])
    return {
        "registrations": len(registrations),
        "agents_by_registration_count": {str(k): v for k, v in sorted(per_agent.items())},
        "last_registration_after_spawn_seconds": round(max(registrations) - since, 3) if registrations else None,
        "sessions_dropped": len(dropped),
        "dropped_reasons": dict(Counter(end["reason"] for end in dropped)),
    }


async def benchmark(config: Config) -> dict[str, Any]:
    result: dict[str, Any] = {
        "config": {"models": config.models, "replicas": config.replicas},
        "environment": {
            "nproc": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    result["seed_seconds"] = round(await seed_state(config.workdir / "state", config.models, config.replicas), 2)
    stats_file = config.workdir / "agents-stats.json"
    agents_ready = config.workdir / "agents-ready.json"
    agents = spawn_agents(config, agents_ready, stats_file)
    scheduler: subprocess.Popen[bytes] | None = None
    try:
        while not agents_ready.exists():
            if agents.poll() is not None:
                raise RuntimeError("the fake agents exited")
            await asyncio.sleep(0.05)
        scheduler, first = await measure_start(config, "first", profile=False)
        result["first_start"] = first
        await asyncio.sleep(2)
        killed_at = time.monotonic()
        scheduler.kill()  # SIGKILL: nothing is flushed, no session is ended politely
        scheduler.wait()
        result["killed_monotonic"] = killed_at
        scheduler, restart = await measure_start(config, "restart", profile=True)
        result["restart"] = restart
        await asyncio.sleep(2)
        stopping = time.monotonic()
        status, seconds = stop_process(scheduler)
        result["restart"]["stopped_monotonic"] = stopping
        result["restart"]["graceful_shutdown_seconds"] = seconds
        result["restart"]["exit_status"] = status
        scheduler = None
    finally:
        if scheduler is not None:
            stop_process(scheduler)
        stop_process(agents)
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {"agents": []}
    result["first_start"]["agents"] = session_report(stats, result["first_start"]["spawned_monotonic"], killed_at)
    result["restart"]["agents"] = session_report(stats, result["restart"]["spawned_monotonic"], stopping)
    result["environment"]["loadavg_end"] = os.getloadavg()
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"{result['config']['models']} models on {result['config']['replicas']} replicas"]
    lines.append(f"seeded the state store in {result['seed_seconds']} s")
    for key in ("first_start", "restart"):
        part = result[key]
        agents = part["agents"]
        rss = part["scheduler_rss_bytes_all_available"] / MiB
        lines.append(
            f"{key}: answered after {part['seconds_to_first_answer']} s, all Available after "
            f"{part['seconds_to_all_available']} s ({part['model_states_at_end']}); scheduler CPU "
            f"{part['scheduler_cpu_seconds_spawn_to_available']} s, RSS {rss:.0f} MiB; "
            f"slowest probe answer {part['probe_slowest_answer_seconds']} s of {part['probe_answers']}; "
            f"{agents['registrations']} registrations, last {agents['last_registration_after_spawn_seconds']} s after "
            f"spawn, {agents['sessions_dropped']} sessions dropped {agents['dropped_reasons']}"
        )
    restart = result["restart"]
    lines.append(f"graceful shutdown after the restart: {restart.get('graceful_shutdown_seconds')} s")
    env = result["environment"]
    lines.append(f"nproc {env['nproc']}, load average {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}")
    if "profile" in restart:
        lines.append("restart profile, inclusive %:")
        lines += [f"  {share:5.1f}  {frame}" for frame, share in restart["profile"].get("inclusive_percent", [])]
        lines.append("restart profile, self %:")
        lines += [f"  {share:5.1f}  {frame}" for frame, share in restart["profile"].get("self_percent", [])]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Scheduler restart after kill -9 with many models and agents.")
    parser.add_argument("--models", type=int, default=100_000, help="models held by the agents (default 100000)")
    parser.add_argument("--replicas", type=int, default=1000, help="agents, one replica each (default 1000)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument("--workdir", type=Path, metavar="DIR", help="keep logs and state in a new folder here")
    parser.add_argument("--py-spy", metavar="BIN", help="profile the restarted scheduler with this py-spy")
    parser.add_argument("--profile-out", type=Path, metavar="PATH", help="with --py-spy: keep the raw stacks here")
    parser.add_argument("--role", choices=("main", "agents"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stats-file", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.models < 1 or options.replicas < 1:
        parser.error("--models and --replicas must be at least 1")
    if options.models * MODEL_MEMORY > options.replicas * REPLICA_MEMORY:
        parser.error("the replicas cannot hold that many models")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options.role == "agents":
        asyncio.run(
            run_agents(options.target, options.models, options.replicas, options.ready_file, options.stats_file)
        )
        return 0
    with working_directory(options.workdir, "restart") as workdir:
        (workdir / "state").mkdir()
        config = Config(
            options.models,
            options.replicas,
            workdir,
            listen=f"127.0.0.1:{free_port()}",
            agent_listen=f"127.0.0.1:{free_port()}",
            py_spy=options.py_spy,
            profile_out=options.profile_out,
        )
        result = asyncio.run(benchmark(config))
    print(render(result))
    if options.json is not None:
        write_json(options.json, result)
    restart = result["restart"]
    healthy = restart["all_available"] and result["first_start"]["all_available"]
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
