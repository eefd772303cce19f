"""WarmProcessLauncher: runs forked from a warm fork server, with the local launcher's outcomes.

Real runs (iris through ``trainer.run.run_job.main``) show the fork of a process with numpy/scikit-learn loaded works,
in a row and two at once; stand-in runs (``stand_in_main`` below, which executes the job folder's
``stand_in.py``) behave like a run would to exercise deadlines, signals, limits and cancellation."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from generated.mlops.training.v1 import training_pb2
from tests.support import training_schemas as schemas
from tests.support.processes import STARTED, alive
from tests.support.waiting import wait_for_file as wait_for_local_file
from tests.support.waiting import wait_until
from trainer import process
from trainer.launchers.base import LaunchVerdict
from trainer.launchers.local import RUN_LOG, LocalLauncherSettings
from trainer.launchers.warm import WarmLauncherSettings, WarmProcessLauncher
from trainer.run.jobs import DESIGN_SCHEMA_FILE, DatasetSource, RunResult, TrainingJob
from trainer.settings import build_parser, parse_settings

pytestmark = pytest.mark.timeout(180)

GIB = 1024**3
STAND_IN = "tests.trainer.test_launch_warm:stand_in_main"
ROOT = Path(__file__).resolve().parents[2]


def stand_in_main(argv: list[str]) -> int:
    """The entry stand-in runs call in the forked child: executes ``JOB_DIR/stand_in.py`` with ``job_dir`` set."""
    job_dir = Path(argv[0])
    program = (job_dir / "stand_in.py").read_text()
    exec(compile(program, str(job_dir / "stand_in.py"), "exec"), {"job_dir": job_dir})  # noqa: S102 -- test code
    return 0


WRITE_RESULT = """
import json
(job_dir / "result.json").write_text(json.dumps({"succeeded": True, "metrics": {"accuracy": 0.9}}))
"""


def stand_in_job(tmp_path: Path, body: str, timeout_seconds: float = 60.0, name: str = "job") -> Path:
    job_dir = tmp_path / name
    job_dir.mkdir()
    TrainingJob("run-1", "event-1", DatasetSource(path="/data/x.csv"), timeout_seconds=timeout_seconds).write(job_dir)
    (job_dir / "stand_in.py").write_text("import os, sys, time\n" + textwrap.dedent(body))
    return job_dir


def iris_job(tmp_path: Path, name: str, dataset: Path | None = None) -> tuple[Path, training_pb2.ModelDesignSchema]:
    csv = tmp_path / "iris.csv"
    if not csv.exists():
        schemas.write_iris_csv(csv)
    job_dir = tmp_path / name
    job_dir.mkdir()
    schema = schemas.iris_multiclass_logistic()
    TrainingJob(name, f"event-{name}", DatasetSource(path=str(dataset or csv)), artifact_name="model.joblib").write(
        job_dir
    )
    (job_dir / DESIGN_SCHEMA_FILE).write_bytes(schema.SerializeToString())
    return job_dir, schema


async def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    """As the local launcher's tests wait, with room for the fork server's first start."""
    return await wait_for_local_file(path, timeout)


def kill_if_alive(*pids: int) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def address_space_limit(pid: int) -> str:
    """The soft RLIMIT_AS of ``pid``, as /proc/PID/limits shows it."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            return line.split()[3]
    raise AssertionError(f"no address-space line in /proc/{pid}/limits")


def start_python(program: str) -> subprocess.Popen[bytes]:
    """A Python process in the repository root, registered so the autouse fixture stops it by PID."""
    started = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT)
    STARTED.append(started)
    return started


Make = Callable[..., WarmProcessLauncher]


@pytest.fixture
async def make_launcher() -> AsyncIterator[Make]:
    """Launchers whose fork servers are stopped (and their PIDs checked gone) after the test."""
    made: list[WarmProcessLauncher] = []

    def make(entry: str = STAND_IN, **limits: Any) -> WarmProcessLauncher:
        launcher = WarmProcessLauncher(WarmLauncherSettings(limits=LocalLauncherSettings(**limits), entry=entry))
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        pid = launcher.server_pid
        await launcher.aclose()
        if pid is not None:
            kill_if_alive(pid)
            assert not alive(pid), "the fork server outlived aclose()"


