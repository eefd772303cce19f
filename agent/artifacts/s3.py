"""Listing and downloading an S3 prefix with the minio SDK (blocking: the store runs it in a thread)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from agent.artifacts.errors import ArtifactError
from agent.artifacts.progress import PROGRESS_EVERY_SECONDS, DownloadProgress
from agent.artifacts.safety import Budget, Charge, ExtractLimits, Readable, Tree, UnsafeName, safe_parts
from agent.artifacts.sources import S3Location
from modelplane.s3 import S3Settings, s3_client

_CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)


@dataclass(frozen=True, slots=True)
class S3Object:
    key: str
    relative: tuple[str, ...]
    etag: str
    size: int


def make_client(settings: S3Settings, timeout_seconds: float) -> Minio:
    """A minio client whose every request gives up after ``timeout_seconds`` without progress."""
    try:
        return s3_client(settings, timeout_seconds=timeout_seconds)
    except ValueError as exc:
        raise ArtifactError(f"{settings.origin}: unusable S3 endpoint {settings.url}: {exc}") from None


def describe_failure(exc: Exception, action: str, settings: S3Settings) -> ArtifactError:
    """An ArtifactError for a failed S3 call, naming the endpoint and, for credential errors, their origin."""
    if isinstance(exc, S3Error):
        if exc.code in _CREDENTIAL_CODES:
            return ArtifactError(
                f"{action} on {settings.url} was refused ({exc.code}: {exc.message}); "
                f"check the credentials from {settings.origin}"
            )
        if exc.code == "NoSuchBucket":
            return ArtifactError(f"{action} on {settings.url} failed: the bucket does not exist")
        return ArtifactError(f"{action} on {settings.url} failed: {exc.code}: {exc.message}")
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        reason: object = exc.reason
    else:
        reason = exc
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # a subclass of ConnectTimeoutError, sadly
        return ArtifactError(f"{action} on {settings.url} failed: cannot connect: {reason}")
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return ArtifactError(f"{action} on {settings.url} timed out (no progress within the timeout)")
    return ArtifactError(f"{action} on {settings.url} failed: {type(reason).__name__}: {reason}")


_S3_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError)


def list_objects(client: Minio, location: S3Location, settings: S3Settings, limits: ExtractLimits) -> list[S3Object]:
    """Every object under the prefix, with paths relative to it; a prefix naming one object gives that object.

    An empty listing, an unsafe key (``..``, absolute) or more objects than ``limits.max_files`` is an
    ArtifactError.
    """
    prefix = f"{location.prefix}/" if location.prefix else ""
    where = f"s3://{location.bucket}/{prefix}"
    objects: list[S3Object] = []
    try:
        for item in client.list_objects(location.bucket, prefix=prefix, recursive=True):
            key = item.object_name or ""
            if item.is_dir or key.endswith("/"):
                continue  # folder markers some tools create
            try:
                relative = safe_parts(key[len(prefix) :])
            except UnsafeName as exc:
                raise ArtifactError(f"refused {where}: object key {key!r} {exc}") from None
            if not relative:
                continue
            objects.append(S3Object(key, relative, (item.etag or "").strip('"'), item.size or 0))
            if len(objects) > limits.max_files:
                raise ArtifactError(f"{where} holds more than {limits.max_files} objects")
        if not objects and location.prefix:
            objects = _single_object(client, location)
    except _S3_ERRORS as exc:
        raise describe_failure(exc, f"listing {where}", settings) from None
    if not objects:
        raise ArtifactError(
            f"no objects under {where} (bucket {location.bucket!r}, prefix {location.prefix!r}) on {settings.url}"
        )
    return objects


def _single_object(client: Minio, location: S3Location) -> list[S3Object]:
    """``s3://bucket/path/model.joblib`` names one object: fetched alone, under its base name (checked like
    every other key: ``s3://bucket/path/..`` names no file to write)."""
    try:
        parts = safe_parts(location.prefix)
    except UnsafeName as exc:
        raise ArtifactError(f"refused s3://{location.bucket}/{location.prefix}: the object key {exc}") from None
    if not parts:
        return []
    try:
        stat = client.stat_object(location.bucket, location.prefix)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
            return []
        raise
    return [S3Object(location.prefix, parts[-1:], (stat.etag or "").strip('"'), stat.size or 0)]


class _Counted:
    """An object's body whose every chunk read is counted by the download's progress."""

    __slots__ = ("_body", "_progress")

    def __init__(self, body: Readable, progress: DownloadProgress) -> None:
        self._body = body
        self._progress = progress

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._body.read(size)
        if chunk:
            self._progress.add(len(chunk))
        return chunk


def download_objects(
    client: Minio,
    location: S3Location,
    objects: list[S3Object],
    target: Path,
    *,
    settings: S3Settings,
    limits: ExtractLimits,
    stop: threading.Event,
    charge: Charge | None = None,
    progress_every_seconds: float = PROGRESS_EVERY_SECONDS,
) -> None:
    """Download ``objects`` into the new folder ``target``, keeping their relative paths, within ``limits``
    (and ``charge``'s room in the cache): what the listing declares is checked first, what is written always.
    A download that runs longer than ``progress_every_seconds`` logs its progress (progress.py)."""
    where = f"s3://{location.bucket}/{location.prefix}"
    declared = sum(item.size for item in objects)
    if declared > limits.max_total_bytes:
        raise ArtifactError(
            f"{where} holds {declared} bytes, over the per-model size limit of {limits.max_total_bytes} bytes "
            "(the agent's --max-model-disk)"
        )
    if charge is not None:
        charge.check_room(declared, f"its objects are {declared} bytes")
    target.mkdir()
    budget = Budget(limits, where, stop, charge=charge)
    progress = DownloadProgress(where, declared, len(objects), every_seconds=progress_every_seconds)
    tree = Tree(target, budget)
    for item in objects:
        budget.add_member(item.key)
        budget.check_declared_size(item.key, item.size)
        try:
            path = tree.file(item.relative)
        except (UnsafeName, OSError) as exc:
            raise ArtifactError(f"cannot store s3://{location.bucket}/{item.key}: {exc}") from None
        response = None
        try:
            headers: dict[str, str | list[str] | tuple[str]] | None = (
                {"If-Match": f'"{item.etag}"'} if item.etag else None
            )
            response = client.get_object(location.bucket, item.key, request_headers=headers)
            budget.copy(_Counted(response, progress), path, item.key)
            progress.file_done()
        except S3Error as exc:
            if exc.code == "PreconditionFailed":
                raise ArtifactError(f"s3://{location.bucket}/{item.key} changed while it was downloaded") from None
            raise describe_failure(exc, f"downloading s3://{location.bucket}/{item.key}", settings) from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise describe_failure(exc, f"downloading s3://{location.bucket}/{item.key}", settings) from None
        finally:
            if response is not None:
                response.close()
                response.release_conn()
    progress.finish()
