"""Private virtualenvs for the inference servers, created on first use and reused afterwards.

MLServer and Triton's Python backend pin their own grpcio/protobuf/numpy, which clash with ours, so
each lives in its own venv. Creation takes about a minute; a marker file naming the exact requirements
is written last, so an interrupted install is redone rather than trusted, and a changed requirement
list rebuilds the venv. A lock file lets two processes (two agents, two test sessions) ask at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# Verified on Debian 12 / Python 3.11. uvloop 0.22+ makes MLServer's parallel-worker loads fail with
# "Worker process stopped unexpectedly"; MLServer 1.7 supports Python < 3.13. scikit-learn is pinned to
# the main venv's (pyproject.toml) so models the trainer pickles load here unchanged.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "mlserver": ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "scikit-learn==1.9.1", "uvloop<0.22"),
    "triton": ("nvidia-pytriton==0.7.0",),
}
_DISPLAY = {"mlserver": "MLServer", "triton": "Triton"}
SUPPORTED_PYTHONS = ((3, 11), (3, 12))
MARKER = "modelplane-requirements.txt"
INSTALL_TIMEOUT = 1800.0  # a hang guard for pip, not an expected duration
PROGRESS_EVERY = 10.0  # seconds between two progress lines of a venv being created


class VenvError(RuntimeError):
    """The venv could not be created; the message says why and where the install log is."""


def venvs_base() -> Path:
    """Where server venvs live: ``$MODELPLANE_VENVS_DIR`` or ``~/.cache/modelplane/venvs``."""
    configured = os.environ.get("MODELPLANE_VENVS_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "modelplane" / "venvs"


def server_venv(kind: str, base: Path | None = None, *, progress: Callable[[str], None] | None = None) -> Path:
    """The venv for ``kind`` ("mlserver" or "triton"), created with the pinned packages if missing.

    Blocks for about a minute on first use (run it in a thread from async code). ``progress`` gets
    human-readable lines (default: logged at INFO): one when an install starts, then one every
    PROGRESS_EVERY seconds saying how many packages pip has fetched so far.
    """
    if kind not in REQUIREMENTS:
        raise ValueError(f"unknown server kind {kind!r}; known: {', '.join(sorted(REQUIREMENTS))}")
    base = base or venvs_base()
    base.mkdir(parents=True, exist_ok=True)
    venv = base / kind
    wanted = _marker_text(kind)
    if _installed(venv, wanted):
        return venv
    with _locked(base / f"{kind}.lock"):
        if _installed(venv, wanted):  # another process finished it while we waited for the lock
            return venv
        say = progress or log.info
        say(f"creating {_DISPLAY[kind]} venv in {venv}, this takes about a minute")
        _create(
            venv, REQUIREMENTS[kind], base / f"{kind}-install.log", lambda line: say(f"{_DISPLAY[kind]} venv: {line}")
        )
        (venv / MARKER).write_text(wanted)
    return venv


def venv_python_version(venv: Path) -> str:
    """``"3.11"`` for a venv made by Python 3.11, read from its pyvenv.cfg (no interpreter started)."""
    for line in (venv / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version", "version_info"):
            return ".".join(value.strip().split(".")[:2])
    raise VenvError(f"{venv}/pyvenv.cfg does not say which Python made the venv")


def _marker_text(kind: str) -> str:
    return "\n".join(REQUIREMENTS[kind]) + "\n"


def _installed(venv: Path, wanted: str) -> bool:
    marker = venv / MARKER
    return marker.is_file() and marker.read_text() == wanted


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _base_python() -> str:
    """An interpreter MLServer supports: this one if it fits, else python3.11 or python3.12 on PATH."""
    if sys.version_info[:2] in SUPPORTED_PYTHONS:
        return sys.executable
    for major, minor in SUPPORTED_PYTHONS:
        found = shutil.which(f"python{major}.{minor}")
        if found:
            return found
    raise VenvError("the inference-server venvs need Python 3.11 or 3.12; neither python3.11 nor python3.12 is on PATH")


def _create(venv: Path, requirements: tuple[str, ...], install_log: Path, say: Callable[[str], None]) -> None:
    shutil.rmtree(venv, ignore_errors=True)  # a half-made venv from an interrupted install
    python = str(venv / "bin" / "python")
    commands = [
        [_base_python(), "-m", "venv", str(venv)],
        # Not --quiet: the log's "Collecting ..." and "Processing ..." lines are what the progress lines count.
        [python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", *requirements],
    ]
    started = time.monotonic()
    with install_log.open("w") as out:
        for command in commands:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            try:
                with subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT) as process:  # noqa: S603 - fixed argv
                    _wait_saying_progress(process, install_log, started, say)
            except (subprocess.TimeoutExpired, OSError) as error:
                out.flush()
                raise VenvError(
                    f"creating {venv} failed ({error}); log {install_log}:\n{_tail(install_log)}"
                ) from error
            if process.returncode != 0:
                out.flush()
                raise VenvError(
                    f"creating {venv} failed ({command[2]} exited with {process.returncode}); log {install_log}:\n"
                    f"{_tail(install_log)}"
                )
    say(f"ready after {time.monotonic() - started:.0f}s")


def _wait_saying_progress(
    process: subprocess.Popen[bytes], install_log: Path, started: float, say: Callable[[str], None]
) -> None:
    """Wait for ``process``, saying every PROGRESS_EVERY seconds how far pip has got; killed after
    INSTALL_TIMEOUT (raises TimeoutExpired)."""
    deadline = started + INSTALL_TIMEOUT
    while True:
        try:
            process.wait(timeout=min(PROGRESS_EVERY, max(0.0, deadline - time.monotonic())))
            return
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                process.kill()
                process.wait()
                raise
        fetched = _packages_fetched(install_log)
        say(f"{fetched} packages fetched so far, {time.monotonic() - started:.0f}s (log {install_log})")


def _packages_fetched(install_log: Path) -> int:
    try:
        text = install_log.read_text(errors="replace")
    except OSError:
        return 0
    # pip says "Collecting" for a package from an index, "Processing" for one from a local wheel or folder.
    return sum(1 for line in text.splitlines() if line.startswith(("Collecting ", "Processing ")))


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
