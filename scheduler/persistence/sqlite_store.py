"""``SqliteStateStore``: the state store in one SQLite file, ``<state dir>/state.sqlite3``, with group commit.

Durability: WAL journal mode with ``synchronous=FULL``, so a transaction is on disk (WAL fsynced) when its
COMMIT returns; ``apply()`` returns only after the COMMIT of the transaction holding its changes. A kill -9
at any moment loses nothing that was acknowledged, and SQLite recovers the WAL on the next open.

Threading: every SQLite call runs on one dedicated writer thread that owns the connection; the event loop
only queues requests and awaits futures, so it never blocks on disk I/O. ``load()`` is synchronous (it
waits for the writer thread) and is meant for start-up.

Group commit, one thread hop per group: an ``apply()`` first waits on the event loop's side. When no group is
being written, the waiting callers go to the writer at once as one group; while one is (typically waiting for
an fsync), the callers that arrive wait together and go as the next group when it is done. The writer commits
a group (and any groups queued behind it) as ONE transaction, and hands the outcome back to the event loop in
one call, which completes every caller's await. So the cost of crossing between the threads is per group, not
per caller; and the writer writes a group's final value of each key with one ``executemany``, so its Python
work (which holds the GIL the event loop needs) is small. Requests are handled in arrival order, so a
``load()`` sees every ``apply()`` made before it.

Failed transactions: if the group's transaction fails, it is rolled back and EVERY caller of that group
gets its own ``StateStoreError``; none of their changes is visible. The group is not retried caller by
caller: changes are validated before they are queued, so what remains are failures of the file or the disk
(full, busy, I/O error), which a smaller transaction would meet again. The next group gets a fresh
transaction, so a failure does not poison later writes, except when SQLite reports an I/O error or a
damaged file: then the store stops accepting writes (fail-stop), because after a failed fsync the kernel
may have dropped data that an apparently successful later write would not bring back. Restarting the
scheduler reopens and checks the file.

Cancelling an ``apply()`` removes its changes if they have not gone to the writer yet; once gone they are
committed anyway, so a cancelled ``apply()`` may or may not have been written.

The caller must make sure only one process writes the directory (``scheduler.state_dir.StateDir`` locks it).

Over 400 lines on purpose: the writer thread, group commit, cancellation and fail-stop above are one protocol
around one connection, and each part leans on the others' guarantees; split, they would be read apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from scheduler.persistence.state_store import (
    Change,
    Put,
    StateStoreClosedError,
    StateStoreError,
    validate_changes,
    validate_table,
)

FILE_NAME = "state.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000

_UPSERT = (
    "INSERT INTO records (tbl, key, value) VALUES (?, ?, ?) ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value"
)
_DELETE = "DELETE FROM records WHERE tbl = ? AND key = ?"

_DAMAGED_HINT = (
    "the file is damaged or is not a SQLite database: restore it from a backup, or move it "
    "(with its -wal and -shm files) aside to start with empty state"
)
_HINTS: dict[int, str] = {
    sqlite3.SQLITE_FULL: "the disk is full: free space on the disk holding the state dir",
    sqlite3.SQLITE_IOERR: "the disk reported an I/O error: check the disk and the kernel log, then restart",
    sqlite3.SQLITE_CORRUPT: _DAMAGED_HINT,
    sqlite3.SQLITE_NOTADB: _DAMAGED_HINT,
    sqlite3.SQLITE_BUSY: "another process holds a lock on the file: make sure only this scheduler opens it",
    sqlite3.SQLITE_LOCKED: "another process holds a lock on the file: make sure only this scheduler opens it",
    sqlite3.SQLITE_READONLY: "the file is read-only: make it and its directory writable by this user",
    sqlite3.SQLITE_PERM: "permission denied: make the file and its directory writable by this user",
    sqlite3.SQLITE_CANTOPEN: "the file cannot be opened: check that the state dir exists and is writable",
}
# After these, the store stops accepting writes until the process restarts (see the module docstring).
_FATAL_CODES = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def _primary_code(error: sqlite3.Error) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_fatal(error: sqlite3.Error) -> bool:
    """True if ``error`` means the file or disk can no longer be trusted for writes."""
    return _primary_code(error) in _FATAL_CODES


def describe(path: Path, action: str, error: sqlite3.Error) -> StateStoreError:
    """A StateStoreError for a failed SQLite call, naming the file and what to do."""
    code = _primary_code(error)
    name = getattr(error, "sqlite_errorname", None) or type(error).__name__
    hint = _HINTS.get(code, "check the file and the disk holding it") if code is not None else "check the file"
    failure = StateStoreError(f"state store {path}: {action} failed: {error} ({name}); {hint}")
    failure.__cause__ = error
    return failure


@dataclass(frozen=True, slots=True)
class _Caller:
    """One ``apply()`` waiting for its group's commit."""

    changes: tuple[Change, ...]
    future: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class _ApplyGroup:
    """Callers of one event loop, handed to the writer together; ``resolve`` is called on their loop, once."""

    callers: list[_Caller]
    loop: asyncio.AbstractEventLoop
    resolve: Callable[[_ApplyGroup, StateStoreError | None], None]


