"""Fetching and parsing a run's dataset: a mounted file, ``file://``, ``s3://bucket/key`` or ``http(s)://``.

The bytes are read whole (datasets for these models are small; the limit is ``DatasetLimits.max_bytes``)
and parsed as CSV or Parquet: by the name's extension (``.csv``, ``.csv.gz``, ``.parquet``, ``.pq``), else
by content (Parquet files start with ``PAR1``), else CSV. S3 settings come from the run's environment:
``MODELPLANE_S3_ENDPOINT`` (``http://host:port``; without a scheme, https), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, optionally ``AWS_SESSION_TOKEN``, ``AWS_REGION``, and ``MODELPLANE_S3_SECURE``
(true|false, overriding the endpoint's scheme). Every failure names the source and the cause, and no message
holds a credential or a URL's query string: a DatasetError when the dataset itself is at fault (missing, refused,
too large, unparsable), a DatasetUnavailableError when its store cannot be reached or does not answer (retried).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import pandas as pd

from modelplane.whole_numbers import parse_whole_number
from trainer.run.errors import DatasetError, DatasetUnavailableError
from trainer.run.jobs import DatasetSource

PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 16


@dataclass(frozen=True)
class DatasetLimits:
    max_bytes: int = 512 * 1024 * 1024  # of the file as fetched (compressed, for .csv.gz)
    max_rows: int = 5_000_000
    max_columns: int = 10_000
    timeout_seconds: float = 60.0  # per network request without progress


@dataclass(frozen=True)
class LoadedDataset:
    frame: pd.DataFrame
    origin: str  # the source as shown in messages and metadata (no query string, no credentials)
    file_format: str  # "csv" or "parquet"
    size_bytes: int
    sha256: str


def load_dataset(
    source: DatasetSource, environ: Mapping[str, str], limits: DatasetLimits | None = None
) -> LoadedDataset:
    """Fetch and parse the dataset ``source`` names."""
    limits = limits or DatasetLimits()
    data, origin, name = fetch_bytes(source, environ, limits)
    file_format, frame = parse_table(data, name, origin, limits)
    return LoadedDataset(frame, origin, file_format, len(data), hashlib.sha256(data).hexdigest())


def fetch_bytes(source: DatasetSource, environ: Mapping[str, str], limits: DatasetLimits) -> tuple[bytes, str, str]:
    """``(data, origin, file name)`` of the dataset; the name decides the format by its extension."""
    path, url = source.path.strip(), source.url.strip()
    if path and url:
        raise DatasetError(f"the dataset names both a path ({path!r}) and a URL; give exactly one")
    if path:
        return _read_file(Path(path), path, limits)
    if not url:
        raise DatasetError("no dataset given: the job names neither a dataset path nor a dataset URL")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise DatasetError(f"malformed dataset URL: {exc}") from None
    scheme = parts.scheme.lower()
    try:
        host = parts.hostname or ""
        host = f"{host}:{parts.port}" if parts.port is not None else host
    except ValueError as exc:
        raise DatasetError(f"malformed dataset URL: {exc}") from None
    shown = urlunsplit((parts.scheme, host, parts.path, "", ""))  # never userinfo or query
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DatasetError(f"dataset URL {shown}: file:// URLs must name a local path (no host)")
        local = unquote(parts.path)
        return _read_file(Path(local), shown, limits)
    if scheme == "s3":
        if parts.username is not None or parts.password is not None:  # else the bucket carries them into messages
            raise DatasetError(f"dataset URL {shown} must not hold credentials; use AWS_ACCESS_KEY_ID")
        return _read_s3(parts.netloc, unquote(parts.path.lstrip("/")), environ, limits)
    if scheme in ("http", "https"):
        return _read_http(url, shown, limits), shown, PurePosixPath(unquote(parts.path)).name
    raise DatasetError(f"dataset URL {shown}: unsupported scheme {scheme or '(none)'!r}; use file, s3, http or https")


def _read_file(path: Path, shown: str, limits: DatasetLimits) -> tuple[bytes, str, str]:
    if not path.is_absolute():
        raise DatasetError(f"dataset path {shown!r} must be absolute (a mounted volume's path)")
    try:
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise DatasetError(f"dataset {shown} {what}; expected a CSV or Parquet file")
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise DatasetError(f"dataset {shown} is {size} bytes; the limit is {limits.max_bytes}")
        with path.open("rb") as handle:
            data = handle.read(limits.max_bytes + 1)
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {shown}: {exc.strerror or exc}") from None
    if len(data) > limits.max_bytes:  # the file grew while being read
        raise DatasetError(f"dataset {shown} is larger than the limit of {limits.max_bytes} bytes")
    return data, shown, path.name


def _read_s3(bucket: str, key: str, environ: Mapping[str, str], limits: DatasetLimits) -> tuple[bytes, str, str]:
    shown = f"s3://{bucket}/{key}"
    if not bucket or not key or key.endswith("/"):
        raise DatasetError(f"dataset URL {shown} must name one object: s3://bucket/key")
    # Imported here: only s3:// datasets need the minio SDK, so an image without it still trains from files.
    try:
        from trainer.run import s3_source  # noqa: PLC0415
    except ImportError as exc:  # the image's fault, not the event's: an internal error
        raise RuntimeError(f"s3:// datasets need the minio package in the training image ({exc})") from None

    settings = s3_source.settings_from_env(environ)
    data = s3_source.read_object(settings, bucket, key, limits.max_bytes, limits.timeout_seconds)
    return data, shown, PurePosixPath(key).name


class _Readable(Protocol):
    def read(self, amount: int, /) -> bytes: ...


def _read_limited(stream: _Readable, limit: int, shown: str) -> bytes:
    buffer = bytearray()
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return bytes(buffer)
        buffer.extend(chunk)
        if len(buffer) > limit:
            raise DatasetError(f"dataset {shown} is larger than the limit of {limit} bytes")


def _read_http(url: str, shown: str, limits: DatasetLimits) -> bytes:
    """The body; DatasetError for an answer that says the request is wrong (4xx, too large), DatasetUnavailableError
    when the server cannot be reached, times out or answers 5xx/429 (retried later)."""
    request = urllib.request.Request(url, headers={"User-Agent": "modelplane-trainer"})  # noqa: S310 -- scheme checked
    try:
        with urllib.request.urlopen(request, timeout=limits.timeout_seconds) as response:  # noqa: S310 -- http(s) only
            length = parse_whole_number(response.headers.get("Content-Length") or "")
            if length is not None and length > limits.max_bytes:
                raise DatasetError(f"dataset {shown} is {length} bytes; the limit is {limits.max_bytes}")
            return _read_limited(response, limits.max_bytes, shown)
    except urllib.error.HTTPError as exc:
        failure = f"fetching dataset {shown} failed: HTTP {exc.code} {exc.reason}"
        if exc.code >= 500 or exc.code == 429:
            raise DatasetUnavailableError(failure) from None
        raise DatasetError(failure) from None
    except urllib.error.URLError as exc:  # no answer at all: refused, unresolvable, reset
        raise DatasetUnavailableError(f"fetching dataset {shown} failed: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise DatasetUnavailableError(f"fetching dataset {shown} failed: {type(exc).__name__}: {exc}") from None
    except ValueError as exc:
        raise DatasetError(f"fetching dataset {shown} failed: {type(exc).__name__}: {exc}") from None


def parse_table(data: bytes, name: str, origin: str, limits: DatasetLimits) -> tuple[str, pd.DataFrame]:
    """``(format, frame)``; the format by extension, else by content. Limits apply before full parsing."""
    lowered = name.lower()
    if lowered.endswith((".parquet", ".pq")) or (
        not lowered.endswith((".csv", ".csv.gz")) and data.startswith(PARQUET_MAGIC)
    ):
        return "parquet", _parse_parquet(data, origin, limits)
    return "csv", _parse_csv(data, origin, limits)


def _parse_parquet(data: bytes, origin: str, limits: DatasetLimits) -> pd.DataFrame:
    if not data.startswith(PARQUET_MAGIC):
        raise DatasetError(f"dataset {origin} is named as Parquet but does not start with the Parquet magic 'PAR1'")
    try:  # imported here: only Parquet datasets need pyarrow
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError as exc:  # the image's fault, not the event's: an internal error
        raise RuntimeError(f"Parquet datasets need the pyarrow package in the training image ({exc})") from None

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        rows, columns = parquet.metadata.num_rows, parquet.metadata.num_columns
        _check_shape(rows, columns, origin, limits)
        frame = parquet.read().to_pandas()
    except DatasetError:
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"dataset {origin} is not a readable Parquet file: {exc}") from None
    return _normalise_columns(frame, origin)


def _parse_csv(data: bytes, origin: str, limits: DatasetLimits) -> pd.DataFrame:
    if data.startswith(GZIP_MAGIC):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as unzipped:
                data = unzipped.read(limits.max_bytes * 4 + 1)  # bound decompression bombs
        except (OSError, EOFError) as exc:
            raise DatasetError(f"dataset {origin} is not a readable gzip file: {exc}") from None
        if len(data) > limits.max_bytes * 4:
            raise DatasetError(f"dataset {origin} decompresses to more than {limits.max_bytes * 4} bytes")
    if not data.strip():
        raise DatasetError(f"dataset {origin} is empty")
    try:
        # nrows one past the limit tells "too many rows" apart from "exactly the limit".
        frame = pd.read_csv(io.BytesIO(data), nrows=limits.max_rows + 1, encoding="utf-8", low_memory=False)
    except UnicodeDecodeError:
        raise DatasetError(f"dataset {origin} is not UTF-8 text (nor Parquet)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OverflowError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"dataset {origin} is not a readable CSV file: {first_line}") from None
    _check_shape(len(frame), len(frame.columns), origin, limits)
    return _normalise_columns(frame, origin)


def _check_shape(rows: int, columns: int, origin: str, limits: DatasetLimits) -> None:
    if rows > limits.max_rows:
        raise DatasetError(f"dataset {origin} has more than {limits.max_rows} rows (the limit)")
    if columns > limits.max_columns:
        raise DatasetError(f"dataset {origin} has {columns} columns; the limit is {limits.max_columns}")
    if rows == 0:
        raise DatasetError(f"dataset {origin} has no rows")


def _normalise_columns(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Column names as stripped text; duplicates (possible in Parquet) are an error naming them."""
    names = [str(column).strip() for column in frame.columns]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DatasetError(f"dataset {origin} has duplicate columns: {duplicates}")
    frame.columns = names
    return frame
