"""The synchroniser's grace after a restart lasts while the replicas it expects keep coming back.

After a restart nothing is placed until every replica the scheduler knew has re-registered, or the grace is over
(scheduler/reconciler.py). With 1,000 agents coming back after a long restart (their backoff grown to its 10 s cap
while no scheduler listened) and registering one after another, a grace counted from the restore alone ran out
while they were still arriving: at 100,000 models the scheduler then placed the missing replicas' 16,000 models
elsewhere, and took minutes to settle when those replicas came back holding them (bench/README.md). Here the
replicas come back one by one, each within the grace of the one before, the last after the grace counted from the
start: nothing is loaded anywhere, and the model is Available where it was.
"""

from __future__ import annotations

import asyncio

import pytest

from scheduler.models.model_state import ModelState
from scheduler.persistence import MemoryStateStore
from tests.support.scheduler_harness import Harness, MiB

pytestmark = pytest.mark.timeout(120)

GRACE_SECONDS = 4.0
ARRIVAL_GAP_SECONDS = 2.5  # between the replicas' registrations: well inside the grace, on a loaded machine too
REPLICAS = 3  # the last is back at 7.5 s, after the grace counted from the start (4 s)


async def test_the_grace_lasts_while_the_expected_replicas_keep_coming_back() -> None:
    tables: dict[str, dict[str, bytes]] = {}
    async with Harness(MemoryStateStore(tables)) as first:
        for index in range(REPLICAS):
            first.add_replica(index=index)
        await first.load("held")
        await first.settle()
        [(_server, holder)] = first.core.cluster.models["held"].latest.replicas
    async with Harness(MemoryStateStore(tables), sync_grace_seconds=GRACE_SECONDS) as again:
        order = [index for index in range(REPLICAS) if index != holder] + [holder]  # the holder comes back last
        others = []
        for index in order[:-1]:
            await asyncio.sleep(ARRIVAL_GAP_SECONDS)
            others.append(again.add_replica(index=index))
        await asyncio.sleep(ARRIVAL_GAP_SECONDS)
        for _ in range(20):  # whatever the scheduler sent the replicas back meanwhile is answered
            await asyncio.sleep(0)
            for other in others:
                other.pump()
        assert not any(replica.loads for replica in others), (
            "the model was placed elsewhere while the replicas it knew were still coming back: "
            f"{[replica.loads for replica in others]}"
        )
        replica = again.add_replica(index=holder, loaded=[("held", 1, 100 * MiB)])
        await asyncio.wait_for(again.core.ready.wait(), 30)
        await again.settle()
        assert again.state("held") == ModelState.AVAILABLE
        assert again.placed_on("held") == {holder: "AVAILABLE"}
        assert replica.loads == [], "nothing loaded again"
        assert not any(other.loads for other in others)