@dataclass(frozen=True, slots=True)
class _LoadRequest:
    table: str
    future: Future[dict[str, bytes]]


@dataclass(frozen=True, slots=True)
class _StopRequest:
    future: Future[None]


_Request = _ApplyGroup | _LoadRequest | _StopRequest


class SqliteStateStore:
    """A ``StateStore`` in ``directory/state.sqlite3``; see the module docstring for its guarantees.

    The constructor opens (creating if needed) and checks the file, waiting for the writer thread;
    ``await SqliteStateStore.open(directory)`` does the same without blocking the event loop.
    Raises StateStoreError if the file cannot be used.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _closed/_writer_gone with queueing, so nothing queues late
        self._closed = False
        self._writer_gone = False
        self._stopped: Future[None] | None = None
        self._commit_count = 0  # written by the writer thread only
        self._failure: StateStoreError | None = None  # writer thread only; set => fail-stop
        # The event loop's side (its thread only): callers waiting to go to the writer, of which loop, and how
        # many groups have gone to the writer and not come back.
        self._waiting: list[_Caller] = []
        self._waiting_loop: asyncio.AbstractEventLoop | None = None
        self._groups_out = 0
        opened: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(opened,), name="state-store-writer", daemon=True)
        self._thread.start()
        try:
            opened.result()
        except BaseException:
            self._thread.join()
            raise

    @classmethod
    async def open(cls, directory: Path) -> SqliteStateStore:
        """Open the store without blocking the event loop."""
        return await asyncio.to_thread(cls, directory)

    @property
    def commit_count(self) -> int:
        """How many transactions of ``apply()`` changes have committed (one per group)."""
        return self._commit_count

    def load(self, table: str) -> dict[str, bytes]:
        """Every record of ``table``, including all applies made before this call. Blocks until read."""
        validate_table(table)
        future: Future[dict[str, bytes]] = Future()
        with self._lock:
            self._check_open()
            self._send_waiting()
            self._queue.put(_LoadRequest(table, future))
        return future.result()

    async def apply(self, changes: Sequence[Change]) -> None:
        """Validate, wait for the next group (module docstring), and return once its transaction has committed."""
        batch = tuple(changes)
        validate_changes(batch)
        loop = asyncio.get_running_loop()
        with self._lock:
            self._check_open()
            if not batch:
                return
            if self._waiting_loop is not loop:
                self._send_waiting()  # a group is of one loop: its outcome is handed to that loop
            future = loop.create_future()
            self._waiting.append(_Caller(batch, future))
            self._waiting_loop = loop
            if not self._groups_out:
                self._send_waiting()
        await future

    async def close(self) -> None:
        """Commit everything applied so far, close the file and stop the writer thread. Idempotent."""
        with self._lock:
            if not self._closed:
                self._send_waiting()
            self._closed = True
            if self._stopped is None:
                self._stopped = Future()
                if self._writer_gone:
                    self._stopped.set_result(None)
                else:
                    self._queue.put(_StopRequest(self._stopped))
            stopped = self._stopped
        await asyncio.shield(asyncio.wrap_future(stopped))
        self._thread.join()  # the writer resolves ``stopped`` as its last step, so this returns at once

    # --- caller side ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StateStoreClosedError(f"state store {self.path} is closed; it cannot be used after close()")
        if self._writer_gone:
            raise StateStoreError(f"state store {self.path}: the writer thread has stopped; restart the scheduler")

    def _send_waiting(self) -> None:
        """Hand the waiting callers (those not cancelled meanwhile) to the writer as one group. Under ``_lock``."""
        callers = [caller for caller in self._waiting if not caller.future.done()]
        loop = self._waiting_loop
        self._waiting = []
        if not callers or loop is None:
            return
        group = _ApplyGroup(callers, loop, self._resolved)
        self._groups_out += 1
        if self._writer_gone:
            self._hand_back([group], self._writer_stopped())
        else:
            self._queue.put(group)

    def _resolved(self, group: _ApplyGroup, failure: StateStoreError | None) -> None:
        """On the callers' loop: complete every caller of ``group``, then send the callers that waited meanwhile."""
        for caller in group.callers:
            if caller.future.done():  # cancelled after it went to the writer: written anyway, nobody to tell
                continue
            if failure is None:
                caller.future.set_result(None)
            else:  # one exception object per caller: they are raised in different tasks
                own = StateStoreError(str(failure))
                own.__cause__ = failure.__cause__
                caller.future.set_exception(own)
        with self._lock:
            self._groups_out = max(0, self._groups_out - 1)
            if not self._groups_out and self._waiting_loop is group.loop:
                self._send_waiting()

    def _writer_stopped(self) -> StateStoreError:
        return StateStoreError(f"state store {self.path}: the writer thread stopped before this request")

    # --- writer thread -------------------------------------------------------------------------------

    def _run(self, opened: Future[None]) -> None:
        try:
            connection = _connect(self.path)
        except BaseException as error:
            opened.set_exception(error)
            self._drain_after_exit()
            return
        opened.set_result(None)
        try:
            self._serve(connection)
        finally:
            with contextlib.suppress(sqlite3.Error):  # every acknowledged write is already committed
                connection.close()
            self._drain_after_exit()  # resolves the stop request, now that the file is closed

    def _serve(self, connection: sqlite3.Connection) -> None:
        """Handle requests in arrival order, committing each run of applies as one group, until a stop."""
        while True:
            requests = [self._queue.get()]
            while True:
                try:
                    requests.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            group: list[_ApplyGroup] = []
            for request in requests:
                if isinstance(request, _ApplyGroup):
                    group.append(request)
                    continue
                self._commit(connection, group)
                group = []
                if isinstance(request, _LoadRequest):
                    self._load(connection, request)
                else:
                    self._queue.put(request)  # put back: _drain_after_exit resolves it once the file is closed
                    return
            self._commit(connection, group)

    def _commit(self, connection: sqlite3.Connection, groups: list[_ApplyGroup]) -> None:
        """Write these groups in one transaction; after COMMIT hand each group's outcome to its loop (or fail them
        all)."""
        if not groups:
            return
        if self._failure is not None:
            self._hand_back(groups, self._failure)
            return
        changes = [change for group in groups for caller in group.callers for change in caller.changes]
        try:
            connection.execute("BEGIN IMMEDIATE")
            _write(connection, changes)
            connection.execute("COMMIT")
        except Exception as error:
            callers = sum(len(group.callers) for group in groups)
            action = f"writing {len(changes)} change(s) of {callers} caller(s)"
            if isinstance(error, sqlite3.Error):
                failure = describe(self.path, action, error)
                if is_fatal(error):
                    self._failure = failure
            else:
                failure = StateStoreError(f"state store {self.path}: {action} failed: {error!r}")
                failure.__cause__ = error
            self._rollback(connection)
            self._hand_back(groups, failure)
            return
        self._commit_count += 1
        self._hand_back(groups, None)

    @staticmethod
    def _hand_back(groups: list[_ApplyGroup], failure: StateStoreError | None) -> None:
        """One call per group into its loop, which completes every caller of the group there."""
        for group in groups:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                group.loop.call_soon_threadsafe(group.resolve, group, failure)

    def _rollback(self, connection: sqlite3.Connection) -> None:
        if not connection.in_transaction:  # SQLite already rolled back (it does for some errors)
            return
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error as error:
            self._failure = describe(self.path, "rolling back a failed write", error)

    def _load(self, connection: sqlite3.Connection, request: _LoadRequest) -> None:
        if not request.future.set_running_or_notify_cancel():
            return
        if self._failure is not None:
            request.future.set_exception(StateStoreError(str(self._failure)))
            return
        try:
            rows = connection.execute("SELECT key, value FROM records WHERE tbl = ?", (request.table,)).fetchall()
        except sqlite3.Error as error:
            request.future.set_exception(describe(self.path, f"reading table {request.table}", error))
            return
        records: dict[str, bytes] = {}
        for key, value in rows:
            if not isinstance(key, str) or not isinstance(value, bytes):
                request.future.set_exception(
                    StateStoreError(
                        f"state store {self.path}: record {request.table}/{key!r} is malformed; {_DAMAGED_HINT}"
                    )
                )
                return
            records[key] = value
        request.future.set_result(records)

    def _drain_after_exit(self) -> None:
        with self._lock:
            self._writer_gone = True
            while True:
                try:
                    request = self._queue.get_nowait()
                except queue.Empty:
                    return
                if isinstance(request, _StopRequest):
                    if not request.future.done():
                        request.future.set_result(None)
                elif isinstance(request, _ApplyGroup):
                    self._hand_back([request], self._writer_stopped())
                elif request.future.set_running_or_notify_cancel():
                    request.future.set_exception(self._writer_stopped())


