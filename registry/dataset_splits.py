"""The SplitMaker port over registry/data: read the experiment's dataset, apply the split's directives, split the
rows, describe each field train beside test, and write both halves where the trainer reads them.

The halves are Parquet files (``train.parquet``, ``test.parquet`` in the split's output folder): the trainer reads
Parquet, and Parquet keeps each column's type as the directives left it (a ``parse-as-category`` column of "3"s
stays text; CSV would read it back as numbers). Each is written under a temporary name and renamed, so a path the
split reports always holds a whole file.

Everything here blocks (file and S3 reads, pandas): :meth:`DatasetSplitMaker.make_split` runs it in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Final

import pandas as pd

from modelplane.s3 import S3Settings
from registry.data.datasets import Dataset, DatasetError, DatasetLimits, read_dataset, resolve_source
from registry.data.directives import DirectiveError, parse_directives
from registry.data.field_stats import FieldStatsError, split_stats, stats_to_json
from registry.data.splits import SplitError as DataSplitError
from registry.data.splits import SplitKind, split_frame
from registry.ports import DatasetRecord, SplitError, SplitOutcome, SplitRequest

TRAIN_FILE: Final = "train.parquet"
TEST_FILE: Final = "test.parquet"


def field_type(series: pd.Series) -> str:
    """A column's type in the split's ``schema``, in the seed's words (its ``outcomeType`` is "double")."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(series.dtype):
        return "long"
    if pd.api.types.is_float_dtype(series.dtype):
        return "double"
    return "string"


def dataset_record(srcpath: str, dataset: Dataset) -> DatasetRecord:
    columns = [str(column) for column in dataset.frame.columns] if dataset.frame is not None else []
    return DatasetRecord(
        srcpath=srcpath,
        sha256=dataset.sha256,
        format=dataset.format.value,
        sample_count=dataset.sample_count,
        size_bytes=dataset.size_bytes,
        columns=columns,
        label_counts=dict(dataset.label_counts) if dataset.label_counts is not None else None,
    )


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    frame.to_parquet(partial, index=False)
    os.replace(partial, path)


class DatasetSplitMaker:
    """Computes splits in this process, from files under the datasets root or objects in ``s3`` (when given)."""

    def __init__(self, datasets_root: Path, limits: DatasetLimits | None = None, s3: S3Settings | None = None) -> None:
        self._datasets_root = datasets_root
        self._limits = limits or DatasetLimits()
        self._s3 = s3

    async def make_split(self, request: SplitRequest) -> SplitOutcome:
        return await asyncio.to_thread(self.make_split_now, request)

    def make_split_now(self, request: SplitRequest) -> SplitOutcome:
        """The split, or SplitError naming what went wrong (the dataset, a directive, the split's parameters)."""
        try:
            # The directives were checked when they were accepted; parsed again here, as they are what runs.
            program = parse_directives(request.directives)
            source = resolve_source(request.srcpath, datasets_root=self._datasets_root, s3=self._s3)
            dataset = read_dataset(source, self._limits)
            if dataset.frame is None:
                raise SplitError(
                    f"{request.srcpath} is a {dataset.format.value.upper()} sample list: it is counted, not split or "
                    "trained on (give a CSV or Parquet table)"
                )
            frame = program.apply(dataset.frame)
            if request.outcome is not None and request.outcome not in frame.columns:
                raise SplitError(f"the outcome {request.outcome!r} is not a column of the data (after its directives)")
            halves = split_frame(frame, SplitKind(request.kind), request.percent, request.seed)
            stats = stats_to_json(split_stats(halves.train, halves.test, request.outcome))
        except (DatasetError, DirectiveError, DataSplitError, FieldStatsError) as error:
            raise SplitError(str(error)) from None
        request.output_dir.mkdir(parents=True, exist_ok=True)
        train_path, test_path = request.output_dir / TRAIN_FILE, request.output_dir / TEST_FILE
        _write_parquet(halves.train, train_path)
        _write_parquet(halves.test, test_path)
        return SplitOutcome(
            training_path=str(train_path),
            test_path=str(test_path),
            schema={str(column): field_type(frame[column]) for column in frame.columns},
            stats=stats,
            features=[str(column) for column in frame.columns if column != request.outcome],
            dataset=dataset_record(request.srcpath, dataset),
            seed=halves.seed,
        )
