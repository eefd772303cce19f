"""Where a dataset's bytes come from (:data:`DatasetSource`), how a user's ``srcpath`` names one
(:func:`resolve_source`), and reading them whole within a byte limit (:func:`fetch_bytes`).

A ``srcpath`` is a path relative to the registry's datasets root (a leading ``/`` is the root's, as seed 002 writes
"/path/to/files"), a ``file://`` URL (which must also point inside that root: the registry answers with a dataset's
statistics, so reading any file on its host would leak it), or an ``s3://bucket/key`` URL read through modelplane's
one S3 client (modelplane/s3.py) with the registry's S3 settings. Symbolic links are resolved before the check, so
a link inside the root that points outside it is refused too. This module is the one owner of those rules: the
REST edge checks a srcpath with :func:`check_srcpath` when it is given, and the split maker resolves it again when
it reads, so a link changed in between is caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import urllib3
from minio.error import MinioException, S3Error, ServerError

from modelplane.s3 import S3Settings, s3_client
from registry.data.dataset_errors import DatasetError, DatasetUnavailableError

MAX_SRCPATH_CHARS = 1_024
_CHUNK = 1 << 16
_REFUSED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"})
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "NoSuchBucket", "InvalidBucketName"})


@dataclass(frozen=True)
class LocalDataset:
    """A file on the registry's host, already resolved inside the datasets root."""

    path: Path
    shown: str  # as the user named it, for messages

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class S3Dataset:
    """One object in the registry's S3 store."""

    bucket: str
    key: str
    settings: S3Settings

    @property
    def shown(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name


DatasetSource = LocalDataset | S3Dataset


def check_srcpath(srcpath: str, *, datasets_root: Path | None) -> None:
    """DatasetError when ``srcpath`` is malformed or escapes the datasets root; an S3 URL needs no settings here
    (whether the store is configured is found when the dataset is read)."""
    _locate(srcpath, datasets_root, s3=None, s3_needed=False)


def resolve_source(srcpath: str, *, datasets_root: Path | None, s3: S3Settings | None) -> DatasetSource:
    """The dataset ``srcpath`` names; DatasetError when it is malformed, escapes the datasets root, or needs a
    store (a root, S3 settings) this registry does not have."""
    located = _locate(srcpath, datasets_root, s3, s3_needed=True)
    assert located is not None  # noqa: S101 - s3_needed: an S3 URL without settings was refused
    return located


def _locate(
    srcpath: str, datasets_root: Path | None, s3: S3Settings | None, *, s3_needed: bool
) -> DatasetSource | None:
    _check_text(srcpath)
    if "://" not in srcpath:
        return _under_root(srcpath.lstrip("/"), srcpath, datasets_root)
    try:
        parts = urlsplit(srcpath)
        has_credentials = parts.username is not None or parts.password is not None
    except ValueError as exc:
        raise DatasetError(f"srcpath is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if has_credentials:  # else messages would carry them
        raise DatasetError(f"srcpath {scheme}:// URLs must not hold credentials")
    if parts.query or parts.fragment:
        raise DatasetError(f"srcpath {scheme}:// URLs take no query or fragment")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DatasetError("srcpath file:// URLs must name a local path (no host)")
        return _under_root(unquote(parts.path), srcpath, datasets_root)
    if scheme == "s3":
        return _s3_object(parts.netloc, unquote(parts.path.lstrip("/")), s3, s3_needed=s3_needed)
    raise DatasetError(f"srcpath scheme {scheme or '(none)'!r} is not supported; use s3://, file:// or a path")


def _check_text(srcpath: str) -> None:
    if not isinstance(srcpath, str) or not srcpath.strip():
        raise DatasetError("srcpath is empty: give a path under the datasets root, or an s3:// or file:// URL")
    if len(srcpath) > MAX_SRCPATH_CHARS:
        raise DatasetError(f"srcpath is longer than {MAX_SRCPATH_CHARS} characters ({len(srcpath)})")
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in srcpath):
        raise DatasetError("srcpath holds control characters")


def _s3_object(bucket: str, key: str, s3: S3Settings | None, *, s3_needed: bool) -> S3Dataset | None:
    if not bucket or not key or key.endswith("/"):
        raise DatasetError(f"srcpath s3://{bucket}/{key} must name one object: s3://bucket/key")
    if s3 is None:
        if not s3_needed:
            return None
        raise DatasetError("srcpath is an s3:// URL, but this registry has no S3 store configured")
    return S3Dataset(bucket, key, s3)


def _under_root(path_text: str, shown: str, datasets_root: Path | None) -> LocalDataset:
    if datasets_root is None:
        raise DatasetError(f"srcpath {shown!r} is a local path, but this registry has no datasets root")
    if "\x00" in path_text:
        raise DatasetError("srcpath holds a NUL character")
    root = datasets_root.resolve()
    path = Path(path_text)
    try:
        resolved = (path if path.is_absolute() else root / path).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise DatasetError(f"srcpath {shown!r} cannot be resolved: {exc}") from None
    if not resolved.is_relative_to(root) or resolved == root:
        raise DatasetError(f"srcpath {shown!r} points outside the datasets root")
    return LocalDataset(resolved, shown)


def fetch_bytes(source: DatasetSource, max_bytes: int, timeout_seconds: float) -> bytes:
    """The dataset's bytes, at most ``max_bytes`` of them (DatasetError beyond)."""
    if isinstance(source, LocalDataset):
        return _read_file(source, max_bytes)
    return _read_s3(source, max_bytes, timeout_seconds)


def _read_file(source: LocalDataset, max_bytes: int) -> bytes:
    try:
        if not source.path.is_file():
            what = "is a directory" if source.path.is_dir() else "does not exist"
            raise DatasetError(f"dataset {source.shown} {what}; expected a file")
        size = source.path.stat().st_size
        if size > max_bytes:
            raise DatasetError(f"dataset {source.shown} is {size} bytes; the limit is {max_bytes}")
        with source.path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {source.shown}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # it grew while being read
        raise DatasetError(f"dataset {source.shown} is larger than the limit of {max_bytes} bytes")
    return data


def _read_s3(source: S3Dataset, max_bytes: int, timeout_seconds: float) -> bytes:
    response = None
    try:
        client = s3_client(source.settings, timeout_seconds=timeout_seconds, pool_size=2)
        size = client.stat_object(source.bucket, source.key).size or 0
        if size > max_bytes:
            raise DatasetError(f"dataset {source.shown} is {size} bytes; the limit is {max_bytes}")
        response = client.get_object(source.bucket, source.key)
        data = bytearray()
        for chunk in response.stream(_CHUNK):
            data.extend(chunk)
            if len(data) > max_bytes:  # replaced since the stat
                raise DatasetError(f"dataset {source.shown} is larger than the limit of {max_bytes} bytes")
        return bytes(data)
    except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise _s3_failure(exc, source) from None
    finally:
        if response is not None:
            response.close()
            response.release_conn()


def _s3_failure(exc: Exception, source: S3Dataset) -> DatasetError:
    """The request's fault (refused, missing) as a DatasetError; the store's as a DatasetUnavailableError."""
    action = f"reading dataset {source.shown} from {source.settings.url}"
    if isinstance(exc, S3Error):
        return _s3_answer(exc, action, source)
    if isinstance(exc, ServerError):
        return DatasetUnavailableError(f"{action} failed: HTTP {exc.status_code}")
    reason: object = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return DatasetUnavailableError(f"{action} failed: cannot connect")
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return DatasetUnavailableError(f"{action} timed out")
    return DatasetUnavailableError(f"{action} failed: {type(reason).__name__}")


def _s3_answer(exc: S3Error, action: str, source: S3Dataset) -> DatasetError:
    if exc.code in _MISSING_CODES:
        return DatasetError(f"dataset {source.shown} does not exist on {source.settings.url} ({exc.code})")
    if exc.code in _REFUSED_CODES:
        return DatasetError(f"{action} was refused ({exc.code}): check the registry's S3 credentials")
    return DatasetUnavailableError(f"{action} failed: {exc.code}")