def _write(connection: sqlite3.Connection, changes: Sequence[Change]) -> None:
    """Apply ``changes`` in order inside the open transaction: as only the last change of a key is visible once it
    commits, write each key's last one, upserts and deletes each with one ``executemany``."""
    last: dict[tuple[str, str], bytes | None] = {}
    for change in changes:
        last[(change.table, change.key)] = change.value if isinstance(change, Put) else None
    connection.executemany(_DELETE, [key for key, value in last.items() if value is None])
    connection.executemany(_UPSERT, [(*key, value) for key, value in last.items() if value is not None])


def _connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` with durable settings and check (or create) the schema. Raises StateStoreError."""
    if not path.parent.is_dir():
        raise StateStoreError(f"state store {path}: the directory {path.parent} does not exist or is not a directory")
    try:
        connection = sqlite3.connect(path, isolation_level=None)  # autocommit: transactions are explicit
    except sqlite3.Error as error:
        raise describe(path, "opening", error) from error
    try:
        _configure(connection, path)
        if _ensure_schema(connection, path):
            _fsync_directory(path.parent)  # make the new file's directory entry durable
    except sqlite3.Error as error:
        connection.close()
        raise describe(path, "opening", error) from error
    except BaseException:
        connection.close()
        raise
    return connection


def _configure(connection: sqlite3.Connection, path: Path) -> None:
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise StateStoreError(
            f"state store {path}: SQLite could not enable WAL journaling (mode is {mode!r}); "
            "put the state dir on a local filesystem"
        )
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA fullfsync = ON")  # macOS: flush the drive's cache too; no effect elsewhere
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    problems = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise StateStoreError(
            f"state store {path} failed its integrity check ({'; '.join(problems[:3])}); {_DAMAGED_HINT}"
        )


def _ensure_schema(connection: sqlite3.Connection, path: Path) -> bool:
    """Create the schema in an empty file, or check an existing one. True if it was created."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            if tables:
                raise StateStoreError(
                    f"state store {path} is a SQLite database but not a modelplane state store "
                    f"(tables: {', '.join(sorted(tables))}); move it aside or point --state-dir elsewhere"
                )
            connection.execute("CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)")
            connection.execute(
                "CREATE TABLE records"
                " (tbl TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (tbl, key))"
            )
            connection.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            connection.execute("COMMIT")
            return True
        row = connection.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        version = _parse_version(row)
        if version is None:
            raise StateStoreError(f"state store {path} has no valid schema version in its meta table; {_DAMAGED_HINT}")
        if version > SCHEMA_VERSION:
            raise StateStoreError(
                f"state store {path} has schema version {version}, newer than the {SCHEMA_VERSION} this modelplane "
                "understands: it was written by a newer modelplane; run that version (or newer), "
                "or restore a backup made by this one"
            )
        if "records" not in tables:
            raise StateStoreError(f"state store {path} has no records table; {_DAMAGED_HINT}")
        connection.execute("COMMIT")
        return False
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _parse_version(row: object) -> int | None:
    if not isinstance(row, tuple) or len(row) != 1 or not isinstance(row[0], str):
        return None
    try:
        version = int(row[0])
    except ValueError:
        return None
    return version if version >= 1 else None


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        raise StateStoreError(f"state store: cannot sync the state dir {directory}: {error.strerror}") from error
