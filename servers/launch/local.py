"""A locally started inference-server process: free ports, its log, readiness, and stopping it by PID.

The process gets its own session (process group), so the workers MLServer forks and the stubs Triton's
Python backend starts can be killed together when the server itself does not stop on SIGTERM, and a death
signal, so a launcher killed by kill -9 takes its server with it. It is started by
``modelplane.child_processes`` (no Python runs in the forked child: the agent has gRPC threads; see there).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from modelplane.child_processes import start_child
from servers.adapter import InferenceServer
from servers.mlserver import MLServer
from servers.triton import TritonServer


class LaunchError(RuntimeError):
    """The server could not be started or did not become ready; the message includes its log's tail."""


class PortTakenError(LaunchError):
    """The server exited because a port it was given was taken after it was picked: start it on others."""


@dataclass(frozen=True)
class ServerCommand:
    """How a server process is started, kept so it can be started again exactly so (same ports, same files)."""

    name: str  # "MLServer" or "Triton", for messages
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(repr=False)


@dataclass(eq=False)
class LocalServer:
    """A running MLServer or Triton process on loopback ports, with what an adapter needs to drive it."""

    kind: str  # "mlserver" or "triton"
    pid: int
    http_url: str
    grpc_target: str
    repository: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    command: ServerCommand
    stop_timeout: float = 15.0

    @property
    def name(self) -> str:
        return self.command.name

    def adapter(self, *, load_timeout: float = 120.0) -> InferenceServer:
        """An adapter for this server's ports (close it when done; it does not own the process). It stays
        valid across ``start_again``, which keeps the ports."""
        if self.kind == "mlserver":
            return MLServer(self.http_url, self.grpc_target, self.repository, load_timeout=load_timeout)
        return TritonServer(self.http_url, self.grpc_target, self.repository, load_timeout=load_timeout)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def kill(self) -> None:
        """SIGKILL the server's whole process group at once (its PID is the group id). Also after the server
        itself exited, until it is reaped: what it started may live on in its group."""
        if self.process.returncode is None:  # not reaped, so the PID (the group's id) is still this server's
            _kill_group(self.pid)

    async def stop(self) -> int:
        """SIGTERM by PID, then SIGKILL to the process group after ``stop_timeout``. Idempotent; returns
        the exit status (negative: the signal that ended it)."""
        if self.process.poll() is None:
            _signal(self.pid, signal.SIGTERM)
            if not await wait_exit(self.process, self.stop_timeout):
                _kill_group(self.pid)
                await wait_exit(self.process, 10.0)
        return self.process.returncode

    async def exited(self, poll_interval: float = 0.5) -> int:
        """Wait until the process exits, however it ends (a crash, kill -9, the OOM killer); then kill what is
        left of its process group (MLServer's workers, Triton's backend stubs) and reap it, so no zombie or
        orphan remains. Returns the exit status (negative: the signal that ended it)."""
        process = self.process
        if process.returncode is not None:
            return process.returncode  # reaped already (its PID may be another process's by now)
        await _until_exited(process.pid, poll_interval)
        # Not reaped yet, so the PID (the group's id) cannot have been reused: the group is still this server's.
        _kill_group(process.pid)
        return process.wait()

    async def start_again(self, ready_timeout: float = 60.0) -> None:
        """Start the same command again (same ports, repository and log) after the process exited; returns
        once it is ready. Raises LaunchError as the first launch does (the new process is then stopped)."""
        if self.process.poll() is None:
            raise LaunchError(f"{self.name} (pid {self.pid}) is still running")
        command = self.command
        self.process = start_process(
            command.argv, log_path=self.log_path, cwd=command.cwd, env=command.env, name=command.name
        )
        self.pid = self.process.pid
        await wait_ready(self, ready_timeout, command.name)


async def _until_exited(pid: int, poll_interval: float) -> None:
    """Return once ``pid`` (our child) has exited, without reaping it: at once through a pidfd where the kernel
    has them (Linux 5.3), else by polling ``waitid(WNOWAIT)``."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            await readable
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return
    while True:
        try:
            # WNOHANG: never blocks; WNOWAIT: leaves the child to be reaped by its Popen.
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:  # noqa: ASYNC222
                return
        except ChildProcessError:
            return  # already reaped
        await asyncio.sleep(poll_interval)


# Ports for servers are picked from here up to the kernel's ephemeral range. A port that bind(0) hands out comes
# from that range, and once released, any outgoing connection on the machine may take it as its source port
# before the server binds it (seen under load: MLServer exiting with "address already in use"). Below the range
# only another explicit pick can take it, which ``launchers.start_on_free_ports`` answers by picking again.
_PICKED_PORTS_FROM = 10_000
_DEFAULT_EPHEMERAL_RANGE = (32_768, 60_999)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports, free when picked (held together, so they differ), from below the
    kernel's ephemeral range; from the kernel (bind to port 0) when that range leaves too little room below."""
    low = _ephemeral_range()[0]
    room = range(_PICKED_PORTS_FROM, low)
    candidates = random.sample(room, min(len(room), 50 * count))
    with ExitStack() as stack:
        ports: list[int] = []
        for candidate in candidates:
            if len(ports) == count:
                break
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            ports.append(candidate)
        while len(ports) < count:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(word) for word in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL_RANGE
    return low, high


def start_process(
    argv: Sequence[str], *, log_path: Path, cwd: Path, env: Mapping[str, str], name: str
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log_path``, in a session of its own, sent SIGTERM
    if the thread that started it dies (even by kill -9), so a crashed agent never leaves an orphan server."""
    if not Path(argv[0]).is_file():
        raise LaunchError(f"{name} is not installed: {argv[0]} does not exist")
    with log_path.open("ab") as log:
        try:
            return start_child(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        except OSError as error:
            raise LaunchError(f"{name} could not be started ({argv[0]}): {error}") from error


async def wait_ready(server: LocalServer, timeout: float, name: str) -> LocalServer:
    """Return ``server`` once ``/v2/health/ready`` answers 200. If the process exits, the wait times out
    or is cancelled, the process is stopped and (except on cancel) LaunchError says why."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                if server.process.poll() is not None:
                    tail = server.log_tail()
                    # MLServer (uvicorn): "address already in use"; Triton: "Socket '...' already in use".
                    error = PortTakenError if "already in use" in tail.lower() else LaunchError
                    raise error(
                        f"{name} exited with status {server.process.returncode} before it was ready; "
                        f"log {server.log_path}:\n{tail}"
                    )
                if await _answers_ready(session, server.http_url):
                    return server
                if loop.time() >= deadline:
                    raise LaunchError(
                        f"{name} was not ready after {timeout:g}s; log {server.log_path}:\n{server.log_tail()}"
                    )
                await asyncio.sleep(0.1)
    except BaseException:
        # Never ready, so nothing to drain: kill at once (also when cancelled, where awaiting is unreliable).
        server.kill()
        await asyncio.shield(wait_exit(server.process, 10.0))
        raise


async def _answers_ready(session: aiohttp.ClientSession, http_url: str) -> bool:
    try:
        async with session.get(f"{http_url}/v2/health/ready", timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll (and so reap) ``process`` until it exits (True) or ``timeout`` seconds pass (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while process.poll() is None:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment minus what belongs to our own interpreter, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra or {})
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(log unreadable: {error})"


def _signal(pid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signum)


def _kill_group(pid: int) -> None:
    # The server leads its own session (start_new_session), so its group id is its PID.
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
