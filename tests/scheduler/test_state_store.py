"""The durable state store: round trips, atomicity, group commit, validation, damaged files, kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.persistence import (
    MAX_KEY_CHARS,
    MAX_VALUE_BYTES,
    Change,
    Delete,
    MemoryStateStore,
    Put,
    SqliteStateStore,
    StateStore,
    StateStoreClosedError,
    StateStoreError,
)
from scheduler.persistence.sqlite_store import FILE_NAME, describe, is_fatal

Opener = Callable[[], Awaitable[StateStore]]
BACKENDS = ["memory", "sqlite"]


def _opener(backend: str, directory: Path) -> Opener:
    """Opens the store of ``directory``; calling it again after close() is a restart."""
    tables: dict[str, dict[str, bytes]] = {}

    async def open_store() -> StateStore:
        if backend == "memory":
            return MemoryStateStore(tables)
        return await SqliteStateStore.open(directory)

    return open_store


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return _opener(request.param, tmp_path)


async def _reopened(open_store: Opener, *tables: str) -> dict[str, dict[str, bytes]]:
    store = await open_store()
    try:
        return {table: store.load(table) for table in tables}
    finally:
        await store.close()


@contextlib.contextmanager
def _raw(directory: Path) -> Iterator[sqlite3.Connection]:
    """A second, plain connection to the store's file, to tamper with it as a test needs."""
    connection = sqlite3.connect(directory / FILE_NAME, isolation_level=None)
    try:
        yield connection
    finally:
        connection.close()


def _poison_key(directory: Path) -> None:
    """Make SQLite itself fail any transaction that writes the key 'poison'."""
    with _raw(directory) as raw:
        raw.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON records WHEN NEW.key = 'poison'"
            " BEGIN SELECT RAISE(ABORT, 'injected'); END"
        )


# --- round trips and atomicity ----------------------------------------------------------------------------


async def test_round_trip_through_close_and_reopen(open_store: Opener) -> None:
    store = await open_store()
    assert store.load("models") == {}
    await store.apply([Put("models", "iris", b"v1"), Put("models", "mnist", b"m"), Put("servers", "mlserver", b"s")])
    await store.apply([Put("models", "iris", b"v2"), Delete("models", "mnist"), Delete("models", "never-existed")])
    await store.apply([Put("models", "empty", b""), Put("models", "ünï\x00cödé/key", b"\x00\xff")])
    await store.apply([])
    assert store.load("models") == {"iris": b"v2", "empty": b"", "ünï\x00cödé/key": b"\x00\xff"}
    await store.close()

    assert await _reopened(open_store, "models", "servers", "pipelines") == {
        "models": {"iris": b"v2", "empty": b"", "ünï\x00cödé/key": b"\x00\xff"},
        "servers": {"mlserver": b"s"},
        "pipelines": {},
    }


async def test_changes_of_one_apply_land_together_in_order(open_store: Opener) -> None:
    store = await open_store()
    await store.apply([Put("models", "gone", b"x")])
    await store.apply(
        [
            Put("models", "a", b"1"),
            Put("models", "a", b"2"),  # later change to the same key wins
            Delete("models", "gone"),
            Put("models", "b", b"3"),
            Delete("models", "b"),
            Put("servers", "s", b"4"),
        ]
    )
    await store.close()
    assert await _reopened(open_store, "models", "servers") == {"models": {"a": b"2"}, "servers": {"s": b"4"}}


async def test_a_failed_apply_writes_none_of_its_changes(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path)
    _poison_key(tmp_path)  # SQLite itself rejects the second change of the batch
    with pytest.raises(StateStoreError, match="injected") as caught:
        await store.apply([Put("models", "first", b"1"), Put("models", "poison", b"2")])
    assert str(store.path) in str(caught.value)
    assert store.load("models") == {}
    await store.apply([Put("models", "after", b"3")])  # the failure did not poison the store
    await store.close()
    assert await _reopened(_opener("sqlite", tmp_path), "models") == {"models": {"after": b"3"}}