# --- real runs -----------------------------------------------------------------------------------------------


async def test_a_real_iris_run_writes_the_artifact_and_result_several_times_in_a_row(
    tmp_path: Path, make_launcher: Make
) -> None:
    launcher = make_launcher("trainer.run.run_job:main")
    pids = set()
    for index in range(3):
        job_dir, schema = iris_job(tmp_path, f"iris-{index}")
        outcome = await launcher.run(job_dir, schema)
        assert outcome.verdict is LaunchVerdict.SUCCEEDED, outcome.detail
        assert outcome.exit_code == 0
        result = RunResult.read(job_dir)
        assert result.succeeded
        assert result.metrics["accuracy"] > 0.8
        assert (job_dir / "output" / "model.joblib").stat().st_size > 0
        assert json.loads((job_dir / "output" / "metadata.json").read_text())["run_id"] == f"iris-{index}"
        assert "trained multiclass/logistic_regression" in (job_dir / RUN_LOG).read_text()
        pids.add(launcher.server_pid)
    assert len(pids) == 1  # one fork server served all three


async def test_two_real_runs_at_once_do_not_deadlock(tmp_path: Path, make_launcher: Make) -> None:
    launcher = make_launcher("trainer.run.run_job:main")
    for round_ in range(2):
        jobs = [iris_job(tmp_path, f"iris-{round_}-{index}") for index in range(2)]
        outcomes = await asyncio.wait_for(asyncio.gather(*(launcher.run(d, s) for d, s in jobs)), 120)
        for (job_dir, _), outcome in zip(jobs, outcomes, strict=True):
            assert outcome.verdict is LaunchVerdict.SUCCEEDED, outcome.detail
            assert RunResult.read(job_dir).succeeded


async def test_bad_input_is_a_permanent_exit_2_with_the_log_tail(tmp_path: Path, make_launcher: Make) -> None:
    job_dir, schema = iris_job(tmp_path, "missing", dataset=tmp_path / "no-such.csv")
    outcome = await make_launcher("trainer.run.run_job:main").run(job_dir, schema)
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY
    assert outcome.exit_code == 2
    assert outcome.detail.startswith("exit 2")
    assert "no-such.csv" in outcome.detail  # run_job's error line, from run.log
    assert not RunResult.read(job_dir).succeeded


# --- stand-in runs -------------------------------------------------------------------------------------------


async def test_stand_in_output_goes_to_run_log_and_cwd_is_the_job_dir(tmp_path: Path, make_launcher: Make) -> None:
    job_dir = stand_in_job(tmp_path, WRITE_RESULT + "print('training in', os.getcwd()); print('err', file=sys.stderr)")
    outcome = await make_launcher().run(job_dir, training_pb2.ModelDesignSchema())
    assert outcome.verdict is LaunchVerdict.SUCCEEDED, outcome.detail
    log = (job_dir / RUN_LOG).read_text()
    assert f"training in {job_dir}" in log
    assert "err" in log


async def test_exit_0_without_result_json_is_not_a_success(tmp_path: Path, make_launcher: Make) -> None:
    outcome = await make_launcher().run(stand_in_job(tmp_path, "pass\n"), training_pb2.ModelDesignSchema())
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY
    assert "wrote no result.json" in outcome.detail


async def test_an_uncaught_exception_exits_1_with_its_traceback(tmp_path: Path, make_launcher: Make) -> None:
    outcome = await make_launcher().run(
        stand_in_job(tmp_path, "raise RuntimeError('boom')\n"), training_pb2.ModelDesignSchema()
    )
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY
    assert outcome.exit_code == 1
    assert "RuntimeError: boom" in outcome.detail


