"""Run a training job as a child forked from a warm fork server: the same contract and outcomes as
trainer/launchers/local.py, without paying interpreter start-up and the scikit-learn/pandas imports per run.

The trainer starts one helper process, ``python -m trainer.launchers.fork_server``, on the first run. The helper
imports ``trainer.run.run_job`` (and with it numpy, pandas, scikit-learn) once, never runs any numerics itself, and
then forks one child per run on request. How the child is set up before it calls ``trainer.run.run_job.main``
(its own session, rlimits, death signals, run.log, thread-pool bounds) and the protocol between the two are in
fork_server.py, the helper's code; this module is the trainer's side.

The helper starts with the first run (that run pays the ~2-3 s of imports once) and lives until ``aclose()``
(trainer/process.py calls it at shutdown) or the trainer's death.

The helper reaps its children and reports each exit status to the trainer, which maps it exactly as the local
launcher does (0 success, 1-127 permanent but EXIT_UNAVAILABLE retryable, 128+N killed by signal N: retryable; a
deadline is retryable; exit 0 without result.json is permanent). A run whose set-up fails in the child (an rlimit,
the log file) exits 255: retryable, with the reason in run.log. If the helper itself dies, runs in flight are
killed and reported as retryable, and the next run starts a new helper.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generated.mlops.training.v1 import training_pb2
from modelplane.child_processes import start_child_async
from modelplane.logs import with_fields
from servers.launch.local import log_tail
from trainer.launchers.base import LaunchOutcome, LaunchVerdict
from trainer.launchers.fork_server import DEFAULT_ENTRY, kill_group, thread_counts
from trainer.launchers.local import (
    RUN_LOG,
    THREAD_POOL_VARIABLES,
    LocalLauncherSettings,
    LocalProcessLauncher,
    _limits_for,
    _normalised,
    memory_limit_bytes,
    thread_limits,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmLauncherSettings:
    """How warm runs are started and bounded. ``limits`` holds the knobs shared with the local launcher
    (deadline, memory, CPU, open files, kill grace, extra env, log tail); its ``command`` is not used."""

    limits: LocalLauncherSettings = field(default_factory=LocalLauncherSettings)
    # "module:function": called in the child with ``[JOB_DIR]``; returns the exit code (run_job's ``main``).
    entry: str = DEFAULT_ENTRY
    # The interpreter that runs the fork server.
    python: str = sys.executable
    # How long the fork server may take to import the entry's module (scikit-learn and all) and report ready.
    start_timeout_seconds: float = 120.0


class ForkServerError(RuntimeError):
    """The fork server could not be started, or went away while a run was in flight."""


class _ForkServer:
    """The trainer's handle on one helper process: sends requests, dispatches its replies to futures."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._next_id = 0
        self._starts: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.gone: str | None = None  # why the helper is unusable, once it is

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(cls, settings: WarmLauncherSettings) -> _ForkServer:
        argv = [settings.python, "-m", "trainer.launchers.fork_server", "--entry", settings.entry]
        # In a session of its own (a terminal's Ctrl-C goes to the trainer, which decides about its runs), with
        # the death signal set by setpriv: no Python runs between the trainer's fork and the exec, as the
        # trainer has gRPC threads (modelplane.child_processes).
        process = await start_child_async(
            argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            # One thread per pool while importing: a run that wants one (the default) then needs no change, and
            # changing OpenBLAS's count costs its first call in the child ~40 ms here.
            env={**os.environ, **dict.fromkeys(THREAD_POOL_VARIABLES, "1")},
        )
        server = cls(process)
        try:
            if process.stdout is None:
                raise ForkServerError("the warm fork server has no stdout pipe")
            line = await asyncio.wait_for(process.stdout.readline(), settings.start_timeout_seconds)
            message = json.loads(line) if line else {}
            if not isinstance(message, dict) or "ready" not in message:
                raise ForkServerError("the warm fork server exited before it was ready (see the trainer's stderr)")
        except BaseException:
            await server.kill()
            raise
        server._reader = asyncio.create_task(server._read(), name="warm-fork-server-reader")
        logger.info("warm fork server ready", extra=with_fields(pid=process.pid))
        return server

    async def _read(self) -> None:
        stdout = self.process.stdout
        try:
            while stdout is not None and (line := await stdout.readline()):
                message: dict[str, Any] = json.loads(line)
                if "exited" in message:
                    future = self._exits.get(int(message["exited"]))
                    if future is not None and not future.done():
                        future.set_result(int(message["code"]))
                elif "id" in message:
                    start = self._starts.pop(int(message["id"]), None)
                    if start is None or start.done():
                        continue
                    if "pid" in message:
                        pid = int(message["pid"])
                        self._exits[pid] = asyncio.get_running_loop().create_future()
                        start.set_result(pid)
                    else:
                        start.set_exception(ForkServerError(f"the fork server could not fork: {message.get('error')}"))
        except (ValueError, KeyError, TypeError) as error:
            logger.error("warm fork server sent garbage; stopping it: %s", error)
            with suppress(ProcessLookupError):
                self.process.kill()  # its runs die with it (their death signal), and are reported retryable
        finally:
            code = await self.process.wait() if self.process.returncode is None else self.process.returncode
            self._fail(f"the warm fork server exited (code {code}) while the run was in flight")

    def _fail(self, reason: str) -> None:
        self.gone = reason
        for future in [*self._starts.values(), *self._exits.values()]:
            if not future.done():
                future.set_exception(ForkServerError(reason))
        self._starts.clear()

    def spawn(
        self, job_dir: Path, env: Mapping[str, str], limits: list[tuple[int, tuple[int, int]]]
    ) -> asyncio.Future[int]:
        """Ask for one run; the future gives the run's PID (its process-group id too)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.gone is not None or self.process.stdin is None:
            future.set_exception(ForkServerError(self.gone or "the warm fork server has no stdin"))
            return future
        self._next_id += 1
        self._starts[self._next_id] = future
        request = {
            "id": self._next_id,
            "job_dir": str(job_dir.absolute()),  # the child changes into it before the entry reads it
            "env": dict(env),
            "limits": [[kind, list(values)] for kind, values in limits],
            "threads": thread_counts(env),
        }
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        return future

    def exit_of(self, pid: int) -> asyncio.Future[int]:
        return self._exits[pid]

    def forget(self, pid: int) -> None:
        self._exits.pop(pid, None)

    async def close(self, timeout: float = 10.0) -> None:
        """EOF on the helper's stdin: it kills what still runs, reaps it and exits."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        with suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), timeout)
        await self.kill()

    async def kill(self) -> None:
        if self.process.returncode is None:
            with suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class WarmProcessLauncher:
    """Runs a training job as a child of a warm fork server (see the module docstring)."""

    def __init__(self, settings: WarmLauncherSettings | None = None) -> None:
        self.settings = settings or WarmLauncherSettings()
        self._local = LocalProcessLauncher(self.settings.limits)  # the outcome and deadline rules are the same
        self._server: _ForkServer | None = None
        self._starting: asyncio.Lock | None = None

    @property
    def server_pid(self) -> int | None:
        """The fork server's PID while one runs (tests and diagnostics)."""
        return self._server.pid if self._server is not None and self._server.gone is None else None

    async def _ensure_server(self) -> _ForkServer:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            server = self._server
            if server is None or server.gone is not None or server.process.returncode is not None:
                if server is not None:
                    await server.kill()
                self._server = None
                server = self._server = await _ForkServer.start(self.settings)
            return server

    async def aclose(self) -> None:
        """Stop the fork server (it kills and reaps any run still in flight). The next run starts a new one."""
        server, self._server = self._server, None
        if server is not None:
            await server.close()

    async def run(self, job_dir: Path, schema: training_pb2.ModelDesignSchema) -> LaunchOutcome:
        limits = self.settings.limits
        timeout = self._local._timeout_for(job_dir)
        memory_bytes = memory_limit_bytes(schema, limits.default_memory_gib)
        env = {**thread_limits(schema), **os.environ, **limits.env}
        log_path = job_dir / RUN_LOG
        try:
            server = await self._ensure_server()
        except (OSError, ValueError, TimeoutError, ForkServerError) as error:
            detail = f"could not start the warm fork server ({self.settings.python}): {error or type(error).__name__}"
            return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, None, detail)
        started = server.spawn(job_dir, env, _limits_for(limits, memory_bytes))
        try:
            pid = await asyncio.shield(started)
        except asyncio.CancelledError:
            await asyncio.shield(self._abandon(server, started))
            raise
        except ForkServerError as error:
            return LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, None, str(error))
        logger.info("training run started", extra=with_fields(pid=pid, job_dir=str(job_dir), fork_server=server.pid))
        exited = server.exit_of(pid)
        try:
            exit_code = await asyncio.wait_for(asyncio.shield(exited), timeout)
        except TimeoutError:
            stopped = await self._stop_group(pid, exited, grace=limits.kill_grace_seconds)
            return LaunchOutcome(
                LaunchVerdict.FAILED_RETRYABLE,
                None if stopped is None else _normalised(stopped),
                f"deadline exceeded after {timeout:g} s; the run's process group was killed\n"
                f"{log_tail(log_path, limits.log_tail_lines)}",
            )
        except asyncio.CancelledError:
            # Cancelled by the caller: no grace, but wait for the exit so no orphan remains.
            await asyncio.shield(self._stop_group(pid, exited, grace=0.0))
            raise
        except ForkServerError as error:
            kill_group(pid, signal.SIGKILL)
            return LaunchOutcome(
                LaunchVerdict.FAILED_RETRYABLE, None, f"{error}\n{log_tail(log_path, limits.log_tail_lines)}"
            )
        finally:
            server.forget(pid)
        return self._local._outcome(job_dir, exit_code, memory_bytes)

    async def _abandon(self, server: _ForkServer, started: asyncio.Future[int]) -> None:
        """A run cancelled before its PID was known: kill it once it is, and wait for its exit."""
        try:
            pid = await started
        except ForkServerError:
            return
        try:
            await self._stop_group(pid, server.exit_of(pid), grace=0.0)
        finally:
            server.forget(pid)

    async def _stop_group(self, pid: int, exited: asyncio.Future[int], *, grace: float) -> int | None:
        if not exited.done() and grace > 0:
            kill_group(pid, signal.SIGTERM)
            with suppress(TimeoutError, ForkServerError):
                return await asyncio.wait_for(asyncio.shield(exited), grace)
        if not exited.done():
            kill_group(pid, signal.SIGKILL)
        else:
            # The leader exited; its children may live on in its group (the id is not reused while they do).
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        try:
            return await exited
        except ForkServerError:
            return None
