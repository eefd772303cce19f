"""Starting child processes (inference servers, training runs, the warm fork server) from a process that runs
gRPC: in a session of their own, with a death signal and resource limits, and without running Python in the child.

Why no ``preexec_fn``: it makes ``subprocess`` fork() the interpreter and run Python in the child before exec.
fork() runs gRPC's fork handlers, which are skipped when other threads are inside gRPC ("Other threads are
currently calling into gRPC, skipping fork() handlers"); the child then runs on gRPC's copied, half-owned state
and can crash before it execs (MLServer "exited with status -6", children killed by SIGSEGV), and the parent's
poller can break ("epoll_wait error: Bad file descriptor"). tests/shared/test_child_processes.py shows it: with gRPC
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

A failure of the launchers in the child is no exception in the parent, only an exit status, which could read like
the program's own (a training run's 1-127 mean bad input). So what they would fail on is checked here first, and
raised in the parent as an OSError naming the problem: a program that is missing or not executable, a script whose
interpreter (``#!``) is, a limit the child could not be given (prlimit exits 1). What cannot be checked before
(the kernel refusing the exec: a binary being written, a broken loader) ends the child with the launchers' own
codes, the POSIX shell's: 126, found but not executable; 127, not found. ``could_not_execute`` says so for a
status; a program that exits 126 or 127 itself says the same by that convention.
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
# The launchers' exit statuses when they could not execute the program (setpriv's and prlimit's, a shell's).
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
# Raising a hard limit takes this capability (CAP_SYS_RESOURCE: bit 24 of /proc/self/status's CapEff).
_CAP_SYS_RESOURCE = 24


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


def could_not_execute(exit_status: int) -> str | None:
    """Why a child that exited with ``exit_status`` never ran its program (see the module docstring), or None."""
    if exit_status == EXIT_NOT_EXECUTABLE:
        return f"exit {exit_status}, the program could not be executed"
    if exit_status == EXIT_NOT_FOUND:
        return f"exit {exit_status}, the program was not found"
    return None


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

    Raises LauncherMissing, OSError when the program cannot be started or the limits cannot be given (the error
    names which), ValueError for limits that make no sense."""
    _check_program(argv)
    _check_limits(limits)
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
    _check_limits(limits)
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
    interpreter = _interpreter(found)
    if interpreter is not None:
        if not os.path.isfile(interpreter):
            raise FileNotFoundError(f"cannot start {program}: its interpreter {interpreter} (#!) does not exist")
        if not os.access(interpreter, os.X_OK):
            raise PermissionError(f"cannot start {program}: its interpreter {interpreter} (#!) is not executable")


def _interpreter(path: str) -> str | None:
    """The interpreter a script names on its ``#!`` line, or None for a binary (or a file that cannot be read)."""
    try:
        with open(path, "rb") as file:
            first = file.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].split()
    return os.fsdecode(words[0]) if words else None


def _check_limits(limits: Sequence[ResourceLimit]) -> None:
    """prlimit would exit 1 in the child for a limit it cannot set: say so here."""
    for kind, (soft, hard) in limits:
        name = _rlimit_name(kind)
        if _above(soft, hard):
            raise ValueError(f"{name}: the soft limit {_limit_text(soft)} is above its hard limit {_limit_text(hard)}")
        _, own_hard = resource.getrlimit(kind)
        if _above(hard, own_hard) and not _may_raise_hard_limits():
            raise PermissionError(
                f"cannot give the child {name} {_limit_text(hard)}: above this process's hard limit "
                f"{_limit_text(own_hard)}, which only a privileged process (CAP_SYS_RESOURCE) may raise"
            )
        if kind == resource.RLIMIT_NOFILE and _above(hard, _nr_open()):
            raise PermissionError(
                f"cannot give the child {name} {_limit_text(hard)}: above the kernel's fs.nr_open, {_nr_open()}"
            )


def _above(value: int, limit: int) -> bool:
    """``value`` > ``limit`` for rlimit values (RLIM_INFINITY is above everything else)."""
    if limit == resource.RLIM_INFINITY:
        return False
    return value == resource.RLIM_INFINITY or value > limit


def _rlimit_name(kind: int) -> str:
    names = {
        resource.RLIMIT_AS: "RLIMIT_AS",
        resource.RLIMIT_NOFILE: "RLIMIT_NOFILE",
        resource.RLIMIT_CPU: "RLIMIT_CPU",
    }
    return names.get(kind, f"resource {kind}")


def _nr_open() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return resource.RLIM_INFINITY  # unknown: prlimit will say


def _may_raise_hard_limits() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    return os.geteuid() == 0
