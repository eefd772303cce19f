"""Errors in words and exit statuses for every client command against a real scheduler: the scheduler's own
sentence (``model 'nosuch' not found``), never a gRPC code (``answered FAILED_PRECONDITION: ...``); exit status 2 for
bad input, 1 for a failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.processes import SchedulerProcess, run_modelplane


def cli(scheduler: SchedulerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_modelplane(*args, "--scheduler", scheduler.listen)


def only_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("modelplane: error: "), line
    return line.removeprefix("modelplane: error: ")


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (("model", "status", "nosuch"), "model 'nosuch' not found"),
        (("model", "unload", "nosuch"), "model 'nosuch' not found"),
        (("model", "status", "nosuch", "--watch"), "model 'nosuch' not found"),
    ],
    ids=["model-status", "model-unload", "model-watch"],
)
def test_an_unknown_name_is_said_in_words(scheduler: SchedulerProcess, command: tuple[str, ...], words: str) -> None:
    result = cli(scheduler, *command)
    assert result.returncode == 1, result.stderr
    assert only_error_line(result) == words


def test_a_name_the_scheduler_refuses_is_bad_input_in_words(scheduler: SchedulerProcess, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: Not_A_Valid_Name}\n"
        "spec: {storageUri: /models/x}\n"
    )
    result = cli(scheduler, "model", "load", "-f", str(manifest))
    assert result.returncode == 2, result.stderr
    line = only_error_line(result)
    assert "Not_A_Valid_Name" in line
    assert "INVALID_ARGUMENT" not in line
    assert "answered" not in line
