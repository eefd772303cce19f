"""A real Docker Engine API for tests: Podman's ``podman system service``, started as infra.md describes.

One per session (``docker_engine_url``), in a private mount namespace (``unshare -m``) with its own storage
root and run root under a temporary folder, the vfs storage driver, cgroupfs and file events, listening on
a unix socket in that folder: no TCP port, so no traffic leaves the machine. Stopped by PID at the end;
the folder is removed, and so are the host paths Podman creates regardless of ``--root``/``--runroot``
(/run/libpod, /run/crun, /var/lib/containers/cache) when they did not exist before and no other Podman runs.

Test modules use it with ``pytest_plugins = ["tests.support.podman_engine"]`` (as tests/support/real_components.py is
used), so the service exists once however many modules ask for it.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.support.processes import stop_process

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=4096:4096","nproc=4096:4096"]
[engine]
cgroup_manager="cgroupfs"
events_logger="file"
"""
HOST_LEFTOVERS = (Path("/run/libpod"), Path("/run/crun"), Path("/var/lib/containers/cache"))


def _other_podman_running(own_pid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own_pid:
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        if Path(argv0.decode(errors="replace")).name == "podman":
            return True
    return False


def _wait_for_engine(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"podman system service exited with {process.returncode}:\n{log.read_text()}")
        try:
            client = docker.DockerClient(base_url=url, timeout=5)
            try:
                client.version()
                return
            finally:
                client.close()
        except docker.errors.DockerException:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"podman system service not answering after {timeout}s:\n{log.read_text()}"
                ) from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def docker_engine_url() -> Iterator[str]:
    """``unix://.../podman.sock``: a Docker Engine API (Podman 4.3) for the session; stopped by PID after it."""
    if shutil.which("podman") is None or shutil.which("unshare") is None:
        pytest.fail("podman is not installed: apt-get install -y podman buildah (see infra.md)")
    # Podman refuses a --runroot of more than 50 characters, and pytest's session folders grow long (under
    # pytest-xdist: /tmp/pytest-of-root/pytest-N/popen-gwK/podman0/runroot is 52). Removed after the session.
    folder = Path(tempfile.mkdtemp(prefix="mp-podman-", dir="/tmp"))
    (folder / "containers.conf").write_text(CONTAINERS_CONF)
    (folder / "tmp").mkdir()
    socket_path = folder / "podman.sock"
    log = folder / "podman.log"
    preexisting = {path for path in HOST_LEFTOVERS if path.exists()}
    service = (
        "umount /sys/fs/cgroup/unified 2>/dev/null; "
        f'exec podman --root "{folder}/root" --runroot "{folder}/runroot" --storage-driver vfs '
        "--cgroup-manager cgroupfs --events-backend file system service --time=0 "
        f'"unix://{socket_path}"'
    )
    # TMPDIR: buildah stages build contexts there, so they land in our folder and go with it.
    environment = {**os.environ, "CONTAINERS_CONF": str(folder / "containers.conf"), "TMPDIR": str(folder / "tmp")}
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", service],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    stop = functools.partial(stop_process, process)
    atexit.register(stop)  # also if the session dies before fixture teardown
    url = f"unix://{socket_path}"
    try:
        _wait_for_engine(process, url, log)
        yield url
    finally:
        stop()  # `unshare` and `sh` exec into podman: this PID is the service's own
        atexit.unregister(stop)
        shutil.rmtree(folder, ignore_errors=True)
        if not _other_podman_running(process.pid):
            for path in HOST_LEFTOVERS:
                if path not in preexisting:
                    shutil.rmtree(path, ignore_errors=True)
            containers = Path("/var/lib/containers")
            if Path("/var/lib/containers/cache") not in preexisting and containers.is_dir():
                with_contents = any(containers.iterdir())
                if not with_contents:
                    containers.rmdir()
