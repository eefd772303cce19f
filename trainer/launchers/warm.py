"""Run a training job as a child forked from a warm fork server: the same contract and outcomes as
trainer/launchers/local.py, without paying interpreter start-up and the scikit-learn/pandas imports per run.

The trainer starts one helper process, ``python -m trainer.launchers.warm``, on the first run. The helper imports
``trainer.run.run_job`` (and with it numpy, pandas, scikit-learn) once, never runs any numerics itself, and then
forks one child per run on request. The child, before it calls ``trainer.run.run_job.main([JOB_DIR])``:

- starts its own session (``setsid``), so a deadline or a cancellation kills the run and anything it forked
  with one ``killpg`` (the trainer signals the group directly; it is the same user);
- applies the same rlimits as a local run (``RLIMIT_AS`` from the schema's ``cpu.ram`` or the default,
  ``RLIMIT_NOFILE``, optional ``RLIMIT_CPU``: local.py's helpers, computed in the trainer), last of all, so a
  tight limit fails the run (MemoryError, exit 1), not its set-up. The child starts with the fork server's
  address space (~0.6 GiB of it after the imports, as a fresh interpreter would have), and its pages are shared
  copy-on-write with the fork server until written;
- reseeds NumPy's global generator (a fresh interpreter would have a fresh seed);
- sets ``PR_SET_PDEATHSIG`` on the helper, whose own death signal is set on the trainer: a trainer killed by
  ``kill -9`` takes the helper with it (and the helper also exits when its stdin, a pipe from the trainer,
  reaches EOF), and the helper takes its runs;
- appends fds 1 and 2 to ``JOB_DIR/run.log``, changes into ``JOB_DIR`` and replaces its environment with the
  run's (the trainer's, plus the launcher's ``env``, plus the thread-pool bounds of ``thread_limits``);
- bounds the native thread pools with threadpoolctl (OpenMP, BLAS): they were loaded with numpy and scikit-learn
  in the helper, so environment variables alone can no longer size them. The helper imports with one thread per
  pool, and a child changes only the pools whose bound differs (changing OpenBLAS's count in a forked child costs
  its first BLAS call tens of ms);
- exits with run_job's exit code (``os._exit``: none of the helper's at-exit handlers run in the child).

The helper starts with the first run (that run pays the ~2-3 s of imports once) and lives until ``aclose()``
(trainer/process.py calls it at shutdown) or the trainer's death.

The helper reaps its children and reports each exit status to the trainer, which maps it exactly as the local
launcher does (0 success, 1-127 permanent but EXIT_UNAVAILABLE retryable, 128+N killed by signal N: retryable; a
deadline is retryable; exit 0 without result.json is permanent). A run whose set-up fails in the child (an rlimit,
the log file) exits 255: retryable, with the reason in run.log. If the helper itself dies, runs in flight are
killed and reported as retryable, and the next run starts a new helper.

Protocol (one JSON object per line): trainer -> helper ``{"id", "job_dir", "env", "limits", "threads"}``;
helper -> trainer ``{"ready": PID}`` once, then ``{"id", "pid"}`` (or ``{"id", "error"}``) per request and
``{"exited": PID, "code": N}`` per reaped run (``os.waitstatus_to_exitcode``: -N for signal N).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib
import json
import logging
import os
import resource
import select
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generated.mlops.training.v1 import training_pb2
from modelplane.child_processes import start_child_async
from modelplane.logs import with_fields
from servers.launch.local import log_tail
from trainer.launchers.base import LaunchOutcome, LaunchVerdict
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

DEFAULT_ENTRY = "trainer.run.run_job:main"
EXIT_SETUP_FAILED = 255  # the child could not be set up (rlimit, log file): retryable, reason in run.log
# Which threadpoolctl pools (by user_api) the per-run environment variables size, first one set wins.
THREAD_POOLS: dict[str, tuple[str, ...]] = {
    "openmp": ("OMP_NUM_THREADS",),
    "blas": ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"),
}


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


def _thread_counts(env: Mapping[str, str]) -> dict[str, int]:
    """threadpoolctl limits ({user_api: threads}) from the run's environment: what its variables would have
    set had the libraries been loaded in the run, not in the fork server."""
    counts: dict[str, int] = {}
    for pool, variables in THREAD_POOLS.items():
        for variable in variables:
            value = env.get(variable, "").strip()
            if value.isdigit() and int(value) > 0:
                counts[pool] = int(value)
                break
    return counts


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
        argv = [settings.python, "-m", "trainer.launchers.warm", "--entry", settings.entry]
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
            "threads": _thread_counts(env),
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


def _kill_group(pid: int, sig: signal.Signals) -> None:
    """Signal the run's process group; before the child's setsid the group does not exist yet, so the run alone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


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
            _kill_group(pid, signal.SIGKILL)
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
            _kill_group(pid, signal.SIGTERM)
            with suppress(TimeoutError, ForkServerError):
                return await asyncio.wait_for(asyncio.shield(exited), grace)
        if not exited.done():
            _kill_group(pid, signal.SIGKILL)
        else:
            # The leader exited; its children may live on in its group (the id is not reused while they do).
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        try:
            return await exited
        except ForkServerError:
            return None


