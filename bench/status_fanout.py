"""Status fan-out: what N SubscribeModelStatus subscribers, some of which never read, cost the scheduler and
its LoadModel calls, against one subscriber, side by side in one run.

What runs (see bench/README.md for why and bench/RESULTS.md for figures). Each phase has a fresh scheduler, so
each does the same work from the same empty state:

- a real ``modelplane scheduler`` (fresh state dir, SQLite; ``--sync-grace 0.1 --shutdown-grace 2 --log-level
  warning --subscriber-lag 600``: a lag longer than any phase, so the non-readers stay subscribed for the whole
  measurement instead of being dropped partway through a slow phase) and R simulated agents
  (``load_model_rate.py --role agents``: real AgentService sessions over real gRPC, answering at once);
- one subscriber in this process, a grpc client that decodes every status: it tells when all models are
  Available. It is the only subscriber of the **reference** phases (first and last);
- in the other phases, N - 1 more subscribers in a separate process (``--role readers``), each a
  SubscribeModelStatus call on its own HTTP/2 connection (plaintext, loopback): N - 1 - J that read everything,
  granting a 2 GiB window and counting gRPC messages without decoding them (a few microseconds per message, so
  the readers' own CPU stays small beside the scheduler's), and J that never read (a flow-control window of 0:
  the scheduler cannot send them a byte).

In each phase, once every subscriber holds the snapshot (one warm-up model), M LoadModel calls for distinct
models (64 in flight); when all M are Available one more model, the sentinel, is loaded: a subscriber gets
statuses in the order their models first became pending (modelplane/event_hub.py), so one that has seen the
sentinel has been delivered every status before it. Measured from the first call until every reading subscriber
has seen the sentinel: the scheduler's CPU seconds and the messages delivered to all subscribers, and the
LoadModel rate during the calls. Reported per phase with N subscribers:

- **LoadModel slowdown**: mean calls/s of the two reference phases / calls/s with N subscribers;
- **deliveries per scheduler CPU-second**: the messages the N subscribers received over the scheduler CPU
  seconds beyond the reference phases' (the marginal cost of fan-out), and over all of the phase's CPU (gross).

**The floor, in the same run** (after the phases): a bare grpc.aio server (``--role bare-server``: the same method
path, an async generator handler fed by a queue per stream, bytes sent as they are) serves a new readers' process
with the largest N's subscribers, J of them never reading; it sends every stream as many messages, of the mean size
the verifier received in that phase, as each subscriber got from the scheduler, then the sentinel. Its deliveries
per CPU-second are what Python gRPC on this machine can do at all with one message per write, and the scheduler's
gross figure is reported beside it (``floor``).

    .venv/bin/python bench/status_fanout.py [--models 500] [--replicas 10] [--subscribers 200,1000]
                                            [--non-readers 20] [--no-floor] [--quick] [--json PATH] [--workdir DIR]

Everything listens on 127.0.0.1 ports picked by the kernel; child processes are stopped by PID.

Over 400 lines on purpose: one benchmark is one script read top to bottom (the raw subscribers, the readers'
process, a phase, the comparison); what the benchmarks share is in bench_processes.py and load_model_rate.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from bench_processes import cpu_seconds, read_ready_file, stop_process
from grpc import aio
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes, Settings
from load_model_rate import (
    MODEL_MEMORY,
    REPLICA_MEMORY,
    drive_load_model,
    environment,
    load_requests,
    rss_bytes,
    spawn,
    start_profiler,
    stop_profiler,
    summarize_profile,
    wait_for_file,
    wait_replicas,
    working_directory,
    write_json,
)
from load_model_rate import THIS_FILE as LOAD_MODEL_RATE

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.standard_services import status_name, watch_health

THIS_FILE = Path(__file__).resolve()
AVAILABLE = pb.ModelStatus.ModelAvailable
WARM_UP = "fanout-warm-up"  # loaded before the subscribers: each one's snapshot holds it
SENTINEL = "fanout-sentinel"  # loaded after all M are Available: seen means caught up
SUBSCRIBE_PATH = "/seldon.mlops.scheduler.Scheduler/SubscribeModelStatus"
READER_WINDOW = (1 << 31) - 1  # HTTP/2's largest window: a reader never has to grant more during a phase
READ_EVERY = 0.01  # seconds between the readers' rounds of reading (see serve_readers)
PHASE_TIMEOUT = 900.0  # a hang guard per wait, not an expectation

# HTTP/2 frame types and flags (RFC 9113, section 6) the raw subscribers act on.
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, PADDED = 0x1, 0x1, 0x8
SETTINGS_ACK_FRAME = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


# --------------------------------------------------------------------------------------------- raw subscribers


def opening_bytes(address: str, window: int, subscriber: str) -> bytes:
    """What a client sends to start one SubscribeModelStatus call: the connection preface and SETTINGS (with
    ``window`` as every stream's initial window), a connection WINDOW_UPDATE to the same size, the request."""
    connection = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    connection.local_settings = Settings(
        client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: window, SettingCodes.ENABLE_PUSH: 0}
    )
    connection.initiate_connection()
    if window > 65_535:
        connection.increment_flow_control_window(window - 65_535)
    stream = connection.get_next_available_stream_id()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", SUBSCRIBE_PATH), (":authority", address)]
    connection.send_headers(stream, [*headers, ("content-type", "application/grpc"), ("te", "trailers")])
    payload = pb.ModelSubscriptionRequest(subscriberName=subscriber).SerializeToString()
    connection.send_data(stream, b"\0" + len(payload).to_bytes(4, "big") + payload, end_stream=True)
    return connection.data_to_send()


