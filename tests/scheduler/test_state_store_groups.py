"""How the SQLite state store groups writes (scheduler/persistence/sqlite_store.py): applies made while a group is
being written wait on the event loop's side and go to the writer together as the next group; one cancelled while it
waits is never written. Durability, atomicity and kill -9 are tests/scheduler/test_state_store.py's."""

from __future__ import annotations

import asyncio
from pathlib import Path

from scheduler.persistence import Put, SqliteStateStore


async def test_applies_made_while_a_group_is_written_commit_together_as_the_next_group(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path)
    try:
        calls = 200
        # All start in one turn of the event loop: the first goes to the writer at once, alone; the others wait
        # for it, and go as one group.
        await asyncio.gather(*(store.apply([Put("models", f"m{i:03d}", b"x")]) for i in range(calls)))
        assert store.commit_count == 2
        assert len(store.load("models")) == calls
    finally:
        await store.close()


async def test_an_apply_cancelled_while_it_waits_for_the_next_group_is_not_written(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path)
    try:
        first = asyncio.create_task(store.apply([Put("models", "first", b"1")]))
        waiting = asyncio.create_task(store.apply([Put("models", "cancelled", b"2")]))
        await asyncio.sleep(0)  # both have started: the first is with the writer, the other waits for it
        waiting.cancel()
        await first
        await store.apply([Put("models", "later", b"3")])
        assert waiting.cancelled()
        assert store.load("models") == {"first": b"1", "later": b"3"}
    finally:
        await store.close()
