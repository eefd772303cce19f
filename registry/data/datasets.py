"""Reading a dataset (:func:`read_dataset`): its bytes from a :data:`DatasetSource` (sources.py), its format, and
what the registry keeps of it: a table to split and train on (CSV, Parquet), or counts (TXT image lists, XML
detection annotations, seed 001: counted, not trained on), with the sha256 and size of the bytes read.

The format is the one asked for, else the name's extension (``.csv``, ``.parquet``/``.pq``, ``.txt``, ``.xml``),
else the content (``PAR1`` opens a Parquet file, ``<`` an XML one), else CSV. Every failure is a
:class:`DatasetError` whose message names the dataset and the cause (fit for a 400); a store that cannot be reached
is a :class:`DatasetUnavailableError`. Reading blocks (files, the minio SDK): async callers run it in a thread.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

import pandas as pd

from registry.data.dataset_errors import DatasetError, DatasetUnavailableError
from registry.data.dataset_limits import DatasetLimits
from registry.data.sample_lists import count_detection_annotations, count_image_list
from registry.data.sources import (
    DatasetSource,
    LocalDataset,
    S3Dataset,
    check_srcpath,
    fetch_bytes,
    resolve_source,
)
from registry.data.tables import PARQUET_MAGIC, read_csv, read_parquet

__all__ = [
    "Dataset",
    "DatasetError",
    "DatasetFormat",
    "DatasetLimits",
    "DatasetSource",
    "DatasetUnavailableError",
    "LocalDataset",
    "S3Dataset",
    "check_srcpath",
    "read_dataset",
    "resolve_source",
]


class DatasetFormat(enum.StrEnum):
    CSV = "csv"
    PARQUET = "parquet"
    TXT = "txt"  # an image-classification list
    XML = "xml"  # detection annotations (Pascal VOC)

    @property
    def trainable(self) -> bool:
        return self in (DatasetFormat.CSV, DatasetFormat.PARQUET)


_EXTENSIONS = {
    ".csv": DatasetFormat.CSV,
    ".parquet": DatasetFormat.PARQUET,
    ".pq": DatasetFormat.PARQUET,
    ".txt": DatasetFormat.TXT,
    ".xml": DatasetFormat.XML,
}


@dataclass(frozen=True)
class Dataset:
    format: DatasetFormat
    frame: pd.DataFrame | None  # None for the formats that are counted, not trained on
    sample_count: int  # table rows, listed images, or annotated images
    sha256: str  # of the bytes read, hex
    size_bytes: int
    label_counts: dict[str, int] | None = None  # TXT: images per label; XML: objects per class
    origin: str = ""  # the source as shown in messages (no credentials)


def read_dataset(
    source: DatasetSource, limits: DatasetLimits | None = None, *, dataset_format: DatasetFormat | None = None
) -> Dataset:
    """Read and parse the dataset ``source`` names; DatasetError when it cannot be read or parsed."""
    limits = limits or DatasetLimits()
    data = fetch_bytes(source, limits.max_bytes, limits.timeout_seconds)
    chosen = dataset_format or detect_format(source.name, data)
    digest = hashlib.sha256(data).hexdigest()
    shown = source.shown
    if chosen is DatasetFormat.CSV or chosen is DatasetFormat.PARQUET:
        frame = read_csv(data, shown, limits) if chosen is DatasetFormat.CSV else read_parquet(data, shown, limits)
        return Dataset(chosen, frame, len(frame), digest, len(data), None, shown)
    counted = count_image_list(data, shown, limits) if chosen is DatasetFormat.TXT else None
    if counted is None:
        counted = count_detection_annotations(data, shown, limits)
    return Dataset(chosen, None, counted.samples, digest, len(data), counted.label_counts, shown)


def detect_format(name: str, data: bytes) -> DatasetFormat:
    lowered = name.lower()
    for extension, known in _EXTENSIONS.items():
        if lowered.endswith(extension):
            return known
    if data.startswith(PARQUET_MAGIC):
        return DatasetFormat.PARQUET
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return DatasetFormat.XML
    return DatasetFormat.CSV