class RawSubscriber:
    """One SubscribeModelStatus call on its own connection, spoken as raw HTTP/2 frames.

    A reader (``window`` > 0) takes everything and counts the gRPC messages (5-byte length prefixes) without
    decoding them, and notes when the sentinel's name has come by. A non-reader (``window`` 0) gets the response
    headers and nothing more. Both answer SETTINGS and PING as HTTP/2 requires. h2 only builds the opening
    bytes, and the socket is read in a plain epoll loop (``serve_readers``), not asyncio: running every frame
    through h2 and every read through an event loop's callbacks would cost the readers' process several times
    the CPU per message, which it takes from the same two cores as the scheduler it measures.
    """

    def __init__(self, address: str, window: int, name: str, sentinel: bytes) -> None:
        host, _, port = address.rpartition(":")
        self.socket = socket.create_connection((host, int(port)), timeout=60)
        self.socket.sendall(opening_bytes(address, window, name))
        self.socket.setblocking(False)
        self.sentinel = sentinel
        self.buffer = bytearray()
        self.messages = 0
        self.body_left = 0  # bytes of the current message still to come
        self.prefix = b""  # the part of a message's 5-byte prefix received so far
        self.tail = b""  # the end of the last DATA payload: a sentinel may be split between two frames
        self.window_used = 0
        self.answered = False  # response headers came: the scheduler has subscribed it
        self.saw_sentinel = False
        self.ended = False

    def receive(self) -> None:
        """Take what the socket holds and answer what needs an answer."""
        try:
            data = self.socket.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.ended = True
            return
        buffer = self.buffer
        buffer += data
        position, size, replies = 0, len(buffer), []
        while size - position >= 9:
            length = int.from_bytes(buffer[position : position + 3], "big")
            end = position + 9 + length
            if end > size:
                break
            kind, flags = buffer[position + 3], buffer[position + 4]
            if kind == DATA:
                self._data(flags, bytes(buffer[position + 9 : end]))
            else:
                replies.append(self._control(kind, flags, bytes(buffer[position + 9 : end])))
            position = end
        del buffer[:position]
        if self.window_used > 1 << 30:  # never in practice: give the window back before it runs out
            replies += [b"\x00\x00\x04\x08\x00" + bytes([0, 0, 0, s]) + self.window_used.to_bytes(4) for s in (0, 1)]
            self.window_used = 0
        if any(replies):
            self.socket.setblocking(True)  # a few bytes: written whole
            self.socket.sendall(b"".join(replies))
            self.socket.setblocking(False)

    def _control(self, kind: int, flags: int, payload: bytes) -> bytes:
        """Frames other than DATA; returns what to send back."""
        if kind == HEADERS:
            self.answered = True
            self.ended = self.ended or bool(flags & END_STREAM)  # trailers: the call is over
        elif kind in (RST_STREAM, GOAWAY):
            self.ended = True
        elif kind == SETTINGS and not flags & ACK:
            return SETTINGS_ACK_FRAME
        elif kind == PING and not flags & ACK:
            return b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + payload
        return b""

    def _data(self, flags: int, payload: bytes) -> None:
        self.window_used += len(payload)
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        self.ended = self.ended or bool(flags & END_STREAM)
        index, size = 0, len(payload)
        while index < size:
            if self.body_left:
                taken = min(self.body_left, size - index)
                self.body_left -= taken
                index += taken
                continue
            wanted = 5 - len(self.prefix)
            self.prefix += payload[index : index + wanted]
            index += wanted
            if len(self.prefix) == 5:
                self.body_left = int.from_bytes(self.prefix[1:5], "big")
                self.prefix = b""
                self.messages += 1
        if not self.saw_sentinel:
            self.saw_sentinel = self.sentinel in self.tail + payload
            self.tail = payload[-len(self.sentinel) :]

    def close(self) -> None:
        self.socket.close()


