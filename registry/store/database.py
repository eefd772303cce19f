"""Opening the registry's database and running units of work on it.

Concurrency control is optimistic: every row has a version (tables.py, ``version_id_col``), each write checks
it, and a unit of work that loses a race (StaleDataError: the row changed since it was read; IntegrityError: a
row it inserts was inserted meanwhile) is rolled back and run again from fresh reads, up to MAX_ATTEMPTS times.
The lifecycle tables then decide again on the new state, so the loser of a race gets the 409 its request now
deserves instead of overwriting the winner. A unit whose decision rests on a row it does not change marks that
row with :func:`guard`, so that row's version is checked too.

SQLite (the default, one file in the state directory): WAL journal, foreign keys on, a busy timeout so writers
queue on SQLite's lock instead of failing. pysqlite runs reads outside a transaction and begins one at the first
write, which is why the version check, not the transaction, is what keeps a read-then-write unit honest; it is the
same on PostgreSQL at READ COMMITTED, its default.

Nothing lives only in this process: every accepted request is committed before it is answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import flag_modified
from sqlalchemy.orm.exc import StaleDataError

from registry.errors import Conflict, Unavailable
from registry.store.tables import Base

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS: Final = 8
SQLITE_BUSY_SECONDS: Final = 30.0
DATABASE_FILE: Final = "registry.db"


class DatabaseUrlError(ValueError):
    """A --database URL the registry cannot use."""


def database_url(text: str | None, state_dir: Path) -> URL:
    """The URL to open: ``text`` (sqlite:///FILE or postgresql://...) or the state directory's SQLite file.
    ``postgresql://`` means psycopg 3, the driver the registry ships with."""
    if text is None:
        return URL.create("sqlite+pysqlite", database=str(state_dir / DATABASE_FILE))
    try:
        url = make_url(text)
    except ArgumentError:
        raise DatabaseUrlError("--database: not a database URL (sqlite:///FILE or postgresql://HOST/DB)") from None
    backend = url.get_backend_name()
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise DatabaseUrlError("--database: a SQLite URL names a file (sqlite:///FILE): memory would not last")
        return url.set(drivername="sqlite+pysqlite")
    raise DatabaseUrlError(f"--database: {backend} is not supported; use sqlite:///FILE or postgresql://...")


def shown(url: URL) -> str:
    """The URL for logs and errors: never its password."""
    return url.render_as_string(hide_password=True)


def _sqlite_connection_settings(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite: ON DELETE CASCADE needs it
    cursor.close()


def open_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS})
        event.listen(engine, "connect", _sqlite_connection_settings)
        return engine
    # pool_pre_ping: a PostgreSQL restarted under us costs one failed ping, not a failed request.
    return create_engine(url, pool_pre_ping=True)


def guard(session: Session, row: Base) -> None:
    """Make ``row``'s version part of this unit of work although the unit does not change it: it is written back
    (its version bumped), so the commit fails if anyone changed the row since it was read."""
    session.add(row)
    # Marking a column as changed makes the flush write the row, with the version check and bump. Not the version
    # column itself (SQLAlchemy then has no old version to check against): every table has a description.
    flag_modified(row, "description")


class Store:
    """Units of work on the registry's database: ``write`` for read-decide-write under the version checks,
    ``read`` for queries. Both run in a worker thread, so the event loop never waits on the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def write_now(self, unit: Callable[[Session], T]) -> T:
        """Run ``unit`` in a transaction and commit it; again on a lost race (see the module's docstring)."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self._sessions() as session, session.begin():
                    return unit(session)
            except (StaleDataError, IntegrityError) as error:
                log.info(
                    "registry store: lost a race to another writer (attempt %d): %s", attempt, type(error).__name__
                )
            except OperationalError as error:
                raise Unavailable(f"the registry's database is unavailable: {error.orig}") from None
        raise Conflict(f"changed by other writers {MAX_ATTEMPTS} times while this request was applied: try again")

    def read_now(self, unit: Callable[[Session], T]) -> T:
        try:
            with self._sessions() as session:
                return unit(session)
        except OperationalError as error:
            raise Unavailable(f"the registry's database is unavailable: {error.orig}") from None

    async def write(self, unit: Callable[[Session], T]) -> T:
        return await asyncio.to_thread(self.write_now, unit)

    async def read(self, unit: Callable[[Session], T]) -> T:
        return await asyncio.to_thread(self.read_now, unit)

    def close(self) -> None:
        self.engine.dispose()
