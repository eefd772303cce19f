"""Where audit lines go, and the promise about them: a line is on disk before the call it records is answered.

Fsync policy: every line is written and fsynced before ``AuditLog.record`` returns, and the servers answer a call
only after that, so each acknowledged mutation's line survives kill -9 of the process and a power cut alike. One
writer thread writes and fsyncs, so the event loop keeps serving meanwhile; lines recorded while it is busy are
written together and share the next fsync (group commit, as the state store does), so many concurrent mutations
cost one fsync per group, not one each (bench/audit_log_fsync.py measures it). Lines are written whole, in the
order they were recorded.

Rotation (``RotatingFile``): before a line that would take the file past ``max_bytes``, the file is renamed to
``PATH.1`` (``PATH.1`` to ``PATH.2``, ... the oldest beyond ``keep`` rotated files is dropped) and a new file is
begun, so a line is never split between files and every line is in exactly one file. A line longer than
``max_bytes`` gets a file of its own. One process writes one log (the scheduler's state dir lock sees to the
default path).

A line cut short by a full disk (or a crash of the machine mid-write) is ended before the next line is written, so
it spoils only itself; the reader reports it and reads on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import stat
import sys
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from modelplane.audit.audit_record import AuditRecord, Resource, audit_record
from modelplane.auth.caller import Caller

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 16 * 1024 * 1024  # about 40,000 lines per file
DEFAULT_KEEP = 8  # rotated files kept besides the current one: at most 144 MiB in all by default
MAX_KEEP = 1000


class AuditLogError(OSError):
    """An audit line could not be written; the message says where and why."""


class LineSink(Protocol):
    def append_many(self, lines: Sequence[bytes]) -> None:
        """Write whole lines (each ending in a line feed), in order, and make them durable before returning.
        Raises AuditLogError."""

    def close(self) -> None: ...


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rotated_path(path: Path, number: int) -> Path:
    """The ``number``-th rotated file of the log at ``path`` (1 is the newest)."""
    return path.with_name(f"{path.name}.{number}")


class RotatingFile:
    """An append-only file of lines, rotated by size (see the module's docstring)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if not 1 <= keep <= MAX_KEEP:
            raise ValueError(f"keep must be 1 to {MAX_KEEP}, not {keep}")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self.fsyncs = 0  # of lines written so far: fewer than lines when they are grouped (for benchmarks, tests)
        self._fd = -1
        self._size = 0
        self._line_open = False  # the file's last line has no line feed (a write cut short)
        self._open()

    def _open(self) -> None:
        fd = -1
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            size = os.fstat(fd).st_size
            line_open = size > 0 and not self._ends_with_line_feed()
            _fsync_directory(self.path.parent)  # the file's name is durable too, not only its content
        except OSError as error:
            if fd >= 0:
                os.close(fd)
            raise AuditLogError(f"cannot open the audit log {self.path}: {error.strerror or error}") from None
        self._fd, self._size, self._line_open = fd, size, line_open

    def _ends_with_line_feed(self) -> bool:
        with self.path.open("rb") as existing:
            existing.seek(-1, os.SEEK_END)
            return existing.read(1) == b"\n"

    def append_many(self, lines: Sequence[bytes]) -> None:
        with self._lock:
            try:
                for line in lines:
                    self._append(line)
                os.fsync(self._fd)
                self.fsyncs += 1
            except OSError as error:
                raise AuditLogError(f"cannot write the audit log {self.path}: {error.strerror or error}") from None

    def _append(self, line: bytes) -> None:
        if self._fd < 0:
            self._open()  # a rotation that failed half way left no file open
        data = b"\n" + line if self._line_open else line
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
            data = line
        self._line_open = True
        _write_all(self._fd, data)
        self._size += len(data)
        self._line_open = not data.endswith(b"\n")

    def _rotate(self) -> None:
        os.fsync(self._fd)  # its lines are durable before the next file begins
        os.close(self._fd)
        self._fd = -1
        for number in range(self.keep - 1, 0, -1):
            older = rotated_path(self.path, number)
            if older.exists():
                os.replace(older, rotated_path(self.path, number + 1))
        os.replace(self.path, rotated_path(self.path, 1))
        self._open()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class StdoutLines:
    """Lines to the process's standard output (fsynced when that is a file), for a log collector to pick up."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = sys.stdout.fileno() if fd is None else fd
        self._lock = threading.Lock()

    def append_many(self, lines: Sequence[bytes]) -> None:
        with self._lock:
            try:
                _write_all(self._fd, b"".join(lines))
                if stat.S_ISREG(os.fstat(self._fd).st_mode):
                    os.fsync(self._fd)
            except OSError as error:
                raise AuditLogError(f"cannot write audit lines to standard output: {error.strerror}") from None

    def close(self) -> None:
        """Standard output is the process's, not ours to close."""


_Waiting = tuple[bytes, asyncio.Future[None]]


class AuditLog:
    """The process's audit log: ``record`` returns once the line is durable (raising AuditLogError if it could
    not be written). One writer thread, started here and ended by ``close``, writes for every event loop."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._closed = False
        self._writer = threading.Thread(target=self._write_lines, name="audit-log", daemon=True)
        self._writer.start()

    async def record(self, record: AuditRecord) -> None:
        if self._closed:
            raise AuditLogError("the audit log is closed: the process is stopping")
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put((record.to_line(), written))
        # A caller cancelled meanwhile stops waiting; its line is written all the same.
        await written

    async def record_refusal(
        self, caller: Caller, rpc: str, resource: Resource | None, code: str, message: str
    ) -> None:
        """Record a call refused before its handler ran (by an access check): ``code`` is the gRPC status code's
        name ("UNAUTHENTICATED", "PERMISSION_DENIED"), ``message`` what the caller was told, ``resource`` what the
        call was about when the refusal knows it (else None). Returns once the line is durable; call it before
        ``context.abort``, which on grpc.aio sends the status at once. Raises AuditLogError when the line cannot
        be written."""
        await self.record(audit_record(caller, rpc, resource, code, message))

    def close(self) -> None:
        """Write what was recorded, then stop the writer and close the sink."""
        self._closed = True
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        self._sink.close()

    def _write_lines(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while True:  # everything recorded meanwhile shares this write and fsync
                try:
                    waiting = self._queue.get_nowait()
                except queue.Empty:
                    break
                if waiting is None:
                    stopping = True
                    break
                group.append(waiting)
            error: AuditLogError | None = None
            try:
                self._sink.append_many([line for line, _ in group])
            except AuditLogError as failed:
                error = failed
            except Exception as failed:  # a sink's bug must not leave callers waiting for ever
                log.exception("audit sink failed")
                error = AuditLogError(f"the audit log failed: {type(failed).__name__}")
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = defaultdict(list)
            for _, written in group:
                by_loop[written.get_loop()].append(written)
            for loop, futures in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                    loop.call_soon_threadsafe(_settle, futures, error)


def _settle(futures: list[asyncio.Future[None]], error: AuditLogError | None) -> None:
    for written in futures:
        if written.done():
            continue  # its caller was cancelled
        if error is None:
            written.set_result(None)
        else:
            written.set_exception(AuditLogError(str(error)))
