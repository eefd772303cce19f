"""Run a training job as a local child process: its own process group, a deadline, resource limits.

The run is ``python -m trainer.run.run_job JOB_DIR`` (the command is a setting, so tests and other runtimes can
substitute their own). It gets:

- its own session (process group), so a deadline or a cancellation kills the run *and* anything it forked
  (joblib workers, BLAS threads' helpers) with one ``killpg``;
- a death signal (SIGTERM), so a trainer that dies, even by ``kill -9``, takes its run with it instead of
  leaving an orphan holding memory;
- ``RLIMIT_AS`` from the schema's ``ModelCPUCompute.ram`` (GiB) or a configured default, optional
  ``RLIMIT_CPU``, and ``RLIMIT_NOFILE``: a local run shares the machine with the trainer and the agent, so it
  must not be able to take all of it;
- stdout and stderr appended to ``JOB_DIR/run.log``; a failure's outcome detail carries the log's tail.

The death signal and the limits are set by util-linux's ``setpriv`` and ``prlimit`` in the child, never by Python
code between fork and exec: the trainer runs gRPC, whose fork handlers make that crash
(``modelplane.child_processes`` says why).

Exit codes follow trainer/run/jobs.py: 0 success, 1-127 permanent but EXIT_UNAVAILABLE (an unreachable dataset store)
retryable, 128+N (killed by signal N) retryable. A deadline is reported as retryable too (the machine may simply
have been busy). A run that could not be started at all is retryable (a deployment problem, not the event's fault):
an OSError in the trainer, or the launchers' exit 126 or 127 when the program could not be executed in the child
(``modelplane.child_processes.could_not_execute``; run_job never exits with those).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import sys
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from generated.mlops.training.v1 import training_pb2
from modelplane.child_processes import could_not_execute, start_child_async
from modelplane.logs import with_fields
from servers.launch.local import log_tail
from trainer.launchers.base import LaunchOutcome, LaunchVerdict, verdict_for_exit_code
from trainer.run.jobs import JOB_FILE, RESULT_FILE, TrainingJob

logger = logging.getLogger(__name__)

RUN_LOG = "run.log"
DEFAULT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "trainer.run.run_job")
_GIB = 1024**3
_FALLBACK_TIMEOUT_SECONDS = 3600.0  # TrainingJob's own default


@dataclass(frozen=True)
class LocalLauncherSettings:
    """How local runs are started and bounded. Every field is a documented knob of the trainer."""

    # The argv the job directory is appended to.
    command: tuple[str, ...] = DEFAULT_COMMAND
    # Wall-clock deadline; None: the job's own ``timeout_seconds`` from job.json.
    timeout_seconds: float | None = None
    # RLIMIT_AS when the schema names no ``cpu.ram``; None: no address-space limit. Address space, not
    # resident memory: NumPy/BLAS reserve far more than they touch, so keep this generous (sklearn with
    # pandas peaks around 0.6 GiB of address space before any data is loaded).
    default_memory_gib: float | None = 4.0
    # RLIMIT_CPU (CPU seconds; the kernel sends SIGXCPU, then SIGKILL); None: no limit.
    cpu_seconds: int | None = None
    # RLIMIT_NOFILE.
    open_files: int = 1024
    # After SIGTERM to the group on a deadline, how long the run may clean up before SIGKILL.
    kill_grace_seconds: float = 5.0
    # Extra environment for the run, on top of the trainer's own.
    env: Mapping[str, str] = field(default_factory=dict)
    # How many lines of run.log a failure's detail carries.
    log_tail_lines: int = 40


# The native thread pools scikit-learn's numerics use. Unbounded, each concurrent run starts one thread per
# core in each, and runs slow each other down several times over (bench/README.md, trainer throughput).
THREAD_POOL_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def thread_limits(schema: training_pb2.ModelDesignSchema) -> dict[str, str]:
    """Thread-pool sizes for a run: the design's ``cpu.no_of_cores``, else 1. The trainer's own environment
    (an operator's explicit setting) and the launcher's ``env`` both override these."""
    compute = schema.model_framework.compute_dependencies
    cores = compute.cpu.no_of_cores if compute.WhichOneof("compute_type") == "cpu" else 0
    threads = str(max(1, min(cores, os.cpu_count() or 1)))
    return dict.fromkeys(THREAD_POOL_VARIABLES, threads)


def memory_limit_bytes(schema: training_pb2.ModelDesignSchema, default_gib: float | None) -> int | None:
    """The address-space limit for a run: ``cpu.ram`` GiB when the schema sets it, else the default."""
    compute = schema.model_framework.compute_dependencies
    if compute.WhichOneof("compute_type") == "cpu" and compute.cpu.ram > 0:
        return int(compute.cpu.ram * _GIB)
    if default_gib is None:
        return None
    return int(default_gib * _GIB)


def _clamped(kind: int, wanted: int) -> tuple[int, int]:
    """(soft, hard) for ``wanted``, never above the current hard limit: an unprivileged child cannot raise it,
    and prlimit would refuse to start the run."""
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    return wanted, wanted


def _limits_for(settings: LocalLauncherSettings, memory_bytes: int | None) -> list[tuple[int, tuple[int, int]]]:
    limits = [(resource.RLIMIT_NOFILE, _clamped(resource.RLIMIT_NOFILE, settings.open_files))]
    if memory_bytes is not None:
        limits.append((resource.RLIMIT_AS, _clamped(resource.RLIMIT_AS, memory_bytes)))
    if settings.cpu_seconds is not None:
        # Soft below hard: SIGXCPU first (Python's default action terminates), SIGKILL a second later.
        soft, hard = _clamped(resource.RLIMIT_CPU, settings.cpu_seconds + 1)
        limits.append((resource.RLIMIT_CPU, (max(1, soft - 1), hard)))
    return limits


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class LocalProcessLauncher:
    """Runs a training job as a child process of the trainer (see the module docstring)."""

    def __init__(self, settings: LocalLauncherSettings | None = None) -> None:
        self.settings = settings or LocalLauncherSettings()

    def _timeout_for(self, job_dir: Path) -> float:
        if self.settings.timeout_seconds is not None:
            return self.settings.timeout_seconds
        try:
            return TrainingJob.read(job_dir).timeout_seconds
        except (OSError, ValueError, KeyError, TypeError):
            # The run itself reports a bad job.json (exit 2); the launcher only needs some deadline.
            return _FALLBACK_TIMEOUT_SECONDS

    async def run(self, job_dir: Path, schema: training_pb2.ModelDesignSchema) -> LaunchOutcome:
        settings = self.settings
        # The run works in its job folder and is told that folder: relative, it would name one inside itself.
        job_dir = job_dir.absolute()  # noqa: ASYNC240 - os.getcwd(), no file system wait
        timeout = self._timeout_for(job_dir)
        memory_bytes = memory_limit_bytes(schema, settings.default_memory_gib)
        argv = [*settings.command, str(job_dir)]
        log_path = job_dir / RUN_LOG
        env = {**thread_limits(schema), **os.environ, **settings.env}
        try:
            with log_path.open("ab") as log:
                # In a session of its own: the run leads its group, whose id is its PID.
                process = await start_child_async(
                    argv,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=job_dir,
                    env=env,
                    limits=_limits_for(settings, memory_bytes),
                )
        except (OSError, ValueError) as error:
            # A command that cannot start is a deployment problem, not the event's fault: retry elsewhere.
            return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, None, f"could not start {argv[0]}: {error}")
        logger.info("training run started", extra=with_fields(pid=process.pid, job_dir=str(job_dir)))
        try:
            exit_code = await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            exit_code = await self._stop_group(process, grace=settings.kill_grace_seconds)
            return LaunchOutcome(
                LaunchVerdict.FAILED_RETRYABLE,
                _normalised(exit_code),
                f"deadline exceeded after {timeout:g} s; the run's process group was killed\n"
                f"{log_tail(log_path, settings.log_tail_lines)}",
            )
        except asyncio.CancelledError:
            # Cancelled by the caller: no grace, but wait for the exit so no zombie or orphan remains.
            await asyncio.shield(self._stop_group(process, grace=0.0))
            raise
        not_executed = could_not_execute(exit_code)
        if not_executed is not None:
            # As an OSError at the start would be: retryable, the event is not at fault (the log says why).
            return LaunchOutcome(
                LaunchVerdict.FAILED_RETRYABLE,
                exit_code,
                f"could not start {argv[0]}: {not_executed}\n{log_tail(log_path, settings.log_tail_lines)}",
            )
        return self._outcome(job_dir, exit_code, memory_bytes)

    async def _stop_group(self, process: asyncio.subprocess.Process, *, grace: float) -> int:
        if process.returncode is None and grace > 0:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with suppress(TimeoutError):
                return await asyncio.wait_for(process.wait(), grace)
        # SIGKILL the whole group even when the leader already exited: its children may live on.
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return await process.wait()

    def _outcome(self, job_dir: Path, exit_code: int, memory_bytes: int | None) -> LaunchOutcome:
        code = _normalised(exit_code)
        verdict = verdict_for_exit_code(code)
        if verdict is LaunchVerdict.SUCCEEDED and (job_dir / RESULT_FILE).is_file():
            return LaunchOutcome(verdict, code, "exit 0")  # the log's tail is read only when a failure reports it
        tail = log_tail(job_dir / RUN_LOG, self.settings.log_tail_lines)
        if verdict is LaunchVerdict.SUCCEEDED:
            # The contract says a successful run leaves result.json; without it there is nothing to store.
            return LaunchOutcome(
                LaunchVerdict.FAILED_PERMANENTLY, code, f"exit 0 but the run wrote no {RESULT_FILE}\n{tail}"
            )
        reason = f"exit {code} (killed by {_signal_name(-exit_code)})" if exit_code < 0 else f"exit {code}"
        if memory_bytes is not None and "MemoryError" in tail:
            reason += f" (out of memory under the {memory_bytes / _GIB:g} GiB address-space limit?)"
        if not (job_dir / JOB_FILE).is_file():
            reason += f" ({JOB_FILE} is missing from {job_dir})"
        return LaunchOutcome(verdict, code, f"{reason}\n{tail}")


def _normalised(exit_code: int) -> int:
    """asyncio reports "killed by signal N" as -N; the launchers' convention (and Kubernetes') is 128+N."""
    return 128 - exit_code if exit_code < 0 else exit_code