def serve_readers(target: str, readers: int, non_readers: int) -> None:
    """The readers' process: subscribe everyone, say so, then report counts when asked and when caught up.

    stdout gets one JSON object a line: ``{"event": "ready"}`` once every reader has its snapshot and every
    non-reader its response headers; ``{"event": "counts", ...}`` for each ``counts`` line on stdin;
    ``{"event": "caught_up", ...}`` once every reader has seen the sentinel. SIGTERM ends it (its default)."""
    targets = target.split(",")  # with relays: the subscribers spread over them, one after the other
    subscribers = [
        RawSubscriber(
            targets[index % len(targets)],
            READER_WINDOW if index < readers else 0,
            f"bench-fanout-{index}",
            SENTINEL.encode(),
        )
        for index in range(readers + non_readers)
    ]
    reading, silent = subscribers[:readers], subscribers[readers:]
    by_fd = {subscriber.socket.fileno(): subscriber for subscriber in subscribers}
    poller = select.epoll()
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    poller.register(sys.stdin.fileno(), select.EPOLLIN)

    def report(event: str) -> None:
        counts = {
            "event": event,
            "messages": sum(s.messages for s in subscribers),
            "readers_ended": sum(s.ended for s in reading),
            "non_readers_ended": sum(s.ended for s in silent),
            "cpu_seconds": round(time.process_time(), 3),
        }
        sys.stdout.write(json.dumps(counts) + "\n")
        sys.stdout.flush()

    # Who is still awaited: every reader for its snapshot, then for the sentinel; every non-reader for its headers.
    unready = set(subscribers)
    behind = set(reading)
    deadline = time.monotonic() + PHASE_TIMEOUT
    while True:
        # Take what has arrived in rounds at most every READ_EVERY seconds: a reader that keeps up, in batches.
        # Reading each message as it lands would cost this process a system call and a round of the loop per
        # message, several times the CPU of counting it, on the cores the scheduler is measured on.
        round_started = time.monotonic()
        for fd, _events in poller.poll(1.0):
            subscriber = by_fd.get(fd)
            if subscriber is None:  # stdin: a command, or the driver has gone
                line = sys.stdin.readline()
                if not line:
                    return
                if line.strip() == "counts":
                    report("counts")
                continue
            subscriber.receive()
            if subscriber in unready and (subscriber.messages or (subscriber in silent and subscriber.answered)):
                unready.discard(subscriber)
                if not unready:
                    report("ready")
            if subscriber.saw_sentinel and subscriber in behind:
                behind.discard(subscriber)
                if not behind and not unready:
                    report("caught_up")
            if subscriber.ended:
                poller.unregister(fd)
                del by_fd[fd]
        if unready and time.monotonic() > deadline:
            raise TimeoutError(f"the subscribers did not all get their snapshot within {PHASE_TIMEOUT:g}s")
        time.sleep(max(0.0, round_started + READ_EVERY - time.monotonic()))


class ReadersProcess:
    """The readers' process, driven over its stdin and stdout; stopped by its PID."""

    def __init__(self, process: asyncio.subprocess.Process, subscribers: int) -> None:
        if process.stdin is None or process.stdout is None:
            raise ValueError("the readers' process is driven over pipes")
        self.subscribers = subscribers + 1  # with the verifier: the phase's N
        self.process = process
        self.stdin, self.stdout = process.stdin, process.stdout

    @classmethod
    async def start(cls, target: str, readers: int, non_readers: int, log: Path) -> ReadersProcess:
        command = [str(THIS_FILE), "--role", "readers", "--target", target]
        command += ["--readers", str(readers), "--non-readers", str(non_readers)]
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
        started = cls(process, readers + non_readers)
        try:
            await started.expect("ready")
        except BaseException:
            await started.stop()
            raise
        return started

    async def expect(self, event: str) -> dict[str, Any]:
        async with asyncio.timeout(PHASE_TIMEOUT):
            while line := await self.stdout.readline():
                message: dict[str, Any] = json.loads(line)
                if message["event"] == event:
                    return message
        raise RuntimeError(f"the readers' process ended (status {await self.process.wait()}) before {event!r}")

    async def counts(self) -> dict[str, Any]:
        self.stdin.write(b"counts\n")
        await self.stdin.drain()
        return await self.expect("counts")

    async def stop(self) -> None:
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                os.kill(self.process.pid, signal.SIGKILL)
                await self.process.wait()


# --------------------------------------------------------------------------------------------- the floor