async def test_killed_by_sigkill_is_retryable_and_the_next_run_still_works(tmp_path: Path, make_launcher: Make) -> None:
    launcher = make_launcher()
    crashed = await launcher.run(
        stand_in_job(tmp_path, "os.kill(os.getpid(), 9)\n", name="crash"), training_pb2.ModelDesignSchema()
    )
    assert crashed.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert crashed.exit_code == 137
    assert "killed by SIGKILL" in crashed.detail
    segfault = await launcher.run(
        stand_in_job(tmp_path, "import ctypes; ctypes.string_at(0)\n", name="segv"), training_pb2.ModelDesignSchema()
    )
    assert segfault.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert segfault.exit_code == 128 + signal.SIGSEGV
    server = launcher.server_pid
    after = await launcher.run(stand_in_job(tmp_path, WRITE_RESULT, name="after"), training_pb2.ModelDesignSchema())
    assert after.verdict is LaunchVerdict.SUCCEEDED, after.detail
    assert launcher.server_pid == server  # the crashes did not take the fork server down


async def test_a_dead_fork_server_fails_the_run_in_flight_retryably_and_is_replaced(
    tmp_path: Path, make_launcher: Make
) -> None:
    launcher = make_launcher()
    job_dir = stand_in_job(tmp_path, "(job_dir / 'pid').write_text(str(os.getpid())); time.sleep(60)\n")
    task = asyncio.create_task(launcher.run(job_dir, training_pb2.ModelDesignSchema()))
    run_pid = int(await wait_for_file(job_dir / "pid"))
    server = launcher.server_pid
    assert server is not None
    os.kill(server, signal.SIGKILL)
    outcome = await asyncio.wait_for(task, 20)
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert "fork server exited" in outcome.detail
    assert await wait_until(lambda: not alive(run_pid), 5), "the run outlived its fork server"
    after = await launcher.run(stand_in_job(tmp_path, WRITE_RESULT, name="after"), training_pb2.ModelDesignSchema())
    assert after.verdict is LaunchVerdict.SUCCEEDED, after.detail
    assert launcher.server_pid not in (None, server)


async def test_deadline_kills_the_whole_process_group(tmp_path: Path, make_launcher: Make) -> None:
    body = """
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (job_dir / "pids").write_text(f"{os.getpid()} {child.pid}")
    print("started", flush=True)
    time.sleep(60)
    """
    job_dir = stand_in_job(tmp_path, body, timeout_seconds=1.0)
    launcher = make_launcher(kill_grace_seconds=0.5)
    started = time.monotonic()
    outcome = await launcher.run(job_dir, training_pb2.ModelDesignSchema())
    assert time.monotonic() - started < 20
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.detail.startswith("deadline exceeded after 1 s")
    assert "started" in outcome.detail
    assert outcome.exit_code in (128 + signal.SIGTERM, 128 + signal.SIGKILL)
    run_pid, grandchild = (int(pid) for pid in (job_dir / "pids").read_text().split())
    assert not alive(run_pid)
    assert await wait_until(lambda: not alive(grandchild), 5), "the run's child outlived the deadline"


async def test_cancelling_run_kills_the_process_group_and_waits(tmp_path: Path, make_launcher: Make) -> None:
    body = """
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (job_dir / "pids").write_text(f"{os.getpid()} {child.pid}")
    time.sleep(60)
    """
    job_dir = stand_in_job(tmp_path, body)
    launcher = make_launcher()
    task = asyncio.create_task(launcher.run(job_dir, training_pb2.ModelDesignSchema()))
    pids = [int(pid) for pid in (await wait_for_file(job_dir / "pids")).split()]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(pids[0])  # reaped (by the fork server) before run() returned
    assert await wait_until(lambda: not alive(pids[1]), 5), "the run's child outlived the cancellation"
    after = await launcher.run(stand_in_job(tmp_path, WRITE_RESULT, name="after"), training_pb2.ModelDesignSchema())
    assert after.verdict is LaunchVerdict.SUCCEEDED, after.detail


