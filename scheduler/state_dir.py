"""The scheduler's state directory: created if missing, proven writable, and owned by one scheduler.

Two schedulers writing the same state would corrupt it, so the directory is locked (``flock`` on
``scheduler.lock``) for as long as the process runs; the lock goes away with the process, even on
kill -9, so a restart never finds a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE = "scheduler.lock"


class StateDirError(OSError):
    """The state directory cannot be used; the message says why and what to do."""


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create, check and lock the directory. Raises StateDirError."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise StateDirError(f"state dir {self.path} exists and is not a directory") from None
        except OSError as error:
            raise StateDirError(f"cannot create state dir {self.path}: {error.strerror}") from None
        if not self.path.is_dir():
            raise StateDirError(f"state dir {self.path} is not a directory")
        probe = self.path / f".write-probe-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise StateDirError(f"state dir {self.path} is not writable: {error.strerror}") from None
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirError(
                f"state dir {self.path} is in use by another scheduler (lock {LOCK_FILE} is held)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def __enter__(self) -> StateDir:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
