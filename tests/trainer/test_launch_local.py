"""LocalProcessLauncher against stand-in runs: small ``python -c`` programs that behave like
``python -m trainer.run.run_job JOB_DIR`` would (write result.json, exit with a code, sleep, fork, allocate)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from generated.mlops.training.v1 import training_pb2
from tests.support.processes import STARTED, alive
from tests.support.waiting import wait_for_file, wait_until
from trainer.launchers.base import LaunchVerdict
from trainer.launchers.local import (
    RUN_LOG,
    THREAD_POOL_VARIABLES,
    LocalLauncherSettings,
    LocalProcessLauncher,
    thread_limits,
)
from trainer.run.jobs import DatasetSource, TrainingJob

GIB = 1024**3
PYTHON_BINARY = os.path.realpath(sys.executable)  # the binary itself, not a venv's link to it


def stand_in(body: str) -> tuple[str, ...]:
    """A command whose program gets the job dir as ``job_dir`` (it is appended to argv, as for run_job)."""
    prelude = "import json, os, sys, time, pathlib\njob_dir = pathlib.Path(sys.argv[1])\n"
    return (sys.executable, "-c", prelude + textwrap.dedent(body))


WRITE_RESULT = """
(job_dir / "result.json").write_text(json.dumps({"succeeded": True, "metrics": {"accuracy": 0.9}}))
"""


def job_dir_for(tmp_path: Path, timeout_seconds: float = 60.0) -> Path:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    TrainingJob("run-1", "event-1", DatasetSource(path="/data/x.csv"), timeout_seconds=timeout_seconds).write(job_dir)
    return job_dir


def launcher(command: tuple[str, ...], **settings: Any) -> LocalProcessLauncher:
    return LocalProcessLauncher(LocalLauncherSettings(command=command, **settings))


async def test_success_runs_the_command_with_the_job_dir_and_logs_its_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_dir = job_dir_for(tmp_path)
    body = WRITE_RESULT + "print('training', job_dir.name, os.getcwd()); print('to stderr', file=sys.stderr)\n"
    with caplog.at_level("INFO", logger="trainer.launchers.local"):
        outcome = await launcher(stand_in(body)).run(job_dir, training_pb2.ModelDesignSchema())
    [started] = [record for record in caplog.records if record.getMessage() == "training run started"]
    # Under "fields", the only extras modelplane.logs writes out.
    fields = getattr(started, "fields", {})
    assert fields["job_dir"] == str(job_dir)
    assert isinstance(fields["pid"], int)
    assert outcome.verdict is LaunchVerdict.SUCCEEDED
    assert outcome.exit_code == 0
    assert json.loads((job_dir / "result.json").read_text())["succeeded"] is True
    log = (job_dir / RUN_LOG).read_text()
    assert f"training job {job_dir}" in log  # argv[1] is the job dir; the run's cwd is the job dir too
    assert "to stderr" in log


async def test_exit_2_is_permanent_and_the_detail_carries_the_log_tail(tmp_path: Path) -> None:
    job_dir = job_dir_for(tmp_path)
    body = "print('column price is missing', file=sys.stderr); sys.exit(2)\n"
    outcome = await launcher(stand_in(body)).run(job_dir, training_pb2.ModelDesignSchema())
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY
    assert outcome.exit_code == 2
    assert outcome.detail.startswith("exit 2")
    assert "column price is missing" in outcome.detail


async def test_exit_0_without_result_json_is_not_a_success(tmp_path: Path) -> None:
    outcome = await launcher(stand_in("pass\n")).run(job_dir_for(tmp_path), training_pb2.ModelDesignSchema())
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY
    assert "wrote no result.json" in outcome.detail


async def test_killed_by_a_signal_is_retryable_with_128_plus_n(tmp_path: Path) -> None:
    body = "os.kill(os.getpid(), 9)\n"
    outcome = await launcher(stand_in(body)).run(job_dir_for(tmp_path), training_pb2.ModelDesignSchema())
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.exit_code == 137
    assert "killed by SIGKILL" in outcome.detail


async def test_deadline_from_job_json_kills_the_whole_process_group(tmp_path: Path) -> None:
    job_dir = job_dir_for(tmp_path, timeout_seconds=1.0)
    # The run forks a grandchild (as joblib would); the deadline must take both.
    body = """
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (job_dir / "pids").write_text(f"{os.getpid()} {child.pid}")
    print("started", flush=True)
    time.sleep(60)
    """
    started = time.monotonic()
    outcome = await launcher(stand_in(body), kill_grace_seconds=0.5).run(job_dir, training_pb2.ModelDesignSchema())
    elapsed = time.monotonic() - started
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.detail.startswith("deadline exceeded after 1 s")
    assert "started" in outcome.detail  # the log tail
    assert outcome.exit_code in (128 + signal.SIGTERM, 128 + signal.SIGKILL)
    assert elapsed < 20
    run_pid, grandchild_pid = (int(pid) for pid in (job_dir / "pids").read_text().split())
    assert not alive(run_pid)
    assert await wait_until(lambda: not alive(grandchild_pid), 5), "the run's child outlived the deadline"


async def test_resource_limits_are_applied_in_the_child(tmp_path: Path) -> None:
    job_dir = job_dir_for(tmp_path)
    body = (
        WRITE_RESULT
        + """
