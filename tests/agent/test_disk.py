"""The agent's disk: decompression bombs and quotas, models linked (not copied) into the server's repository,
and the artifact cache freed when the scheduler unloads a model, across agent restarts.

A real MLServer (launched once for the module) under a ModelManager and an ArtifactStore in this process:
the same objects an agent process drives, fed the operations the scheduler sends.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from agent.artifacts import ExtractLimits
from agent.model_manager import ModelManager
from generated.mlops.agent.v1 import agent_pb2
from servers.adapter import InferenceServer
from tests.support.archives import zero_bomb
from tests.support.cluster_fixtures import MIB, Iris
from tests.support.model_manager_support import Operation, manager_for, operation

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures", "tests.support.mlserver_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]  # a hang guard only

GIB = 1 << 30
Event = agent_pb2.ModelEvent


async def load(manager: ModelManager, name: str, uri: str, version: int = 1) -> agent_pb2.ModelEvent:
    return await manager.handle(operation(Operation.KIND_LOAD, name, uri, version=version))


async def unload(manager: ModelManager, name: str, version: int = 1) -> agent_pb2.ModelEvent:
    return await manager.handle(operation(Operation.KIND_UNLOAD, name, "/unused", version=version))


def assert_loaded(event: agent_pb2.ModelEvent) -> None:
    assert event.kind == Event.KIND_LOADED, f"{Event.Kind.Name(event.kind)}: {event.reason}"


def files_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def disk_bytes(folder: Path) -> int:
    """Bytes the files under ``folder`` take on disk (allocated blocks, not apparent sizes)."""
    return sum(path.lstat().st_blocks * 512 for path in files_in(folder))


def placed(server: InferenceServer, prefix: str) -> list[str]:
    return sorted(path.name for path in server.repository.iterdir() if path.name.startswith(prefix))


def archive_of(folder: Path, files: dict[str, bytes]) -> Path:
    """``folder/model.tar.gz`` holding ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def incompressible(size: int) -> bytes:
    return os.urandom(size)


# -- decompression bombs ---------------------------------------------------------------------------------------


async def test_a_decompression_bomb_fails_to_load_and_is_stopped_early(
    mlserver: InferenceServer, iris: Iris, tmp_path: Path
) -> None:
    """1 GiB of zeros in a ~1 MB .tar.gz beside a real model: refused by the default limits, while extracting."""
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(zero_bomb("tar.gz", GIB, [("model.joblib", iris.joblib)]))
    archive_bytes = bomb.stat().st_size
    assert archive_bytes < 2 * MIB
    cache = tmp_path / "cache"
    manager = manager_for(mlserver, cache)

    event = await load(manager, "bomb", str(bomb))

    assert event.kind == Event.KIND_LOAD_FAILED, f"{Event.Kind.Name(event.kind)}: {event.reason}"
    reason = event.reason
    assert "compression ratio" in reason, reason
    assert "--max-compression-ratio" in reason, reason  # the setting to change if the model is genuine
    assert f"{archive_bytes} bytes" in reason, reason
    # Extraction stopped at the limit, long before the gigabyte: the reason says where.
    stopped = re.search(r"stopped after ([0-9]+) bytes", reason)
    assert stopped is not None, reason
    assert int(stopped.group(1)) <= 100 * archive_bytes
    assert files_in(cache) == []
    assert placed(mlserver, "bomb") == []
    assert "bomb_1" not in await mlserver.loaded_models()


# -- quotas ----------------------------------------------------------------------------------------------------


async def test_the_per_model_size_limit_fails_the_load_with_the_numbers(
    mlserver: InferenceServer, iris: Iris, tmp_path: Path
) -> None:
    archive = archive_of(tmp_path / "big", {"model.joblib": iris.joblib, "weights.bin": incompressible(3 * MIB)})
    cache = tmp_path / "cache"
    manager = manager_for(mlserver, cache, limits=ExtractLimits(max_total_bytes=2 * MIB))

    event = await load(manager, "too-big", str(archive))

    assert event.kind == Event.KIND_LOAD_FAILED
    assert f"{2 * MIB} bytes" in event.reason, event.reason
    assert "--max-model-disk" in event.reason, event.reason
    assert files_in(cache) == []
    assert placed(mlserver, "too-big") == []


async def test_the_cache_limit_counts_every_held_model(mlserver: InferenceServer, iris: Iris, tmp_path: Path) -> None:
    first = archive_of(tmp_path / "a", {"model.joblib": iris.joblib, "weights.bin": incompressible(2 * MIB)})
    second = archive_of(tmp_path / "b", {"model.joblib": iris.joblib, "weights.bin": incompressible(2 * MIB)})
    cache = tmp_path / "cache"
    manager = manager_for(mlserver, cache, cache_limit_bytes=3 * MIB)

    assert_loaded(await load(manager, "quota-a", str(first)))
    held = sum(path.stat().st_size for path in files_in(cache))
    refused = await load(manager, "quota-b", str(second))

    assert refused.kind == Event.KIND_LOAD_FAILED
    assert f"{3 * MIB} bytes" in refused.reason, refused.reason
    assert "--max-cache-disk" in refused.reason, refused.reason
    assert f"{held} bytes" in refused.reason, refused.reason  # what the cache holds already
    assert placed(mlserver, "quota-b") == []
    assert sum(path.stat().st_size for path in files_in(cache)) == held  # the refused fetch left nothing

    assert (await unload(manager, "quota-a")).kind == Event.KIND_UNLOADED
    assert_loaded(await load(manager, "quota-b", str(second)))  # room again once the first is gone
    assert (await unload(manager, "quota-b")).kind == Event.KIND_UNLOADED
    assert files_in(cache) == []


