"""How much of the cluster each change looks at: what it concerns, never every model or every replica (issue 14).

A scheduler holds up to 100,000 models on 1,000 replicas on one event loop, so a change that scans every model or
every replica (a registration, a replica leaving, a LoadModel's placement, a drain) costs the cluster's size each
time, and 1,000 agents re-registering after a restart would hold the loop for minutes. These tests count work, not
time: the cluster's model table and a server's replica table are swapped for dicts that count every entry looked
at, and the replica filters count the replicas placement judged. Each bound is a few times what the change
concerns (the models its replica holds, the replicas a model goes to), far below the cluster's size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, TypeVar, overload

import pytest

from generated.mlops.scheduler import scheduler_pb2 as pb
from scheduler.models.model_records import ModelRecord, ModelVersion
from scheduler.models.model_state import ModelState
from scheduler.persistence import MemoryStateStore
from scheduler.placement import DEFAULT_REPLICA_FILTERS, PlacementRequest, ReplicaView
from scheduler.write_behind import MODELS_TABLE
from tests.support.scheduler_harness import Harness, MiB, model_spec

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

MODELS = 600  # models in the cluster: every bound below is far smaller
HELD = 6  # models one replica holds
REPLICAS = 200  # replicas of one server in the placement tests


class CountingDict(dict[K, V]):
    """A dict that counts the entries looked at: each key or value iterated over, each lookup."""

    looked_at = 0

    def __repr__(self) -> str:
        return f"<{len(self)} entries, {self.looked_at} looked at>"

    def __iter__(self) -> Iterator[K]:
        for key in super().__iter__():
            self.looked_at += 1
            yield key

    def values(self) -> Any:
        for value in super().values():
            self.looked_at += 1
            yield value

    def items(self) -> Any:
        for item in super().items():
            self.looked_at += 1
            yield item

    def __getitem__(self, key: K) -> V:
        self.looked_at += 1
        return super().__getitem__(key)

    @overload
    def get(self, key: K, default: None = None, /) -> V | None: ...
    @overload
    def get(self, key: K, default: V | T, /) -> V | T: ...
    def get(self, key: K, default: Any = None, /) -> Any:
        self.looked_at += 1
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.looked_at += 1
        return super().__contains__(key)


def stored_models(count: int) -> MemoryStateStore:
    """A state store holding ``count`` models (m-000 ...), as a scheduler restarting with them finds it. They need a
    capability no replica here offers: the ones a replica does not hold stay unplaced (ScheduleFailed), waiting for
    capacity, the largest set a change could scan."""
    models = {}
    for index in range(count):
        name = f"m-{index:03d}"
        spec = model_spec(name, memory=MiB, requirements=("gpu",))
        models[name] = ModelRecord(name, [ModelVersion(1, spec)]).to_bytes()
    return MemoryStateStore({MODELS_TABLE: models})


def held(first: int, count: int = HELD) -> list[tuple[str, int, int]]:
    return [(f"m-{index:03d}", 1, MiB) for index in range(first, first + count)]


def count_models(h: Harness) -> CountingDict[str, ModelRecord]:
    counting = CountingDict(h.core.cluster.models)
    h.core.cluster.models = counting
    return counting


async def test_a_registration_looks_only_at_the_models_its_replica_holds() -> None:
    async with Harness(stored_models(MODELS)) as h:
        models = count_models(h)
        h.add_replica(index=0, memory=10_000 * MiB, loaded=held(0))
        assert models.looked_at <= 3 * HELD + 3, f"one registration looked at {models.looked_at} models"
        models.looked_at = 0
        h.add_replica(index=1, memory=10_000 * MiB, loaded=held(HELD))
        assert models.looked_at <= 3 * HELD + 3, f"a second registration looked at {models.looked_at} models"
        models.looked_at = 0
        # The same replica again (its agent reconnected): its earlier session's models go, then come back.
        h.add_replica(index=0, memory=10_000 * MiB, loaded=held(0))
        assert models.looked_at <= 6 * HELD + 3, f"a re-registration looked at {models.looked_at} models"
        h.core.check_invariants()
        assert h.state("m-000") == ModelState.AVAILABLE


async def test_a_replica_leaving_looks_only_at_the_models_it_held() -> None:
    async with Harness(stored_models(MODELS)) as h:
        h.add_replica(index=0, memory=10_000 * MiB, loaded=held(0))
        leaving = h.add_replica(index=1, memory=10_000 * MiB, loaded=held(HELD))
        await h.settle()
        models = count_models(h)
        leaving.disconnect()
        assert models.looked_at <= 3 * HELD + 3, f"a replica leaving looked at {models.looked_at} models"
        h.core.check_invariants()


async def test_a_drain_and_a_dead_server_look_only_at_the_replicas_models() -> None:
    async with Harness(stored_models(MODELS)) as h:
        h.add_replica(index=0, memory=10_000 * MiB, loaded=held(0))
        other = h.add_replica(index=1, memory=10_000 * MiB, loaded=held(HELD))
        await h.settle()
        models = count_models(h)
        other.server_down("MLServer exited")
        assert models.looked_at <= 3 * HELD + 3, f"a server going down looked at {models.looked_at} models"
        models.looked_at = 0
        other.server_serving()
        assert models.looked_at <= 3 * HELD + 3, f"a server serving again looked at {models.looked_at} models"
        models.looked_at = 0
        other.drain()
        assert models.looked_at <= 3 * HELD + 3, f"a drain looked at {models.looked_at} models"
        h.core.check_invariants()


async def test_server_notify_looks_only_at_the_models_on_that_server() -> None:
    async with Harness(stored_models(MODELS)) as h:
        h.add_replica("a", index=0, memory=10_000 * MiB, loaded=held(0, MODELS))
        h.add_replica("b", index=0, memory=10_000 * MiB)
        await h.settle()
        models = count_models(h)
        await h.core.notify_servers([pb.ServerNotify(name="b", expectedReplicas=1)], first_sync=False)
        assert models.looked_at <= 3, f"a ServerNotify for an empty server looked at {models.looked_at} models"
        h.core.check_invariants()


@pytest.fixture
def judged(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replicas placement judged: the first replica filter counts each replica it is asked about."""
    seen: list[int] = []
    first = type(DEFAULT_REPLICA_FILTERS[0])
    judge = first.reject

    def counting(self: Any, request: PlacementRequest, replica: ReplicaView) -> str | None:
        seen.append(replica.index)
        return judge(self, request, replica)

    monkeypatch.setattr(first, "reject", counting)
    return seen


