"""Bringing a database to the registry's schema at start: Alembic's upgrade to the newest migration, from an
empty database or from any earlier step (migrations/versions/). Safe when several registries start at once on
one database: migrations/env.py takes a lock, and the second finds nothing left to do."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL

MIGRATIONS: Final = Path(__file__).parent / "migrations"

log = logging.getLogger(__name__)


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None  # noqa: S101 - the package ships its migrations
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _migrating_engine(url: URL) -> Engine:
    """An engine for the upgrade alone. For SQLite: pysqlite's own transaction handling is switched off and each
    transaction begins EXCLUSIVE, so the DDL is one transaction (all of a step or none) and two registries
    migrating one file take turns."""
    if url.get_backend_name() != "sqlite":
        return create_engine(url)
    engine = create_engine(url, connect_args={"isolation_level": None, "timeout": 30.0})

    @event.listens_for(engine, "begin")
    def _begin_exclusive(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN EXCLUSIVE")

    return engine


def upgrade(url: URL, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (default: the newest). Makes a SQLite file's folder."""
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = _migrating_engine(url)
    try:
        if url.get_backend_name() == "sqlite":
            # Persistent for the file, and only settable outside a transaction: readers never wait on writers.
            raw = engine.raw_connection()
            try:
                raw.driver_connection.execute("PRAGMA journal_mode=WAL")  # type: ignore[union-attr]
            finally:
                raw.close()
        before = current_revision(engine)
        # Alembic narrates its plugins and steps at INFO; one line of ours says what changed.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        with engine.connect() as connection:
            config = _config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        after = current_revision(engine)
        if after != before:
            log.info("registry database migrated from schema %s to %s", before or "(empty)", after)
    finally:
        engine.dispose()
