"""Store a finished run's output in the S3 model store (seed step 5.2).

Layout: ``s3://<bucket>/<prefix>/<design>/<version>/<run_id>/`` holding ``<artifact>`` and ``metadata.json``,
where ``<design>`` is the design token and ``<version>`` the schema's version, each made safe as one path
segment (see :func:`path_segment`). One folder per run, so a retrained model never overwrites the one being
served, and the folder URI is what LoadModel's ``storageUri`` points at.

Before anything is uploaded the artifact's SHA-256 is computed and compared with what the run reported
(result.json and, when present, metadata.json's ``artifact_sha256``/``sha256``): a truncated or swapped file
is never published as a model. The minio SDK is synchronous, so its calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import urllib3
from minio.error import MinioException, S3Error

from modelplane.s3 import s3_client
from trainer.model_store_settings import ModelStoreSettings
from trainer.run.jobs import METADATA_FILE
from trainer.run.serving_bundle import bundle_files

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_SEGMENT = 100


class ArtifactMismatchError(ValueError):
    """The artifact on disk is not the one the run reported."""


# What an upload may raise that says nothing about the artifact (S3 away, slow, refusing): retried later.
# ValueError: urllib3 reports some refused connections through minio as one.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError)


@dataclass(frozen=True)
class StoredModel:
    folder_uri: str  # s3://bucket/prefix/design/version/run_id (no trailing slash)
    artifact_uri: str
    metadata_uri: str
    sha256: str
    size: int


def path_segment(text: str, fallback: str) -> str:
    """``text`` as one safe key segment: unsafe characters become ``_``; when anything changed (or the text is
    long), a short hash of the original keeps distinct tokens in distinct folders."""
    if not text:
        return fallback
    safe = _UNSAFE.sub("_", text).strip(".") or fallback
    if safe != text or len(safe) > MAX_SEGMENT:
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        safe = f"{safe[:MAX_SEGMENT]}-{digest}"
    return safe


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def expected_sha256s(output_dir: Path, reported: str) -> set[str]:
    """Every SHA-256 the run claimed for its artifact (result.json's and metadata.json's)."""
    claims = {reported.lower()} if reported else set()
    try:
        metadata = json.loads((output_dir / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return claims
    if isinstance(metadata, dict):
        for key in ("artifact_sha256", "sha256"):
            value = metadata.get(key)
            if isinstance(value, str) and value:
                claims.add(value.lower())
        artifact = metadata.get("artifact")
        if isinstance(artifact, dict) and isinstance(artifact.get("sha256"), str):
            claims.add(str(artifact["sha256"]).lower())
    return claims


class ModelStore:
    def __init__(self, settings: ModelStoreSettings) -> None:
        self._settings = settings
        # Bounded requests: an S3 that stops answering fails the upload (retried later), never hangs the trainer.
        self._client = s3_client(settings, timeout_seconds=settings.timeout_seconds)
        self._bucket_ready = False

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        bucket = self._settings.bucket
        try:
            if not self._client.bucket_exists(bucket):
                self._client.make_bucket(bucket)
        except S3Error as error:
            # Another replica made it between our check and our create.
            if error.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise
        self._bucket_ready = True

    def folder_key(self, design_token: str, version: str, run_id: str) -> str:
        segments = [
            self._settings.prefix,
            path_segment(design_token, "design"),
            path_segment(version, "unversioned"),
            path_segment(run_id, "run"),
        ]
        return "/".join(segment for segment in segments if segment)

    def _upload(self, output_dir: Path, artifact_name: str, folder: str, reported_sha256: str) -> StoredModel:
        artifact = output_dir / artifact_name
        if not artifact.is_file():
            raise ArtifactMismatchError(f"the run reported success but wrote no output/{artifact_name}")
        actual, size = sha256_of(artifact)
        claims = expected_sha256s(output_dir, reported_sha256)
        if not claims:
            raise ArtifactMismatchError(f"the run reported no SHA-256 for output/{artifact_name}")
        if claims != {actual}:
            raise ArtifactMismatchError(
                f"output/{artifact_name} has SHA-256 {actual}, the run reported {', '.join(sorted(claims))}"
            )
        self._ensure_bucket()
        bucket = self._settings.bucket
        uploads = [(artifact, f"{folder}/{artifact_name}", "application/octet-stream")]
        metadata = output_dir / METADATA_FILE
        if metadata.is_file():
            uploads.append((metadata, f"{folder}/{METADATA_FILE}", "application/json"))
        # What lets MLServer serve the whole design (trainer/run/serving_bundle.py), model-settings.json last.
        for relative in bundle_files(output_dir):
            content_type = "application/json" if relative.suffix == ".json" else "text/x-python"
            uploads.append((output_dir / relative, f"{folder}/{relative.as_posix()}", content_type))
        for path, key, content_type in uploads:
            self._client.fput_object(
                bucket, key, str(path), content_type=content_type, metadata={"x-amz-meta-artifact-sha256": actual}
            )
        base = f"s3://{bucket}/{folder}"
        return StoredModel(base, f"{base}/{artifact_name}", f"{base}/{METADATA_FILE}", actual, size)

    async def upload(
        self,
        output_dir: Path,
        *,
        artifact_name: str,
        design_token: str,
        version: str,
        run_id: str,
        reported_sha256: str,
    ) -> StoredModel:
        """Verify and upload; raises ArtifactMismatchError (permanent) or S3Error/OSError (retryable)."""
        folder = self.folder_key(design_token, version, run_id)
        return await asyncio.to_thread(self._upload, output_dir, artifact_name, folder, reported_sha256)
