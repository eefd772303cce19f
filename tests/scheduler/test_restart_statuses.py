"""What a status stream shows of a restored model while the synchroniser waits for the replicas after a restart.

A restarted scheduler knows its models from the store but not where they are: that the agents tell it when they
register again. A status stream opened meanwhile (a controller subscribes as soon as the scheduler answers) used to
get every restored model as ModelProgressing in its snapshot and, a moment later, as ModelAvailable when its replica
re-registered holding it: two statuses per model, the first one only saying "not known yet", for a controller to
write to every model's resource twice (at 100,000 models, ~200,000 statuses and half the restart's CPU,
bench/README.md). A restored model not yet reported is now left out of a stream's snapshot until its state is known:
its replica reports it (one status, Available), or the wait is over (its status as it is then). Nothing is said that
is not known, and nothing known is withheld: ModelStatus still answers for every model at once.
"""

from __future__ import annotations

import asyncio

import pytest

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.event_hub import Subscription
from scheduler.persistence import MemoryStateStore
from tests.support.scheduler_harness import Harness, MiB
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

AVAILABLE = pb.ModelStatus.ModelAvailable
LONG_GRACE_SECONDS = 600.0  # never over within the test: only the replicas' return makes the scheduler ready
SHORT_GRACE_SECONDS = 0.5


async def _stored_with(models: list[str]) -> tuple[dict[str, dict[str, bytes]], dict[str, int]]:
    """A store holding ``models`` as a scheduler left them, on two replicas; where each model was."""
    tables: dict[str, dict[str, bytes]] = {}
    async with Harness(MemoryStateStore(tables)) as first:
        for index in range(2):
            first.add_replica(index=index)
        for name in models:
            await first.load(name)
        await first.settle()
        holders = {name: next(iter(first.placed_on(name))) for name in models}
    return tables, holders


async def _read(subscription: Subscription[str, pb.ModelStatusResponse], count: int) -> list[pb.ModelStatusResponse]:
    statuses = []
    iterator = aiter(subscription)
    for _ in range(count):
        statuses.append(await asyncio.wait_for(anext(iterator), 30))
    return statuses


async def test_a_stream_opened_during_the_wait_gets_each_reported_model_once_as_available() -> None:
    models = ["first", "second", "third"]
    tables, holders = await _stored_with(models)
    async with Harness(MemoryStateStore(tables), sync_grace_seconds=LONG_GRACE_SECONDS) as again:
        # Every model answers ModelStatus at once, not Available: no replica has said where it is yet.
        assert all(again.status(name).versions[-1].state.state != AVAILABLE for name in models)
        async with again.core.subscribe_models("controller") as subscription:
            seen: list[tuple[str, str]] = []

            async def read() -> None:
                async for status in subscription:
                    seen.append((status.modelName, pb.ModelStatus.ModelState.Name(status.versions[-1].state.state)))

            reader = asyncio.create_task(read())
            try:
                await wait_for(lambda: subscription.pending_count == 0, 30, "the reader to go through the snapshot")
                for index in range(2):
                    held = [(name, 1, 100 * MiB) for name in models if holders[name] == index]
                    again.add_replica(index=index, loaded=held)
                await asyncio.wait_for(again.core.ready.wait(), 30)
                await again.settle()
                await wait_for(
                    lambda: {name for name, state in seen if state == "ModelAvailable"} == set(models),
                    30,
                    "every model to be shown Available",
                )
            finally:
                reader.cancel()
            assert sorted(seen) == [(name, "ModelAvailable") for name in sorted(models)], (
                f"a restored model was shown before its replica reported it, or more than once: {seen}"
            )
        again.core.check_invariants()


async def test_a_model_no_replica_reports_is_shown_when_the_wait_is_over() -> None:
    tables, holders = await _stored_with(["kept", "lost"])
    async with (
        Harness(MemoryStateStore(tables), sync_grace_seconds=SHORT_GRACE_SECONDS) as again,
        again.core.subscribe_models("controller") as subscription,
    ):
        # Only the replica holding "kept" comes back, without "lost" if it held both.
        again.add_replica(index=holders["kept"], loaded=[("kept", 1, 100 * MiB)])
        statuses = await _read(subscription, 2)
        first_seen = {status.modelName: status.versions[-1].state.state for status in statuses}
        assert set(first_seen) == {"kept", "lost"}, f"not every model was shown: {sorted(first_seen)}"
        assert first_seen["kept"] == AVAILABLE
        assert again.core.ready.is_set(), "a model not reported was shown before the wait was over"
