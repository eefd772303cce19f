"""Fetching model artifacts to local folders: local paths, S3 (minio SDK) and http(s) archives.

The contract (implemented in this package):

    store = ArtifactStore(cache_dir, secrets_dir=..., environ=os.environ, limits=..., cache_limit_bytes=...)
    folder = await store.fetch(ArtifactSource(uri=..., artifact_version=..., ...), holder="iris_3")
    ...
    await store.release("iris_3")  # the cached artifact goes once no holder uses it

``folder`` is the selected version folder, ready for a server adapter. Every failure is an
ArtifactError whose message becomes the LOAD_FAILED reason. Nothing is written past a limit
(ExtractLimits per model, the cache's limit in quota.py).
"""

from agent.artifacts.archives import ArchiveKind, detect_archive, extract_archive
from agent.artifacts.errors import ArtifactError
from agent.artifacts.safety import (
    DEFAULT_MAX_COMPRESSION_RATIO,
    DEFAULT_MAX_MODEL_BYTES,
    RATIO_EXEMPT_BYTES,
    ExtractLimits,
)
from agent.artifacts.sources import ArtifactSource
from agent.artifacts.store import DEFAULT_CACHE_LIMIT_BYTES, ArtifactStore
from agent.artifacts.versions import select_version

__all__ = [
    "DEFAULT_CACHE_LIMIT_BYTES",
    "DEFAULT_MAX_COMPRESSION_RATIO",
    "DEFAULT_MAX_MODEL_BYTES",
    "RATIO_EXEMPT_BYTES",
    "ArchiveKind",
    "ArtifactError",
    "ArtifactSource",
    "ArtifactStore",
    "ExtractLimits",
    "detect_archive",
    "extract_archive",
    "select_version",
]