# -- linked into the repository, not copied --------------------------------------------------------------------


async def test_an_archived_model_is_linked_into_the_repository_not_copied(
    mlserver: InferenceServer, iris: Iris, tmp_path: Path
) -> None:
    own_settings = b'{"implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"}}'
    archive = archive_of(tmp_path / "src", {"model.joblib": iris.joblib, "model-settings.json": own_settings})
    cache = tmp_path / "cache"
    manager = manager_for(mlserver, cache)

    assert_loaded(await load(manager, "linked", str(archive)))

    [cached_model] = [path for path in files_in(cache) if path.name == "model.joblib"]
    [cached_settings] = [path for path in files_in(cache) if path.name == "model-settings.json"]
    served = mlserver.repository / "linked_1"
    assert (served / "model.joblib").stat().st_ino == cached_model.stat().st_ino
    assert cached_model.stat().st_nlink == 2
    # The settings the adapter writes for the server are a file of the repository's own: the cached
    # artifact is never written through a link.
    assert (served / "model-settings.json").stat().st_ino != cached_settings.stat().st_ino
    assert cached_settings.read_bytes() == own_settings
    assert b'"linked_1"' in (served / "model-settings.json").read_bytes()
    assert "linked_1" in await mlserver.loaded_models()
    assert (await unload(manager, "linked")).kind == Event.KIND_UNLOADED


async def test_a_users_folder_named_through_the_cache_is_copied_not_linked(
    mlserver: InferenceServer, iris: Iris, tmp_path: Path
) -> None:
    """A URI that passes through the cache folder (``CACHE/../mine``) still names the user's own folder, which its
    user may rewrite in place: the server gets a copy, and the user's files are never linked into its repository."""
    cache = tmp_path / "cache"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.joblib").write_bytes(iris.joblib)
    cache.mkdir()
    manager = manager_for(mlserver, cache)

    assert_loaded(await load(manager, "through-cache", str(cache / ".." / "mine")))

    served = mlserver.repository / "through-cache_1" / "model.joblib"
    assert served.stat().st_ino != (mine / "model.joblib").stat().st_ino
    assert (mine / "model.joblib").stat().st_nlink == 1
    assert (await unload(manager, "through-cache")).kind == Event.KIND_UNLOADED
    assert (mine / "model.joblib").read_bytes() == iris.joblib


# -- freeing the cache on unload -------------------------------------------------------------------------------


async def test_unload_frees_the_cache_and_the_repository(mlserver: InferenceServer, iris: Iris, tmp_path: Path) -> None:
    archive = archive_of(tmp_path / "src", {"model.joblib": iris.joblib})
    cache = tmp_path / "cache"
    manager = manager_for(mlserver, cache)
    assert_loaded(await load(manager, "freed", str(archive)))
    assert disk_bytes(cache) > 0

    assert (await unload(manager, "freed")).kind == Event.KIND_UNLOADED

    assert files_in(cache) == []
    assert disk_bytes(cache) == 0
    assert placed(mlserver, "freed") == []
    assert "freed_1" not in await mlserver.loaded_models()


async def test_a_cached_artifact_shared_by_versions_and_models_stays_until_its_last_holder_unloads(
    mlserver: InferenceServer, iris: Iris, tmp_path: Path
) -> None:
    archive = archive_of(tmp_path / "src", {"model.joblib": iris.joblib})
    cache = tmp_path / "cache"
    manager = manager_for(mlserver, cache)
    assert_loaded(await load(manager, "shared-a", str(archive), version=1))
    assert_loaded(await load(manager, "shared-a", str(archive), version=2))
    assert_loaded(await load(manager, "shared-b", str(archive)))
    cached = files_in(cache)
    assert len([path for path in cached if path.name == "model.joblib"]) == 1  # one copy for all three

    assert (await unload(manager, "shared-a", version=1)).kind == Event.KIND_UNLOADED
    assert (await unload(manager, "shared-b")).kind == Event.KIND_UNLOADED
    assert files_in(cache) == cached  # shared-a version 2 still holds it
    assert "shared-a_2" in await mlserver.loaded_models()

    assert (await unload(manager, "shared-a", version=2)).kind == Event.KIND_UNLOADED
    assert files_in(cache) == []
    assert placed(mlserver, "shared-") == []