async def serve_bare(ready_file: Path) -> None:
    """The floor: a grpc.aio server whose SubscribeModelStatus handler yields bytes from a queue per stream.

    A new stream gets the warm-up model's status at once (its snapshot). On stdin, ``send COUNT SIZE`` queues COUNT
    messages of SIZE bytes, then the sentinel's status, for every stream; the queues are filled 16 messages per
    stream at a time, yielding to the loop between, as a publisher would.
    """
    queues: list[asyncio.Queue[bytes]] = []

    async def subscribe(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues.append(queue)
        queue.put_nowait(status_bytes(WARM_UP, 0))
        while True:
            yield await queue.get()

    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_stream_rpc_method_handler(subscribe)  # bytes as they are
    server = aio.server()
    service, _, method = SUBSCRIBE_PATH[1:].partition("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    write_json(ready_file, {"pid": os.getpid(), "listen": f"127.0.0.1:{port}"})
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := (await commands.readline()).decode().strip():
        _send, count, size = line.split()
        message = status_bytes("m-floor", int(size))
        for index in range(int(count)):
            for queue in queues:
                queue.put_nowait(message)
            if index % 16 == 15:
                await asyncio.sleep(0)
        for queue in queues:
            queue.put_nowait(status_bytes(SENTINEL, 0))
    await server.stop(None)


def status_bytes(name: str, size: int) -> bytes:
    """A ModelStatusResponse of ``name`` (Available), padded with its reason to about ``size`` bytes."""
    status = pb.ModelStatusResponse(
        modelName=name,
        versions=[pb.ModelVersionStatus(version=1, serverName="mlserver", state=pb.ModelStatus(state=AVAILABLE))],
        operation=pb.ModelStatusResponse.ModelCreate,
    )
    padding = size - status.ByteSize()
    if padding > 3:
        status.versions[0].state.reason = "x" * (padding - 3)
    return status.SerializeToString()


async def floor_phase(config: Config, subscribers: int, per_subscriber: int, size: int) -> dict[str, Any]:
    """The bare server fanning out ``per_subscriber`` messages of ``size`` bytes to ``subscribers`` streams."""
    work = config.workdir / "floor"
    work.mkdir()
    ready = work / "ready.json"
    with (work / "bare.log").open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            sys.executable, str(THIS_FILE), "--role", "bare-server", "--ready-file", str(ready),
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    readers: ReadersProcess | None = None
    non_readers = min(config.non_readers, subscribers - 1)
    try:
        async with asyncio.timeout(60):
            while (info := read_ready_file(ready)) is None:
                if server.returncode is not None:
                    raise RuntimeError(f"the bare grpc.aio server exited ({server.returncode}) before it was ready")
                await asyncio.sleep(0.02)
        readers = await ReadersProcess.start(
            info["listen"], subscribers - non_readers, non_readers, work / "readers.log"
        )
        before = await readers.counts()
        cpu_before = cpu_seconds(server.pid)
        started = time.monotonic()
        if server.stdin is None:
            raise RuntimeError("the bare grpc.aio server has no stdin")
        server.stdin.write(f"send {per_subscriber} {size}\n".encode())
        await server.stdin.drain()
        after = await readers.expect("caught_up")
        seconds = time.monotonic() - started
        cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        if readers is not None:
            await readers.stop()
        if server.returncode is None:
            server.terminate()  # by its PID
        await server.wait()
    delivered = after["messages"] - before["messages"]
    return {
        "subscribers": subscribers,
        "non_readers": non_readers,
        "messages_per_subscriber": per_subscriber,
        "bytes_per_message": size,
        "seconds": round(seconds, 2),
        "server_cpu_seconds": round(cpu, 2),
        "deliveries": delivered,
        "deliveries_per_cpu_second": round(delivered / cpu) if cpu else None,
        "us_per_delivery": round(1e6 * cpu / max(1, delivered), 1),
        "readers_cpu_seconds": round(after["cpu_seconds"] - before["cpu_seconds"], 2),
    }


# --------------------------------------------------------------------------------------------- a phase


class Verifier:
    """The subscriber in this process: decodes every status, knows which models are Available."""

    def __init__(self, listen: str) -> None:
        self.channel = aio.insecure_channel(listen)
        stub = pb_grpc.SchedulerStub(self.channel)
        self.call = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="bench-fanout-verifier"))
        self.messages = 0
        self.bytes = 0  # serialised size of every status received: the floor sends messages of the mean size
        self.available: set[str] = set()
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for status in self.call:
            self.messages += 1
            self.bytes += status.ByteSize()
            if status.versions and status.versions[-1].state.state == AVAILABLE:
                self.available.add(status.modelName)
            else:
                self.available.discard(status.modelName)
            self.changed.set()

    async def wait_available(self, names: set[str]) -> None:
        async with asyncio.timeout(PHASE_TIMEOUT):
            while not names <= self.available:
                if self.task.done():
                    self.task.result()
                    raise RuntimeError("the verifier's status stream ended")
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        self.call.cancel()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aio.AioRpcError):
            await self.task
        await self.channel.close()


