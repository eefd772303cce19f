"""A new leader whose term starts from an empty store (CoreSettings.hold_unknown_models): what agents report holding
of models it does not know yet is kept, its memory counted, until the controller's re-send claims it (Available
without a reload when the version matches), and unloaded once the re-send is over if nobody claimed it.

In-process, with the fake replicas of tests/support/scheduler_harness.py; ``settle`` checks the cluster's
invariants (the ledgers included) after every step.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from generated.mlops.scheduler import scheduler_pb2 as pb
from scheduler.core import CoreSettings, SchedulerCore
from scheduler.models.model_state import ModelState
from tests.support.scheduler_harness import Harness, MiB
from tests.support.waiting import wait_for

GRACE = 0.2  # the re-send's quiet period: short, so the release comes soon in the test


def takeover_harness() -> Harness:
    harness = Harness()
    harness.core = SchedulerCore(harness.store, CoreSettings(sync_grace_seconds=GRACE, hold_unknown_models=True))
    return harness


async def test_held_models_wait_for_the_resend_and_are_adopted_without_a_reload() -> None:
    async with takeover_harness() as h:
        replica = h.add_replica(loaded=[("iris", 3, 100 * MiB), ("stale", 2, 100 * MiB), ("gone", 1, MiB)])
        await h.settle()
        assert replica.unloads == [], "nothing is unloaded before the controller re-sent what it has"
        [record] = [r for s in h.core.cluster.servers.values() for r in s.replicas.values()]
        assert record.ledger.used == 201 * MiB, "what the replica holds counts against its memory meanwhile"

        await h.load("iris", generation=3)  # the re-send: the resource's generation is the version held
        await h.load("stale", generation=4)  # changed while no leader was there: version 4, the replica holds 2
        await h.settle()
        assert h.state("iris") == ModelState.AVAILABLE
        assert ("iris", 3) not in replica.loads, "adopted as it is held, not loaded again"
        assert ("stale", 2) in replica.unloads
        assert h.state("stale") == ModelState.AVAILABLE
        assert ("stale", 4) in replica.loads

        await wait_for(lambda: not record.unclaimed, 30, "the end of the re-send")
        await h.settle()
        assert ("gone", 1) in replica.unloads, "what nobody re-sent is not wanted"
        assert ("iris", 3) not in replica.unloads


async def test_a_scheduler_that_keeps_its_store_unloads_unknown_held_models_at_once() -> None:
    async with Harness() as h:
        replica = h.add_replica(loaded=[("stranger", 3, MiB)])
        await h.settle()
        assert replica.unloads == [("stranger", 3)]
        assert not h.core.cluster.holding_unknown


async def test_the_resend_window_starts_when_the_controller_is_asked() -> None:
    async with takeover_harness() as h:
        replica = h.add_replica(loaded=[("late", 1, MiB)])
        await h.settle()
        events = h.core.control_plane_events()
        assert isinstance(events, AsyncGenerator)
        asked = [await anext(events) for _ in range(3)]  # SEND_SERVERS, then once ready EXPERIMENTS, MODELS
        assert asked[-1].event == pb.ControlPlaneResponse.SEND_MODELS
        await h.load("late")
        await h.settle()
        assert replica.unloads == []
        assert h.state("late") == ModelState.AVAILABLE
        await events.aclose()
