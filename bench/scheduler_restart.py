"""A scheduler killed with kill -9 and started again: how soon it answers, how soon every model is Available
again, what happens to the agents' sessions meanwhile, and how long a graceful shutdown then takes.

What runs (see bench/README.md for why and bench/RESULTS.md for figures):

1. A real ``modelplane scheduler`` (fresh state dir, SQLite; ``--sync-grace 0.1 --shutdown-grace 2
   --log-level warning``) and R simulated agents in one child process (``load_model_rate.py --role agents
   --reconnect``): real ``AgentService.Session`` streams over real gRPC, one connection each, answering every
   LOAD at once and heartbeating, and, like the real agent (agent/scheduler_session.py), ending a session on
   which the scheduler said nothing for three heartbeat intervals and reconnecting with jittered exponential
   backoff (0.2 s doubling to 10 s), registering again with every model they hold.
2. M LoadModel calls (distinct models, 64 in flight), then a SubscribeModelStatus stream until all M are
   Available. The load rate is recorded too, but load_model_rate.py is the benchmark for it.
3. ``kill -9`` of the scheduler (SIGKILL by its PID), and at once a new scheduler on the same ports and state
   dir with the scheduler's default ``--sync-grace`` (10 s: it places nothing until every replica it knew has
   re-registered, or the grace is over). Measured from the new process's start: its ready file, its first
   answer (a ``ModelStatus`` of one model, tried every 20 ms), every model Available again (a status stream's
   snapshot and changes; a stream the scheduler drops for lagging is subscribed again, as it asks, and counted);
   the agents' sessions accepted by the new scheduler (one per replica when all goes well), those of them it
   ended again within the restart's observation window (dropped), the LOADs it sent (0 when every model was
   kept), and the new scheduler's CPU seconds and RSS. Then ``--observe`` seconds more (a session dropped a
   little later shows too).
4. Step 3 again on the restarted scheduler, ``--restarts`` times in all (the load of step 2, the long part at
   large sizes, is done once); then SIGTERM to the last one: the graceful shutdown's duration and exit status,
   with M models on R replicas.

Throughout each restart a probe asks the ModelStatus of one model every 50 ms, from the first answer until every
model is Available: its slowest answer is how long the event loop was held up at most (``probe_slowest_seconds``).

**Seeded** (``--seeded``, what ``./run bench --scale 100k`` uses): step 2 writes the records instead, through the
scheduler's own code (``SqliteStateStore``, ``ModelRecord``, ``ServerRecord``: what M LoadModels would have
written, 100,000 in a few seconds), the agents start holding them (``--hold M``: model i on replica i mod R) and the
first scheduler starts on that state with the restarts' ``--sync-grace``; its start is measured like a restart's
(``seeded_start``), once every model is Available the kills begin. So the largest size is set up in seconds
whatever LoadModel costs.

    .venv/bin/python bench/scheduler_restart.py [--models 10000] [--replicas 1000] [--concurrency 64]
                                                [--restarts 1] [--sync-grace 10] [--observe 5] [--seeded]
                                                [--quick] [--json PATH] [--workdir DIR]

Everything listens on 127.0.0.1; the first scheduler's ports are picked by the kernel and reused by each
restarted one. Child processes are stopped by PID (the scheduler before the agents).
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_processes import cpu_seconds, stop_process, wait_for_json
from grpc import aio
from load_model_rate import (
    AGENT_BACKOFF_MAX,
    MODEL_MEMORY,
    REPLICA_MEMORY,
    THIS_FILE,
    drive_load_model,
    environment,
    load_requests,
    rss_bytes,
    spawn,
    start_profiler,
    stop_profiler,
    summarize_profile,
    wait_all_available,
    wait_for_file,
    wait_replicas,
    working_directory,
    write_json,
)

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from scheduler.models.model_records import ModelRecord, ModelVersion
from scheduler.models.server_records import ServerRecord
from scheduler.persistence import Put, SqliteStateStore
from scheduler.write_behind import MODELS_TABLE, SERVERS_TABLE

MiB = 1 << 20
POLL_SECONDS = 0.02  # how often the restarted scheduler is asked whether it answers
PROBE_SECONDS = 0.05  # how often the probe asks while a restarted scheduler brings its models back
SEED_CHUNK = 5000  # records per state store transaction when seeding
SERVER_NAME = "mlserver"  # load_model_rate.py's agents' server


@dataclass
class Config:
    models: int
    replicas: int
    concurrency: int
    restarts: int
    sync_grace: float
    observe: float
    available_timeout: float
    workdir: Path
    seeded: bool = False
    py_spy: str | None = None  # profile every restart from its spawn until all Available (slows it: not for figures)
    agent_backoff_max: float = AGENT_BACKOFF_MAX  # the simulated agents' reconnect backoff cap (the real agent's: 10 s)


def scheduler_command(config: Config, ready: Path, listen: str, agent_listen: str, sync_grace: float) -> list[str]:
    command = [sys.executable, "-m", "modelplane.cli", "scheduler", "--listen", listen, "--agent-listen", agent_listen]
    command += ["--state-dir", str(config.workdir / "state"), "--ready-file", str(ready)]
    # Metrics on a port of the kernel's choice: on the default one, a second run at the same time (or any other
    # scheduler) made the restarted scheduler exit after its first answer, "address already in use".
    command += ["--metrics-listen", "127.0.0.1:0"]
    return [*command, "--sync-grace", f"{sync_grace:g}", "--shutdown-grace", "2", "--log-level", "warning"]


def start_agents(config: Config, agent_listen: str, *, wait: bool = True) -> subprocess.Popen[bytes]:
    """The simulated agents, reconnecting like real ones; returns once every replica has registered (``wait``) or at
    once (seeded: no scheduler listens yet; they keep trying with the real agent's backoff)."""
    ready = config.workdir / "agents-ready.json"
    command = [sys.executable, str(THIS_FILE), "--role", "agents", "--target", agent_listen, "--reconnect"]
    command += ["--replicas", str(config.replicas), "--ready-file", str(ready)]
    if config.seeded:
        command += ["--hold", str(config.models)]
    command += ["--stats-file", str(config.workdir / "agents-stats.json")]
    command += ["--backoff-max", f"{config.agent_backoff_max:g}"]
    agents = spawn(command, config.workdir / "agents.log")
    if not wait:
        return agents
    try:
        wait_for_file(ready, agents, 120, "the simulated agents")
    except BaseException:
        stop_process(agents)
        raise
    return agents


async def first_answer(listen: str, model: str, process: subprocess.Popen[bytes], timeout: float) -> float:
    """Monotonic time of the first ModelStatus answer for ``model`` (tried every 20 ms until the server answers)."""
    request = pb.ModelStatusRequest(subscriberName="bench-restart", model=pb.ModelReference(name=model))
    deadline = time.monotonic() + timeout
    # gRPC's reconnect backoff (1 s at first) would otherwise be measured, not the scheduler.
    options = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20)]
    async with aio.insecure_channel(listen, options=[*options, ("grpc.max_reconnect_backoff_ms", 100)]) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        while True:
            try:
                async for status in stub.ModelStatus(request, timeout=5):
                    if status.modelName == model:
                        return time.monotonic()
            except aio.AioRpcError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"the restarted scheduler exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the restarted scheduler did not answer within {timeout:g}s")
            await asyncio.sleep(POLL_SECONDS)


