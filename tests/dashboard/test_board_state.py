"""The dashboard's state: the latest view per object, changes only when something changed, bounded per kind; and
the browsers' bounded queues (the latest change per object), a slow one dropped without holding up the rest."""

from __future__ import annotations

import pytest

from dashboard.board_state import BoardState, Change, Kind
from dashboard.live_board import LiveBoard, TooManyWatchersError, Watcher


def test_a_view_is_a_change_once_and_the_same_view_again_is_none() -> None:
    state = BoardState()
    view = {"name": "iris", "state": "ModelProgressing"}
    assert state.put(Kind.MODEL, "iris", view) == Change(Kind.MODEL, "iris", view)
    assert state.put(Kind.MODEL, "iris", dict(view)) is None
    available = {"name": "iris", "state": "ModelAvailable"}
    assert state.put(Kind.MODEL, "iris", available) == Change(Kind.MODEL, "iris", available)
    assert state.view(Kind.MODEL, "iris") == available


def test_kinds_are_apart_and_a_removal_is_a_change_once() -> None:
    state = BoardState()
    state.put(Kind.MODEL, "x", {"name": "x"})
    state.put(Kind.PIPELINE, "x", {"name": "x", "steps": []})
    assert state.remove(Kind.MODEL, "x") == Change(Kind.MODEL, "x", None)
    assert state.remove(Kind.MODEL, "x") is None
    assert state.snapshot()["objects"]["pipelines"] == {"x": {"name": "x", "steps": []}}
    assert state.snapshot()["objects"]["models"] == {}


def test_a_full_listing_removes_what_it_lacks_and_changes_only_what_differs() -> None:
    state = BoardState()
    for name in ("a", "b", "c"):
        state.put(Kind.SERVER, name, {"name": name, "replicas": 1})
    changes = state.replace_all(Kind.SERVER, {"b": {"name": "b", "replicas": 1}, "c": {"name": "c", "replicas": 2}})
    assert changes == [Change(Kind.SERVER, "a", None), Change(Kind.SERVER, "c", {"name": "c", "replicas": 2})]
    assert sorted(state.names(Kind.SERVER)) == ["b", "c"]


def test_a_kind_holds_at_most_its_limit_and_says_it_was_cut() -> None:
    state = BoardState(max_per_kind=2)
    assert state.put(Kind.MODEL, "a", {"n": 1}) is not None
    assert state.put(Kind.MODEL, "b", {"n": 1}) is not None
    assert state.put(Kind.MODEL, "c", {"n": 1}) is None  # not kept
    assert state.put(Kind.MODEL, "a", {"n": 2}) is not None  # a held one still changes
    assert state.put(Kind.RUN, "r", {"n": 1}) is not None  # another kind has its own limit
    snapshot = state.snapshot()
    assert sorted(snapshot["objects"]["models"]) == ["a", "b"]
    assert snapshot["truncated"] == ["models"]
    state.replace_all(Kind.MODEL, {"a": {"n": 3}})
    assert state.snapshot()["truncated"] == []


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoardState(max_per_kind=0)


async def test_a_watcher_gets_the_snapshot_then_every_change_after_it() -> None:
    board = LiveBoard()
    board.put(Kind.MODEL, "iris", {"state": "ModelProgressing"})
    snapshot, watcher = board.watch()
    assert snapshot["objects"]["models"] == {"iris": {"state": "ModelProgressing"}}
    board.put(Kind.MODEL, "iris", {"state": "ModelProgressing"})  # no change: nothing sent
    board.put(Kind.MODEL, "iris", {"state": "ModelAvailable"})
    board.remove(Kind.MODEL, "gone")  # never held: nothing sent
    assert await watcher.next_changes() == [Change(Kind.MODEL, "iris", {"state": "ModelAvailable"})]


def _dropped(watcher: Watcher) -> bool:
    return watcher.dropped  # read through a call: each put may change it


async def test_a_watcher_that_reads_late_gets_the_latest_of_each_object_in_the_order_they_last_changed() -> None:
    board = LiveBoard(max_queued=3)
    _, watcher = board.watch()
    board.put(Kind.MODEL, "a", {"n": 1})
    board.put(Kind.MODEL, "b", {"n": 1})
    board.put(Kind.MODEL, "a", {"n": 2})
    board.remove(Kind.MODEL, "b")
    assert await watcher.next_changes() == [Change(Kind.MODEL, "a", {"n": 2}), Change(Kind.MODEL, "b", None)]
    assert not watcher.dropped


async def test_a_slow_watcher_is_dropped_and_the_others_keep_every_change() -> None:
    board = LiveBoard(max_queued=3)
    _, slow = board.watch()
    _, fast = board.watch()
    for number in range(3):
        board.put(Kind.MODEL, f"m{number}", {"n": number})
    assert len(await fast.next_changes()) == 3  # fast reads; slow does not
    board.put(Kind.MODEL, "m0", {"n": 0, "again": True})  # the latest of an object it holds: still 3 objects
    assert not _dropped(slow)
    board.put(Kind.MODEL, "m3", {"n": 3})  # a fourth object: too far behind
    assert _dropped(slow)
    assert await slow.next_changes() == []
    assert board.watchers == 1
    assert await fast.next_changes() == [
        Change(Kind.MODEL, "m0", {"n": 0, "again": True}),
        Change(Kind.MODEL, "m3", {"n": 3}),
    ]


async def test_watchers_are_bounded_and_closing_ends_every_stream() -> None:
    board = LiveBoard(max_watchers=2)
    _, first = board.watch()
    board.watch()
    with pytest.raises(TooManyWatchersError):
        board.watch()
    board.close()
    assert first.dropped
    assert await first.next_changes() == []
    with pytest.raises(TooManyWatchersError):
        board.watch()
