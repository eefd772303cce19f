"""Status fan-out: what status subscribers cost the scheduler, side by side in one run.

What runs (bench/README.md has the recorded figures):

1. For each subscriber count S (default 0, 200 and 1,000), a fresh ``modelplane scheduler`` (SQLite state dir,
   ``--sync-grace 0.1``, ``--log-level warning``) with R replicas registered by the fake agents of
   load_model_rate.py (real AgentService sessions that answer every LOAD at once). One child process opens S
   SubscribeModelStatus streams, 10 per connection; 20 of them (``--never-read``) are opened and never read,
   the rest read every message as bytes (no parsing: the client's CPU is not what is measured). The streams
   are open, and every reading one has had the snapshot (a warm-up model), before anything is timed.
   Then the same client as load_model_rate.py sends M LoadModel calls, 64 in flight; then a marker model is
   loaded once all M are Available, and the run ends when every reading stream has seen the marker Available.
   Statuses are delivered per model in the order they became pending, so a stream that has the marker's last
   status has every model's last one too.
2. The reference, in the same run: a bare grpc.aio server (an async generator handler fed by a queue, identity
   serializer, the same method path) serving the same subscriber process, sending every reading stream as many
   messages of the same size as the scheduler sent it in the largest run, then a marker.

Reported per run: LoadModel calls/s and latency, the ratio to the run without subscribers, the scheduler's
CPU seconds (/proc, all threads) from the first LoadModel until every reader had the marker, the messages
the reading streams got ("deliveries"), and the scheduler CPU per delivery over the run without subscribers
(``marginal_us_per_delivery``; deliveries per such CPU-second is its inverse), beside the bare server's CPU per
delivery. Also: the time from the last LoadModel ack until every reader had every status, streams the
scheduler dropped for lagging (its log), and the client's CPU.

    .venv/bin/python bench/status_fanout.py [--models 1000] [--replicas 10] [--subscribers 0,200,1000]
                                            [--never-read 20] [--quick] [--json PATH] [--workdir DIR]
                                            [--py-spy BIN --profile-subscribers S --profile-out PATH]

Everything listens on 127.0.0.1 ports picked by the kernel; child processes are stopped by PID (the scheduler
first). The file is also the entry point of its child processes (``--role``).

Over 400 lines on purpose: one benchmark is one script read top to bottom, and it is the entry point of its own
child processes (the subscribers and the bare server); what benchmarks share is in bench_processes.py and
load_model_rate.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
from bench_processes import cpu_seconds, read_ready_file, stop_process, working_directory
from grpc import aio
from load_model_rate import (
    Config,
    drive_load_model,
    environment,
    load_requests,
    start_agents,
    start_profiler,
    start_scheduler,
    stop_profiler,
    summarize_profile,
    wait_all_available,
    wait_replicas,
    write_json,
)

from generated.mlops.scheduler import scheduler_pb2 as pb

THIS_FILE = Path(__file__).resolve()
SUBSCRIBE = "/seldon.mlops.scheduler.Scheduler/SubscribeModelStatus"
STREAMS_PER_CONNECTION = 10
WARM_UP = "fanout-warm-up"
MARKER = "fanout-marker"
BARE_MARKER = "fanout-bare-marker"
MARKED = b"fanout-"  # in the name of every model the subscribers look out for
AVAILABLE = pb.ModelStatus.ModelAvailable
HANG_GUARD = 900.0  # seconds: a hang guard for each wait, never an expectation


def model_request(name: str) -> pb.LoadModelRequest:
    [request] = load_requests(1)
    request.model.meta.name = name
    return request


# --------------------------------------------------------------------------------------------- subscribers


class Subscribers:
    """The subscriber process: ``count`` SubscribeModelStatus streams, ``never_read`` of them never read.

    Commands on stdin, one per line; answers on stdout, one JSON object per line:
    ``reset`` (zero the counters), ``wait NAME`` (answer once every reading stream has had NAME Available),
    ``quit`` (answer with how every stream ended, then exit).
    """

    def __init__(self, target: str, count: int, never_read: int) -> None:
        self.target = target
        self.count = count
        self.never_read = min(never_read, count)
        self.messages = 0
        self.bytes = 0
        self.seen: dict[str, set[int]] = {}  # marker name -> the reading streams that have had it Available
        self.changed = asyncio.Event()
        self.ended: dict[str, int] = {}

    async def _read(self, index: int, call: aio.UnaryStreamCall[Any, bytes]) -> None:
        try:
            async for data in call:
                self.messages += 1
                self.bytes += len(data)
                if MARKED in data:  # the warm-up or a marker (the bare server's too): parsed, the rest never is
                    status = pb.ModelStatusResponse.FromString(data)
                    if status.versions and status.versions[-1].state.state == AVAILABLE:
                        self.seen.setdefault(status.modelName, set()).add(index)
                        self.changed.set()
            end = "ended"
        except aio.AioRpcError as error:
            end = error.code().name
        self.ended[end] = self.ended.get(end, 0) + 1

    async def _until_seen(self, name: str) -> None:
        readers = self.count - self.never_read
        streams = self.seen.setdefault(name, set())
        while len(streams) < readers:
            self.changed.clear()
            await self.changed.wait()

    async def run(self) -> None:
        channels = [aio.insecure_channel(self.target) for _ in range(0, self.count, STREAMS_PER_CONNECTION)]
        calls: list[aio.UnaryStreamCall[Any, bytes]] = []
        tasks: list[asyncio.Task[None]] = []
        for index in range(self.count):
            subscribe: aio.UnaryStreamMultiCallable[pb.ModelSubscriptionRequest, bytes]
            subscribe = channels[index // STREAMS_PER_CONNECTION].unary_stream(
                SUBSCRIBE, request_serializer=pb.ModelSubscriptionRequest.SerializeToString, response_deserializer=None
            )
            call = subscribe(pb.ModelSubscriptionRequest(subscriberName=f"fanout-{index}"))
            calls.append(call)
            if index >= self.never_read:
                tasks.append(asyncio.create_task(self._read(index, call)))
        await self._until_seen(WARM_UP)
        reply({"ready": self.count})
        loop = asyncio.get_running_loop()
        commands = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
        cpu_at_reset = time.process_time()
        while line := (await commands.readline()).decode().strip():
            command, _, argument = line.partition(" ")
            if command == "reset":
                self.messages = self.bytes = 0
                cpu_at_reset = time.process_time()
                reply({"reset": True})
            elif command == "wait":
                await self._until_seen(argument)
                cpu = round(time.process_time() - cpu_at_reset, 2)
                reply({"seen": argument, "messages": self.messages, "bytes": self.bytes, "client_cpu_seconds": cpu})
            elif command == "quit":
                break
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        reply({"ended": self.ended})
        for channel in channels:
            await channel.close()


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class SubscriberProcess:
    """The main side of the subscriber process: start it, send it commands, read its answers."""

    def __init__(self, process: asyncio.subprocess.Process, readers: int) -> None:
        self.process = process
        self.readers = readers  # the streams that read

    @classmethod
    async def start(cls, target: str, count: int, never_read: int, log: Path) -> SubscriberProcess:
        command = [str(THIS_FILE), "--role", "subscribers", "--target", target]
        command += ["--subscribers", str(count), "--never-read", str(never_read)]
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
        started = cls(process, count - min(count, never_read))
        await started.answer()  # {"ready": ...}: every reading stream has had the snapshot
        return started

    async def answer(self) -> dict[str, Any]:
        if self.process.stdout is None:
            raise RuntimeError("the subscriber process has no stdout")
        line = await asyncio.wait_for(self.process.stdout.readline(), HANG_GUARD)
        if not line:
            raise RuntimeError(f"the subscriber process exited (status {await self.process.wait()})")
        data: dict[str, Any] = json.loads(line)
        return data

    async def ask(self, command: str) -> dict[str, Any]:
        if self.process.stdin is None:
            raise RuntimeError("the subscriber process has no stdin")
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.answer()

    async def close(self) -> dict[str, Any]:
        try:
            ended = await self.ask("quit")
        except (RuntimeError, TimeoutError, ConnectionError):
            ended = {}
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        await self.process.wait()
        return ended


# --------------------------------------------------------------------------------------------- the bare server


async def serve_bare(ready_file: Path) -> None:
    """The reference: a grpc.aio server whose SubscribeModelStatus handler yields pre-serialised bytes from a queue.

    On stdin, ``send N SIZE MARKER`` queues N messages of SIZE bytes, then the marker's Available status, to every
    stream (the message is a real ModelStatusResponse padded to SIZE with its reason).
    """
    queues: list[asyncio.Queue[bytes]] = []

    async def subscribe(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues.append(queue)
        queue.put_nowait(status_bytes(WARM_UP, 0))
        while True:
            yield await queue.get()

    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_stream_rpc_method_handler(subscribe)  # bytes in and out
    server = aio.server()
    service, _, method = SUBSCRIBE[1:].partition("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    write_json(ready_file, {"pid": os.getpid(), "listen": f"127.0.0.1:{port}"})
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := (await commands.readline()).decode().strip():
        _send, count, size, marker = line.split()
        message = status_bytes("m-bare", int(size))  # not marked: never parsed by the subscribers
        for index in range(int(count)):
            for queue in queues:
                queue.put_nowait(message)
            if index % 16 == 15:
                await asyncio.sleep(0)  # as a publisher would: let the streams write meanwhile
        for queue in queues:
            queue.put_nowait(status_bytes(marker, 0))
    await server.stop(None)


def status_bytes(name: str, size: int) -> bytes:
    status = pb.ModelStatusResponse(
        modelName=name,
        versions=[pb.ModelVersionStatus(version=1, serverName="mlserver", state=pb.ModelStatus(state=AVAILABLE))],
        operation=pb.ModelStatusResponse.ModelCreate,
    )
    padding = size - status.ByteSize()
    if padding > 2:
        status.versions[0].state.reason = "x" * (padding - 2)
    return status.SerializeToString()


# --------------------------------------------------------------------------------------------- runs


DROPPED = re.compile(r"dropped the \S+ stream of ")


async def scheduler_run(options: argparse.Namespace, workdir: Path, subscribers: int) -> dict[str, Any]:
    """One scheduler with ``subscribers`` streams: LoadModel rate, then until every reader has every status."""
    config = Config(options.models, options.replicas, 64, 300.0, workdir)
    scheduler, info = start_scheduler(config)
    agents: subprocess.Popen[bytes] | None = None
    readers: SubscriberProcess | None = None
    result: dict[str, Any] = {"subscribers": subscribers, "never_read": min(options.never_read, subscribers)}
    try:
        agents = start_agents(config, info["agent_listen"])
        await wait_replicas(info["listen"], options.replicas, 60)
        await drive_load_model(info["listen"], [model_request(WARM_UP)], 1, scheduler.pid)
        if subscribers:
            log = workdir / "subscribers.log"
            readers = await SubscriberProcess.start(info["listen"], subscribers, options.never_read, log)
            await readers.ask("reset")
        await asyncio.sleep(0.5)  # let the streams' first writes settle
        profile = options.py_spy if subscribers == options.profile_subscribers else None
        result |= await measure(options, workdir, scheduler.pid, info["listen"], readers=readers, py_spy=profile)
    finally:
        status, _ = stop_process(scheduler)
        result["scheduler_exit_status"] = status
        if readers is not None:
            result["streams_ended"] = (await readers.close()).get("ended")
        if agents is not None:
            stop_process(agents)
        log_text = (workdir / "scheduler.log").read_text(errors="replace")
        result["streams_dropped_for_lag"] = len(DROPPED.findall(log_text))
    return result


async def measure(
    options: argparse.Namespace,
    workdir: Path,
    scheduler: int,
    listen: str,
    *,
    readers: SubscriberProcess | None,
    py_spy: str | None,
) -> dict[str, Any]:
    """The LoadModel calls, then a marker once all are Available; until every reader has had the marker."""
    requests = load_requests(options.models)
    profiler = start_profiler(py_spy, scheduler, workdir / "profile.txt") if py_spy else None
    try:
        cpu_before = cpu_seconds(scheduler)
        drive = await drive_load_model(listen, requests, 64, scheduler)
        names = {request.model.meta.name for request in requests}
        done_at, states = await wait_all_available(listen, names, HANG_GUARD)
        if done_at is None:
            raise RuntimeError(f"not every model became Available: {states}")
        await drive_load_model(listen, [model_request(MARKER)], 1, scheduler)
        if readers is not None:
            seen = await readers.ask(f"wait {MARKER}")
        else:
            await wait_all_available(listen, {MARKER}, HANG_GUARD)
            seen = {"messages": 0, "bytes": 0, "client_cpu_seconds": 0.0}
        finished = time.monotonic()
        cpu = cpu_seconds(scheduler) - cpu_before
    finally:
        if profiler is not None:
            stop_profiler(profiler)
    result = {
        "load_model": asdict(drive),
        "seconds_after_last_ack_until_readers_current": round(finished - drive.finished_monotonic, 2),
        "scheduler_cpu_seconds_until_readers_current": round(cpu, 2),
        "deliveries": seen["messages"],
        "deliveries_per_reader": round(seen["messages"] / max(1, readers.readers), 1) if readers else 0,
        "bytes_per_delivery": round(seen["bytes"] / seen["messages"]) if seen["messages"] else None,
        "client_cpu_seconds": seen["client_cpu_seconds"],
    }
    if profiler is not None:
        result["profile"] = summarize_profile(workdir / "profile.txt", top=25)
        if options.profile_out:
            shutil.copyfile(workdir / "profile.txt", options.profile_out)
    return result


async def bare_run(options: argparse.Namespace, workdir: Path, subscribers: int, per_reader: int, size: int) -> Any:
    """The bare grpc.aio server fanning out ``per_reader`` messages of ``size`` bytes to ``subscribers`` streams."""
    ready = workdir / "ready.json"
    command = [str(THIS_FILE), "--role", "bare-server", "--ready-file", str(ready)]
    with (workdir / "bare.log").open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            sys.executable, *command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT
        )
    readers: SubscriberProcess | None = None
    try:
        while read_ready_file(ready) is None:
            if server.returncode is not None:
                raise RuntimeError("the bare server exited before it was ready")
            await asyncio.sleep(0.02)
        listen = (read_ready_file(ready) or {})["listen"]
        readers = await SubscriberProcess.start(listen, subscribers, options.never_read, workdir / "subscribers.log")
        await readers.ask("reset")
        cpu_before = cpu_seconds(server.pid)
        started = time.monotonic()
        if server.stdin is None:
            raise RuntimeError("the bare server has no stdin")
        server.stdin.write(f"send {per_reader} {size} {BARE_MARKER}\n".encode())
        await server.stdin.drain()
        seen = await readers.ask(f"wait {BARE_MARKER}")
        cpu = cpu_seconds(server.pid) - cpu_before
        return {
            "subscribers": subscribers,
            "seconds": round(time.monotonic() - started, 2),
            "server_cpu_seconds": round(cpu, 2),
            "deliveries": seen["messages"],
            "bytes_per_delivery": round(seen["bytes"] / max(1, seen["messages"])),
            "us_per_delivery": round(cpu / max(1, seen["messages"]) * 1e6, 1),
            "client_cpu_seconds": seen["client_cpu_seconds"],
        }
    finally:
        if readers is not None:
            await readers.close()
        with contextlib.suppress(ProcessLookupError):
            server.terminate()
        await server.wait()


async def benchmark(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    loadavg_start = os.getloadavg()
    env = environment(workdir)
    runs = [await scheduler_run(options, fresh_folder(workdir / f"s{count}"), count) for count in options.subscribers]
    alone = next((run for run in runs if run["subscribers"] == 0), None)
    largest = max(runs, key=lambda run: run["subscribers"])
    bare = None
    if largest["subscribers"] and largest["deliveries"]:
        per_reader = int(largest["deliveries_per_reader"])
        size = largest["bytes_per_delivery"]
        bare = await bare_run(options, fresh_folder(workdir / "bare"), largest["subscribers"], per_reader, size)
    for run in runs:
        rate = run["load_model"]["calls_per_second"]
        if alone is not None:
            run["load_model_rate_alone_over_this"] = round(alone["load_model"]["calls_per_second"] / rate, 2)
        if alone is not None and run["deliveries"]:
            extra = (
                run["scheduler_cpu_seconds_until_readers_current"]
                - alone["scheduler_cpu_seconds_until_readers_current"]
            )
            run["marginal_us_per_delivery"] = round(extra / run["deliveries"] * 1e6, 1)
            run["deliveries_per_marginal_cpu_second"] = round(run["deliveries"] / extra) if extra > 0 else None
            if bare is not None:
                run["marginal_over_bare_grpc_per_delivery"] = round(
                    run["marginal_us_per_delivery"] / bare["us_per_delivery"], 2
                )
    env["loadavg_start"] = loadavg_start
    env["loadavg_end"] = os.getloadavg()
    env["commit"] = commit()
    config = {"models": options.models, "replicas": options.replicas, "never_read": options.never_read}
    return {"config": config, "environment": env, "runs": runs, "bare_grpc_aio": bare}


def fresh_folder(path: Path) -> Path:
    path.mkdir()
    return path


def commit() -> str:
    """The commit measured, and whether the tree had changes."""
    git = ["git", "-C", str(THIS_FILE.parent)]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=False)  # noqa: S603
        changes = [*git, "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(changes, capture_output=True, text=True, check=False).stdout.strip()  # noqa: S603
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    return "unknown"


def render(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"machine: nproc {env['nproc']}, load average {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}, "
        f"commit {env['commit']}",
        f"{result['config']['models']} LoadModel calls, 64 in flight, {result['config']['replicas']} replicas",
        "subscribers | LoadModel/s | alone/this | p50 ms | sched CPU s | deliveries | us/delivery (marginal) | "
        "deliveries/CPU-s | ack -> readers current s | dropped",
    ]
    for run in result["runs"]:
        load = run["load_model"]
        lines.append(
            f"{run['subscribers']:>11} | {load['calls_per_second']:>11} | "
            f"{run.get('load_model_rate_alone_over_this', '-'):>10} | "
            f"{load['latency_ms_p50']:>6} | {run['scheduler_cpu_seconds_until_readers_current']:>11} | "
            f"{run['deliveries']:>10} | {run.get('marginal_us_per_delivery', '-'):>22} | "
            f"{run.get('deliveries_per_marginal_cpu_second', '-'):>16} | "
            f"{run['seconds_after_last_ack_until_readers_current']:>24} | {run['streams_dropped_for_lag']}"
        )
    bare = result.get("bare_grpc_aio")
    if bare:
        lines.append(
            f"bare grpc.aio, {bare['subscribers']} subscribers: {bare['deliveries']} deliveries of "
            f"{bare['bytes_per_delivery']} B, {bare['server_cpu_seconds']} CPU s: {bare['us_per_delivery']} us/delivery"
        )
    for run in result["runs"]:
        profile = run.get("profile")
        if profile:
            lines.append(f"profile with {run['subscribers']} subscribers ({profile['samples']} samples), self time:")
            lines += [f"  {percent:5.1f}%  {frame}" for frame, percent in profile["self_percent"][:15]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="What status subscribers cost the scheduler, side by side.")
    parser.add_argument("--models", type=int, default=None, help="LoadModel calls per run (default 1000)")
    parser.add_argument("--replicas", type=int, default=10, help="agent sessions registered (default 10)")
    parser.add_argument("--subscribers", default=None, help="comma-separated subscriber counts (default 0,200,1000)")
    parser.add_argument("--never-read", type=int, default=20, help="subscribers that never read (default 20)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 models, 0 and 100 subscribers")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep logs in a new folder in DIR (default: temporary)")
    parser.add_argument("--py-spy", metavar="BIN", help="profile the scheduler in one run (figures: not from it)")
    parser.add_argument("--profile-subscribers", type=int, default=1000, help="the run --py-spy profiles")
    parser.add_argument("--profile-out", type=Path, metavar="PATH", help="with --py-spy: keep the raw stacks here")
    parser.add_argument(
        "--role", choices=("main", "subscribers", "bare-server"), default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.models is None:
        options.models = 200 if options.quick else 1000
    counts = options.subscribers or ("0,100" if options.quick else "0,200,1000")
    options.subscribers = [int(count) for count in counts.split(",")]
    return options


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options.role == "subscribers":
        asyncio.run(Subscribers(options.target, options.subscribers[0], options.never_read).run())
        return 0
    if options.role == "bare-server":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(serve_bare(options.ready_file))
        return 0
    signal.signal(signal.SIGTERM, interrupted)  # stop the children (finally blocks) when stopped by PID
    with working_directory(options.workdir, "fanout") as workdir:
        result = asyncio.run(benchmark(options, workdir))
    print(render(result))
    if options.json is not None:
        write_json(options.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