import resource
names = ("RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_CPU")
limits = {name: resource.getrlimit(getattr(resource, name)) for name in names}
(job_dir / "limits.json").write_text(json.dumps(limits))
"""
    )
    schema = training_pb2.ModelDesignSchema()
    schema.model_framework.compute_dependencies.cpu.ram = 1.5
    outcome = await launcher(stand_in(body), open_files=256, cpu_seconds=100).run(job_dir, schema)
    assert outcome.verdict is LaunchVerdict.SUCCEEDED, outcome.detail
    limits = json.loads((job_dir / "limits.json").read_text())
    assert limits["RLIMIT_AS"] == [int(1.5 * GIB), int(1.5 * GIB)]
    assert limits["RLIMIT_NOFILE"] == [256, 256]
    assert limits["RLIMIT_CPU"] == [100, 101]
    # The trainer's own limits are untouched (the limits apply only after the fork).
    assert resource.getrlimit(resource.RLIMIT_AS)[0] != int(1.5 * GIB)


async def test_default_memory_limit_applies_when_the_schema_names_no_ram(tmp_path: Path) -> None:
    job_dir = job_dir_for(tmp_path)
    body = WRITE_RESULT + "import resource; print('AS', resource.getrlimit(resource.RLIMIT_AS)[0])\n"
    outcome = await launcher(stand_in(body), default_memory_gib=2.0).run(job_dir, training_pb2.ModelDesignSchema())
    assert outcome.verdict is LaunchVerdict.SUCCEEDED
    assert f"AS {2 * GIB}" in (job_dir / RUN_LOG).read_text()


async def test_allocating_beyond_the_memory_limit_fails_and_says_so(tmp_path: Path) -> None:
    schema = training_pb2.ModelDesignSchema()
    schema.model_framework.compute_dependencies.cpu.ram = 0.25
    body = "data = bytearray(1024 ** 3)\n"  # 1 GiB under a 0.25 GiB address-space limit
    outcome = await launcher(stand_in(body)).run(job_dir_for(tmp_path), schema)
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY  # MemoryError: the interpreter exits 1
    assert outcome.exit_code == 1
    assert "MemoryError" in outcome.detail
    assert "out of memory under the 0.25 GiB address-space limit" in outcome.detail


async def test_cpu_limit_kills_a_busy_run_with_sigxcpu(tmp_path: Path) -> None:
    body = "while True: pass\n"
    outcome = await launcher(stand_in(body), cpu_seconds=1).run(job_dir_for(tmp_path), training_pb2.ModelDesignSchema())
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.exit_code == 128 + signal.SIGXCPU
    assert "SIGXCPU" in outcome.detail


async def test_a_command_that_cannot_start_is_a_clear_retryable_outcome(tmp_path: Path) -> None:
    command = (str(tmp_path / "no-such-python"), "-m", "trainer.run.run_job")
    outcome = await launcher(command).run(job_dir_for(tmp_path), training_pb2.ModelDesignSchema())
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.exit_code is None
    assert "could not start" in outcome.detail
    assert "no-such-python" in outcome.detail


async def test_a_program_that_cannot_be_executed_is_retryable_and_says_so(tmp_path: Path) -> None:
    """The program exists and is executable, yet the launcher in the child cannot execute it (here: it is open for
    writing, ETXTBSY; in life a half-written binary, a broken loader): that is no fault of the training event, so
    retryable, as an OSError in the parent was before children were started through setpriv and prlimit."""
    program = tmp_path / "python-being-written"
    shutil.copy(PYTHON_BINARY, program)  # with its mode: executable
    with program.open("ab"):  # open for writing while it is started
        outcome = await launcher((str(program), "-c", "pass")).run(
            job_dir_for(tmp_path), training_pb2.ModelDesignSchema()
        )
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE, outcome
    assert outcome.exit_code == 126
    assert outcome.detail.startswith(f"could not start {program}: exit 126, the program could not be executed")
    assert "Text file busy" in outcome.detail  # the launcher's own words, from the run's log


async def test_a_run_that_exits_1_by_itself_stays_permanent(tmp_path: Path) -> None:
    outcome = await launcher(stand_in("sys.exit(1)\n")).run(job_dir_for(tmp_path), training_pb2.ModelDesignSchema())
    assert (outcome.verdict, outcome.exit_code) == (LaunchVerdict.FAILED_PERMANENTLY, 1)


async def test_cancelling_run_kills_the_process_group_and_waits(tmp_path: Path) -> None:
    job_dir = job_dir_for(tmp_path)
    body = """
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (job_dir / "pids").write_text(f"{os.getpid()} {child.pid}")
    time.sleep(60)
    """
    task = asyncio.create_task(launcher(stand_in(body)).run(job_dir, training_pb2.ModelDesignSchema()))
    pids = [int(pid) for pid in (await wait_for_file(job_dir / "pids")).split()]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(pids[0])  # reaped before run() returned
    assert await wait_until(lambda: not alive(pids[1]), 5), "the run's child outlived the cancellation"


def start_python(program: str) -> subprocess.Popen[bytes]:
    """A Python process in the repository root, registered so the autouse fixture stops it by PID."""
    process = subprocess.Popen([sys.executable, "-c", program], cwd=Path(__file__).resolve().parents[2])
    STARTED.append(process)
    return process


async def test_the_run_dies_with_a_trainer_killed_by_sigkill(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: kill -9 of the trainer process must not leave its run behind."""
    job_dir = job_dir_for(tmp_path)
    run_body = "(job_dir / 'pid').write_text(str(os.getpid())); time.sleep(60)\n"
    trainer_program = textwrap.dedent(
        f"""
        import asyncio, pathlib
        from generated.mlops.training.v1 import training_pb2
        from trainer.launchers.local import LocalLauncherSettings, LocalProcessLauncher
        command = {stand_in(run_body)!r}
        launcher = LocalProcessLauncher(LocalLauncherSettings(command=command))
        asyncio.run(launcher.run(pathlib.Path({str(job_dir)!r}), training_pb2.ModelDesignSchema()))
        """
    )
    trainer = start_python(trainer_program)
    run_pid = int(await wait_for_file(job_dir / "pid"))
    assert alive(run_pid)
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait(10)
    assert await wait_until(lambda: not alive(run_pid), 5), "the run outlived its trainer"


