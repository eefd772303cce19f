"""Experiments: PUT (create, or update within experiment_rules), GET, list with srcpath/offset/limit, DELETE."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.data.dataset_errors import DatasetError
from registry.data.sources import check_srcpath
from registry.errors import InvalidInput
from registry.experiment_rules import check_redefinition
from registry.service import lookups
from registry.service.context import ServiceContext
from registry.store.tables import ExperimentRow


@dataclass(frozen=True, slots=True)
class ExperimentFields:
    """A PUT's body: None is "not given" (keeps what is stored)."""

    description: str | None = None
    srcpath: str | None = None
    outcome: str | None = None
    outcome_type: str | None = None
    directives: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[ExperimentRow]
    total: int  # of all that match, for the total-count header


class ExperimentService:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def put(self, name: str, fields: ExperimentFields) -> tuple[ExperimentRow, bool]:
        """Create or update; (the experiment, True when it was created)."""
        if fields.srcpath is not None:
            try:
                check_srcpath(fields.srcpath, datasets_root=self._context.datasets_root)
            except DatasetError as error:
                raise InvalidInput(str(error)) from None

        def unit(session: Session) -> tuple[ExperimentRow, bool]:
            row = session.get(ExperimentRow, name)
            if row is None:
                row = ExperimentRow(
                    name=name,
                    description=fields.description or "",
                    srcpath=fields.srcpath,
                    outcome=fields.outcome,
                    outcome_type=fields.outcome_type,
                    directives=list(fields.directives or []),
                    create_time=self._context.clock(),
                )
                session.add(row)
                session.flush()  # a concurrent create of the same name fails here: the store runs us again
                return row, True
            check_redefinition(
                name,
                {"srcpath": row.srcpath, "outcome": row.outcome, "outcomeType": row.outcome_type},
                {"srcpath": fields.srcpath, "outcome": fields.outcome, "outcomeType": fields.outcome_type},
            )
            # Defined-once fields are set only where still undefined (check_redefinition refused the rest).
            row.srcpath = row.srcpath or fields.srcpath
            row.outcome = row.outcome or fields.outcome
            row.outcome_type = row.outcome_type or fields.outcome_type
            if fields.description is not None:
                row.description = fields.description
            if fields.directives is not None:
                row.directives = list(fields.directives)
            return row, False

        return await self._context.store.write(unit)

    async def get(self, name: str) -> ExperimentRow:
        return await self._context.store.read(lambda session: lookups.experiment(session, name))

    async def list(self, srcpath: str | None, offset: int, limit: int) -> Page:
        def unit(session: Session) -> Page:
            query = select(ExperimentRow)
            if srcpath is not None:
                query = query.where(ExperimentRow.srcpath == srcpath)
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(query.order_by(ExperimentRow.name).offset(offset).limit(limit))
            return Page(list(rows), total)

        return await self._context.store.read(unit)

    async def delete(self, name: str) -> None:
        """Delete the experiment with its splits and models (the database cascades). Every model state allows
        deletion (registry/lifecycle.py); a training run still going reports back to no model and is dropped."""

        def unit(session: Session) -> None:
            session.delete(lookups.experiment(session, name))

        await self._context.store.write(unit)