async def test_a_failed_group_fails_its_callers_all_or_nothing_and_later_groups_commit(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path)
    _poison_key(tmp_path)
    batches = [[Put("models", f"k{i}-a", b"a"), Put("models", f"k{i}-b", b"b")] for i in range(60)]
    batches[30] = [Put("models", "k30-a", b"a"), Put("models", "poison", b"p")]
    results = await asyncio.gather(*(store.apply(batch) for batch in batches), return_exceptions=True)
    assert isinstance(results[30], StateStoreError)
    assert all(result is None or isinstance(result, StateStoreError) for result in results)
    stored = store.load("models")
    for index, result in enumerate(results):  # each caller: acknowledged and fully written, or failed and absent
        expected = {f"k{index}-a": b"a", f"k{index}-b": b"b"} if result is None else {}
        assert {key: value for key, value in stored.items() if key.startswith(f"k{index}-")} == expected
    assert len(stored) == 2 * sum(result is None for result in results)

    commits = store.commit_count
    await store.apply([Put("models", "later", b"l")])
    assert store.commit_count == commits + 1
    await store.close()
    assert (await _reopened(_opener("sqlite", tmp_path), "models"))["models"] == {**stored, "later": b"l"}


# --- group commit and close -------------------------------------------------------------------------------


async def test_concurrent_applies_are_group_committed(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path)
    calls = 200
    results = await asyncio.gather(*(store.apply([Put("models", f"m{i:03d}", str(i).encode())]) for i in range(calls)))
    assert results == [None] * calls
    assert 1 <= store.commit_count < calls
    await store.close()
    loaded = (await _reopened(_opener("sqlite", tmp_path), "models"))["models"]
    assert loaded == {f"m{i:03d}": str(i).encode() for i in range(calls)}


async def test_close_flushes_pending_applies(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(tmp_path)
    tasks = [asyncio.create_task(store.apply([Put("models", f"p{i}", b"x")])) for i in range(50)]
    await asyncio.sleep(0)  # every task has queued its changes
    await store.close()
    assert [task.result() for task in tasks] == [None] * 50
    assert len((await _reopened(_opener("sqlite", tmp_path), "models"))["models"]) == 50


async def test_use_after_close_raises(open_store: Opener) -> None:
    store = await open_store()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StateStoreClosedError, match="closed"):
        await store.apply([Put("models", "a", b"1")])
    with pytest.raises(StateStoreClosedError, match="closed"):
        await store.apply([])
    with pytest.raises(StateStoreClosedError, match="closed"):
        store.load("models")


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Put("", "k", b""), "invalid table name"),
        (Put("Models", "k", b""), "invalid table name"),
        (Put("1models", "k", b""), "invalid table name"),
        (Delete("bad-name", "k"), "invalid table name"),
        (Put("m" * 64, "k", b""), "invalid table name"),
        (Put("models", "", b""), "must not be empty"),
        (Delete("models", ""), "must not be empty"),
        (Put("models", "k" * (MAX_KEY_CHARS + 1), b""), "exceeds the limit"),
        (Put("models", "bad\udc80", b""), "not valid Unicode"),
        (Put("models", "k", b"\0" * (MAX_VALUE_BYTES + 1)), "exceeds the limit"),
    ],
)
async def test_invalid_changes_raise_value_error_and_write_nothing(
    open_store: Opener, bad: Change, message: str
) -> None:
    store = await open_store()
    with pytest.raises(ValueError, match=message):
        await store.apply([Put("models", "good", b"1"), bad])
    assert store.load("models") == {}
    await store.close()
    assert await _reopened(open_store, "models") == {"models": {}}


async def test_limits_themselves_are_accepted(open_store: Opener) -> None:
    store = await open_store()
    big = bytes(MAX_VALUE_BYTES)
    await store.apply([Put("t" * 63, "k" * MAX_KEY_CHARS, big), Put("a", "k", b"")])
    await store.close()
    assert await _reopened(open_store, "t" * 63, "a") == {"t" * 63: {"k" * MAX_KEY_CHARS: big}, "a": {"k": b""}}


