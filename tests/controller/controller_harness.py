"""``modelplane controller`` as a real process against the fake Kubernetes API, for the controller's tests.

The fake API runs on the test's event loop, so the controller process is started and awaited without blocking
that loop (the harnesses in tests/support/processes.py wait by sleeping: fine for processes that need nothing from the
test, not for one that lists from it before it is ready).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import fake_kubernetes_api as fake
from tests.support.processes import MODELPLANE, STARTED, stop_process

READY_WAIT = 60.0  # seconds: a hang guard, not an expectation


@dataclass
class ControllerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    ready: dict[str, Any]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self) -> int:
        return await asyncio.to_thread(stop_process, self.process)


def _spawn(argv: list[str], workdir: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start the process (registered in STARTED, so a failing test still stops it): it, its ready file, its log."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready_file = workdir / "controller-ready.json"
    ready_file.unlink(missing_ok=True)
    log_path = workdir / "controller.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([*argv, f"--ready-file={ready_file}"], stdout=log, stderr=subprocess.STDOUT)
    STARTED.append(process)
    return process, ready_file, log_path


async def start_controller(
    workdir: Path, api: fake.FakeKubernetesApi, scheduler_listen: str, *extra: str
) -> ControllerProcess:
    """Start ``modelplane controller`` and wait (on the loop) for its ready file: every kind listed once."""
    argv = [
        *MODELPLANE,
        "controller",
        f"--k8s-api={api.url}",
        f"--scheduler={scheduler_listen}",
        "--name=test-controller",
        "--log-level=debug",
        *extra,
    ]
    process, ready_file, log_path = _spawn(argv, workdir)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_WAIT
    while not ready_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the controller exited with {process.returncode}:\n{log_path.read_text()}")
        if loop.time() > deadline:
            await asyncio.to_thread(stop_process, process)
            raise TimeoutError(f"the controller was not ready after {READY_WAIT:g}s:\n{log_path.read_text()}")
        await asyncio.sleep(0.05)
    ready: dict[str, Any] = json.loads(ready_file.read_text())
    assert ready["pid"] == process.pid
    return ControllerProcess(process, log_path, ready)


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The condition of type ``kind`` in ``obj``'s status, or None."""
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return None
