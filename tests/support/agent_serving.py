"""Asking what an agent serves: V2 inference through its proxy checked against the iris classes, its server's
repository index and how many loads the server's log shows, the PID of the server it launched, and a model folder
as a .tar.gz. Used by the agent end-to-end and fault tests."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.agent_processes import AgentProcess
from tests.support.cluster_fixtures import Iris


async def infer(base_url: str, name: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST a V2 inference request; the status and the decoded answer."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.post(f"{base_url}/v2/models/{name}/infer", json=body) as response,
    ):
        return response.status, await response.json(content_type=None)


async def predict(agent: AgentProcess, name: str, iris: Iris) -> dict[str, Any]:
    """Asks ``agent``'s proxy for ``name``'s predictions and checks they are the expected classes."""
    status, answer = await infer(agent.proxy_url, name, iris.request)
    assert status == 200, f"{answer}\n{agent.diagnostics()}"
    assert answer["model_name"] == name
    assert answer["outputs"][0]["data"] == iris.expected
    return dict(answer)


async def index(server_url: str) -> dict[str, list[str]]:
    """The server's repository index: each model's states (one per version entry; "" when it has none)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.post(f"{server_url}/v2/repository/index", json={}) as response,
    ):
        assert response.status == 200, await response.text()
        entries: list[dict[str, Any]] = await response.json()
    states: dict[str, list[str]] = {}
    for entry in entries:
        states.setdefault(str(entry["name"]), []).append(str(entry.get("state", "")))
    return states


def tar_gz_of(folder: Path) -> bytes:
    """``tar czf model.tar.gz iris`` of a model folder: one top-level folder holding the files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname="iris")
    return buffer.getvalue()


def server_loads(agent: AgentProcess, loaded_name: str) -> int:
    """How many times the agent's MLServer loaded ``loaded_name`` (its log says so once per load)."""
    return agent.server_log().count(f"Loaded model '{loaded_name}' successfully")


def server_leader(agent: AgentProcess) -> int:
    """The PID of the server the agent launched (it leads its own process group)."""
    leaders = [pid for pid in agent.server_pids() if _group_of(pid) == pid]
    assert len(leaders) == 1, f"server processes {agent.server_pids()}, leaders {leaders}\n{agent.diagnostics()}"
    return leaders[0]


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
