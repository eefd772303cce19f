"""``./run registry-demo --once``'s script itself (samples/registry_demo.py, what ``./run`` executes after its venv
setup, which a test must not redo under other tests' feet): a real ``modelplane up`` with its registry, the
registry's command line for every step, a real trainer run per model, a real MLServer behind the gateway. It must
exit 0 having deployed the better model and predicted through the gateway, and leave nothing running."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.modelplane_up import REPO
from tests.support.processes import STARTED, alive, stop_all_started

DEMO = REPO / "samples" / "registry_demo.py"
DEMO_TIMEOUT = 600.0  # a hang guard on a loaded machine (it takes well under a minute alone)


def processes_naming(folder: Path) -> list[int]:
    """Live processes with ``folder`` in their command line (what the demo started under its work folder)."""
    marker = str(folder.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(entry.name))
    return [pid for pid in found if alive(pid)]


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "demo"
    yield folder
    stop_all_started()  # the demo (SIGTERM: it stops what it started), then anything still naming its folder
    for pid in processes_naming(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.servers
@pytest.mark.timeout(900)
def test_the_registry_demo_runs_the_loop_and_stops(work: Path, tmp_path: Path) -> None:
    output = tmp_path / "demo.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(DEMO), "--once", f"--work-dir={work}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "NO_PROXY": "127.0.0.1"},
        )
    STARTED.append(process)
    returncode = process.wait(DEMO_TIMEOUT)
    printed = output.read_text(errors="replace")
    assert returncode == 0, printed

    # Every step, with the command a user would type.
    for command in (
        "$ modelplane registry experiments put iris --srcpath flowers/iris.csv --outcome species",
        "$ modelplane registry splits create iris --type random --percent 80 --seed 7 --wait",
        "--algorithm logistic_regression --param max_iter=500 --wait",
        "--algorithm decision_tree --param max_depth=1 --wait",
        "$ modelplane registry models list iris --sort accuracy",
    ):
        assert command in printed, printed
    assert re.search(r"species\s+120\s+30\s", printed), printed  # 80/20 of 150 rows
    # A one-question tree cannot tell three species apart: the logistic regression is the better one, deployed.
    assert "the better one: logistic (logistic_regression)" in printed, printed
    deployed = re.search(r"DEPLOYED: served as (iris-[0-9a-f]+)", printed)
    assert deployed is not None, printed
    assert f"/v2/models/{deployed.group(1)}/infer" in printed
    # The gateway's predictions beside the dataset's species (setosa and virginica rows; see FLOWERS).
    assert re.search(r"5\.1 3\.5 1\.4 0\.2\s+setosa\s+setosa", printed), printed
    assert re.search(r"6\.9 3\.1 5\.4 2\.1\s+virginica\s+virginica", printed), printed
    assert "everything stopped" in printed
    assert "Traceback" not in printed
    assert not processes_naming(work)
    assert (work / "state" / "registry" / "registry.db").is_file()  # the registry's state is in up's state dir


def test_the_registry_demo_exits_1_naming_the_step_that_failed(work: Path, tmp_path: Path) -> None:
    # Every modelplane command it runs is told to read a settings file that is not there: up refuses to start.
    missing = tmp_path / "missing.toml"
    done = subprocess.run(
        [sys.executable, str(DEMO), "--once", f"--work-dir={work}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "MODELPLANE_CONFIG": str(missing)},
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "registry-demo: error: modelplane up exited with 2" in done.stderr
    assert f"config file {missing} does not exist" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not processes_naming(work)
