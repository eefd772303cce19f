"""EventHub invariants: snapshot first, coalescing per key in first-pending order, bounded, non-blocking publisher.

Values are ``(key, number)`` pairs so every delivery shows which key it belongs to. Timeouts here are hang
guards only; no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelplane.event_hub import EventHub, EventHubClosedError, SubscriberLagged, Subscription

Event = tuple[str, int]
Hub = EventHub[str, Event]
Sub = Subscription[str, Event]

HANG_GUARD = 30.0  # seconds; only stops a broken test from hanging the run


def nothing() -> Iterable[str]:
    return ()


def no_value(key: str) -> Event | None:
    raise AssertionError(f"nothing to render, yet {key!r} was rendered")


def snapshot_of(state: dict[str, Event]) -> tuple[Callable[[], Iterable[str]], Callable[[str], Event | None]]:
    """``keys`` and ``render`` for ``EventHub.subscribe`` over a dict of the current state."""
    return (lambda: list(state)), state.get


def publish(hub: Hub, key: str, number: int) -> None:
    hub.publish(key, (key, number))


async def read(sub: Sub, count: int) -> list[Event]:
    async def take() -> list[Event]:
        return [await anext(sub) for _ in range(count)]

    return await asyncio.wait_for(take(), HANG_GUARD)


async def read_pending(sub: Sub) -> list[Event]:
    """Everything queued right now; none of these reads has to wait."""
    return await read(sub, sub.pending_count)


async def collect(sub: Sub) -> list[Event]:
    """Iterate to the end; run as a task, then await it through wait_for."""
    return [value async for value in sub]


async def read_to_end(sub: Sub) -> list[Event]:
    return await asyncio.wait_for(collect(sub), HANG_GUARD)


# Snapshot first.


async def test_snapshot_first_then_changes() -> None:
    hub = Hub()
    state = {"a": ("a", 1), "b": ("b", 2)}
    sub = hub.subscribe("watcher", *snapshot_of(state))
    assert sub.name == "watcher"
    assert await read(sub, 2) == [("a", 1), ("b", 2)]
    publish(hub, "c", 3)
    publish(hub, "a", 10)
    assert await read(sub, 2) == [("c", 3), ("a", 10)]
    assert sub.pending_count == 0


async def test_publish_before_reading_replaces_snapshot_value_without_duplicate() -> None:
    hub = Hub()
    state = {"a": ("a", 1), "b": ("b", 2)}
    sub = hub.subscribe("watcher", *snapshot_of(state))
    state["a"] = ("a", 10)
    publish(hub, "a", 10)  # "a" is still pending from the snapshot: replaced in place, not queued twice
    assert await read(sub, 2) == [("a", 10), ("b", 2)]
    assert sub.pending_count == 0


async def test_subscribing_while_state_changes_misses_nothing_and_duplicates_nothing() -> None:
    hub = Hub()
    state: dict[str, Event] = {}
    subscribed = asyncio.Event()
    subs: list[Sub] = []

    async def owner() -> None:
        for number in range(2000):
            key = f"k{number % 37}"
            state[key] = (key, number)
            hub.publish(key, state[key])
            if number == 1000:
                subs.append(hub.subscribe("late", *snapshot_of(state)))
                subscribed.set()
            await asyncio.sleep(0)
        publish(hub, "done", -1)  # queued behind everything still pending for the reader

    seen: list[Event] = []

    async def reader() -> None:
        await subscribed.wait()
        async for value in subs[0]:
            if value[0] == "done":
                return
            seen.append(value)

    reading = asyncio.create_task(reader())
    await asyncio.wait_for(owner(), HANG_GUARD)
    await asyncio.wait_for(reading, HANG_GUARD)

    # No gap: the last value seen for each key is the final state. No duplicate: numbers are unique
    # per publish, so a value delivered twice would show up twice.
    assert dict(seen) == dict(state.values())
    assert len(seen) == len(set(seen))


async def test_snapshot_values_are_rendered_when_read_and_a_reader_that_reads_nothing_holds_none() -> None:
    hub = Hub()
    state = {f"k{number}": (f"k{number}", number) for number in range(1000)}
    rendered: list[str] = []

    def render(key: str) -> Event | None:
        rendered.append(key)
        return state.get(key)

    idle = hub.subscribe("idle", lambda: list(state), render)
    reader = hub.subscribe("reader", lambda: list(state), render)
    assert rendered == []  # subscribing copies no value
    assert await read(reader, 2) == [("k0", 0), ("k1", 1)]
    assert rendered == ["k0", "k1"]
    assert idle.pending_count == 1000
    idle.close()
    assert idle.pending_count == 0


async def test_a_snapshot_key_whose_state_is_gone_is_passed_over() -> None:
    hub = Hub()
    state = {"a": ("a", 1), "b": ("b", 2), "c": ("c", 3)}
    sub = hub.subscribe("watcher", *snapshot_of(state))
    del state["b"]  # an owner that publishes its removals delivers those instead (see the test above)
    assert await read(sub, 2) == [("a", 1), ("c", 3)]
    assert sub.pending_count == 0


async def test_a_snapshot_value_that_cannot_be_rendered_fails_only_its_subscriber() -> None:
    def broken(key: str) -> Event | None:
        raise ValueError(f"cannot render {key}")

    hub = Hub()
    fragile = hub.subscribe("fragile", lambda: ["a"], broken)
    healthy = hub.subscribe("healthy", nothing, no_value)
    with pytest.raises(ValueError, match="cannot render a"):
        await read(fragile, 1)
    assert fragile.closed
    assert hub.subscriber_count == 1
    publish(hub, "b", 2)
    assert await read_pending(healthy) == [("b", 2)]


async def test_drop_frees_what_is_pending_and_tells_the_reader_why() -> None:
    hub = Hub()
    state = {"a": ("a", 1)}
    sub = hub.subscribe("stuck", *snapshot_of(state))
    publish(hub, "b", 2)
    sub.drop("no message was taken for 30 s")
    assert (sub.closed, sub.pending_count, hub.subscriber_count) == (True, 0, 0)
    publish(hub, "c", 3)  # reaches it no more
    with pytest.raises(SubscriberLagged, match="no message was taken for 30 s"):
        await read(sub, 1)
    sub.drop("again")  # idempotent; the first reason stands
    with pytest.raises(SubscriberLagged, match="30 s"):
        await read(sub, 1)

    ended = hub.subscribe("ended", nothing, no_value)
    ended.close()
    ended.drop("too late")  # a subscription that already ended just stays ended
    assert await read_to_end(ended) == []


# Coalescing and order.


async def test_coalesces_to_latest_value_per_key() -> None:
    hub = Hub()
    sub = hub.subscribe("idle", nothing, no_value)
    for number in range(1000):
        publish(hub, "x", number)
    assert sub.pending_count == 1
    assert await read_pending(sub) == [("x", 999)]


async def test_distinct_keys_keep_first_pending_order() -> None:
    hub = Hub()
    sub = hub.subscribe("idle", nothing, no_value)
    for key, number in [("c", 1), ("a", 2), ("b", 3), ("a", 4), ("c", 5)]:
        publish(hub, key, number)
    assert await read_pending(sub) == [("c", 5), ("a", 4), ("b", 3)]
    # Once read, a key queues again at the back.
    publish(hub, "d", 6)
    publish(hub, "c", 7)
    assert await read_pending(sub) == [("d", 6), ("c", 7)]


# Non-blocking publisher and the bound.


async def test_stuck_subscriber_does_not_delay_a_fast_one() -> None:
    hub = Hub()
    stuck = hub.subscribe("stuck", nothing, no_value)  # never reads
    fast = hub.subscribe("fast", nothing, no_value)
    count = 500
    received: list[Event] = []

    async def publisher() -> None:
        for number in range(count):
            publish(hub, f"k{number}", number)
            await asyncio.sleep(0)  # interleave with the reader, as a real state owner would

    async def reader() -> None:
        async for value in fast:
            received.append(value)
            if len(received) == count:
                return

    await asyncio.wait_for(asyncio.gather(publisher(), reader()), HANG_GUARD)
    assert received == [(f"k{number}", number) for number in range(count)]
    assert stuck.pending_count == count  # it has read nothing, and still holds everything
    assert not stuck.closed


async def test_subscriber_over_the_bound_lags_and_others_continue() -> None:
    hub = Hub(max_pending_keys=3)
    slow = hub.subscribe("slow", nothing, no_value)
    fast = hub.subscribe("fast", nothing, no_value)
    for number, key in enumerate("abc"):
        publish(hub, key, number)
    assert await read_pending(fast) == [("a", 0), ("b", 1), ("c", 2)]
    publish(hub, "a", 10)  # already pending for slow: coalesces, still within the bound
    assert (hub.subscriber_count, slow.pending_count) == (2, 3)
    publish(hub, "d", 3)  # a fourth distinct pending key: slow is dropped

    assert slow.closed
    assert slow.pending_count == 0  # its backlog was freed
    assert hub.subscriber_count == 1
    with pytest.raises(SubscriberLagged, match="reconnect"):
        await read(slow, 1)
    with pytest.raises(SubscriberLagged):  # and stays failed
        await read(slow, 1)

    publish(hub, "e", 4)
    assert await read_pending(fast) == [("a", 10), ("d", 3), ("e", 4)]


async def test_a_snapshot_larger_than_the_bound_is_delivered_whole_and_the_bound_counts_publishes() -> None:
    hub = Hub(max_pending_keys=2)
    sub = hub.subscribe("big", lambda: "abcde", lambda key: (key, 0))  # the state's keys, however many
    assert hub.subscriber_count == 1
    publish(hub, "a", 1)  # published values count against the bound, the snapshot does not
    publish(hub, "f", 2)
    assert (sub.closed, sub.pending_count) == (False, 7)
    assert await read(sub, 6) == [("a", 1), ("b", 0), ("c", 0), ("d", 0), ("e", 0), ("f", 2)]  # "a" read once
    for number, key in enumerate("xyz"):  # a third distinct published key: over the bound
        publish(hub, key, number)
    assert hub.subscriber_count == 0
    with pytest.raises(SubscriberLagged):
        await read(sub, 1)


async def test_memory_stays_bounded_by_distinct_keys() -> None:
    hub = Hub()
    sub = hub.subscribe("idle", nothing, no_value)
    for number in range(100_000):
        publish(hub, f"k{number % 1000}", number)
    assert sub.pending_count <= 1000
    values = await read_pending(sub)
    assert values == [(f"k{key}", 99_000 + key) for key in range(1000)]


def test_max_pending_keys_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pending_keys"):
        Hub(max_pending_keys=0)


# Unsubscribing and shutdown.


async def test_context_exit_unsubscribes() -> None:
    hub = Hub()
    async with hub.subscribe("scoped", nothing, no_value) as sub:
        assert hub.subscriber_count == 1
        publish(hub, "a", 1)
        assert await read(sub, 1) == [("a", 1)]
    assert hub.subscriber_count == 0
    assert sub.closed
    publish(hub, "b", 2)
    assert await read_to_end(sub) == []


async def test_context_exit_on_error_unsubscribes() -> None:
    hub = Hub()
    with pytest.raises(RuntimeError, match="handler failed"):
        async with hub.subscribe("scoped", nothing, no_value):
            raise RuntimeError("handler failed")
    assert hub.subscriber_count == 0


async def test_close_ends_a_blocked_reader_and_drops_pending() -> None:
    hub = Hub()
    sub = hub.subscribe("s", nothing, no_value)
    reading = asyncio.create_task(collect(sub))
    await asyncio.sleep(0)  # let the reader block on an empty queue
    assert not reading.done()
    sub.close()
    assert await asyncio.wait_for(reading, HANG_GUARD) == []
    sub.close()  # idempotent

    other = hub.subscribe("other", nothing, no_value)
    publish(hub, "a", 1)
    other.close()
    assert await read_to_end(other) == []  # documented: close() drops what is pending


async def test_hub_close_ends_every_iterator() -> None:
    hub = Hub()
    blocked = hub.subscribe("blocked", nothing, no_value)
    backlogged = hub.subscribe("backlogged", nothing, no_value)
    received: list[Event] = []
    got_first = asyncio.Event()

    async def reader() -> None:
        async for value in blocked:
            received.append(value)
            got_first.set()

    reading = asyncio.create_task(reader())
    publish(hub, "a", 1)  # blocked's reader takes it; backlogged just queues it
    await asyncio.wait_for(got_first.wait(), HANG_GUARD)
    publish(hub, "b", 2)
    hub.close()

    assert hub.closed
    assert hub.subscriber_count == 0
    await asyncio.wait_for(reading, HANG_GUARD)
    assert received == [("a", 1)]  # "b" was still pending when the hub closed: dropped
    assert await read_to_end(backlogged) == []
    publish(hub, "c", 3)  # publishing to a closed hub is a no-op
    with pytest.raises(EventHubClosedError, match="closed"):
        hub.subscribe("late", nothing, no_value)


async def test_hub_close_keeps_a_lagged_subscriber_failed() -> None:
    hub = Hub(max_pending_keys=1)
    sub = hub.subscribe("slow", nothing, no_value)
    publish(hub, "a", 1)
    publish(hub, "b", 2)
    hub.close()
    with pytest.raises(SubscriberLagged):
        await read(sub, 1)


# Filtering.


async def test_accept_filters_snapshot_and_publishes() -> None:
    hub = Hub()
    state = {key: (key, 0) for key in ["model-a", "server-x", "model-b"]}
    models = hub.subscribe("models", *snapshot_of(state), accept=lambda key, _value: key.startswith("model-"))
    everything = hub.subscribe("all", *snapshot_of(state))
    publish(hub, "server-y", 1)
    publish(hub, "model-c", 2)
    assert await read(models, 3) == [("model-a", 0), ("model-b", 0), ("model-c", 2)]
    assert models.pending_count == 0  # "server-x" was passed over, not delivered
    assert len(await read_pending(everything)) == 5


async def test_failing_filter_fails_only_its_subscriber() -> None:
    def broken(key: str, _value: Event) -> bool:
        if key == "poison":
            raise KeyError(key)
        return True

    hub = Hub()
    fragile = hub.subscribe("fragile", nothing, no_value, accept=broken)
    healthy = hub.subscribe("healthy", nothing, no_value)
    publish(hub, "poison", 1)  # must not raise into the publisher
    publish(hub, "fine", 2)
    assert hub.subscriber_count == 1
    with pytest.raises(KeyError):
        await read(fragile, 1)
    assert await read_pending(healthy) == [("poison", 1), ("fine", 2)]


# Properties.

keys = st.sampled_from(["a", "b", "c", "d", "e", "f"])


@given(st.lists(st.tuples(keys, st.integers())))
def test_reading_at_the_end_gives_each_key_once_with_its_last_value(publishes: list[tuple[str, int]]) -> None:
    async def scenario() -> None:
        hub = Hub()
        sub = hub.subscribe("idle", nothing, no_value)
        expected: dict[str, int] = {}  # a dict keeps first-insertion order and the last assigned value
        for key, number in publishes:
            publish(hub, key, number)
            expected[key] = number
        assert await read_pending(sub) == list(expected.items())
        assert sub.pending_count == 0

    asyncio.run(scenario())


@given(st.lists(st.one_of(st.tuples(keys, st.integers()), st.just(None))))
def test_interleaved_reads_always_see_current_values_and_converge(operations: list[tuple[str, int] | None]) -> None:
    """None means "read one value if any is pending"; anything else is a publish."""

    async def scenario() -> None:
        hub = Hub()
        state: dict[str, int] = {}
        sub = hub.subscribe("reader", nothing, no_value)
        seen: dict[str, int] = {}
        for operation in operations:
            if operation is None:
                if sub.pending_count:
                    ((key, number),) = await read(sub, 1)
                    assert state[key] == number  # never a stale value
                    seen[key] = number
            else:
                publish(hub, *operation)
                state[operation[0]] = operation[1]
        for key, number in await read_pending(sub):
            seen[key] = number
        assert seen == state

    asyncio.run(scenario())


class SourceLostError(Exception):
    pass


async def test_fail_subscribers_ends_each_with_the_error_and_the_hub_takes_new_ones() -> None:
    hub: Hub = EventHub()
    state = {"a": ("a", 1)}
    waiting = hub.subscribe("waiting", *snapshot_of(state))
    behind = hub.subscribe("behind", *snapshot_of(state))
    assert await read(waiting, 1) == [("a", 1)]
    blocked = asyncio.create_task(anext(waiting))  # a reader waiting for the next value
    publish(hub, "b", 1)
    await asyncio.sleep(0)
    hub.fail_subscribers(SourceLostError("the source is gone"))
    assert hub.subscriber_count == 0
    assert behind.pending_count == 0  # what it had not read is dropped, not delivered as if current
    with pytest.raises(SourceLostError, match="the source is gone"):
        await anext(behind)
    with pytest.raises(SourceLostError):
        await anext(behind)  # and keeps failing
    # The reader that was waiting got "b" already, or gets the error: never a value published after the failure.
    publish(hub, "c", 1)
    try:
        got = await asyncio.wait_for(blocked, HANG_GUARD)
    except SourceLostError:
        pass
    else:
        assert got == ("b", 1)
    fresh = hub.subscribe("fresh", *snapshot_of({"c": ("c", 1)}))
    assert await read(fresh, 1) == [("c", 1)]