# --- the fork server (``python -m trainer.launchers.warm``) -------------------------------------------------
# Forking and running Python in the child is this process's purpose, and safe here: it has one thread and never
# imports gRPC (unlike the trainer, which therefore starts it through setpriv, see _ForkServer.start).

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent (thread) dies. Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _resolve(entry: str) -> Callable[[list[str]], int]:
    module_name, _, function_name = entry.partition(":")
    function: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), function_name or "main")
    return function


def _run_child(request: dict[str, Any], server: _Server) -> int:
    """In the forked child: set up the run as the module docstring says, then run it. Returns the exit code."""
    job_dir = str(request["job_dir"])
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in (server.requests, server.replies, server.wake_read, server.wake_write):
            os.close(fd)
        _die_with_parent()
        if os.getppid() != server.pid:  # the fork server died before the death signal was armed
            return 128 + signal.SIGTERM
        log = os.open(os.path.join(job_dir, RUN_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.chdir(job_dir)
        os.environ.clear()
        os.environ.update({str(key): str(value) for key, value in request["env"].items()})
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            # A fresh interpreter seeds NumPy's global generator from the OS; forked children would all share the
            # fork server's state (Python's own ``random`` reseeds itself after a fork).
            numpy.random.seed()
        wanted = {str(pool): int(count) for pool, count in request["threads"].items()}
        threads = {pool: count for pool, count in wanted.items() if server.threads.get(pool) != count}
        if threads:
            from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # noqa: PLC0415

            request["_thread_limits"] = threadpool_limits(limits=threads)  # kept alive for the run's lifetime
        # Last: a tight address-space limit then fails the run's own allocations (MemoryError, exit 1, as in a
        # fresh interpreter), not this set-up.
        for kind, (soft, hard) in request["limits"]:
            resource.setrlimit(int(kind), (int(soft), int(hard)))
    except BaseException as error:  # any set-up failure is reported the same way
        with suppress(OSError):
            os.write(2, f"warm launcher: could not set up the run in {job_dir}: {error!r}\n".encode())
        return EXIT_SETUP_FAILED
    try:
        returned: object = server.entry([job_dir])
        code = returned if isinstance(returned, int) else (0 if returned is None else 1)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException as error:  # as the interpreter would: the traceback, then exit 1
        code = 1
        try:
            traceback.print_exc()
        except BaseException:  # e.g. no memory left to format it under the address-space limit
            with suppress(OSError):
                os.write(2, type(error).__name__.encode() + b" (the traceback could not be printed)\n")
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    return code if 0 <= code <= 255 else 1


class _Server:
    """The fork server's state: the protocol fds, the wake-up pipe for SIGCHLD/SIGTERM, the live runs."""

    def __init__(self, entry: Callable[[list[str]], int]) -> None:
        self.entry = entry
        self.pid = os.getpid()
        self.threads = _thread_counts(os.environ)  # what the pools were sized to when they were loaded
        self.requests, self.replies = os.dup(0), os.dup(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(2, 1)  # a stray print in the server goes to its stderr, never into the protocol
        os.close(devnull)
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self.stopping = False
        self.children: set[int] = set()
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.set_wakeup_fd(self.wake_write)

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def reply(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\n"
        while data:
            data = data[os.write(self.replies, data) :]

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.reply({"exited": pid, "code": os.waitstatus_to_exitcode(status)})

    def fork(self, request: dict[str, Any]) -> None:
        try:
            pid = os.fork()
        except OSError as error:
            self.reply({"id": request["id"], "error": str(error)})
            return
        if pid == 0:
            code = EXIT_SETUP_FAILED
            try:
                code = _run_child(request, self)
            finally:
                os._exit(code)
        self.children.add(pid)
        self.reply({"id": request["id"], "pid": pid})

    def loop(self) -> None:
        self.reply({"ready": self.pid})
        buffered = b""
        while not self.stopping:
            readable: list[int] = []
            with suppress(InterruptedError):
                readable, _, _ = select.select([self.requests, self.wake_read], [], [])
            if self.wake_read in readable:
                with suppress(BlockingIOError):
                    while os.read(self.wake_read, 4096):
                        pass
                self.reap()
            if self.requests in readable:
                data = os.read(self.requests, 65536)
                if not data:
                    return  # EOF: the trainer closed us, or died
                buffered += data
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.fork(json.loads(line))

    def kill_all(self) -> None:
        for pid in self.children:
            _kill_group(pid, signal.SIGKILL)
        for pid in list(self.children):
            with suppress(ChildProcessError):
                os.waitpid(pid, 0)


def serve(entry_name: str) -> int:
    """The fork server: import the entry's module once (every run forks from that), then fork a run per request
    and report each exit until EOF or SIGTERM."""
    importlib.import_module("threadpoolctl")
    server = _Server(_resolve(entry_name))
    try:
        server.loop()
    finally:
        server.kill_all()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.launchers.warm", description="the warm fork server")
    parser.add_argument("--entry", default=DEFAULT_ENTRY)
    options = parser.parse_args(argv)
    _die_with_parent()  # again, in case the interpreter was started by something other than the launcher
    return serve(options.entry)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        exit_code = main()
        sys.stderr.flush()
        os._exit(exit_code)  # skip tearing down numpy/scikit-learn (~0.5 s): the runs are already killed and reaped