async def test_wrong_types_raise_type_error(open_store: Opener) -> None:
    store = await open_store()
    with pytest.raises(TypeError, match="value must be bytes"):
        await store.apply([Put("models", "k", "text")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Put or Delete"):
        await store.apply([("models", "k", b"")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="invalid table name"):
        store.load("Models")
    await store.close()


# --- files that cannot be used ----------------------------------------------------------------------------


def test_a_file_that_is_not_sqlite_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(b"this is not a database, just some bytes " * 200)
    with pytest.raises(StateStoreError, match="damaged or is not a SQLite database") as caught:
        SqliteStateStore(tmp_path)
    assert str(path) in str(caught.value)
    assert path.read_bytes().startswith(b"this is not a database")  # left alone for a person to inspect


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    with _raw(tmp_path) as raw:
        raw.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StateStoreError, match="not a modelplane state store") as caught:
        SqliteStateStore(tmp_path)
    assert str(tmp_path / FILE_NAME) in str(caught.value)


async def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    await (await SqliteStateStore.open(tmp_path)).close()
    with _raw(tmp_path) as raw:
        raw.execute("UPDATE meta SET value = '7' WHERE name = 'schema_version'")
    with pytest.raises(StateStoreError, match="schema version 7, newer than the 1") as caught:
        await SqliteStateStore.open(tmp_path)
    assert str(tmp_path / FILE_NAME) in str(caught.value)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StateStoreError, match="does not exist"):
        SqliteStateStore(tmp_path / "absent")


def test_io_errors_are_fatal_and_explained(tmp_path: Path) -> None:
    fsync_failed = sqlite3.OperationalError("disk I/O error")
    fsync_failed.sqlite_errorcode = sqlite3.SQLITE_IOERR_FSYNC
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert is_fatal(fsync_failed)
    assert not is_fatal(full)
    message = str(describe(tmp_path / FILE_NAME, "writing", full))
    assert str(tmp_path / FILE_NAME) in message
    assert "free space" in message


# --- kill -9 ----------------------------------------------------------------------------------------------

_WRITER = """
import asyncio, sys
from pathlib import Path
from scheduler.persistence import Put, SqliteStateStore

async def worker(store, prefix, n):
    i = 0
    while True:
        key = f"{prefix}-{n}-{i:06d}"
        await store.apply([Put("models", key, key.encode() * 8), Put("servers", key, b"s")])
        sys.stdout.write(key + "\\n")
        sys.stdout.flush()
        i += 1

async def main():
    store = await SqliteStateStore.open(Path(sys.argv[1]))
    sys.stdout.write(f"loaded {len(store.load('models'))}\\n")
    sys.stdout.flush()
    await asyncio.gather(*(worker(store, sys.argv[2], n) for n in range(8)))

asyncio.run(main())
"""


def _load_all(directory: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    store = SqliteStateStore(directory)
    try:
        return store.load("models"), store.load("servers")
    finally:
        asyncio.run(store.close())


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    acknowledged: list[str] = []
    for round_ in range(3):  # each round also recovers the previous round's WAL
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), f"r{round_}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            first = child.stdout.readline()
            assert first.startswith("loaded "), first + child.communicate()[1]
            assert int(first.split()[1]) >= len(acknowledged)
            seen = 0
            while seen < 300:
                line = child.stdout.readline()
                assert line.endswith("\n"), f"writer exited early: {child.communicate()[1]}"
                acknowledged.append(line.rstrip("\n"))
                seen += 1
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            rest, _ = child.communicate()  # acknowledgements still in the pipe count too
            acknowledged.extend(line for line in rest.split("\n")[:-1])  # a cut-off last line was never complete
        finally:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
        assert child.returncode == -signal.SIGKILL

        models, servers = _load_all(tmp_path)
        missing = [key for key in acknowledged if models.get(key) != key.encode() * 8 or servers.get(key) != b"s"]
        assert missing == [], f"{len(missing)} acknowledged writes lost after kill -9, e.g. {missing[:5]}"
        assert models.keys() == servers.keys()  # both changes of every apply, or neither


# --- property: the store behaves like a dict --------------------------------------------------------------

_keys = st.one_of(st.sampled_from(["a", "b", "c"]), st.text(min_size=1, max_size=6))
_changes = st.one_of(
    st.builds(Put, st.sampled_from(["models", "servers"]), _keys, st.binary(max_size=16)),
    st.builds(Delete, st.sampled_from(["models", "servers"]), _keys),
)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(_changes, max_size=6), max_size=12), concurrent=st.booleans())
def test_store_matches_a_dict_after_reopen(backend: str, batches: list[list[Change]], concurrent: bool) -> None:
    model: dict[str, dict[str, bytes]] = {"models": {}, "servers": {}}
    for batch in batches:
        for change in batch:
            if isinstance(change, Put):
                model[change.table][change.key] = change.value
            else:
                model[change.table].pop(change.key, None)

    async def run(directory: Path) -> dict[str, dict[str, bytes]]:
        open_store = _opener(backend, directory)
        store = await open_store()
        if concurrent:  # queued in call order, so committed in call order
            await asyncio.gather(*(store.apply(batch) for batch in batches))
        else:
            for batch in batches:
                await store.apply(batch)
        await store.close()
        return await _reopened(open_store, "models", "servers")

    with tempfile.TemporaryDirectory() as directory:
        assert asyncio.run(run(Path(directory))) == model
