"""The model manager around its server's deaths and recoveries, in process: what it reports while a load is in
flight, what a load that may have killed the server is marked with, and what the server is made to hold when it
serves again.

The inference server here is a fake (``GatedServer``) whose loads wait until the test lets them finish: that is
what lets a test kill the server "during" a load, at a point it chooses, and see what the manager does then. The
artifact store is the real one, with models from local folders. Real MLServer and Triton cover the same ground end
to end (tests/e2e/test_agent_liveness.py, tests/e2e/test_agent_faults.py).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from agent.model_manager import ModelManager
from agent.server_calls import ServerDown
from generated.mlops.agent.v1 import agent_pb2
from servers.adapter import ModelFiles, ServerError
from tests.support.cluster_fixtures import MIB
from tests.support.model_manager_support import manager_for, operation

Event = agent_pb2.ModelEvent
Operation = agent_pb2.ModelOperation
HANG_GUARD = 60.0  # seconds: only ends a test that would otherwise hang; nothing asserts how long anything took
DOWN = "MLServer (pid 9) exited: killed by SIGKILL; the agent is restarting it"


class GatedServer:
    """An InferenceServer whose loads of gated names wait until ``release(name)``; the repository is a real folder."""

    kind = "mlserver"
    http_url = "http://127.0.0.1:9"
    grpc_target = "127.0.0.1:9"

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self.holding: set[str] = set()  # loaded names the server serves
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}
        self.loading: dict[str, asyncio.Event] = {}  # set once a gated load has reached the server

    def gate(self, loaded_name: str) -> None:
        self._gates[loaded_name] = asyncio.Event()
        self.loading[loaded_name] = asyncio.Event()

    def release(self, loaded_name: str) -> None:
        self._gates.pop(loaded_name).set()

    async def ready(self) -> bool:
        return True

    async def live(self, timeout: float) -> bool:
        return True

    async def place_files(self, files: ModelFiles) -> None:
        target = self.repository / files.loaded_name
        shutil.copytree(files.artifact_dir, target, dirs_exist_ok=True)

    async def load(self, loaded_name: str) -> None:
        self.loads.append(loaded_name)
        gate = self._gates.get(loaded_name)
        if gate is not None:
            self.loading[loaded_name].set()
            await gate.wait()
        if not (self.repository / loaded_name).is_dir():
            raise ServerError(f"{loaded_name} is not in the repository")
        self.holding.add(loaded_name)

    async def unload(self, loaded_name: str) -> None:
        self.unloads.append(loaded_name)
        self.holding.discard(loaded_name)

    async def loaded_models(self) -> list[str]:
        return sorted(self.holding)

    def remove_files(self, loaded_name: str) -> None:
        shutil.rmtree(self.repository / loaded_name, ignore_errors=True)

    async def close(self) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> GatedServer:
    repository = tmp_path / "repository"
    repository.mkdir()
    return GatedServer(repository)


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "model.joblib").write_bytes(b"weights")
    return folder


def manager_of(server: GatedServer, tmp_path: Path, *, memory: int = 100 * MIB) -> ModelManager:
    return manager_for(server, tmp_path / "cache", memory_bytes=memory, overcommit_percent=0, retry_delay_seconds=0.01)


async def load(manager: ModelManager, name: str, uri: Path) -> Event:
    return await manager.handle(operation(Operation.KIND_LOAD, name, uri))


async def reaching(server: GatedServer, loaded_name: str) -> None:
    """Until a gated load of ``loaded_name`` is on the server."""
    async with asyncio.timeout(HANG_GUARD):
        await server.loading[loaded_name].wait()


def down_reason(manager: ModelManager) -> str | None:
    """Why the manager counts its server down (a call, so each read is a read of now)."""
    return manager.down_reason


def held(manager: ModelManager) -> list[tuple[str, int]]:
    return [(model.name, model.version) for model in manager.held()]


# -- a load the server died during (review 1.3) ----------------------------------------------------------------


async def test_a_load_the_server_died_during_is_marked_so_and_one_refused_as_it_was_down_is_not(
    server: GatedServer, artifact: Path, tmp_path: Path
) -> None:
    manager = manager_of(server, tmp_path)
    server.gate("killer_1")
    loading = asyncio.create_task(load(manager, "killer", artifact))
    await reaching(server, "killer_1")
    manager.server_down(DOWN)
    event = await loading
    assert (event.kind, event.server_died_during_load) == (Event.KIND_LOAD_FAILED, True), event
    assert DOWN in event.reason
    assert not (server.repository / "killer_1").exists()

    refused = await load(manager, "late", artifact)  # the server was down before this load reached it
    assert (refused.kind, refused.server_died_during_load) == (Event.KIND_LOAD_FAILED, False), refused


async def test_a_model_whose_reload_the_server_died_during_is_not_loaded_again_nor_reported_held(
    server: GatedServer, artifact: Path, tmp_path: Path
) -> None:
    """The agent's own crash loop: a model that kills the server as the agent loads it again after a restart must
    not be loaded again on every restart. It is dropped (the scheduler, seeing the server back without it, places
    it again, and then learns from that load's event); the others are loaded again."""
    manager = manager_of(server, tmp_path)
    for name in ("innocent", "killer"):
        assert (await load(manager, name, artifact)).kind == Event.KIND_LOADED
    manager.server_down(DOWN)
    server.holding.clear()  # restarted: it holds nothing
    server.gate("killer_1")
    manager.models["killer_1"].last_used = manager.models["innocent_1"].last_used + 1  # reloaded first
    recovering = asyncio.create_task(manager.server_back())
    await reaching(server, "killer_1")
    manager.server_down(DOWN)  # it died again, as the killer was being loaded
    with pytest.raises(ServerDown):
        await recovering
    assert held(manager) == [("innocent", 1)]
    assert down_reason(manager) is not None

    server.holding.clear()
    await manager.server_back()  # restarted once more
    assert down_reason(manager) is None
    assert server.loads.count("killer_1") == 2  # its first load, and the reload it killed: no third
    assert (sorted(server.holding), held(manager)) == (["innocent_1"], [("innocent", 1)])
    assert not (server.repository / "killer_1").exists()


async def test_the_manager_is_busy_while_a_call_is_in_flight_on_the_server(
    server: GatedServer, artifact: Path, tmp_path: Path
) -> None:
    """What the watch asks before it counts a failed probe (review 1.4): a load may block the server's loop."""
    manager = manager_of(server, tmp_path)
    assert not manager.busy()
    server.gate("big_1")
    loading = asyncio.create_task(load(manager, "big", artifact))
    await reaching(server, "big_1")
    assert manager.busy()
    server.release("big_1")
    assert (await loading).kind == Event.KIND_LOADED
    assert not manager.busy()


# -- while the server is coming back (review 1.8) --------------------------------------------------------------


async def test_the_server_counts_as_down_until_every_model_is_back_and_unloads_are_not_held_up_meanwhile(
    server: GatedServer, artifact: Path, tmp_path: Path
) -> None:
    manager = manager_of(server, tmp_path)
    for name in ("slow", "other"):
        assert (await load(manager, name, artifact)).kind == Event.KIND_LOADED
    manager.server_down(DOWN)
    server.holding.clear()
    server.gate("slow_1")
    manager.models["slow_1"].last_used = manager.models["other_1"].last_used + 1  # reloaded first
    recovering = asyncio.create_task(manager.server_back())
    await reaching(server, "slow_1")

    # Half-filled: nothing counts as served yet, and a request is answered "down", not sent to it.
    assert down_reason(manager) == DOWN
    with pytest.raises(ServerDown):
        await manager.ensure_on_server("other")
    refused = await load(manager, "new", artifact)
    assert refused.kind == Event.KIND_LOAD_FAILED
    # The scheduler moves a model away meanwhile: its unload waits for the reload on the server now, not for the
    # whole recovery (the memory lock is taken per model), so the model is not loaded again only to be unloaded.
    unloading = asyncio.create_task(manager.handle(operation(Operation.KIND_UNLOAD, "other", artifact)))
    server.release("slow_1")
    assert (await unloading).kind == Event.KIND_UNLOADED
    await recovering
    assert "other_1" not in server.loads[2:], server.loads  # the two first loads, then only the reload of slow
    assert down_reason(manager) is None
    assert (sorted(server.holding), held(manager)) == (["slow_1"], [("slow", 1)])
    assert await manager.ensure_on_server("slow") == "slow_1"


async def test_a_death_during_recovery_is_seen_at_once_by_what_runs_next(
    server: GatedServer, artifact: Path, tmp_path: Path
) -> None:
    manager = manager_of(server, tmp_path)
    assert (await load(manager, "slow", artifact)).kind == Event.KIND_LOADED
    manager.server_down(DOWN)
    server.holding.clear()
    server.gate("slow_1")
    recovering = asyncio.create_task(manager.server_back())
    await reaching(server, "slow_1")
    manager.server_down("MLServer (pid 10) exited: killed by SIGKILL; the agent is restarting it")
    # Before the recovery has even ended, the server is down for everything else.
    assert "pid 10" in (down_reason(manager) or "")
    refused = await load(manager, "new", artifact)
    assert (refused.kind, "pid 10" in refused.reason) == (Event.KIND_LOAD_FAILED, True), refused
    with pytest.raises(ServerDown):
        await recovering


# -- what a registration reports (review 1.10) -----------------------------------------------------------------


async def test_a_model_still_on_its_first_load_is_not_reported_held(
    server: GatedServer, artifact: Path, tmp_path: Path
) -> None:
    manager = manager_of(server, tmp_path)
    assert (await load(manager, "ready", artifact)).kind == Event.KIND_LOADED
    server.gate("first_1")
    loading = asyncio.create_task(load(manager, "first", artifact))
    await reaching(server, "first_1")
    assert held(manager) == [("ready", 1)]  # a restarted scheduler must not count it Available yet
    server.release("first_1")
    assert (await loading).kind == Event.KIND_LOADED
    assert held(manager) == [("ready", 1), ("first", 1)]
