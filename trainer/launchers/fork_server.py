"""The warm launcher's fork server (``python -m trainer.launchers.fork_server``): imports the training entry once,
then forks one child per run on request and reports each exit (trainer/launchers/warm.py is the trainer's side).

The child, before it calls the entry (``trainer.run.run_job.main([JOB_DIR])``):

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

Protocol (one JSON object per line): trainer -> helper ``{"id", "job_dir", "env", "limits", "threads"}``;
helper -> trainer ``{"ready": PID}`` once, then ``{"id", "pid"}`` (or ``{"id", "error"}``) per request and
``{"exited": PID, "code": N}`` per reaped run (``os.waitstatus_to_exitcode``: -N for signal N).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import resource
import select
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any

from modelplane.whole_numbers import parse_whole_number
from trainer.launchers.local import RUN_LOG

DEFAULT_ENTRY = "trainer.run.run_job:main"
EXIT_SETUP_FAILED = 255  # the child could not be set up (rlimit, log file): retryable, reason in run.log
# Which threadpoolctl pools (by user_api) the per-run environment variables size, first one set wins.
THREAD_POOLS: dict[str, tuple[str, ...]] = {
    "openmp": ("OMP_NUM_THREADS",),
    "blas": ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"),
}


def thread_counts(env: Mapping[str, str]) -> dict[str, int]:
    """threadpoolctl limits ({user_api: threads}) from the run's environment: what its variables would have
    set had the libraries been loaded in the run, not in the fork server."""
    counts: dict[str, int] = {}
    for pool, variables in THREAD_POOLS.items():
        for variable in variables:
            value = parse_whole_number(env.get(variable, "").strip())
            if value is not None and value > 0:
                counts[pool] = value
                break
    return counts


def kill_group(pid: int, sig: signal.Signals) -> None:
    """Signal the run's process group; before the child's setsid the group does not exist yet, so the run alone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


# Forking and running Python in the child is this process's purpose, and safe here: it has one thread and never
# imports gRPC (unlike the trainer, which therefore starts it through setpriv, see warm.py's _ForkServer.start).

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
        self.threads = thread_counts(os.environ)  # what the pools were sized to when they were loaded
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
            kill_group(pid, signal.SIGKILL)
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
    parser = argparse.ArgumentParser(prog="python -m trainer.launchers.fork_server", description="the warm fork server")
    parser.add_argument("--entry", default=DEFAULT_ENTRY)
    options = parser.parse_args(argv)
    _die_with_parent()  # again, in case the interpreter was started by something other than the launcher
    return serve(options.entry)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        exit_code = main()
        sys.stderr.flush()
        os._exit(exit_code)  # skip tearing down numpy/scikit-learn (~0.5 s): the runs are already killed and reaped