async def test_resource_limits_are_applied_in_the_child_only(tmp_path: Path, make_launcher: Make) -> None:
    body = (
        WRITE_RESULT
        + """
import resource
names = ("RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_CPU")
(job_dir / "limits.json").write_text(json.dumps({n: resource.getrlimit(getattr(resource, n)) for n in names}))
"""
    )
    schema = training_pb2.ModelDesignSchema()
    schema.model_framework.compute_dependencies.cpu.ram = 3.5
    launcher = make_launcher(open_files=256, cpu_seconds=100)
    job_dir = stand_in_job(tmp_path, body)
    outcome = await launcher.run(job_dir, schema)
    assert outcome.verdict is LaunchVerdict.SUCCEEDED, outcome.detail
    limits = json.loads((job_dir / "limits.json").read_text())
    assert limits["RLIMIT_AS"] == [int(3.5 * GIB), int(3.5 * GIB)]
    assert limits["RLIMIT_NOFILE"] == [256, 256]
    assert limits["RLIMIT_CPU"] == [100, 101]
    # Neither the trainer nor the fork server is limited: the next run, with another schema, gets its own.
    assert resource.getrlimit(resource.RLIMIT_AS)[0] != int(3.5 * GIB)
    server = launcher.server_pid
    assert server is not None
    assert address_space_limit(server) == "unlimited"
    other = stand_in_job(tmp_path, body, name="other")
    assert (await launcher.run(other, training_pb2.ModelDesignSchema())).verdict is LaunchVerdict.SUCCEEDED
    assert json.loads((other / "limits.json").read_text())["RLIMIT_AS"] == [4 * GIB, 4 * GIB]  # the default


async def test_allocating_beyond_the_memory_limit_fails_and_says_so(tmp_path: Path, make_launcher: Make) -> None:
    schema = training_pb2.ModelDesignSchema()
    schema.model_framework.compute_dependencies.cpu.ram = 3.0
    body = "data = bytearray(4 * 1024 ** 3)\n"  # 4 GiB under a 3 GiB address-space limit
    outcome = await make_launcher().run(stand_in_job(tmp_path, body), schema)
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY  # MemoryError: exit 1, as in a fresh interpreter
    assert outcome.exit_code == 1
    assert "MemoryError" in outcome.detail
    assert "out of memory under the 3 GiB address-space limit" in outcome.detail


async def test_a_limit_below_what_the_fork_server_holds_fails_the_run_not_its_set_up(
    tmp_path: Path, make_launcher: Make
) -> None:
    schema = training_pb2.ModelDesignSchema()
    schema.model_framework.compute_dependencies.cpu.ram = 0.25  # less than numpy + scikit-learn already map
    outcome = await make_launcher().run(stand_in_job(tmp_path, "data = bytearray(1024 ** 3)\n"), schema)
    assert outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY, outcome.detail
    assert outcome.exit_code == 1
    assert "MemoryError" in outcome.detail
    assert "out of memory under the 0.25 GiB address-space limit" in outcome.detail