async def test_runs_get_bounded_thread_pools_unless_the_operator_set_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in THREAD_POOL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    schema = training_pb2.ModelDesignSchema()
    assert thread_limits(schema) == dict.fromkeys(THREAD_POOL_VARIABLES, "1")
    schema.model_framework.compute_dependencies.cpu.no_of_cores = 10_000
    assert thread_limits(schema)["OMP_NUM_THREADS"] == str(os.cpu_count())

    # What the run sees: the design's bound, except where the trainer's environment says otherwise.
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    report = f"""
(job_dir / "threads.json").write_text(json.dumps({{v: os.environ.get(v) for v in {THREAD_POOL_VARIABLES!r}}}))
"""
    schema.model_framework.compute_dependencies.cpu.no_of_cores = 1
    job_dir = job_dir_for(tmp_path)
    outcome = await launcher(stand_in(report + WRITE_RESULT)).run(job_dir, schema)
    assert outcome.verdict.name == "SUCCEEDED", outcome.detail
    seen = json.loads((job_dir / "threads.json").read_text())
    assert seen == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "3"}


async def test_a_relative_job_dir_reaches_the_run_as_the_folder_it_works_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run works in its job folder (cwd) and is given that folder: given relative, it would name a folder
    inside itself."""
    job_dir_for(tmp_path)
    monkeypatch.chdir(tmp_path)
    body = "assert (job_dir / 'job.json').is_file(), job_dir\n" + WRITE_RESULT
    outcome = await launcher(stand_in(body)).run(Path("job"), training_pb2.ModelDesignSchema())
    assert outcome.verdict is LaunchVerdict.SUCCEEDED, outcome.detail
    assert json.loads((tmp_path / "job" / "result.json").read_text())["succeeded"] is True
