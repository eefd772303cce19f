"""What a newly elected scheduler does with its state dir (scheduler/leadership/term_state.py): the store is kept
only when it was written in the very term being led, else removed so the term starts empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.leadership.lease_records import Term
from scheduler.leadership.term_state import TERM_FILE, begin_term, recorded_term
from scheduler.persistence import SqliteStateStore
from scheduler.persistence.state_store import Put

TERM = Term("lease-uid", "scheduler-0", 3)


async def store_with_a_model(state_dir: Path) -> None:
    store = await SqliteStateStore.open(state_dir)
    await store.apply([Put("models", "iris", b"spec")])
    await store.close()


async def models_in(state_dir: Path) -> dict[str, bytes]:
    store = await SqliteStateStore.open(state_dir)
    try:
        return store.load("models")
    finally:
        await store.close()


async def test_a_store_of_this_very_term_is_kept(tmp_path: Path) -> None:
    assert begin_term(tmp_path, TERM) is False, "no term recorded: nothing to trust"
    await store_with_a_model(tmp_path)
    assert recorded_term(tmp_path) == TERM
    assert begin_term(tmp_path, TERM) is True, "the same replica leads again, nobody led in between"
    assert await models_in(tmp_path) == {"iris": b"spec"}


@pytest.mark.parametrize(
    "next_term",
    [
        Term("lease-uid", "scheduler-0", 5),  # others led in between: the transitions moved on
        Term("lease-uid", "scheduler-1", 3),
        Term("recreated-lease", "scheduler-0", 3),  # the Lease was deleted and made again: counts start over
    ],
)
async def test_a_store_of_another_term_is_removed(tmp_path: Path, next_term: Term) -> None:
    begin_term(tmp_path, TERM)
    await store_with_a_model(tmp_path)
    assert begin_term(tmp_path, next_term) is False
    assert not (tmp_path / "state.sqlite3").exists()
    assert recorded_term(tmp_path) == next_term
    assert await models_in(tmp_path) == {}


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"holder": "x"}', b"\xff" * 10_000])
async def test_an_unreadable_term_record_is_not_trusted(tmp_path: Path, content: bytes) -> None:
    await store_with_a_model(tmp_path)
    (tmp_path / TERM_FILE).write_bytes(content)
    assert recorded_term(tmp_path) is None
    assert begin_term(tmp_path, TERM) is False
    assert await models_in(tmp_path) == {}
