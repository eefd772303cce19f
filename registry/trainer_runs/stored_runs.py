"""What the trainer stored of a reported run, read from the model store (the registry's ``--s3-*``): the run's
``metadata.json`` (algorithm, task, classes, features, fitted parameters, dataset and its sha256, framework
versions, the design schema) and its artifact, whose bytes are read back and hashed, so a registered version's
manifest names bytes the store holds.

Two kinds of failure: :class:`StoredRunError` (the run's folder is not what a run of the trainer leaves: missing,
too large, not JSON, a sha256 that is not the report's) is permanent, the consumer skips the report with a warning;
:class:`StoreUnavailableError` (S3 away, slow, failing) is the store's, the report is tried again later and its
offset is not committed meanwhile.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

import urllib3
from minio.error import MinioException, S3Error

from modelplane.s3 import S3Settings, failure_reason, s3_client
from modelplane.spec.training_status import METADATA_FILE
from registry.trainer_runs.reports import RunReport

MAX_METADATA_BYTES: Final = 8 * 1024 * 1024
_CHUNK: Final = 1 << 20
_MISSING_CODES: Final = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "NoSuchBucket"})


class StoredRunError(ValueError):
    """The reported run's folder in the model store is not a run's: the report cannot be registered."""


class StoreUnavailableError(RuntimeError):
    """The model store could not be read now; the report is tried again later."""


@dataclass(frozen=True, slots=True)
class StoredRun:
    metadata: dict[str, Any]
    artifact_name: str
    artifact_size: int


def read_stored_run(settings: S3Settings, report: RunReport, timeout_seconds: float) -> StoredRun:
    """The run's metadata, its artifact hashed (blocking: call it in a worker thread)."""
    try:
        client = s3_client(settings, timeout_seconds=timeout_seconds, pool_size=1)
        metadata = _metadata(client, report)
        size, digest = _artifact_digest(client, report)
    except (StoredRunError, StoreUnavailableError):
        raise
    except S3Error as error:
        if error.code in _MISSING_CODES:
            raise StoredRunError(f"{report.model_uri} is not in the model store ({error.code})") from None
        raise StoreUnavailableError(f"reading {report.model_uri} failed: {failure_reason(error)}") from None
    except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as error:
        raise StoreUnavailableError(
            f"reading {report.model_uri} from {settings.url} failed: {failure_reason(error)}"
        ) from None
    if digest != report.artifact_sha256:
        raise StoredRunError(f"the artifact in {report.model_uri} has sha256 {digest}, the report says another")
    artifact = metadata.get("artifact")
    if not isinstance(artifact, dict) or artifact.get("sha256") != digest:
        raise StoredRunError(f"{METADATA_FILE} in {report.model_uri} names another artifact than the report")
    name = report.artifact_key.rsplit("/", 1)[-1]
    return StoredRun(metadata, name, size)


def _metadata(client: Any, report: RunReport) -> dict[str, Any]:
    key = f"{report.folder}/{METADATA_FILE}"
    size = client.stat_object(report.bucket, key).size or 0
    if size > MAX_METADATA_BYTES:
        raise StoredRunError(
            f"{METADATA_FILE} in {report.model_uri} is {size} bytes; the limit is {MAX_METADATA_BYTES}"
        )
    response = client.get_object(report.bucket, key)
    try:
        data = response.read(MAX_METADATA_BYTES + 1)
    finally:
        response.close()
        response.release_conn()
    if len(data) > MAX_METADATA_BYTES:
        raise StoredRunError(f"{METADATA_FILE} in {report.model_uri} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise StoredRunError(f"{METADATA_FILE} in {report.model_uri} is not JSON") from None
    if not isinstance(document, dict):
        raise StoredRunError(f"{METADATA_FILE} in {report.model_uri} is not a JSON object")
    return document


def _artifact_digest(client: Any, report: RunReport) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    response = client.get_object(report.bucket, report.artifact_key)
    try:
        for chunk in response.stream(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    finally:
        response.close()
        response.release_conn()
    return size, digest.hexdigest()