async def seed_state(config: Config) -> float:
    """Write the records M LoadModels would have left (one version each) and the server with R replicas seen,
    through the scheduler's own store and record code; returns the seconds it took."""
    started = time.monotonic()
    store = await SqliteStateStore.open(config.workdir / "state")
    try:
        server = ServerRecord(SERVER_NAME, seen_replicas=config.replicas)
        await store.apply([Put(SERVERS_TABLE, SERVER_NAME, server.to_bytes())])
        requests = load_requests(config.models)
        for first in range(0, len(requests), SEED_CHUNK):
            changes = []
            for request in requests[first : first + SEED_CHUNK]:
                record = ModelRecord(request.model.meta.name, [ModelVersion(1, request.model)])
                changes.append(Put(MODELS_TABLE, record.name, record.to_bytes()))
            await store.apply(changes)
    finally:
        await store.close()
    return round(time.monotonic() - started, 2)


async def probe(listen: str, model: str, stop: asyncio.Event) -> list[float]:
    """ModelStatus of ``model`` every PROBE_SECONDS until ``stop``: each answer's seconds (an error counts too)."""
    request = pb.ModelStatusRequest(subscriberName="bench-restart-probe", model=pb.ModelReference(name=model))
    latencies: list[float] = []
    async with aio.insecure_channel(listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        while not stop.is_set():
            started = time.monotonic()
            with contextlib.suppress(aio.AioRpcError):
                async for _status in stub.ModelStatus(request, timeout=120):
                    pass
            latencies.append(time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_SECONDS)
    return latencies


async def ready_file_seen(path: Path, process: subprocess.Popen[bytes], timeout: float) -> float:
    """Monotonic time at which the restarted scheduler's ready file is seen (checked every 50 ms)."""
    await wait_for_json(path, process, timeout, "the restarted scheduler")
    return time.monotonic()


def seconds(later: float | None, earlier: float) -> float | None:
    return round(later - earlier, 3) if later is not None else None


async def load_phase(config: Config, listen: str, scheduler_pid: int) -> dict[str, Any]:
    """M LoadModel calls, then every model Available (the state the restart starts from)."""
    requests = load_requests(config.models)
    drive = await drive_load_model(listen, requests, config.concurrency, scheduler_pid)
    names = {request.model.meta.name for request in requests}
    done_at, states = await wait_all_available(listen, names, config.available_timeout)
    if done_at is None or drive.errors:
        raise RuntimeError(f"loading before the restart failed: errors {drive.errors}, final states {states}")
    drive_fields = asdict(drive)
    drive_fields.pop("segments")
    return {
        "load_model": drive_fields,
        "seconds_to_all_available": seconds(done_at, drive.started_monotonic),
        "scheduler_rss_bytes_all_available": rss_bytes(scheduler_pid)[0],
    }


@dataclass
class Running:
    """The scheduler of the current restart, and what its measurement has found so far."""

    process: subprocess.Popen[bytes]
    result: dict[str, Any]


async def restart_phase(
    config: Config, info: dict[str, Any], names: set[str], cycle: int, running: list[Running]
) -> dict[str, Any]:
    """The new scheduler after a kill (cycle 0: the first start on a seeded state): when it answers, when every
    model is Available again, the probe's slowest answer meanwhile; then an observation window (a session dropped a
    little later shows too). The process is left running, in ``running``."""
    ready = config.workdir / f"ready-restarted-{cycle}.json"
    command = scheduler_command(config, ready, info["listen"], info["agent_listen"], config.sync_grace)
    started = time.monotonic()
    process = spawn(command, config.workdir / f"scheduler-restarted-{cycle}.log")
    result: dict[str, Any] = {"restarted_monotonic": started, "command": command, "status_streams_dropped": []}
    running.append(Running(process, result))
    raw_profile = config.workdir / f"profile-restarted-{cycle}.txt"
    profiler = start_profiler(config.py_spy, process.pid, raw_profile) if config.py_spy else None
    ready_task = asyncio.create_task(ready_file_seen(ready, process, config.available_timeout))
    try:
        answered = await first_answer(info["listen"], min(names), process, config.available_timeout)
        stop_probe = asyncio.Event()
        probing = asyncio.create_task(probe(info["listen"], min(names), stop_probe))
        dropped = result["status_streams_dropped"]
        received: Counter[str] = Counter()
        try:
            done_at, states = await wait_all_available(
                info["listen"], names, config.available_timeout, dropped, received
            )
        finally:
            stop_probe.set()
            latencies = await probing
        cpu_to_available = cpu_seconds(process.pid)
        if profiler is not None:
            stop_profiler(profiler)
            result["profile"] = summarize_profile(raw_profile, top=40)
        rss, hwm = rss_bytes(process.pid)
        ready_at = await asyncio.wait_for(ready_task, config.available_timeout)
        result |= {
            "ready_file_seconds": seconds(ready_at, started),
            "first_answer_seconds": seconds(answered, started),
            "all_available_seconds": seconds(done_at, started),  # None: not within --available-timeout
            "available_timeout_seconds": config.available_timeout,
            "model_states_at_end": states,
            # The status stream's messages until all Available, and how many of them said a model was not (yet).
            "status_messages_received": received["statuses"],
            "status_messages_not_available": received["not_available"],
            "scheduler_cpu_seconds_to_all_available": round(cpu_to_available, 2),
            "scheduler_rss_bytes_all_available": rss,
            "scheduler_rss_peak_bytes": hwm,
            "probe_answers": len(latencies),
            "probe_slowest_seconds": round(max(latencies), 3) if latencies else None,
        }
        await asyncio.sleep(config.observe)
    finally:
        if profiler is not None:
            stop_profiler(profiler)
        ready_task.cancel()
        result["observed_until_monotonic"] = time.monotonic()  # before the next kill or the graceful stop
    return result


def sessions_after(stats: dict[str, Any], restarted: float, stopped: float) -> dict[str, Any]:
    """What the agents saw of a restarted scheduler: from its start until the end of its observation window."""
    # Each session: [agent, registered, ended (0: open at the end), LOADs answered, models held, how it ended].
    new = [s for s in stats["sessions"] if restarted <= s[1] < stopped]
    dropped = [s for s in new if s[2] and s[2] < stopped]
    registered_at = sorted(s[1] - restarted for s in new)
    first: dict[int, int] = {}  # replica -> models its first session with the new scheduler reported held
    for agent, _registered, _ended, _loads, held, _reason in sorted(new, key=lambda s: s[1]):
        first.setdefault(agent, held)
    return {
        "registrations": len(new),
        "replicas_registered": len({s[0] for s in new}),
        "re_registrations_beyond_one_per_replica": len(new) - len({s[0] for s in new}),
        "sessions_dropped": len(dropped),
        "dropped_reasons": dict(Counter(s[5] for s in dropped)),
        "models_reported_held_at_first_registration": sum(first.values()),
        "loads_sent_after_restart": sum(s[3] for s in new),
        "registration_seconds_p50_p90_max": [
            round(registered_at[min(len(registered_at) - 1, int(q * len(registered_at)))], 3) for q in (0.5, 0.9, 1.0)
        ]
        if registered_at
        else None,
    }


async def benchmark(config: Config) -> dict[str, Any]:
    if config.seeded:
        return await seeded_benchmark(config)
    env = environment(config.workdir)
    ready = config.workdir / "ready.json"
    first = spawn(scheduler_command(config, ready, "127.0.0.1:0", "127.0.0.1:0", 0.1), config.workdir / "scheduler.log")
    result: dict[str, Any] = {"config": run_config(config), "environment": env, "restarts": []}
    agents: subprocess.Popen[bytes] | None = None
    running = [Running(first, {})]
    try:
        info = wait_for_file(ready, first, 60, "the scheduler")
        agents = start_agents(config, info["agent_listen"])
        await wait_replicas(info["listen"], config.replicas, 120)
        result["before"] = await load_phase(config, info["listen"], first.pid)
        await kill_and_restart(config, info, running, result)
    finally:
        for scheduler in running:
            if scheduler.process.poll() is None:
                stop_process(scheduler.process)
        if agents is not None:
            stop_process(agents)
    return finish(config, result, env)


async def kill_and_restart(
    config: Config, info: dict[str, Any], running: list[Running], result: dict[str, Any]
) -> None:
    """The restarts of the running scheduler, then the last one's graceful shutdown."""
    names = {request.model.meta.name for request in load_requests(config.models)}
    for cycle in range(1, config.restarts + 1):
        killed = time.monotonic()
        victim = running[-1].process
        os.kill(victim.pid, signal.SIGKILL)
        running[-1].result["killed_exit_status"] = victim.wait(30)
        restart = await restart_phase(config, info, names, cycle, running)
        restart["kill_to_restart_seconds"] = round(restart["restarted_monotonic"] - killed, 3)
        result["restarts"].append(restart)
        if restart["all_available_seconds"] is None:
            break  # not all Available within --available-timeout: the next kill would not start from the same state
    status, shutdown = stop_process(running[-1].process)  # the graceful shutdown, with M models on R replicas
    result["graceful_shutdown"] = {"exit_status": status, "seconds": shutdown}


async def seeded_benchmark(config: Config) -> dict[str, Any]:
    """Seed the state store, start the agents holding the models and a scheduler on that state (measured like a
    restart), then the restarts."""
    env = environment(config.workdir)
    result: dict[str, Any] = {"config": run_config(config), "environment": env, "restarts": []}
    (config.workdir / "state").mkdir(exist_ok=True)
    result["seed_seconds"] = await seed_state(config)
    info = {"listen": f"127.0.0.1:{free_port()}", "agent_listen": f"127.0.0.1:{free_port()}"}
    running: list[Running] = []
    agents = start_agents(config, info["agent_listen"], wait=False)
    try:
        names = {request.model.meta.name for request in load_requests(config.models)}
        seeded = await restart_phase(config, info, names, 0, running)
        result["seeded_start"] = seeded
        if seeded["all_available_seconds"] is None:
            raise RuntimeError(f"the seeded scheduler's models were not all Available: {seeded['model_states_at_end']}")
        await kill_and_restart(config, info, running, result)
    finally:
        for scheduler in running:
            if scheduler.process.poll() is None:
                stop_process(scheduler.process)
        stop_process(agents)
    return finish(config, result, env)


def run_config(config: Config) -> dict[str, Any]:
    return {
        "models": config.models,
        "replicas": config.replicas,
        "concurrency": config.concurrency,
        "restarts": config.restarts,
        "sync_grace_after_restart": config.sync_grace,
        "observe_seconds": config.observe,
        "seeded": config.seeded,
    }


def free_port() -> int:
    """A port the kernel picks now: the seeded scheduler and every restarted one must listen on the same one."""
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port: int = probe_socket.getsockname()[1]
        return port


def finish(config: Config, result: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    """The agents' view of each start, and the restarted schedulers' log lines."""
    stats_path = config.workdir / "agents-stats.json"
    if stats_path.exists():
        stats = json.loads(stats_path.read_text())
        result["agents_failed_connection_attempts"] = stats["failed_attempts"]  # mostly while no scheduler listened
        result["agents_failed_attempt_reasons"] = stats["failed_reasons"]
        for restart in [*result["restarts"], *([result["seeded_start"]] if "seeded_start" in result else [])]:
            restart["agents"] = sessions_after(
                stats, restart["restarted_monotonic"], restart["observed_until_monotonic"]
            )
    lines = []
    for log in sorted(config.workdir.glob("scheduler-restarted-*.log")):
        lines += [f"{log.name}: {line}" for line in log.read_text(errors="replace").splitlines() if line.strip()]
    result["restarted_scheduler_log_lines"] = len(lines)
    result["restarted_scheduler_log_head"] = lines[:8]
    env["loadavg_end"] = os.getloadavg()[0]
    return result


def render(result: dict[str, Any]) -> str:
    config, before = result["config"], result.get("before")
    shutdown = result.get("graceful_shutdown", {})
    if before is not None:
        how = f"{before['load_model']['calls_per_second']} LoadModel calls/s to get there"
    else:
        how = f"seeded in {result.get('seed_seconds')} s"
    rows = [("workload", f"{config['models']} models on {config['replicas']} replicas ({how})")]
    starts = [("seeded start", result["seeded_start"])] if "seeded_start" in result else []
    starts += [(f"restart {cycle}", restart) for cycle, restart in enumerate(result["restarts"], 1)]
    for label, restart in starts:
        agents = restart.get("agents", {})
        rows += [
            (f"{label}: ready file", f"{restart.get('ready_file_seconds')} s after the new process started"),
            ("  first answer", f"{restart.get('first_answer_seconds')} s (ModelStatus of one model)"),
            ("  all Available", f"{restart.get('all_available_seconds')} s; "
                                f"final states {restart.get('model_states_at_end')}; status streams dropped "
                                f"{len(restart.get('status_streams_dropped', []))}"),
            ("  status stream", f"{restart.get('status_messages_received')} statuses read until then, "
                                f"{restart.get('status_messages_not_available')} of them not Available"),
            ("  probe", f"slowest answer {restart.get('probe_slowest_seconds')} s of {restart.get('probe_answers')}"),
            ("  agents", f"{agents.get('registrations')} registrations from {agents.get('replicas_registered')} "
                         f"replicas, registered after (p50, p90, max) {agents.get('registration_seconds_p50_p90_max')}"
                         f" s; {agents.get('sessions_dropped')} sessions dropped {agents.get('dropped_reasons')}; "
                         f"{agents.get('loads_sent_after_restart')} LOADs sent"),
            ("  scheduler", f"{restart.get('scheduler_cpu_seconds_to_all_available')} CPU s until all Available; RSS "
                            f"{restart.get('scheduler_rss_bytes_all_available', 0) / MiB:.1f} MiB"),
        ]  # fmt: skip
    rows += [
        ("graceful shutdown", f"{shutdown.get('seconds')} s, exit status {shutdown.get('exit_status')}"),
        ("log", f"{result['restarted_scheduler_log_lines']} warning/error lines from the restarted schedulers"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The scheduler killed with kill -9 and started again.")
    parser.add_argument("--models", type=int, default=None, help="models loaded before the kill (default 10000)")
    parser.add_argument("--replicas", type=int, default=None, help="simulated agents (default 1000)")
    parser.add_argument("--concurrency", type=int, default=64, help="LoadModel calls in flight (default 64)")
    parser.add_argument("--restarts", type=int, default=1, help="kill -9 and start again this often (default 1)")
    parser.add_argument(
        "--sync-grace", type=float, default=10.0, help="the restarted scheduler's --sync-grace (default 10)"
    )
    parser.add_argument("--observe", type=float, default=None, help="seconds to watch after all Available (5)")
    parser.add_argument(
        "--seeded", action="store_true", help="write the models into the state store instead of loading them"
    )
    parser.add_argument("--py-spy", metavar="BIN", help="profile each restarted scheduler with this py-spy binary")
    parser.add_argument(
        "--agent-backoff-max",
        type=float,
        default=AGENT_BACKOFF_MAX,
        metavar="SECONDS",
        help="the simulated agents' reconnect backoff cap (default: the real agent's, %(default)g s)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 models, 20 replicas, observe 0.5 s")
    parser.add_argument(
        "--available-timeout",
        type=float,
        default=600,
        help="how long to wait for all models to be Available (600 s); a restart that takes longer is reported as "
        "such, ends the run and makes the exit status 1",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep logs and state in a new folder in DIR (default: removed)")
    options = parser.parse_args(argv)
    options.models = options.models or (300 if options.quick else 10_000)
    options.replicas = options.replicas or (20 if options.quick else 1000)
    options.observe = options.observe if options.observe is not None else (0.5 if options.quick else 5.0)
    if min(options.models, options.replicas, options.concurrency, options.restarts) < 1 or options.observe < 0:
        parser.error("--models, --replicas, --concurrency and --restarts must be at least 1, --observe at least 0")
    if options.replicas * REPLICA_MEMORY < options.models * MODEL_MEMORY:
        parser.error("the replicas cannot hold that many models")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    with working_directory(options.workdir) as workdir:
        config = Config(
            options.models,
            options.replicas,
            options.concurrency,
            options.restarts,
            options.sync_grace,
            options.observe,
            options.available_timeout,
            workdir,
            options.seeded,
            options.py_spy,
            options.agent_backoff_max,
        )
        result = asyncio.run(benchmark(config))
    print(render(result))
    if options.json is not None:
        write_json(options.json, result)
    restarts = result["restarts"]
    every_one_available = len(restarts) == options.restarts and all(r["all_available_seconds"] for r in restarts)
    return 0 if every_one_available and result.get("graceful_shutdown", {}).get("exit_status") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
