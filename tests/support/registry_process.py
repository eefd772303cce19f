"""A live ``modelplane registry`` for tests, and a small HTTP client for its REST API (synchronous: Hypothesis
and thread-pooled racing writers call it directly)."""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

from tests.support.processes import STARTED, _start_until_ready, stop_process
from tests.support.training_schemas import write_iris_csv


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: Any  # the JSON document, or the raw text when it is not JSON

    @property
    def error(self) -> str:
        assert isinstance(self.body, dict), self.body
        return str(self.body["error"])


@dataclass
class RegistryProcess:
    process: Popen[bytes]
    listen: str
    state_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def call(
        self,
        method: str,
        path: str,
        document: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        host, port = self.listen.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            payload = raw if raw is not None else (json.dumps(document).encode() if document is not None else None)
            connection.request(method, path, body=payload, headers=headers or {"Content-Type": "application/json"})
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
            answer_headers = {key.lower(): value for key, value in response.getheaders()}
        finally:
            connection.close()
        try:
            body: Any = json.loads(text) if text else None
        except json.JSONDecodeError:
            body = text
        return Answer(response.status, answer_headers, body)


def start_registry(
    workdir: Path, *extra: str, state_dir: Path | None = None, ready_timeout: float = 60
) -> RegistryProcess:
    """Start `modelplane registry` on a free loopback port; returns once it serves (its database migrated)."""
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir = state_dir or workdir / "state"
    ready_file = workdir / "registry-ready.json"
    log_path = workdir / "registry.log"
    ready_file.unlink(missing_ok=True)
    argv = ["registry", "--listen=127.0.0.1:0", f"--state-dir={state_dir}", f"--ready-file={ready_file}", *extra]
    process, addresses = _start_until_ready(argv, ready_file, log_path, ready_timeout, "ab")
    return RegistryProcess(process, addresses["listen"], state_dir, log_path)


@contextlib.contextmanager
def module_registry(workdir: Path, *, with_iris: bool = False) -> Iterator[RegistryProcess]:
    """One registry for a test module (``with_iris``: iris at ``flowers/iris.csv`` under its datasets root), kept out
    of the per-test sweep of leftover processes and stopped on the way out."""
    extra = []
    if with_iris:
        datasets = workdir / "datasets"
        (datasets / "flowers").mkdir(parents=True)
        write_iris_csv(datasets / "flowers" / "iris.csv")
        extra.append(f"--datasets-root={datasets}")
    registry = start_registry(workdir, *extra)
    STARTED.remove(registry.process)
    try:
        yield registry
    finally:
        stop_process(registry.process)


def wait_for_status(
    registry: RegistryProcess, path: str, settled: set[str], timeout: float = 300.0, interval: float = 0.1
) -> dict[str, Any]:
    """Poll ``path`` (a split's or model's status) until its ``status`` is one of ``settled``; the last status
    document. ``timeout`` is a hang guard for a loaded machine, not a timing check."""
    deadline = time.monotonic() + timeout
    while True:
        answer = registry.call("GET", path)
        assert answer.status == 200, answer
        if answer.body["status"] in settled:
            return dict(answer.body)
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still {answer.body} after {timeout:g}s (waiting for {sorted(settled)})")
        time.sleep(interval)
