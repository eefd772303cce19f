"""Datasets (seed 001): registered when a split reads one (format, sample count, sha256, size, columns or label
counts), one row per srcpath and content, listed and read by id. A dataset is never changed once registered:
new bytes under the same srcpath are a new row (a new version), so every split keeps naming what it was made of."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.errors import NotFound
from registry.ports import DatasetRecord
from registry.service.context import ServiceContext, new_id
from registry.store.tables import DatasetRow


@dataclass(frozen=True, slots=True)
class DatasetPage:
    rows: list[DatasetRow]
    total: int


def register(session: Session, record: DatasetRecord, now: int) -> DatasetRow:
    """The row of ``record``'s srcpath and sha256, added if it is the first time they are seen. Two writers adding
    the same one: the unique (srcpath, sha256) makes the second's commit fail, and the store runs it again, when
    it finds the first's row."""
    query = select(DatasetRow).where(DatasetRow.srcpath == record.srcpath, DatasetRow.sha256 == record.sha256)
    row = session.scalars(query).first()
    if row is not None:
        return row
    row = DatasetRow(
        id=new_id(),
        srcpath=record.srcpath,
        sha256=record.sha256,
        format=record.format,
        sample_count=record.sample_count,
        size_bytes=record.size_bytes,
        columns=list(record.columns),
        label_counts=dict(record.label_counts) if record.label_counts is not None else None,
        create_time=now,
    )
    session.add(row)
    session.flush()
    return row


class DatasetService:
    def __init__(self, context: ServiceContext) -> None:
        self._context = context

    async def list(self, srcpath: str | None, offset: int, limit: int) -> DatasetPage:
        def unit(session: Session) -> DatasetPage:
            query = select(DatasetRow)
            if srcpath is not None:
                query = query.where(DatasetRow.srcpath == srcpath)
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(query.order_by(DatasetRow.create_time, DatasetRow.id).offset(offset).limit(limit))
            return DatasetPage(list(rows), total)

        return await self._context.store.read(unit)

    async def get(self, dataset_id: str) -> DatasetRow:
        def unit(session: Session) -> DatasetRow:
            row = session.get(DatasetRow, dataset_id)
            if row is None:
                raise NotFound(f"no dataset {dataset_id}")
            return row

        return await self._context.store.read(unit)
