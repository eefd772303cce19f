"""CSV and Parquet bytes as a pandas DataFrame, within the row, column and decoded-size limits.

Column names become stripped text; duplicate or empty names are refused (pandas would rename them silently, to
``a.1`` or ``Unnamed: 0``, and directives and features name columns). Parquet columns must be flat (numbers,
booleans, text, dates and times): a nested list or struct column is no feature a model trains on.
"""

from __future__ import annotations

import io
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from registry.data.dataset_errors import DatasetError
from registry.data.dataset_limits import DatasetLimits

PARQUET_MAGIC = b"PAR1"


def read_csv(data: bytes, shown: str, limits: DatasetLimits) -> pd.DataFrame:
    if not data.strip():
        raise DatasetError(f"dataset {shown} is empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"dataset {shown} is not UTF-8 text (byte {exc.start})") from None
    try:
        header = pd.read_csv(io.BytesIO(data), header=None, nrows=1, dtype=str, keep_default_na=False)
        _check_names([str(name) for name in header.iloc[0]], shown, limits)
        # nrows one past the limit tells "too many rows" apart from "exactly the limit".
        frame = pd.read_csv(io.BytesIO(data), nrows=limits.max_rows + 1, encoding="utf-8", low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OverflowError) as exc:
        if isinstance(exc, DatasetError):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"dataset {shown} is not a readable CSV file: {message}") from None
    _check_rows(len(frame), shown, limits)
    frame.columns = [str(name).strip() for name in frame.columns]
    return frame


def read_parquet(data: bytes, shown: str, limits: DatasetLimits) -> pd.DataFrame:
    if not data.startswith(PARQUET_MAGIC):
        raise DatasetError(f"dataset {shown} is not a Parquet file (it does not start with 'PAR1')")
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        metadata = parquet.metadata
        _check_names([str(name) for name in parquet.schema_arrow.names], shown, limits)
        _check_rows(metadata.num_rows, shown, limits)
        decoded = sum(metadata.row_group(index).total_byte_size for index in range(metadata.num_row_groups))
        if decoded > limits.max_decoded_bytes:
            raise DatasetError(f"dataset {shown} decodes to {decoded} bytes; the limit is {limits.max_decoded_bytes}")
        for field in parquet.schema_arrow:
            if not _is_flat(field.type):
                raise DatasetError(f"dataset {shown}: column {field.name!r} is of type {field.type}, not a flat value")
        frame = parquet.read().to_pandas()
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"dataset {shown} is not a readable Parquet file: {type(exc).__name__}: {exc}") from None
    frame.columns = [str(name).strip() for name in frame.columns]
    return frame


def _is_flat(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        return _is_flat(kind.value_type)
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_temporal(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_null(kind)
    )


def _check_names(names: list[str], shown: str, limits: DatasetLimits) -> None:
    if len(names) > limits.max_columns:
        raise DatasetError(f"dataset {shown} has {len(names)} columns; the limit is {limits.max_columns}")
    stripped = [name.strip() for name in names]
    empty = [position + 1 for position, name in enumerate(stripped) if not name]
    if empty:
        raise DatasetError(f"dataset {shown}: column {empty[0]} has no name")
    duplicates = sorted(name for name, count in Counter(stripped).items() if count > 1)
    if duplicates:
        raise DatasetError(f"dataset {shown} has duplicate column names: {duplicates[:10]}")


def _check_rows(rows: int, shown: str, limits: DatasetLimits) -> None:
    if rows > limits.max_rows:
        raise DatasetError(f"dataset {shown} has more than {limits.max_rows} rows (the limit)")
    if rows == 0:
        raise DatasetError(f"dataset {shown} has no rows")