async def test_a_model_evicted_by_lru_keeps_its_files_and_loads_again(
    mlserver: InferenceServer, iris: Iris, tmp_path: Path
) -> None:
    # Room on the server for two 10 MiB models, four accepted: loading the third evicts the first.
    cache = tmp_path / "cache"
    manager = manager_for(mlserver, cache, memory_bytes=20 * MIB, overcommit_percent=100)
    archives = {
        name: archive_of(tmp_path / name, {"model.joblib": iris.joblib}) for name in ("lru-a", "lru-b", "lru-c")
    }
    for name, archive in archives.items():
        assert_loaded(await load(manager, name, str(archive)))
    assert "lru-a_1" not in await mlserver.loaded_models()
    assert placed(mlserver, "lru-") == ["lru-a_1", "lru-b_1", "lru-c_1"]
    assert len([path for path in files_in(cache) if path.name == "model.joblib"]) == 3
    metric = manager.metrics.registry.get_sample_value
    assert metric("modelmesh_model_evicted_total") == 1
    assert metric("modelmesh_age_at_eviction_milliseconds_count") == 1
    assert metric("modelmesh_loadmodel_milliseconds_count") == 3

    assert await manager.ensure_on_server("lru-a") == "lru-a_1"  # a request for it loads it again
    assert "lru-a_1" in await mlserver.loaded_models()
    assert metric("modelmesh_model_evicted_total") == 2  # lru-b made room for it
    assert metric("modelmesh_cache_miss_milliseconds_count") == 1
    assert await manager.ensure_on_server("lru-a") == "lru-a_1"  # on the server now: no miss
    assert metric("modelmesh_cache_miss_milliseconds_count") == 1

    for name in archives:
        assert (await unload(manager, name)).kind == Event.KIND_UNLOADED
    assert files_in(cache) == []
    assert placed(mlserver, "lru-") == []


async def test_a_load_refused_for_want_of_room_leaves_no_files(
    mlserver: InferenceServer, iris: Iris, tmp_path: Path
) -> None:
    """Accepted on over-commit, but no room on the server even after evicting every idle model: the load fails
    (LOAD_FAIL_MEMORY), and neither the cache nor the server's repository keeps its files (review 1.7)."""
    archive = archive_of(tmp_path / "src", {"model.joblib": iris.joblib})
    cache = tmp_path / "cache"
    manager = manager_for(mlserver, cache, memory_bytes=5 * MIB, overcommit_percent=100)  # a 10 MiB model

    refused = await load(manager, "roomless", str(archive))

    assert refused.kind == Event.KIND_LOAD_FAIL_MEMORY, refused
    assert manager.metrics.registry.get_sample_value("modelmesh_loadmodel_failure_total") == 1
    assert manager.metrics.registry.get_sample_value("modelmesh_loadmodel_milliseconds_count") == 0
    assert placed(mlserver, "roomless") == []
    assert files_in(cache) == []
    assert manager.held() == []


# -- agent restarts --------------------------------------------------------------------------------------------


async def test_after_a_restart_the_cache_counts_what_the_adopted_models_hold_and_nothing_else(
    mlserver: InferenceServer, iris: Iris, tmp_path: Path
) -> None:
    kept = archive_of(tmp_path / "kept", {"model.joblib": iris.joblib, "weights.bin": incompressible(2 * MIB)})
    dropped = archive_of(tmp_path / "dropped", {"model.joblib": iris.joblib})
    other = archive_of(tmp_path / "other", {"model.joblib": iris.joblib, "weights.bin": incompressible(2 * MIB)})
    cache = tmp_path / "cache"
    before = manager_for(mlserver, cache, cache_limit_bytes=3 * MIB)
    assert_loaded(await load(before, "restart-kept", str(kept)))
    kept_files = files_in(cache)
    assert_loaded(await load(before, "restart-dropped", str(dropped)))
    # The agent dies; while it is away the server forgets one of its models (as a restarted server would).
    await mlserver.unload("restart-dropped_1")

    after = manager_for(mlserver, cache, cache_limit_bytes=3 * MIB)
    await after.adopt_from_server()

    assert sorted(held.name for held in after.held() if held.name.startswith("restart-")) == ["restart-kept"]
    # The model nobody holds any more left neither its cached artifact nor its repository folder behind.
    assert placed(mlserver, "restart-") == ["restart-kept_1"]
    assert files_in(cache) == kept_files
    # The quota counts what the adopted model holds: a second 2 MiB model does not fit beside it ...
    refused = await load(after, "restart-other", str(other))
    assert refused.kind == Event.KIND_LOAD_FAILED, refused.reason
    assert "--max-cache-disk" in refused.reason, refused.reason
    # ... until the adopted model is unloaded, which frees its cached artifact too.
    assert (await unload(after, "restart-kept")).kind == Event.KIND_UNLOADED
    assert files_in(cache) == []
    assert_loaded(await load(after, "restart-other", str(other)))
    assert (await unload(after, "restart-other")).kind == Event.KIND_UNLOADED
    assert files_in(cache) == []
    assert placed(mlserver, "restart-") == []
