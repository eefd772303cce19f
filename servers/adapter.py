"""The one small interface every inference-server adapter implements, and what it is given.

An agent serves one inference-server replica (an MLServer or Triton process). The server reads
models from a repository folder the agent can write to; the agent puts a model version's files
there as ``<name>_<version>`` (with the server's settings file), then asks the server to load it
through the V2 model-repository API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """A model version, fetched and unpacked, ready to be placed on a server."""

    name: str
    version: int
    # Local folder holding the version's files (the selected version folder, not its parent).
    artifact_dir: Path
    # The model's requirements (capabilities), e.g. {"sklearn"}: they choose the runtime.
    requirements: frozenset[str] = frozenset()
    # ParameterSpec name/value pairs from the model spec.
    parameters: Mapping[str, str] = field(default_factory=dict)
    # Parallel workers (MLServer) or CPU instances (Triton); 0 keeps the server's default.
    instance_count: int = 0
    # True when artifact_dir's files are the agent's own (its artifact cache), never written again: the
    # server's repository may then hard-link them instead of holding a second copy. A user's folder used
    # in place is copied: a link would let the user's next write change a placed model underneath it.
    linkable: bool = False

    @property
    def loaded_name(self) -> str:
        """The name the server knows this version by."""
        return f"{self.name}_{self.version}"


class ServerError(Exception):
    """The server refused or failed an operation; the message says why, in words a person can act on."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        # True for failures worth another try (server busy or restarting), False for bad models.
        self.retryable = retryable


class InferenceServer(Protocol):
    """One inference-server replica, as its agent drives it."""

    kind: str  # "mlserver" or "triton"
    http_url: str  # V2 REST base URL, e.g. "http://127.0.0.1:8080"
    grpc_target: str  # V2 gRPC "host:port"
    repository: Path  # the folder the server loads models from

    async def ready(self) -> bool:
        """True when the server answers its readiness endpoint."""
        ...

    async def live(self, timeout: float) -> bool:
        """True when the server answers its liveness endpoint within ``timeout`` seconds. Liveness, not
        readiness: MLServer is not "ready" while any model loads, but it is alive."""
        ...

    async def place_files(self, files: ModelFiles) -> None:
        """Write ``repository/<loaded_name>/`` with the artifact (hard links where ``files.linkable`` and the
        filesystem allow, else a copy) and the server's settings file. Raises ServerError when the artifact
        does not suit this server (e.g. no config.pbtxt for Triton)."""
        ...

    async def load(self, loaded_name: str) -> None:
        """Load a placed model; returns once the server reports it ready. Raises ServerError."""
        ...

    async def unload(self, loaded_name: str) -> None:
        """Unload a model; returns once the server no longer serves it. Unknown models are not an error."""
        ...

    async def loaded_models(self) -> list[str]:
        """Loaded names of the models the server holds ready."""
        ...

    def remove_files(self, loaded_name: str) -> None:
        """Delete ``repository/<loaded_name>/`` (after unload)."""
        ...

    async def close(self) -> None:
        """Release connections (not the server process)."""
        ...
