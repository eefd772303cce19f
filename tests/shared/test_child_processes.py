"""Child processes started from a process with gRPC threads (issue 10, defect 9): every start runs its program,
none is killed by what gRPC's fork handlers leave behind; the death signal and the limits still apply."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from modelplane.child_processes import LauncherMissing, could_not_execute, launcher_argv, start_child
from tests.support.processes import STARTED, alive

REPO = Path(__file__).resolve().parents[2]
STARTS = 120  # start_process children; a quarter as many trainer runs come on top


@pytest.mark.timeout(600)
def test_many_starts_while_grpc_is_busy_all_run_and_exit_normally(tmp_path: Path) -> None:
    # In a process of its own: on main this crashed children (SIGSEGV, SIGABRT) and could hang or kill the parent.
    script = subprocess.run(
        [sys.executable, "-m", "tests.support.child_start_under_grpc", str(tmp_path), str(STARTS)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=500,
        check=False,
    )
    assert script.returncode == 0, f"exit {script.returncode}\n{script.stderr[-3000:]}"
    report = json.loads(script.stdout.splitlines()[-1])
    assert report["grpc_calls"] > 0  # gRPC was busy the whole time
    outcomes = Counter((result["how"], result["status"], result["ran"]) for result in report["results"])
    assert outcomes == {("start_process", 0, True): STARTS, ("trainer", 0, True): STARTS // 4}, (
        f"{outcomes}\n{script.stderr[-2000:]}"
    )


def wait_until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_server_started_by_a_parent_killed_by_sigkill_dies_with_it(tmp_path: Path) -> None:
    """The death signal (setpriv --pdeathsig): kill -9 of the launching process takes the child with it."""
    pid_file = tmp_path / "child.pid"
    program = textwrap.dedent(
        f"""
        import pathlib, time
        from servers.launch.local import server_env, start_process
        log = pathlib.Path({str(tmp_path / "child.log")!r})
        child = start_process(["/bin/sleep", "600"], log_path=log, cwd=log.parent, env=server_env(), name="sleep")
        written = pathlib.Path({str(pid_file) + ".partial"!r})
        written.write_text(str(child.pid))
        written.rename({str(pid_file)!r})  # whole or not there: the test reads it as soon as it exists
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", program], cwd=REPO)
    STARTED.append(parent)
    assert wait_until(pid_file.exists, 60), "the parent never started its child"
    child = int(pid_file.read_text())

    def program_of_child() -> bytes:
        try:
            return Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            return b""

    # The PID is sleep's once setpriv has set the death signal and exec'd it.
    assert wait_until(lambda: program_of_child() == b"/bin/sleep", 30), program_of_child()
    assert os.getpgid(child) == child  # a session of its own
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(30)
    assert wait_until(lambda: not alive(child), 30), "the child outlived its parent"


def test_limits_apply_in_the_child_only(tmp_path: Path) -> None:
    limits = [(resource.RLIMIT_NOFILE, (200, 200)), (resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))]
    out = tmp_path / "limits.txt"
    with out.open("wb") as output:
        child = start_child(["/bin/cat", "/proc/self/limits"], stdout=output, limits=limits)
    assert child.wait(30) == 0
    text = out.read_text()
    assert any(line.startswith("Max open files") and line.split()[3:5] == ["200", "200"] for line in text.splitlines())
    assert f"{3 * 1024**3}" in text
    assert resource.getrlimit(resource.RLIMIT_NOFILE) != (200, 200)


def test_a_missing_program_or_launcher_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        start_child([str(tmp_path / "no-such-program")])
    monkeypatch.setattr("modelplane.child_processes._SYSTEM_DIRS", (str(tmp_path),))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LauncherMissing, match=r"setpriv is not installed.*util-linux"):
        launcher_argv(["/bin/true"])
    with pytest.raises(LauncherMissing, match="prlimit is not installed"):
        launcher_argv(["/bin/true"], death_signal=None, limits=[(resource.RLIMIT_NOFILE, (10, 10))])


def test_what_the_launchers_would_fail_on_in_the_child_fails_in_the_parent(tmp_path: Path) -> None:
    """An exec or prlimit failure in the child is only an exit status (127, 126, 1), which reads like the program's
    own: what can be checked before the start is checked in the parent, as an OSError naming the problem (review
    1.12)."""
    script = tmp_path / "train.py"
    script.write_text("#!/nonexistent/python3\nprint('hello')\n")
    script.chmod(0o755)
    with pytest.raises(FileNotFoundError, match=r"cannot start .*train.py: its interpreter /nonexistent/python3"):
        start_child([str(script)])
    above = int(Path("/proc/sys/fs/nr_open").read_text()) + 1  # more open files than the kernel allows anyone
    with pytest.raises(PermissionError, match=r"cannot give the child RLIMIT_NOFILE"):
        start_child(["/bin/true"], limits=[(resource.RLIMIT_NOFILE, (above, above))])
    with pytest.raises(ValueError, match="soft limit 20 is above its hard limit 10"):
        start_child(["/bin/true"], limits=[(resource.RLIMIT_NOFILE, (20, 10))])


def test_the_launchers_exit_codes_say_the_program_was_not_executed() -> None:
    assert could_not_execute(126) == "exit 126, the program could not be executed"
    assert could_not_execute(127) == "exit 127, the program was not found"
    assert could_not_execute(1) is None
    assert could_not_execute(0) is None
    assert could_not_execute(-9) is None