async def test_native_thread_pools_are_bounded_per_run(
    tmp_path: Path, make_launcher: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    body = (
        WRITE_RESULT
        + """
import threadpoolctl
pools = {info["internal_api"]: info["num_threads"] for info in threadpoolctl.threadpool_info()}
env = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
(job_dir / "threads.json").write_text(json.dumps({"pools": pools, "env": env}))
"""
    )
    launcher = make_launcher()
    one = stand_in_job(tmp_path, body, name="one")
    assert (await launcher.run(one, training_pb2.ModelDesignSchema())).verdict is LaunchVerdict.SUCCEEDED
    seen = json.loads((one / "threads.json").read_text())
    assert {"openblas", "openmp"} <= set(seen["pools"])  # numpy's OpenBLAS and scikit-learn's OpenMP are loaded
    assert set(seen["pools"].values()) == {1}
    assert seen["env"] == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

    cores = min(2, os.cpu_count() or 1)
    schema = training_pb2.ModelDesignSchema()
    schema.model_framework.compute_dependencies.cpu.no_of_cores = cores
    two = stand_in_job(tmp_path, body, name="two")
    assert (await launcher.run(two, schema)).verdict is LaunchVerdict.SUCCEEDED
    assert set(json.loads((two / "threads.json").read_text())["pools"].values()) == {cores}


async def test_two_stand_in_runs_overlap(tmp_path: Path, make_launcher: Make) -> None:
    body = WRITE_RESULT + "(job_dir / 'started').write_text(str(time.time())); time.sleep(1.0)\n"
    launcher = make_launcher()
    jobs = [stand_in_job(tmp_path, body, name=f"job-{index}") for index in range(2)]
    await launcher.run(stand_in_job(tmp_path, WRITE_RESULT, name="warm-up"), training_pb2.ModelDesignSchema())
    outcomes = await asyncio.gather(*(launcher.run(job, training_pb2.ModelDesignSchema()) for job in jobs))
    assert [outcome.verdict for outcome in outcomes] == [LaunchVerdict.SUCCEEDED] * 2
    first, second = (float((job / "started").read_text()) for job in jobs)
    assert abs(first - second) < 1.0  # each started before the other's 1 s sleep ended: side by side


async def test_an_unimportable_entry_is_a_retryable_start_failure(tmp_path: Path, make_launcher: Make) -> None:
    launcher = make_launcher("no_such_module_anywhere:main")
    outcome = await launcher.run(stand_in_job(tmp_path, WRITE_RESULT), training_pb2.ModelDesignSchema())
    assert outcome.verdict is LaunchVerdict.FAILED_RETRYABLE
    assert outcome.exit_code is None
    assert "could not start the warm fork server" in outcome.detail
    assert launcher.server_pid is None


# --- the trainer dies ----------------------------------------------------------------------------------------


async def test_a_trainer_killed_by_sigkill_leaves_no_run_and_no_fork_server(tmp_path: Path) -> None:
    body = """
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (job_dir / "pids").write_text(f"{os.getpid()} {os.getppid()} {child.pid}")
    time.sleep(60)
    """
    job_dir = stand_in_job(tmp_path, body)
    trainer_program = textwrap.dedent(
        f"""
        import asyncio, pathlib
        from generated.mlops.training.v1 import training_pb2
        from trainer.launchers.warm import WarmLauncherSettings, WarmProcessLauncher
        launcher = WarmProcessLauncher(WarmLauncherSettings(entry={STAND_IN!r}))
        asyncio.run(launcher.run(pathlib.Path({str(job_dir)!r}), training_pb2.ModelDesignSchema()))
        """
    )
    trainer = start_python(trainer_program)
    run_pid, server_pid, grandchild = (int(pid) for pid in (await wait_for_file(job_dir / "pids", 60)).split())
    try:
        assert alive(run_pid)
        assert alive(server_pid)
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(10)
        assert await wait_until(lambda: not alive(server_pid), 10), "the fork server outlived its trainer"
        assert await wait_until(lambda: not alive(run_pid), 10), "the run outlived its trainer"
        assert await wait_until(lambda: not alive(grandchild), 10), "the run's child outlived its trainer"
    finally:
        kill_if_alive(grandchild, run_pid, server_pid)


# --- settings ------------------------------------------------------------------------------------------------


def test_launcher_warm_is_a_choice_and_local_stays_the_default() -> None:
    parser = build_parser(argparse.ArgumentParser())
    assert parse_settings(parser, [], {}).launcher == "local"
    settings = parse_settings(parser, ["--launcher=warm"], {})
    assert settings.launcher == "warm"
    launcher = process.default_launcher(settings)
    assert isinstance(launcher, WarmProcessLauncher)
    assert launcher.settings.limits.env["MODELPLANE_S3_ENDPOINT"].startswith("http")
    assert launcher.server_pid is None  # the fork server starts with the first run, not before
