"""Creating an inference server's venv says how far it has got while it runs (it takes about a minute), and a
failed install says where its log is. Real processes; progress is waited for as a condition, never timed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from servers.launch import venvs

CHILD = (
    "import sys\n"
    "print('Collecting mlserver==1.7.1', flush=True)\n"
    "print('  Downloading mlserver-1.7.1-py3-none-any.whl (129 kB)', flush=True)\n"
    "print('Processing /opt/wheels/numpy-2.2.0-cp311-cp311-linux_x86_64.whl', flush=True)\n"
    "sys.stdin.read()\n"  # until the test has seen the progress it waits for
)


def test_progress_lines_count_what_pip_fetched_while_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(venvs, "PROGRESS_EVERY", 0.05)
    log = tmp_path / "install.log"
    said: list[str] = []
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=out)

    def say(line: str) -> None:
        said.append(line)
        if line.startswith("2 packages fetched so far") and process.stdin is not None:
            process.stdin.close()  # the child ends: the wait returns

    started = time.monotonic()
    venvs._wait_saying_progress(process, log, started, say)
    assert process.returncode == 0
    assert said[-1].startswith("2 packages fetched so far, ")
    assert said[-1].endswith(f"s (log {log})")
    assert all("packages fetched so far" in line for line in said)


def test_a_failed_install_names_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # nothing is fetched: the requirement cannot be met
    said: list[str] = []
    log = tmp_path / "install.log"
    with pytest.raises(venvs.VenvError) as caught:
        venvs._create(tmp_path / "venv", ("modelplane-no-such-package==0",), log, said.append)
    message = str(caught.value)
    assert f"(pip exited with 1); log {log}:" in message
    assert "modelplane-no-such-package" in message  # the log's tail says what pip could not find
    assert not any(line.startswith("ready after") for line in said)
