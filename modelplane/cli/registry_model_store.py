"""The registry's trained models in its S3 model store (``--s3-*``): a finished run's output folder is uploaded with
the trainer's own ModelStore (trainer/service/model_store.py: the artifact's sha256 checked against the run's
reports before anything is sent; the artifact, metadata.json and the serving bundle under one folder), then the
artifact is read back from the store and its sha256 checked again, so a version's manifest never names bytes the
store does not hold. The folder's key is ``<prefix>/<experiment>/<model id>/<run id>`` (each made one safe path
segment): the run id is the version's identity, its number is given when the registry records it.

Here, at the composition root, because the trainer's ModelStore is another process's code the registry may not
import. A store that cannot be reached fails the training with a reason that says so (the model's ``reason``).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from modelplane.model_store_settings import ModelStoreSettings
from modelplane.s3 import failure_reason, s3_client
from registry.ports import LaunchError, TrainedArtifact, TrainingRequest
from trainer.service.model_store import TRANSIENT_ERRORS, ArtifactMismatchError, ModelStore

_CHUNK: Final = 1 << 20


def _stored_sha256(settings: ModelStoreSettings, bucket: str, key: str) -> str:
    client = s3_client(settings, timeout_seconds=settings.timeout_seconds, pool_size=1)
    digest = hashlib.sha256()
    response = client.get_object(bucket, key)
    try:
        for chunk in response.stream(_CHUNK):
            digest.update(chunk)
    finally:
        response.close()
        response.release_conn()
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class RegistryModelStore:
    settings: ModelStoreSettings

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.settings)

    async def put(self, output: Path, request: TrainingRequest, artifact: TrainedArtifact) -> TrainedArtifact:
        """Upload the run's ``output`` folder; the artifact as stored (its folder's ``s3://`` URL). LaunchError
        naming the store and what went wrong when it cannot be stored."""
        where = f"the model store {self.settings.url} (bucket {self.settings.bucket})"
        try:
            stored = await self.store.upload(
                output,
                artifact_name=artifact.name,
                design_token=request.experiment,
                version=request.model_id,
                run_id=request.run_id,
                reported_sha256=artifact.sha256,
            )
            bucket, _, key = stored.artifact_uri.removeprefix("s3://").partition("/")
            read_back = await asyncio.to_thread(_stored_sha256, self.settings, bucket, key)
        except ArtifactMismatchError as error:
            raise LaunchError(f"the trained model was not stored: {error}") from None
        except TRANSIENT_ERRORS as error:
            raise LaunchError(f"storing the trained model in {where} failed: {failure_reason(error)}") from None
        if read_back != stored.sha256:
            raise LaunchError(
                f"{stored.artifact_uri} in {where} has sha256 {read_back} after upload, not the run's {stored.sha256}"
            )
        return TrainedArtifact(url=stored.folder_uri, sha256=stored.sha256, name=artifact.name, size_bytes=stored.size)