async def quiet(h: Harness) -> None:
    """Harness.settle without its invariant checks (which look at everything): reconcile and answer until still."""
    still = 0
    for _ in range(200):
        await asyncio.sleep(0)
        moved = sum(replica.pump() for replica in h.replicas)
        still = 0 if moved or h.core.reconciler.busy else still + 1
        if still >= 3:
            return
    raise AssertionError("the scheduler did not settle")


async def test_placing_a_model_looks_at_a_few_replicas_however_many_there_are(judged: list[int]) -> None:
    async with Harness() as h:
        for index in range(REPLICAS):
            h.add_replica(index=index, memory=10_000 * MiB)
        await h.settle()
        server = h.core.cluster.servers["mlserver"]
        replicas = CountingDict(server.replicas)
        server.replicas = replicas
        for number in range(5):
            judged.clear()
            replicas.looked_at = 0
            await h.load(f"iris-{number}", memory=MiB * (number + 1))
            await quiet(h)
            assert h.state(f"iris-{number}") == ModelState.AVAILABLE
            assert len(judged) <= 4, f"placing one model judged {len(judged)} of {REPLICAS} replicas"
            assert replicas.looked_at <= 20, f"placing one model looked at {replicas.looked_at} replicas"
        h.core.check_invariants()
        # The replica with the most free memory (the lowest index among equals) is chosen: each model on another.
        placed = [next(iter(h.placed_on(f"iris-{number}"))) for number in range(5)]
        assert placed == [0, 1, 2, 3, 4]
