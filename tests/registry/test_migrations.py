"""The store's schema: from an empty database and from the previous schema (0001, rows in it) to the newest, on
SQLite and PostgreSQL, through the live process's start; and the migrated schema is exactly tables.py's."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from registry.store import schema
from registry.store.database import database_url as url_of
from registry.store.database import open_engine
from registry.store.tables import Base
from tests.support.processes import stop_process
from tests.support.registry_process import start_registry

UNRECORDED = "failed before this registry recorded reasons (schema 0001)"


def _database_flag(url: str) -> list[str]:
    """SQLite: the default file in the state directory (no flag); PostgreSQL: --database."""
    return [f"--database={url}"] if url.startswith("postgresql") else []


def test_an_empty_database_is_migrated_to_the_newest_schema_at_start(tmp_path: Path, database_url: str) -> None:
    registry = start_registry(tmp_path, *_database_flag(database_url))
    try:
        engine = open_engine(url_of(database_url, tmp_path / "state"))
        assert schema.current_revision(engine) == schema.head_revision() == "0006"
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        engine.dispose()
        assert registry.call("PUT", "/experiments/fresh", {}).status == 201
    finally:
        stop_process(registry.process)
    # A second start finds nothing to do and keeps what is there.
    again = start_registry(tmp_path / "again", *_database_flag(database_url), state_dir=tmp_path / "state")
    try:
        assert again.call("GET", "/experiments/fresh").status == 200
    finally:
        stop_process(again.process)


def test_the_previous_schema_with_rows_is_migrated_and_served(tmp_path: Path, database_url: str) -> None:
    url = url_of(database_url, tmp_path / "state")
    schema.upgrade(url, "0001")
    engine = open_engine(url)
    assert schema.current_revision(engine) == "0001"
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO experiments (name, description, srcpath, outcome, outcome_type, directives, create_time,"
                " row_version) VALUES ('old', 'from 0001', '/old.csv', 'price', 'double', '[\"drop id\"]', 5, 1)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO splits (id, experiment_name, description, type, parameters, directives, state,"
                " create_time, row_version) VALUES ('00000000000000aa', 'old', '', 'first', '{\"percent\": 75}',"
                " '[]', 'FAILED', 6, 1)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO models (id, experiment_name, name, description, split_id, directives, hyperparameters,"
                " evaluation_metrics, features, state, create_time, row_version) VALUES ('00000000000000bb', 'old',"
                " 'tree', '', '00000000000000aa', '[]', '{}', '{}', '[]', 'SPLIT_FAILED', 7, 1)"
            )
        )
    engine.dispose()

    registry = start_registry(tmp_path, *_database_flag(database_url))
    try:
        experiment = registry.call("GET", "/experiments/old").body
        assert experiment["description"] == "from 0001"
        assert experiment["directives"] == ["drop id"]
        assert registry.call("GET", "/experiments?srcpath=/old.csv").headers["x-total-count"] == "1"
        status = registry.call("GET", "/experiments/old/models/00000000000000bb/status").body
        assert status == {"id": "00000000000000bb", "status": "SPLIT_FAILED", "reason": UNRECORDED}
        split = registry.call("GET", "/experiments/old/splits/00000000000000aa").body
        assert split["reason"] == UNRECORDED
        assert split["models"] == ["00000000000000bb"]
        assert "dataset" not in split  # made before datasets were recorded (0003): none is made up
        # The migrated rows live on under the new schema: their row versions still guard them.
        assert registry.call("DELETE", "/experiments/old/models/00000000000000bb/split").status == 200
        assert registry.call("GET", "/experiments/old/splits/00000000000000aa").status == 404
    finally:
        stop_process(registry.process)
    engine = open_engine(url)
    assert schema.current_revision(engine) == schema.head_revision()
    engine.dispose()
