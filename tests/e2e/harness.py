"""What the fault tests share: stopping a process with SIGSTOP, an http file server that can hold a download
in flight, a recorder of every model status the scheduler streams, and restarting an agent as it was.

Every wait polls a condition under a generous deadline (a hang guard, never a statement about speed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.agent_processes import AgentProcess
from tests.support.cluster_fixtures import AVAILABLE, Cluster, until
from tests.support.http_stand_ins import serving


@contextlib.contextmanager
def sigstopped(*pids: int) -> Iterator[None]:
    """The processes are stopped (SIGSTOP) inside the block and continued (SIGCONT) when it ends, however it
    ends. Also how a test keeps a process from getting ahead while it injects a fault elsewhere."""
    stopped = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def requests_waiting_on(port: int) -> int:
    """How many TCP connections to 127.0.0.1:``port`` hold bytes their server has not read yet: requests that
    wait on a process that does not read (a stopped one). From the kernel's table (/proc/net/tcp), so it sees
    every connection on the machine, whoever made it."""
    local = f"0100007F:{port:04X}"
    waiting = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        established = fields[3] == "01"
        unread = int(fields[4].split(":")[1], 16)
        if fields[1] == local and established and unread > 0:
            waiting += 1
    return waiting


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes with ``text`` in one of their arguments (a training run names its job folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if any(text.encode() in argument for argument in arguments):
            found.append(int(entry.name))
    return found


async def run_processes(job_root: Path) -> list[int]:
    """The processes of a training run (``python -m trainer.run.run_job JOB_ROOT/attempt-N``), once there are any."""
    found: list[int] = []

    async def started() -> bool:
        found[:] = processes_mentioning(str(job_root))
        return bool(found)

    await until(started, f"a training run's process in {job_root}")
    return found


async def restart_agent(cluster: Cluster, agent: AgentProcess) -> AgentProcess:
    """Start the agent again as it was (same replica, folder and server kind); returns once it registered."""
    [again] = await asyncio.to_thread(cluster.start_agents, agent.spec)
    return again


# -- an http file server that can hold a download -------------------------------------------------------------


@dataclass
class HeldFiles:
    """Serves ``files`` on 127.0.0.1; a request for a path in ``held`` waits until ``release()``, so a model's
    artifact download (and with it its load) can be kept in flight for as long as a test needs."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)  # every path asked for, in order
    waiting: int = 0  # requests held right now
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def release(self) -> None:
        self.held.clear()
        self._released.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        body = self.files.get(request.path)
        if body is None:
            raise web.HTTPNotFound()
        if request.path in self.held:
            self.waiting += 1
            try:
                await self._released.wait()
            finally:
                self.waiting -= 1
        return web.Response(body=body, content_type="application/octet-stream")


@contextlib.asynccontextmanager
async def held_files() -> AsyncIterator[HeldFiles]:
    served = HeldFiles()
    app = web.Application()
    app.router.add_get("/{tail:.*}", served.handle)
    async with serving(app, shutdown_timeout=1) as served.base:
        try:
            yield served
        finally:
            served.release()  # nothing stays held while the server shuts down


# -- every model status the scheduler streams ------------------------------------------------------------------


@dataclass(frozen=True)
class SeenStatus:
    """One status of a model as a SubscribeModelStatus stream delivered it."""

    model: str
    version: int
    state: int  # ModelStatus.ModelState
    reason: str
    available_replicas: tuple[int, ...]  # the replica indexes the latest version serves on

    @property
    def available(self) -> bool:
        return self.state == AVAILABLE


@dataclass
class StatusRecorder:
    """Keeps every model status a SubscribeModelStatus stream delivers, so a test can assert about all the
    states a model went through in a period (``mark`` opens a period), not only about the last one."""

    seen: list[SeenStatus] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def first_of(self, model: str) -> None:
        """Wait until a status of ``model`` arrived: from then on the recorder misses none of its changes."""

        async def arrived() -> bool:
            if self.task is not None and self.task.done():
                self.task.result()  # raises why the stream ended
                raise AssertionError("the status stream ended")
            return bool(self.of(model))

        await until(arrived, f"a status of {model} on the status stream")

    def mark(self) -> int:
        return len(self.seen)

    def of(self, model: str, since: int = 0, until: int | None = None) -> list[SeenStatus]:
        return [status for status in self.seen[since:until] if status.model == model]

    def record(self, status: pb.ModelStatusResponse) -> None:
        if not status.versions:
            return
        latest = status.versions[-1]
        serving = tuple(
            sorted(
                index
                for index, replica in latest.modelReplicaState.items()
                if replica.state == pb.ModelReplicaStatus.ModelReplicaState.Value("Available")
            )
        )
        self.seen.append(SeenStatus(status.modelName, latest.version, latest.state.state, latest.state.reason, serving))


@contextlib.asynccontextmanager
async def recording_statuses(listen: str) -> AsyncIterator[StatusRecorder]:
    """Record every model status from the scheduler at ``listen`` while the block runs. The stream starts with
    the current state of every model, then every change: once a model's first status is in (``first_of``),
    nothing that happens to it later is missed."""
    recorder = StatusRecorder()

    async def follow(channel: aio.Channel) -> None:
        stub = pb_grpc.SchedulerStub(channel)
        stream = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName=f"faults-{uuid.uuid4()}"))
        async for status in stream:
            recorder.record(status)

    async with aio.insecure_channel(listen) as channel:
        recorder.task = asyncio.create_task(follow(channel))
        try:
            yield recorder
        finally:
            recorder.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await recorder.task
