"""Splits: made for an experiment (POST .../splits) or for a model (POST .../models/{id}/split, in models.py), computed
in the background by the SplitMaker port, listed, read with their stats, deleted.

A split is written SPLITTING before its computation starts and COMPLETE or FAILED when it ends, together with the
models waiting on it (lifecycle.MODEL_ACTION_FOR_SPLIT_OUTCOME). A computation that never reports back (the
registry computing it stopped) is failed once the split is older than the split timeout, by whichever registry
looks first (at start, then every EXPIRY_INTERVAL_SECONDS): no state is held only in a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.errors import Conflict, Unavailable
from registry.lifecycle import (
    MODEL_ACTION_FOR_SPLIT_OUTCOME,
    ModelAction,
    ModelState,
    SplitAction,
    SplitState,
    next_split_state,
)
from registry.ports import SplitError, SplitMaker, SplitOutcome, SplitRequest
from registry.service import assignments, datasets, lookups
from registry.service.context import ServiceContext, new_id
from registry.store.database import guard
from registry.store.tables import ExperimentRow, SplitRow

log = logging.getLogger(__name__)

EXPIRY_INTERVAL_SECONDS: Final = 30.0
STOPPED_REASON: Final = "the registry computing this split stopped before it finished"


@dataclass(frozen=True, slots=True)
class SplitSpec:
    """What a split is made of (the seed's POST body)."""

    kind: str  # "random" | "first"
    percent: float
    seed: int | None = None
    directives: Sequence[str] = ()
    schema: dict[str, Any] | None = None
    description: str = ""

    def parameters(self) -> dict[str, Any]:
        return {"percent": self.percent, **({"seed": self.seed} if self.seed is not None else {})}


@dataclass(frozen=True, slots=True)
class SplitView:
    split: SplitRow
    models: list[str]  # ids of the models using it


@dataclass(frozen=True, slots=True)
class SplitPage:
    views: list[SplitView]
    total: int


def new_split_row(session: Session, experiment: ExperimentRow, spec: SplitSpec, now: int) -> SplitRow:
    """A SPLITTING split of ``experiment`` (which must name its dataset), added to ``session``."""
    if experiment.srcpath is None:
        raise Conflict(f"experiment {experiment.name} has no srcpath: PUT one before splitting its data")
    guard(session, experiment)  # its srcpath is what is split: the experiment must not go away meanwhile
    row = SplitRow(
        id=new_id(),
        experiment_name=experiment.name,
        description=spec.description,
        kind=spec.kind,
        parameters=spec.parameters(),
        directives=list(spec.directives),
        schema=spec.schema,
        state=SplitState.SPLITTING.value,
        create_time=now,
    )
    session.add(row)
    return row


class SplitService:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context
        self._computing: set[asyncio.Task[None]] = set()

    def _maker(self) -> SplitMaker:
        if self._context.split_maker is None:
            raise Unavailable("this registry computes no splits yet (no split computation was wired into it)")
        return self._context.split_maker

    async def create(self, experiment_name: str, spec: SplitSpec) -> SplitRow:
        def unit(session: Session) -> SplitRow:
            experiment = lookups.experiment(session, experiment_name)
            row = new_split_row(session, experiment, spec, self._context.clock())
            self._maker()  # after the checks above: a 404 or 409 says more than a 503
            return row

        row = await self._context.store.write(unit)
        self.start_computing(row)
        return row

    def start_computing(self, row: SplitRow, maker: SplitMaker | None = None) -> None:
        """Compute ``row`` (just written SPLITTING) in the background; its outcome is written when it ends."""
        task = asyncio.create_task(self._compute(row, maker or self._maker()), name=f"split-{row.id}")
        self._computing.add(task)
        task.add_done_callback(self._computing.discard)

    async def _compute(self, row: SplitRow, maker: SplitMaker) -> None:
        try:
            experiment = await self._context.store.read(lambda s: lookups.experiment(s, row.experiment_name))
            assert experiment.srcpath is not None  # noqa: S101 - new_split_row refused a split without one
            request = SplitRequest(
                split_id=row.id,
                experiment=row.experiment_name,
                srcpath=experiment.srcpath,
                kind=row.kind,
                percent=float(row.parameters["percent"]),
                seed=row.parameters.get("seed"),
                directives=list(row.directives),
                outcome=experiment.outcome,
                output_dir=self._context.splits_dir / row.id,
            )
            outcome = await asyncio.wait_for(maker.make_split(request), self._context.split_timeout_seconds)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.finish(row.id, None, STOPPED_REASON)
            raise
        except TimeoutError:
            await self.finish(row.id, None, f"not computed within {self._context.split_timeout_seconds:g} s")
        except (SplitError, ValueError, OSError) as error:
            await self.finish(row.id, None, str(error) or type(error).__name__)
        except Exception as error:
            log.exception("split %s failed unexpectedly", row.id)
            await self.finish(row.id, None, f"the registry failed computing it ({type(error).__name__}); see its log")
        else:
            await self.finish(row.id, outcome, None)

    async def finish(self, split_id: str, outcome: SplitOutcome | None, reason: str | None) -> None:
        """Record a computation's end: the split COMPLETE (``outcome``) or FAILED (``reason``), and every model
        waiting on it moved by the lifecycle table. A split deleted meanwhile is left deleted."""

        def unit(session: Session) -> None:
            split = session.get(SplitRow, split_id)
            if split is None or split.state != SplitState.SPLITTING.value:
                return
            action = SplitAction.SUCCEED if outcome is not None else SplitAction.FAIL
            after = next_split_state(f"split {split_id}", SplitState(split.state), action)
            assert after is not None  # noqa: S101 - finishing never deletes
            split.state = after.value
            split.reason = reason[:2000] if reason else None
            if outcome is not None:
                split.training_path, split.test_path = outcome.training_path, outcome.test_path
                split.schema, split.stats = outcome.schema, outcome.stats
                if outcome.seed is not None and split.parameters.get("seed") != outcome.seed:
                    # The seed a random split chose is kept: the same split can be asked for again.
                    split.parameters = {**split.parameters, "seed": outcome.seed}
                if outcome.dataset is not None:
                    dataset = datasets.register(session, outcome.dataset, self._context.clock())
                    split.dataset_id, split.dataset_sha256 = dataset.id, dataset.sha256
            for model in lookups.models_of_split(session, split_id):
                if model.state == ModelState.SPLITTING.value:
                    assignments.move(model, MODEL_ACTION_FOR_SPLIT_OUTCOME[after])
                    model.reason = split.reason
                    if outcome is not None and not model.features:
                        model.features = list(outcome.features)

        await self._context.store.write(unit)

    async def expire_overdue(self) -> int:
        """Fail the splits still SPLITTING past the split timeout (their computer is gone); how many."""
        oldest = self._context.clock() - int(self._context.split_timeout_seconds)

        def overdue(session: Session) -> list[str]:
            query = select(SplitRow.id).where(SplitRow.state == SplitState.SPLITTING.value)
            return list(session.scalars(query.where(SplitRow.create_time < oldest)))

        ids = await self._context.store.read(overdue)
        for split_id in ids:
            await self.finish(split_id, None, STOPPED_REASON)
        return len(ids)

    async def list(self, experiment_name: str, offset: int, limit: int) -> SplitPage:
        def unit(session: Session) -> SplitPage:
            lookups.experiment(session, experiment_name)
            query = select(SplitRow).where(SplitRow.experiment_name == experiment_name)
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(query.order_by(SplitRow.create_time, SplitRow.id).offset(offset).limit(limit))
            return SplitPage([_view(session, row) for row in rows], total)

        return await self._context.store.read(unit)

    async def get(self, experiment_name: str, split_id: str) -> SplitView:
        return await self._context.store.read(
            lambda session: _view(session, lookups.split(session, experiment_name, split_id))
        )

    async def delete(self, experiment_name: str, split_id: str) -> None:
        """Delete a split: refused while it is computed, or while a model using it may not lose it (the lifecycle
        table's UNASSIGN_SPLIT); the models using it go back to PREPARING."""

        def unit(session: Session) -> None:
            split = lookups.split(session, experiment_name, split_id)
            next_split_state(f"split {split_id}", SplitState(split.state), SplitAction.DELETE)
            for model in lookups.models_of_split(session, split_id):
                assignments.move(model, ModelAction.UNASSIGN_SPLIT)
                model.split_id = None
            session.flush()
            session.delete(split)

        await self._context.store.write(unit)

    async def close(self) -> None:
        """Stop computing: each split being computed is failed with STOPPED_REASON."""
        for task in list(self._computing):
            task.cancel()
        await asyncio.gather(*self._computing, return_exceptions=True)


def _view(session: Session, row: SplitRow) -> SplitView:
    return SplitView(row, [model.id for model in lookups.models_of_split(session, row.id)])
