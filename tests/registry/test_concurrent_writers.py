"""Two writers on one database: optimistic row versions make the loser of a race decide again on the winner's
state (and get the 409 that state deserves) instead of overwriting it. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from registry.lifecycle import LifecycleConflict, ModelAction, ModelState
from registry.service import assignments, lookups
from registry.store.tables import ExperimentRow, ModelRow
from tests.registry import rows
from tests.support.processes import stop_process
from tests.support.registry_process import start_registry


def test_a_writer_that_read_a_state_since_changed_decides_again(database_url: str, tmp_path: Path) -> None:
    """Writer B reads the model PREPARING; writer A moves it to SPLITTING and commits; B, deciding from what it
    read, would edit the directives (allowed in PREPARING). B's commit fails the version check, B runs again on
    the fresh row, and the table refuses: a 409, and A's state and directives stand."""
    (tmp_path / "state").mkdir(exist_ok=True)
    from registry.store import schema  # noqa: PLC0415
    from registry.store.database import database_url as url_of  # noqa: PLC0415

    schema.upgrade(url_of(database_url, tmp_path / "state"))
    writer_a, writer_b = rows.open_store(database_url), rows.open_store(database_url)
    try:
        writer_a.write_now(lambda s: s.add(ExperimentRow(name="race", directives=[], create_time=1)))
        model_id = rows.add_model(writer_a, "race", ModelState.PREPARING)
        attempts: list[str] = []

        def a_splits(session: Session) -> None:
            row = lookups.model(session, "race", model_id)
            assignments.move(row, ModelAction.SPLIT)
            row.directives = ["from A"]

        def b_edits(session: Session) -> None:
            row = lookups.model(session, "race", model_id)
            attempts.append(row.state)
            if len(attempts) == 1:
                writer_a.write_now(a_splits)  # A wins the race between B's read and B's write
            assignments.move(row, ModelAction.EDIT_DIRECTIVES)
            row.directives = ["from B"]

        with pytest.raises(LifecycleConflict) as refused:
            writer_b.write_now(b_edits)
        assert attempts == ["PREPARING", "SPLITTING"]  # B ran again, on the state A left
        assert "it is SPLITTING" in refused.value.message
        final = writer_b.read_now(lambda s: s.get(ModelRow, model_id))
        assert final is not None
        assert (final.state, final.directives) == ("SPLITTING", ["from A"])

        # Without the store's retry, the lost race is the version check's StaleDataError, not a silent overwrite.
        with writer_b.engine.connect() as connection, Session(bind=connection) as session:
            row = session.get(ModelRow, model_id)
            assert row is not None
            writer_a.write_now(lambda s: setattr(lookups.model(s, "race", model_id), "name", "renamed by A"))
            row.name = "renamed by B"
            with pytest.raises(StaleDataError):
                session.commit()
    finally:
        writer_a.close()
        writer_b.close()


def test_two_registry_processes_racing_on_one_database(database_url: str, tmp_path: Path) -> None:
    """Two live registries on one database, sixteen concurrent PUTs of one new experiment, each with its own
    srcpath: exactly one defines it, the other fifteen get 409, and what is stored is the winner's. Then twenty
    concurrent model creations: twenty models, none lost."""
    database = [f"--database={database_url}"] if database_url.startswith("postgresql") else []
    state = tmp_path / "state"  # SQLite: both use the one file in the shared state directory
    first = start_registry(tmp_path / "one", *database, state_dir=state)
    second = start_registry(tmp_path / "two", *database, state_dir=state)
    try:
        registries = [first, second]

        def define(index: int) -> tuple[int, str]:
            answer = registries[index % 2].call("PUT", "/experiments/contested", {"srcpath": f"/data-{index}.csv"})
            return answer.status, f"/data-{index}.csv"

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(define, range(16)))
        statuses = Counter(status for status, _ in results)
        assert statuses == {201: 1, 409: 15}, results
        winner = next(srcpath for status, srcpath in results if status == 201)
        assert first.call("GET", "/experiments/contested").body["srcpath"] == winner
        assert second.call("GET", "/experiments/contested").body["srcpath"] == winner

        def create(index: int) -> str:
            answer = registries[index % 2].call("POST", "/experiments/contested/models", {"name": f"m{index}"})
            assert answer.status == 201, answer.body
            return str(answer.body["id"])

        with ThreadPoolExecutor(max_workers=20) as pool:
            ids = set(pool.map(create, range(20)))
        assert len(ids) == 20
        listed = first.call("GET", "/experiments/contested/models?limit=1000")
        assert listed.headers["x-total-count"] == "20"
        assert {doc["id"] for doc in listed.body} == ids
    finally:
        stop_process(first.process)
        stop_process(second.process)
