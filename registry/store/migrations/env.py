"""Alembic's entry point, run by registry/store/schema.py with an open connection in ``config.attributes``.

The whole upgrade is one transaction taken under a lock, so registries starting together on one database migrate
it once: PostgreSQL by a transaction-level advisory lock (its DDL is transactional); SQLite by the exclusive
transaction schema.py's migrating engine begins with.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from registry.store.tables import Base

# Any 64-bit number no other user of the database picks: "modelplane registry" in ASCII, cut to 8 bytes.
MIGRATION_LOCK_KEY = int.from_bytes(b"mplregst", "big") & 0x7FFF_FFFF_FFFF_FFFF


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if not isinstance(_connection, Connection):
    raise RuntimeError("the registry's migrations run from registry/store/schema.py, with a connection")
_run(_connection)
