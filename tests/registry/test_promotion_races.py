"""A canary racing an abort or a finish of the same promotion, ordered step by step in process.

``canary`` asks the scheduler for two things after its last state check (deploy the candidate, split the traffic);
an abort or finish that lands between the check and the scheduler's answer has already undone the canary by the
time the canary's step takes effect. Whatever the order, the world must end as the promotion's row says: an ABORTED
or FINISHED promotion leaves no split of the stable name and no candidate served under its own name.

The ports stand in for the scheduler (as tests/registry/test_split_flow.py does for the split maker): they keep
what is served and split, and each can be held at a gate until the test lets it go, so the interleaving is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.errors import Conflict
from registry.ports import CanarySplit, DeployRequest
from registry.promotion_rules import PromotionState
from registry.service.aliases import VersionRef
from registry.service.context import ServiceContext
from registry.service.experiments import ExperimentFields
from registry.service.registry_service import RegistryService
from registry.store import schema
from registry.store.database import Store, database_url, open_engine
from tests.registry.version_rows import trained


class StandInScheduler:
    """Deployer and TrafficRouter at once: ``served`` and ``splits`` are what the scheduler would hold. A call whose
    kind is in ``held`` waits at its gate (``arrived`` set when it got there) until ``release`` is set, and THEN takes
    effect, as a scheduler answer that arrives late does."""

    def __init__(self) -> None:
        self.served: set[str] = set()
        self.splits: dict[str, CanarySplit] = {}
        self.held: set[str] = set()
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def _gate(self, kind: str) -> None:
        if kind in self.held:
            self.held.discard(kind)
            self.arrived.set()
            await self.release.wait()

    async def deploy(self, request: DeployRequest) -> str:
        await self._gate("deploy")
        name = request.serving_name or f"{request.experiment}-{request.model_id}"
        self.served.add(name)
        return name

    async def split(self, split: CanarySplit) -> None:
        await self._gate("split")
        self.splits[split.stable_name] = split

    async def unsplit(self, stable_name: str) -> None:
        self.splits.pop(stable_name, None)

    async def unload(self, serving_name: str) -> None:
        self.served.discard(serving_name)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = database_url(None, tmp_path)
    schema.upgrade(url)
    opened = Store(open_engine(url))
    try:
        yield opened
    finally:
        opened.close()


async def _service_with_production(store: Store, tmp_path: Path) -> tuple[RegistryService, StandInScheduler, str]:
    """houses with its production alias on one model, and a second trained model: the candidate's id."""
    scheduler = StandInScheduler()
    service = RegistryService(
        ServiceContext(
            store=store,
            datasets_root=tmp_path / "datasets",
            splits_dir=tmp_path / "splits",
            deployer=scheduler,
            traffic=scheduler,
        )
    )
    await service.experiments.put("houses", ExperimentFields(srcpath="/houses.csv", outcome="price"))
    production, candidate = trained(store), trained(store)
    await service.aliases.put("houses", "production", VersionRef(production, None))
    assert scheduler.served == {"houses"}
    return service, scheduler, candidate


async def _interrupted_by(
    service: RegistryService, scheduler: StandInScheduler, candidate: str, held: str, settle: str
) -> None:
    """A canary held at its ``held`` step while ``settle`` (abort or finish) runs to the end, then let go."""
    scheduler.held.add(held)
    canary = asyncio.create_task(service.promotions.canary("houses", VersionRef(candidate, None), 30))
    await asyncio.wait_for(scheduler.arrived.wait(), 60)
    if settle == "abort":
        await service.promotions.abort("houses", candidate)
    else:
        await service.promotions.finish("houses", candidate)
    scheduler.release.set()
    with pytest.raises(Conflict, match="moved on"):
        await asyncio.wait_for(canary, 60)


@pytest.mark.parametrize("held", ["deploy", "split"])
async def test_a_canary_overtaken_by_an_abort_leaves_no_split_and_no_candidate(
    store: Store, tmp_path: Path, held: str
) -> None:
    service, scheduler, candidate = await _service_with_production(store, tmp_path)
    if held == "deploy":  # an abort needs a running canary: the first canary started, a second re-weights it
        await service.promotions.canary("houses", VersionRef(candidate, None), 10)
    await _interrupted_by(service, scheduler, candidate, held, "abort")

    assert (await service.promotions.get("houses")).state == PromotionState.ABORTED.value
    assert scheduler.splits == {}, "the canary's split outlived the abort"
    assert scheduler.served == {"houses"}, "the candidate is served after the abort"


@pytest.mark.parametrize("held", ["deploy", "split"])
async def test_a_canary_overtaken_by_a_finish_leaves_no_split_and_no_candidate_name(
    store: Store, tmp_path: Path, held: str
) -> None:
    service, scheduler, candidate = await _service_with_production(store, tmp_path)
    await service.promotions.canary("houses", VersionRef(candidate, None), 10)
    await _interrupted_by(service, scheduler, candidate, held, "finish")

    assert (await service.promotions.get("houses")).state == PromotionState.FINISHED.value
    assert scheduler.splits == {}, "the canary's split outlived the finish"
    assert scheduler.served == {"houses"}, "the candidate's own name is served after the finish"
