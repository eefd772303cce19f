"""What the scheduler serves of the names the registry deployed: the ServingSink a ServingFollower (registry/ports.py)
writes to, and the ``serving`` objects GET .../models/{id} and .../status show.

The names followed are every model's ``serving_name`` and every alias's (an experiment's stable name). A row is
written only when its state or reason changes, so ``seen`` is when the registry learned the state it shows. At start
every row is made unknown ("not yet heard from the scheduler"): a state a stopped registry recorded is never shown as
current by the next one."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.ports import ServingReport, ServingState
from registry.service.context import ServiceContext
from registry.store.tables import REASON_CHARS, AliasRow, ModelRow, ServingRow


@dataclass(frozen=True, slots=True)
class Serving:
    name: str
    state: str
    reason: str
    seen: int | None  # None: never recorded


def _followed(session: Session) -> set[str]:
    models = session.scalars(select(ModelRow.serving_name).where(ModelRow.serving_name.is_not(None)).distinct())
    aliases = session.scalars(select(AliasRow.serving_name).where(AliasRow.serving_name.is_not(None)).distinct())
    return {name for name in (*models, *aliases) if name is not None}


def _set(session: Session, name: str, state: ServingState, reason: str, now: int) -> None:
    reason = reason[:REASON_CHARS]
    row = session.get(ServingRow, name)
    if row is None:
        session.add(ServingRow(name=name, state=state.value, reason=reason, seen=now))
    elif (row.state, row.reason) != (state.value, reason):
        row.state, row.reason, row.seen = state.value, reason, now


class ServingService:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def followed(self) -> set[str]:
        return await self._context.store.read(_followed)

    async def record(self, reports: Sequence[ServingReport], *, not_served: Collection[str] = ()) -> None:
        now = self._context.clock()

        def unit(session: Session) -> None:
            followed = _followed(session)  # a name deleted meanwhile is not recorded again
            for report in reports:
                if report.name in followed:
                    _set(session, report.name, report.state, report.reason, now)
            for name in followed.intersection(not_served):
                _set(session, name, ServingState.NOT_SERVED, "the scheduler does not hold it", now)

        await self._context.store.write(unit)

    async def unknown(self, reason: str) -> None:
        now = self._context.clock()

        def unit(session: Session) -> None:
            for name in _followed(session):
                _set(session, name, ServingState.UNKNOWN, reason, now)

        await self._context.store.write(unit)

    async def of(self, model: ModelRow) -> list[Serving]:
        """The model's serving names and their states: its own ``serving_name`` first, then its aliases'."""

        def unit(session: Session) -> list[Serving]:
            query = select(AliasRow.serving_name).where(
                AliasRow.model_id == model.id, AliasRow.serving_name.is_not(None)
            )
            names = [model.serving_name] if model.serving_name is not None else []
            names += sorted({name for name in session.scalars(query) if name is not None} - set(names))
            found: list[Serving] = []
            for name in names:
                row = session.get(ServingRow, name)
                if row is None:
                    found.append(Serving(name, ServingState.UNKNOWN.value, "not yet heard from the scheduler", None))
                else:
                    found.append(Serving(name, row.state, row.reason, row.seen))
            return found

        return await self._context.store.read(unit)
