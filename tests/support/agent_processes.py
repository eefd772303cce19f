"""``modelplane agent --launch-server`` processes for tests: each starts its own MLServer or Triton; started as
subprocesses and stopped by PID (the agent first, then whatever server it left behind)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import MODELPLANE, STARTED, stop_process


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
    # The StatefulSet pod the agent would run in (--pod-name): it names the server and replica instead.
    pod_name: str | None = None


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


def _identity_flags(spec: AgentSpec) -> list[str]:
    if spec.pod_name is not None:
        return [f"--pod-name={spec.pod_name}", *([f"--server-name={spec.server_name}"] if spec.server_name else [])]
    return [f"--server-name={spec.server_name or spec.kind}", f"--replica-idx={spec.replica_idx}"]


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
            *_identity_flags(spec),
            f"--server-kind={spec.kind}",
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