@dataclass
class Config:
    models: int
    replicas: int
    concurrency: int
    subscribers: list[int]
    non_readers: int
    subscriber_lag: float
    workdir: Path
    floor: bool = True
    py_spy: str | None = None  # profile the scheduler in the largest N's phase (slows it: figures from runs without)
    profile_out: Path | None = None
    relays: int = 0  # the N - 1 subscribers of a phase through this many status relays (0: at the scheduler)
    relay_nice: int = 0  # the relays' niceness: > 0 lets the scheduler's loop go first on the shared cores


def one_request(name: str) -> pb.LoadModelRequest:
    request = load_requests(1)[0]
    request.model.meta.name = name
    return request


def start_processes(config: Config, work: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    ready = work / "ready.json"
    command = [sys.executable, "-m", "modelplane.cli", "scheduler", "--listen", "127.0.0.1:0"]
    command += ["--agent-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
    command += ["--state-dir", str(work / "state"), "--ready-file", str(ready)]
    command += ["--sync-grace", "0.1", "--shutdown-grace", "2", "--log-level", "warning"]
    command += ["--subscriber-lag", f"{config.subscriber_lag:g}"]
    scheduler = spawn(command, work / "scheduler.log")
    try:
        info = wait_for_file(ready, scheduler, 60, "the scheduler")
    except BaseException:
        stop_process(scheduler)
        raise
    return scheduler, info


def start_relays(config: Config, work: Path, scheduler_listen: str) -> list[tuple[subprocess.Popen[bytes], str]]:
    """``config.relays`` status relays (``modelplane status-relay``) of the scheduler: (process, listen) each."""
    relays: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for index in range(config.relays):
            ready = work / f"relay-{index}-ready.json"
            command = ["nice", "-n", str(config.relay_nice)] if config.relay_nice else []
            command += [sys.executable, "-m", "modelplane.cli", "status-relay", "--scheduler", scheduler_listen]
            command += ["--listen", "127.0.0.1:0", "--ready-file", str(ready), "--log-level", "warning"]
            command += ["--subscriber-lag", f"{config.subscriber_lag:g}", "--max-subscribers", "100000"]
            relay = spawn(command, work / f"relay-{index}.log")
            relays.append((relay, ""))
            info = wait_for_file(ready, relay, 60, f"status relay {index}")
            relays[-1] = (relay, info["listen"])
    except BaseException:
        for relay, _listen in relays:
            stop_process(relay)
        raise
    return relays


async def wait_relays_current(relays: list[tuple[subprocess.Popen[bytes], str]]) -> None:
    """Until every relay's Scheduler service is SERVING: it has a current snapshot of every kind of status."""
    service = pb.DESCRIPTOR.services_by_name["Scheduler"].full_name
    async with asyncio.timeout(PHASE_TIMEOUT):
        for _relay, listen in relays:
            async with aio.insecure_channel(listen) as channel:
                async for answer in watch_health(channel, service):
                    if status_name(answer.status) == "SERVING":
                        break


def start_agents(config: Config, work: Path, agent_listen: str) -> subprocess.Popen[bytes]:
    ready = work / "agents-ready.json"
    command = [sys.executable, str(LOAD_MODEL_RATE), "--role", "agents", "--target", agent_listen]
    command += ["--replicas", str(config.replicas), "--ready-file", str(ready)]
    command += ["--stats-file", str(work / "agents-stats.json")]
    agents = spawn(command, work / "agents.log")
    try:
        wait_for_file(ready, agents, 120, "the simulated agents")
    except BaseException:
        stop_process(agents)
        raise
    return agents


async def measure(
    config: Config,
    listen: str,
    scheduler_pid: int,
    verifier: Verifier,
    readers: ReadersProcess | None,
    *,
    relay_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """The M calls and the sentinel, with the subscribers in place; counts and CPU around them."""
    requests = load_requests(config.models)
    names = {request.model.meta.name for request in requests}
    readers_before = await readers.counts() if readers is not None else None
    verifier_before = verifier.messages
    verifier_bytes_before = verifier.bytes
    profiled = config.py_spy is not None and readers is not None and readers.subscribers == max(config.subscribers)
    profile = config.workdir / "profile.txt"
    profiler = start_profiler(config.py_spy, scheduler_pid, profile) if profiled and config.py_spy else None
    cpu_before = cpu_seconds(scheduler_pid)
    relays_before = sum(cpu_seconds(pid) for pid in relay_pids)
    started = time.monotonic()
    drive = await drive_load_model(listen, requests, config.concurrency, scheduler_pid)
    await verifier.wait_available(names)
    all_available = time.monotonic()
    async with aio.insecure_channel(listen) as channel:
        await pb_grpc.SchedulerStub(channel).LoadModel(one_request(SENTINEL), timeout=60)
    await verifier.wait_available({SENTINEL})
    readers_after = await readers.expect("caught_up") if readers is not None else None
    caught_up = time.monotonic()
    cpu = cpu_seconds(scheduler_pid) - cpu_before
    relays_cpu = sum(cpu_seconds(pid) for pid in relay_pids) - relays_before
    if profiler is not None:
        stop_profiler(profiler)
        if config.profile_out is not None:
            shutil.copyfile(profile, config.profile_out)
    delivered = verifier.messages - verifier_before
    phase: dict[str, Any] = {
        "bytes_per_status": round((verifier.bytes - verifier_bytes_before) / max(1, delivered)),
    }
    if readers_before is not None and readers_after is not None:
        delivered += readers_after["messages"] - readers_before["messages"]
        phase["readers_cpu_seconds"] = round(readers_after["cpu_seconds"] - readers_before["cpu_seconds"], 2)
        phase["readers_ended"] = readers_after["readers_ended"]
        phase["non_readers_ended"] = readers_after["non_readers_ended"]
    drive_fields = asdict(drive)
    drive_fields.pop("segments")
    if profiler is not None:
        phase["profile"] = summarize_profile(profile, top=25)
    if relay_pids:
        # The relays' own CPU, on the same two cores as the scheduler: the fan-out's cost moved, not gone.
        phase["relays_cpu_seconds"] = round(relays_cpu, 2)
        phase["gross_deliveries_per_cpu_second_with_relays"] = round(delivered / (cpu + relays_cpu))
    return phase | {
        "load_model": drive_fields,
        "seconds_to_all_available": round(all_available - started, 3),
        "seconds_to_caught_up": round(caught_up - started, 3),
        "scheduler_cpu_seconds": round(cpu, 2),
        "deliveries": delivered,
        "deliveries_per_model": round(delivered / config.models, 2),
        "gross_deliveries_per_cpu_second": round(delivered / cpu) if cpu else None,
        "scheduler_rss_bytes": rss_bytes(scheduler_pid)[0],
    }


async def run_phase(config: Config, label: str, subscribers: int) -> dict[str, Any]:
    """A fresh scheduler and agents, ``subscribers`` subscribers (the verifier one of them), the measurement."""
    work = config.workdir / label
    work.mkdir()
    scheduler, info = start_processes(config, work)
    agents: subprocess.Popen[bytes] | None = None
    readers: ReadersProcess | None = None
    verifier: Verifier | None = None
    relays: list[tuple[subprocess.Popen[bytes], str]] = []
    result: dict[str, Any] = {"subscribers": subscribers}
    try:
        agents = start_agents(config, work, info["agent_listen"])
        await wait_replicas(info["listen"], config.replicas, 120)
        verifier = Verifier(info["listen"])
        async with aio.insecure_channel(info["listen"]) as channel:
            await pb_grpc.SchedulerStub(channel).LoadModel(one_request(WARM_UP), timeout=60)
        await verifier.wait_available({WARM_UP})
        target = info["listen"]
        if subscribers > 1 and config.relays:
            relays = start_relays(config, work, info["listen"])
            await wait_relays_current(relays)
            target = ",".join(listen for _relay, listen in relays)
            result["relays"] = config.relays
        if subscribers > 1:
            non_readers = min(config.non_readers, subscribers - 1)
            result["non_readers"] = non_readers
            opening = time.monotonic()
            readers = await ReadersProcess.start(
                target, subscribers - 1 - non_readers, non_readers, work / "readers.log"
            )
            result["subscribe_seconds"] = round(time.monotonic() - opening, 2)
        relay_pids = [relay.pid for relay, _listen in relays]
        result |= await measure(config, info["listen"], scheduler.pid, verifier, readers, relay_pids=relay_pids)
    finally:
        if verifier is not None:
            await verifier.close()
        status, shutdown = stop_process(scheduler)  # before the readers: they must not end first
        result["scheduler_exit"] = {"status": status, "shutdown_seconds": shutdown}
        if readers is not None:
            await readers.stop()
        for relay, _listen in relays:
            stop_process(relay)
        if agents is not None:
            stop_process(agents)
    lines = [line for line in (work / "scheduler.log").read_text(errors="replace").splitlines() if line.strip()]
    result["scheduler_log_lines"] = len(lines)
    result["scheduler_log_head"] = lines[:5]
    return result


def compare(phases: list[dict[str, Any]], floor: dict[str, Any] | None) -> dict[str, Any]:
    """Each N against the mean of the reference phases (one subscriber), first and last; the largest N's gross
    deliveries per CPU-second also against the bare grpc.aio server's (the floor)."""
    references = [p for p in phases if p["subscribers"] == 1]
    rate = sum(p["load_model"]["calls_per_second"] for p in references) / len(references)
    cpu = sum(p["scheduler_cpu_seconds"] for p in references) / len(references)
    delivered = sum(p["deliveries"] for p in references) / len(references)
    found: dict[str, Any] = {"reference_calls_per_second": round(rate, 1), "reference_cpu_seconds": round(cpu, 2)}
    for phase in phases:
        if phase["subscribers"] == 1:
            continue
        extra_cpu = phase["scheduler_cpu_seconds"] - cpu
        found[str(phase["subscribers"])] = {
            "load_model_slowdown": round(rate / phase["load_model"]["calls_per_second"], 2),
            "deliveries_per_cpu_second": round((phase["deliveries"] - delivered) / extra_cpu)
            if extra_cpu > 0
            else None,
            "gross_deliveries_per_cpu_second": phase["gross_deliveries_per_cpu_second"],
            "scheduler_cpu_us_per_delivery": round(1e6 * extra_cpu / (phase["deliveries"] - delivered), 1)
            if phase["deliveries"] > delivered
            else None,
        }
        if "relays_cpu_seconds" in phase:
            found[str(phase["subscribers"])] |= {
                "relays": phase["relays"],
                "relays_cpu_seconds": phase["relays_cpu_seconds"],
                "gross_deliveries_per_cpu_second_with_relays": phase["gross_deliveries_per_cpu_second_with_relays"],
            }
        if floor is not None and floor["subscribers"] == phase["subscribers"] and floor["deliveries_per_cpu_second"]:
            figures = found[str(phase["subscribers"])]
            figures["floor_deliveries_per_cpu_second"] = floor["deliveries_per_cpu_second"]
            figures["gross_over_floor"] = round(
                phase["gross_deliveries_per_cpu_second"] / floor["deliveries_per_cpu_second"], 2
            )
    return found


async def benchmark(config: Config) -> dict[str, Any]:
    env = environment(config.workdir)
    plan = [1, *config.subscribers, 1]
    phases = [await run_phase(config, f"phase-{index}-{count}", count) for index, count in enumerate(plan)]
    floor = None
    if config.floor:
        largest = max(phases, key=lambda phase: phase["subscribers"])
        per_subscriber = round(largest["deliveries"] / largest["subscribers"])
        floor = await floor_phase(config, largest["subscribers"], per_subscriber, largest["bytes_per_status"])
    env["loadavg_end"] = os.getloadavg()[0]
    return {
        "config": {
            "models": config.models,
            "replicas": config.replicas,
            "concurrency": config.concurrency,
            "subscribers": config.subscribers,
            "non_readers": config.non_readers,
            "subscriber_lag": config.subscriber_lag,
            "floor": config.floor,
            "relays": config.relays,
            "relay_nice": config.relay_nice,
        },
        "environment": env,
        "phases": phases,
        "compared": compare(phases, floor),
        "floor": floor,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{result['config']['models']} LoadModel calls per phase on {result['config']['replicas']} replicas; "
        f"{result['config']['non_readers']} of the subscribers never read"
        + (f"; all but one through {result['config']['relays']} status relays" if result["config"]["relays"] else ""),
        f"{'subscribers':>11} {'calls/s':>8} {'to caught up s':>15} {'sched CPU s':>12} {'deliveries':>11} "
        f"{'per model':>9} {'readers CPU s':>13} {'non-readers ended':>17}",
    ]
    for phase in result["phases"]:
        lines.append(
            f"{phase['subscribers']:>11} {phase['load_model']['calls_per_second']:>8} "
            f"{phase['seconds_to_caught_up']:>15} {phase['scheduler_cpu_seconds']:>12} {phase['deliveries']:>11} "
            f"{phase['deliveries_per_model']:>9} {phase.get('readers_cpu_seconds', '-'):>13} "
            f"{phase.get('non_readers_ended', '-'):>17}"
        )
    compared = result["compared"]
    lines.append(f"reference (1 subscriber): {compared['reference_calls_per_second']} calls/s")
    for count in result["config"]["subscribers"]:
        figures = compared[str(count)]
        lines.append(
            f"{count} subscribers: LoadModel {figures['load_model_slowdown']}x slower; "
            f"{figures['deliveries_per_cpu_second']} deliveries per scheduler CPU-second beyond the reference "
            f"({figures['scheduler_cpu_us_per_delivery']} us each), {figures['gross_deliveries_per_cpu_second']} "
            "over all its CPU"
        )
        if "relays_cpu_seconds" in figures:
            lines.append(
                f"  through {figures['relays']} relays: the relays used {figures['relays_cpu_seconds']} CPU s; "
                f"{figures['gross_deliveries_per_cpu_second_with_relays']} deliveries per CPU-second of the scheduler "
                "and the relays together"
            )
    floor = result.get("floor")
    if floor:
        lines.append(
            f"floor, a bare grpc.aio server, {floor['subscribers']} subscribers: {floor['deliveries']} deliveries of "
            f"{floor['bytes_per_message']} B in {floor['server_cpu_seconds']} CPU s: "
            f"{floor['deliveries_per_cpu_second']} per CPU-second ({floor['us_per_delivery']} us each)"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Status fan-out to N subscribers, some never reading.")
    parser.add_argument("--models", type=int, default=None, help="LoadModel calls per phase (default 500)")
    parser.add_argument("--replicas", type=int, default=None, help="simulated agents (default 10)")
    parser.add_argument("--concurrency", type=int, default=64, help="LoadModel calls in flight (default 64)")
    parser.add_argument("--subscribers", default=None, help="comma-separated subscriber counts (default 200,1000)")
    parser.add_argument("--non-readers", type=int, default=None, help="subscribers that never read (default 20)")
    parser.add_argument(
        "--subscriber-lag", type=float, default=600, help="the scheduler's --subscriber-lag (default 600)"
    )
    parser.add_argument(
        "--no-floor", dest="floor", action="store_false", help="skip the bare grpc.aio server (the floor)"
    )
    parser.add_argument("--py-spy", metavar="BIN", help="py-spy binary: profile the scheduler with the largest N")
    parser.add_argument("--profile-out", type=Path, metavar="PATH", help="keep py-spy's raw stacks here")
    parser.add_argument(
        "--relays",
        type=int,
        default=0,
        metavar="K",
        help="serve the N - 1 subscribers through K status relays (modelplane status-relay), spread evenly; the "
        "verifier stays at the scheduler (default 0: every subscriber at the scheduler)",
    )
    parser.add_argument(
        "--relay-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the relays with this niceness (0 to 19; default 0): the scheduler first on shared cores",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 models, 5 replicas, 50,100 subscribers")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON here")
    parser.add_argument("--workdir", type=Path, help="keep logs and state in a new folder in DIR (default: removed)")
    # The readers' process.
    parser.add_argument("--role", choices=("main", "readers", "bare-server"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--readers", type=int, default=0, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    options.models = options.models or (100 if options.quick else 500)
    options.replicas = options.replicas or (5 if options.quick else 10)
    options.non_readers = options.non_readers if options.non_readers is not None else (5 if options.quick else 20)
    counts = options.subscribers or ("50,100" if options.quick else "200,1000")
    try:
        options.subscribers = [int(count) for count in counts.split(",")]
    except ValueError:
        parser.error("--subscribers takes comma-separated whole numbers, e.g. 200,1000")
    if not all(2 <= count <= 5000 for count in options.subscribers):
        parser.error("each subscriber count must be from 2 to 5000")
    if not 0 <= options.relays <= 16 or not 0 <= options.relay_nice <= 19:
        parser.error("--relays must be from 0 to 16, --relay-nice from 0 to 19")
    if options.models < 1 or options.replicas < 1 or options.concurrency < 1 or options.non_readers < 0:
        parser.error("--models, --replicas and --concurrency must be at least 1, --non-readers at least 0")
    if options.replicas * REPLICA_MEMORY < (options.models + 2) * MODEL_MEMORY:
        parser.error("the replicas cannot hold that many models")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options.role == "readers":
        serve_readers(options.target, options.readers, options.non_readers)
        return 0
    if options.role == "bare-server":
        asyncio.run(serve_bare(options.ready_file))
        return 0
    with working_directory(options.workdir) as workdir:
        config = Config(
            options.models,
            options.replicas,
            options.concurrency,
            options.subscribers,
            options.non_readers,
            options.subscriber_lag,
            workdir,
            options.floor,
            options.py_spy,
            options.profile_out,
            options.relays,
            options.relay_nice,
        )
        result = asyncio.run(benchmark(config))
    print(render(result))
    if options.json is not None:
        write_json(options.json, result)
    healthy = all(
        not phase["load_model"]["errors"] and phase["scheduler_exit"]["status"] == 0 for phase in result["phases"]
    )
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
