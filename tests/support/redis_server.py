"""A real Redis (the apt package's redis-server) for one test session, with persistence off.

Test modules use it with ``pytest_plugins = ["tests.support.redis_server"]`` (a plugin, so the session fixture exists
once however many modules ask for it). Tests share the server: each uses its own key prefix
(``RedisServer.unique_prefix``) or its own database number rather than flushing what others wrote.

Modules also import its helpers, so it is imported before pytest could rewrite its asserts:
PYTEST_DONT_REWRITE says that is expected.
redis-server daemonizes itself (``--daemonize yes``), so the process to stop is not our child: it is found
through its pidfile and stopped by that PID.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from servers.launch.local import free_ports
from tests.support.processes import alive


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int
    pid: int
    pidfile: Path
    log_path: Path

    @property
    def url(self) -> str:
        """A URL for ``redis.asyncio.Redis.from_url``: database 0."""
        return f"redis://{self.host}:{self.port}/0"

    def url_for(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    @staticmethod
    def unique_prefix(prefix: str = "test") -> str:
        """A key prefix no other test uses: the session's server is shared."""
        return f"{prefix}:{uuid.uuid4().hex[:12]}:"


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def stop_redis(server: RedisServer, timeout: float = 10) -> None:
    """SIGTERM by the pidfile's PID, SIGKILL if it does not exit in time."""
    if not alive(server.pid):
        return
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(server.pid):
        if time.monotonic() > deadline:
            os.kill(server.pid, signal.SIGKILL)
            break
        time.sleep(0.02)


def start_redis(folder: Path, *, port: int | None = None, timeout: float = 20, durable: bool = False) -> RedisServer:
    """Start redis-server on ``port`` (default: a free one) on loopback; returns once it answers PING. The
    caller stops it with :func:`stop_redis`.

    No persistence by default. ``durable`` keeps an append-only file in ``folder``, written through on every
    write (``appendfsync always``), so a server started again in the same folder has every acknowledged
    write, as a production Redis with AOF has after a restart."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: apt-get install -y redis-server")
    port = port or free_ports(1)[0]
    pidfile = folder / "redis.pid"
    log = folder / "redis.log"
    subprocess.run(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if durable else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "yes",
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(log),
            "--dir",
            str(folder),
        ],
        check=True,
        timeout=timeout,
        cwd=folder,
    )
    deadline = time.monotonic() + timeout
    while not (pidfile.exists() and pidfile.read_text().strip() and _ping(port)):
        if time.monotonic() > deadline:
            details = log.read_text(errors="replace") if log.exists() else "(no log)"
            if pidfile.exists() and pidfile.read_text().strip():  # started but not answering: do not leak it
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            raise TimeoutError(f"redis-server not answering on {port}:\n{details}")
        time.sleep(0.01)
    return RedisServer("127.0.0.1", port, int(pidfile.read_text().strip()), pidfile, log)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server per session; stopped by PID however the session ends."""
    server = start_redis(tmp_path_factory.mktemp("redis"))

    def stop() -> None:
        stop_redis(server)

    atexit.register(stop)  # also if the session dies before fixture teardown
    try:
        yield server
    finally:
        stop()
        atexit.unregister(stop)
