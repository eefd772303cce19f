"""The split flow of the service layer, around the SplitMaker port: a split is SPLITTING while computed, then
COMPLETE or FAILED together with the models waiting on it; one whose computer stopped is failed once overdue.

The port's real implementation (over registry/data) is wired in by the integrator; here a stand-in answers for
it, in process, on a real SQLite store, so what is tested is the registry's side of the port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from registry.errors import Unavailable
from registry.lifecycle import ModelState
from registry.ports import SplitError, SplitOutcome, SplitRequest
from registry.service.context import ServiceContext
from registry.service.experiments import ExperimentFields
from registry.service.models import NewModel
from registry.service.registry_service import RegistryService
from registry.service.splits import STOPPED_REASON, SplitSpec
from registry.store import schema
from registry.store.database import Store, database_url, open_engine


class StandInSplitMaker:
    """Answers each request when the test says so: an outcome, or a SplitError."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[SplitRequest] = asyncio.Queue()
        self.answers: asyncio.Queue[SplitOutcome | SplitError] = asyncio.Queue()

    async def make_split(self, request: SplitRequest) -> SplitOutcome:
        await self.requests.put(request)
        answer = await self.answers.get()
        if isinstance(answer, SplitError):
            raise answer
        return answer


OUTCOME = SplitOutcome("/s/train.parquet", "/s/test.parquet", {"size": "double"}, [{"field": "size"}], ["size"])


async def _settled(service: RegistryService) -> None:
    await asyncio.gather(*service.splits._computing)


def _service(tmp_path: Path, maker: StandInSplitMaker | None, clock: list[int]) -> RegistryService:
    url = database_url(None, tmp_path)
    schema.upgrade(url)
    context = ServiceContext(
        store=Store(open_engine(url)),
        datasets_root=tmp_path / "datasets",
        splits_dir=tmp_path / "splits",
        split_timeout_seconds=600,
        split_maker=maker,
        clock=lambda: clock[0],
    )
    return RegistryService(context)


async def test_a_model_split_moves_the_model_with_its_outcome(tmp_path: Path) -> None:
    maker, clock = StandInSplitMaker(), [1000]
    service = _service(tmp_path, maker, clock)
    await service.experiments.put("houses", ExperimentFields(srcpath="/houses.csv", outcome="price"))
    model = await service.models.create("houses", NewModel(name="tree", directives=["drop id"]))

    split = await service.models.split("houses", model.id, SplitSpec("random", 80.0, seed=7))
    assert (await service.models.get("houses", model.id)).state == ModelState.SPLITTING
    request = await asyncio.wait_for(maker.requests.get(), 60)  # the computation asks (after reading the experiment)
    assert request.srcpath == "/houses.csv"
    assert (request.percent, request.seed, request.directives, request.outcome) == (80.0, 7, ["drop id"], "price")
    await maker.answers.put(OUTCOME)
    await _settled(service)

    done = await service.splits.get("houses", split.id)
    assert (done.split.state, done.split.training_path, done.models) == ("COMPLETE", "/s/train.parquet", [model.id])
    after = await service.models.get("houses", model.id)
    assert (after.state, after.features) == (ModelState.DATA_READY, ["size"])

    # A second model made from that split starts DATA_READY; a failed split fails the models waiting on it.
    other = await service.models.create("houses", NewModel(name="forest", directives=["keep size"]))
    failing = await service.models.split("houses", other.id, SplitSpec("first", 50.0))
    await maker.answers.put(SplitError("cannot read houses.csv: not CSV"))
    await _settled(service)
    failed = await service.models.get("houses", other.id)
    assert (failed.state, failed.reason) == (ModelState.SPLIT_FAILED, "cannot read houses.csv: not CSV")
    assert (await service.splits.get("houses", failing.id)).split.state == "FAILED"
    service.context.store.close()


async def test_a_split_whose_computer_stopped_is_failed_once_overdue(tmp_path: Path) -> None:
    maker, clock = StandInSplitMaker(), [1000]
    service = _service(tmp_path, maker, clock)
    await service.experiments.put("houses", ExperimentFields(srcpath="/houses.csv"))
    model = await service.models.create("houses", NewModel(name="tree"))
    split = await service.models.split("houses", model.id, SplitSpec("random", 80.0))
    # Its computer never answers (as if killed with -9): another service on the same database looks.
    restarted = _service(tmp_path, None, clock)
    assert await restarted.splits.expire_overdue() == 0  # not overdue yet
    clock[0] += 601
    assert await restarted.splits.expire_overdue() == 1
    status = await restarted.splits.get("houses", split.id)
    assert (status.split.state, status.split.reason) == ("FAILED", STOPPED_REASON)
    assert (await restarted.models.get("houses", model.id)).state == ModelState.SPLIT_FAILED
    await service.close()  # the stalled computation, stopped now, finds the split already failed: no change
    assert (await restarted.splits.get("houses", split.id)).split.reason == STOPPED_REASON
    service.context.store.close()
    restarted.context.store.close()


async def test_without_the_port_nothing_is_written(tmp_path: Path) -> None:
    service = _service(tmp_path, None, [1])
    await service.experiments.put("houses", ExperimentFields(srcpath="/houses.csv"))
    with pytest.raises(Unavailable):
        await service.splits.create("houses", SplitSpec("random", 80.0))
    assert (await service.splits.list("houses", 0, 10)).total == 0
    service.context.store.close()
