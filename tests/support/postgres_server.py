"""A real PostgreSQL (Debian's ``postgresql`` package) for one test session, on a free loopback port.

PostgreSQL refuses to run as root, so the cluster runs as the ``postgres`` user in a folder that user owns
(infra.md "PostgreSQL"), never on the package's own cluster or port. ``pg_ctl start`` leaves the server running
as a daemon: it is stopped by the postmaster's PID (its pid file's first line), with SIGINT, PostgreSQL's fast
shutdown, and SIGKILL if that does not end it in time.

Test modules use it with ``pytest_plugins = ["tests.support.postgres_server"]``; each test takes a database of
its own (:meth:`PostgresServer.new_database`) rather than sharing tables with other tests. PYTEST_DONT_REWRITE:
modules import its helpers.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from servers.launch.local import free_ports
from tests.support.processes import alive

# Debian installs each major version in its own folder (15 on bookworm): the newest there is used.
_INITDBS = sorted(
    (path for path in Path("/usr/lib/postgresql").glob("*/bin/initdb") if path.parts[-3].isdigit()),
    key=lambda path: int(path.parts[-3]),
)
PG_BIN = _INITDBS[-1].parent if _INITDBS else Path("/usr/lib/postgresql/15/bin")
USER = "modelplane"


@dataclass(frozen=True)
class PostgresServer:
    port: int
    folder: Path
    pid: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')  # a name we made: hex digits only
        return self.url(name)


def _as_postgres(*argv: str, timeout: float) -> None:
    command = " ".join(f"'{part}'" for part in argv)
    subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, timeout=timeout, capture_output=True)


def start_postgres(timeout: float = 60) -> PostgresServer:
    """initdb and start a cluster in a new folder (short: the Unix socket lives there); returns once it accepts
    connections. The caller stops it with :func:`stop_postgres`."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL is missing: apt-get install -y postgresql (./run test installs it)")
    folder = Path(tempfile.mkdtemp(prefix="mp-pg-"))
    shutil.chown(folder, "postgres")
    data, log = folder / "data", folder / "log"
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, timeout=timeout)
    port = free_ports(1)[0]
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    command = f"{PG_BIN / 'pg_ctl'} -D {data} -o '{options}' -l {log} -w -t {int(timeout)} start"
    try:
        subprocess.run(
            ["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, timeout=timeout + 10, capture_output=True
        )
    except subprocess.CalledProcessError:
        details = log.read_text(errors="replace") if log.exists() else "(no log)"
        raise RuntimeError(f"PostgreSQL did not start on {port}:\n{details}") from None
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    return PostgresServer(port, folder, pid)


def stop_postgres(server: PostgresServer, timeout: float = 30) -> None:
    if alive(server.pid):
        os.kill(server.pid, signal.SIGINT)  # fast shutdown: ends sessions, then exits
        deadline = time.monotonic() + timeout
        while alive(server.pid):
            if time.monotonic() > deadline:
                os.kill(server.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL per session; stopped by PID however the session ends."""
    server = start_postgres()

    def stop() -> None:
        stop_postgres(server)

    atexit.register(stop)
    try:
        yield server
    finally:
        stop()
        atexit.unregister(stop)
