"""The agent's inference server by kind: launched locally, or an existing one reached by URL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from servers.adapter import InferenceServer
from servers.launch import LocalServer, launch_mlserver, launch_triton, server_venv
from servers.mlserver import MLServer
from servers.triton import TritonServer


def prepare_local_server(kind: str, progress: Callable[[str], None]) -> None:
    """Create the venv a local server of ``kind`` runs in, if missing (about a minute), saying how it goes; blocks."""
    server_venv(kind, progress=progress)


async def launch_server(kind: str, work_dir: Path) -> LocalServer:
    """Start a local server of ``kind`` (creating its venv on first use); the caller stops it."""
    if kind == "triton":
        return await launch_triton(work_dir)
    return await launch_mlserver(work_dir)


def connect_server(kind: str, http_url: str, grpc_target: str, repository: Path) -> InferenceServer:
    """An adapter for a server that runs elsewhere and loads models from ``repository``."""
    if kind == "triton":
        return TritonServer(http_url, grpc_target, repository)
    return MLServer(http_url, grpc_target, repository)
