"""Starting child processes (inference servers, training runs, the warm fork server) from a process that runs
gRPC: in a session of their own, with a death signal and resource limits, and without running Python in the child.

Why no ``preexec_fn``: it makes ``subprocess`` fork() the interpreter and run Python in the child before exec.
fork() runs gRPC's fork handlers, which are skipped when other threads are inside gRPC ("Other threads are
currently calling into gRPC, skipping fork() handlers"); the child then runs on gRPC's copied, half-owned state
and can crash before it execs (MLServer "exited with status -6", children killed by SIGSEGV), and the parent's
poller can break ("epoll_wait error: Bad file descriptor"). tests/test_child_processes.py shows it: with gRPC
busy, about one start in ten failed. Without ``preexec_fn`` CPython starts the child in C (vfork + exec, or
posix_spawn): no fork handler and no Python code runs between the fork and the exec.

What ``preexec_fn`` did is done instead by two tiny programs of Debian's util-linux (always installed), which
the child execs first and which exec the real program in turn, so its PID stays the one we started:

- ``setpriv --pdeathsig SIGTERM --``: the kernel sends the child SIGTERM when the thread that started it dies
  (even by kill -9), so a crashed agent or trainer leaves no orphan holding memory. If the parent dies in the
  instant between the fork and setpriv's prctl, the child is not signalled; callers that care (the warm fork
  server) check their parent themselves.
- ``prlimit --as=SOFT:HARD ... --``: resource limits, set in the child only.

``start_new_session`` (setsid, done by subprocess in C) puts the child in a process group of its own, whose id is
its PID, so its own children can be killed with it.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

# prlimit's option for each resource the project limits.
_PRLIMIT_OPTIONS = {resource.RLIMIT_AS: "as", resource.RLIMIT_NOFILE: "nofile", resource.RLIMIT_CPU: "cpu"}
# Where Debian installs util-linux, looked at when PATH (the caller's environment) does not have them.
_SYSTEM_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")

ResourceLimit = tuple[int, tuple[int, int]]  # (resource.RLIMIT_*, (soft, hard))
FileArgument = int | IO[bytes] | None


class LauncherMissing(OSError):  # noqa: N818 - it says what is missing
    """setpriv or prlimit (util-linux) is not installed, so a child cannot be started safely."""


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SYSTEM_DIRS))
    if found is None:
        raise LauncherMissing(
            f"{name} is not installed (looked on PATH and in {', '.join(_SYSTEM_DIRS)}): modelplane starts child "
            f"processes through util-linux's {name}; install util-linux (apt-get install util-linux)"
        )
    return found


def launcher_argv(
    argv: Sequence[str], *, death_signal: signal.Signals | None = signal.SIGTERM, limits: Sequence[ResourceLimit] = ()
) -> list[str]:
    """``argv`` behind the launchers that set ``death_signal`` and ``limits`` in the child. Raises LauncherMissing."""
    prefix: list[str] = []
    if death_signal is not None and sys.platform == "linux":  # the death signal is Linux's; elsewhere none
        prefix += [_tool("setpriv"), f"--pdeathsig={death_signal.name}", "--"]
    if limits:
        options = []
        for kind, (soft, hard) in limits:
            if kind not in _PRLIMIT_OPTIONS:
                raise ValueError(f"no prlimit option for resource {kind}")
            options.append(f"--{_PRLIMIT_OPTIONS[kind]}={_limit_text(soft)}:{_limit_text(hard)}")
        prefix += [_tool("prlimit"), *options, "--"]
    return [*prefix, *argv]


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def start_child(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: FileArgument = subprocess.DEVNULL,
    stdout: FileArgument = None,
    stderr: FileArgument = None,
    death_signal: signal.Signals | None = signal.SIGTERM,
    limits: Sequence[ResourceLimit] = (),
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, with the death signal and limits (see the module docstring).

    Raises LauncherMissing, or OSError when the program cannot be started (the error names it)."""
    _check_program(argv)
    return subprocess.Popen(  # noqa: S603 - an argv list, no shell
        launcher_argv(argv, death_signal=death_signal, limits=limits),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=None if env is None else dict(env),
        start_new_session=True,
    )


async def start_child_async(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: FileArgument = subprocess.DEVNULL,
    stdout: FileArgument = None,
    stderr: FileArgument = None,
    death_signal: signal.Signals | None = signal.SIGTERM,
    limits: Sequence[ResourceLimit] = (),
) -> asyncio.subprocess.Process:
    """``start_child`` for asyncio (its pipes are the Process's streams). The same errors."""
    _check_program(argv)
    return await asyncio.create_subprocess_exec(
        *launcher_argv(argv, death_signal=death_signal, limits=limits),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=None if env is None else dict(env),
        start_new_session=True,
    )


def _check_program(argv: Sequence[str]) -> None:
    """The launchers would report a missing program only in the child's output: say it here, in the error."""
    if not argv:
        raise ValueError("no program to start")
    program = argv[0]
    found = program if os.sep in program else shutil.which(program)
    if found is None or not os.path.isfile(found):
        raise FileNotFoundError(f"cannot start {program}: no such file")
    if not os.access(found, os.X_OK):
        raise PermissionError(f"cannot start {program}: not executable")
