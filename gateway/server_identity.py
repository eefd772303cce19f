"""What the gateway says it is, the same over REST (``GET /v2``) and gRPC (ServerMetadata)."""

from __future__ import annotations

import importlib.metadata
from functools import cache
from typing import Final

from gateway.inference_types import JsonObject

SERVER_NAME: Final = "modelplane"
# The V2 extensions the gateway speaks whatever server answers (Triton's name for the binary tensor data one).
EXTENSIONS: Final = ("binary_tensor_data",)


@cache
def server_version() -> str:
    try:
        return importlib.metadata.version("modelplane")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def server_metadata_document() -> JsonObject:
    return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}
