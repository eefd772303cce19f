"""Start MLServer or Triton from their private venvs on free loopback ports, ready to take models.

Both run with an empty model repository and explicit model control: nothing loads until an agent asks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from servers.launch.local import (
    LaunchError,
    LocalServer,
    PortTakenError,
    ServerCommand,
    free_ports,
    server_env,
    start_process,
    wait_ready,
)
from servers.launch.venvs import server_venv, venv_python_version

log = logging.getLogger(__name__)
# Starts of one server, each on newly picked ports, while a picked port turns out to be taken.
PORT_ATTEMPTS = 3


async def launch_mlserver(work_dir: Path, *, venv: Path | None = None, ready_timeout: float = 60) -> LocalServer:
    """Start ``mlserver start`` with ``work_dir/repository`` as its model repository; log in
    ``work_dir/mlserver.log``. Creates the MLServer venv first when ``venv`` is not given."""
    _require_absolute(work_dir)
    venv = venv if venv is not None else await asyncio.to_thread(server_venv, "mlserver")
    mlserver = _installed(venv / "bin" / "mlserver", "MLServer")
    repository = work_dir / "repository"
    repository.mkdir(parents=True, exist_ok=True)

    async def start() -> LocalServer:
        http_port, grpc_port, metrics_port = free_ports(3)
        settings = {
            "host": "127.0.0.1",
            "http_port": http_port,
            "grpc_port": grpc_port,
            "metrics_port": metrics_port,
            "load_models_at_startup": False,
            # A model whose own load raises is answered with a 500 carrying the traceback, which is where the
            # adapter finds the reason to report; without debug the body is just "Internal Server Error".
            "debug": True,
            # Inference in the server process: workers cost memory and start-up time per model.
            "parallel_workers": 0,
            # Kept under work_dir so two servers never share them (the defaults are relative to the cwd).
            "metrics_dir": str(work_dir / "mlserver-metrics"),
            "environments_dir": str(work_dir / "mlserver-envs"),
        }
        (repository / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        log_path = work_dir / "mlserver.log"
        command = ServerCommand("MLServer", (str(mlserver), "start", str(repository)), work_dir, server_env())
        process = start_process(command.argv, log_path=log_path, cwd=work_dir, env=command.env, name=command.name)
        http_url, grpc_target = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
        server = LocalServer("mlserver", process.pid, http_url, grpc_target, repository, log_path, process, command)
        return await wait_ready(server, ready_timeout, command.name)

    return await start_on_free_ports(start, "MLServer")


async def launch_triton(work_dir: Path, *, venv: Path | None = None, ready_timeout: float = 60) -> LocalServer:
    """Start the ``tritonserver`` shipped in nvidia-pytriton (CPU, Python backend, explicit model control)
    with ``work_dir/repository``; log in ``work_dir/triton.log``. Creates the Triton venv when needed."""
    _require_absolute(work_dir)
    venv = venv if venv is not None else await asyncio.to_thread(server_venv, "triton")
    site = _site_packages(venv)
    tritonserver = _installed(site / "pytriton" / "tritonserver" / "bin" / "tritonserver", "Triton")
    backends = _backend_dir(site, work_dir / "backends", venv_python_version(venv))
    repository = work_dir / "repository"
    repository.mkdir(parents=True, exist_ok=True)

    async def start() -> LocalServer:
        http_port, grpc_port = free_ports(2)
        log_path = work_dir / "triton.log"
        argv = (
            str(tritonserver),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            "--http-address=127.0.0.1",
            f"--http-port={http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc_port}",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=5",
        )
        # The binary's shared libraries live beside the wheel; the Python backend's stub runs the venv's python
        # (numpy and friends), found on PATH.
        command = ServerCommand("Triton", argv, work_dir, server_env(_triton_paths(venv, site)))
        process = start_process(command.argv, log_path=log_path, cwd=work_dir, env=command.env, name=command.name)
        http_url, grpc_target = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
        server = LocalServer("triton", process.pid, http_url, grpc_target, repository, log_path, process, command)
        return await wait_ready(server, ready_timeout, command.name)

    return await start_on_free_ports(start, "Triton")


async def start_on_free_ports(start: Callable[[], Awaitable[LocalServer]], name: str) -> LocalServer:
    """``start()``, which picks its ports anew each time, again (up to PORT_ATTEMPTS in all) while the server exits
    because something took a port between the pick and its bind (free_ports says why that is rare)."""
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            return await start()
        except PortTakenError as error:
            log.warning(
                "%s could not bind a port picked for it, taken meanwhile; starting it on others: %s", name, error
            )
    return await start()


def _site_packages(venv: Path) -> Path:
    found = sorted((venv / "lib").glob("python3.*/site-packages"))
    if not found:
        raise LaunchError(f"Triton is not installed: {venv} is not a Python venv (no lib/python3.*/site-packages)")
    return found[-1]


def _installed(binary: Path, name: str) -> Path:
    if not binary.is_file():
        raise LaunchError(f"{name} is not installed: {binary} does not exist")
    return binary


def _backend_dir(site: Path, backends: Path, python_version: str) -> Path:
    """``backends/python/`` with the Python backend library, its utilities and the stub for our Python."""
    source = site / "pytriton" / "tritonserver"
    stub = source / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    files = [
        source / "backends" / "python" / "libtriton_python.so",
        source / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise LaunchError(f"the Triton Python backend is incomplete; missing: {', '.join(missing)}")
    python = backends / "python"
    python.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, python / path.name)  # copy2 keeps the stub executable
    return backends


def _triton_paths(venv: Path, site: Path) -> dict[str, str]:
    env = server_env()
    libraries = str(site / "nvidia_pytriton.libs")
    return {
        "LD_LIBRARY_PATH": ":".join(filter(None, [libraries, env.get("LD_LIBRARY_PATH", "")])),
        "PATH": ":".join(filter(None, [str(venv / "bin"), env.get("PATH", "")])),
    }


def _require_absolute(work_dir: Path) -> None:
    # The server runs with work_dir as its working directory, so a relative path would point elsewhere
    # (MLServer then silently falls back to its default settings, on 0.0.0.0:8080).
    if not work_dir.is_absolute():
        raise LaunchError(f"the server's work dir must be an absolute path, not {work_dir}")
