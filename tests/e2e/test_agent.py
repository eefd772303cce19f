"""The agent end to end, with real components: the scheduler and agents as subprocesses, each agent with the
MLServer (or Triton) it launched, models from a real S3 store (SeaweedFS), an http server and local folders,
and V2 inference through the agents' proxies.

Every wait has a generous bound that only guards against hangs; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from servers.launch import server_venv
from tests.support.agent_processes import AgentProcess, kill_agent, kill_server_of
from tests.support.agent_serving import index, infer, predict, server_loads, tar_gz_of
from tests.support.archives import make_tar, zero_bomb
from tests.support.cluster_fixtures import (
    AVAILABLE,
    Cluster,
    Iris,
    api_of,
    model,
    until,
)
from tests.support.http_stand_ins import serving
from tests.support.real_components import S3Server
from tests.support.triton_models import write_doubler

# The session's SeaweedFS (s3_server), and the cluster and iris fixtures, shared with other modules.
pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]

pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]  # the timeout is a hang guard only


# -- V2 REST -----------------------------------------------------------------------------------------------


async def ready_on_server(agent: AgentProcess, prefix: str) -> set[str]:
    """Loaded names starting with ``prefix`` that the agent's server holds READY."""
    return {
        name
        for name, states in (await index(agent.server_url())).items()
        if name.startswith(prefix) and "READY" in states
    }


def on_disk(agent: AgentProcess, prefix: str) -> list[str]:
    return sorted(path.name for path in agent.repository.iterdir() if path.name.startswith(prefix))


# -- 1. S3 ---------------------------------------------------------------------------------------------------


async def test_s3_model_loads_serves_rolls_out_a_new_version_and_unloads(
    cluster: Cluster, s3_server: S3Server, iris: Iris
) -> None:
    bucket = s3_server.new_bucket({"iris/model.joblib": iris.joblib, "iris-v2/model.joblib": iris.joblib})
    cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    rclone = s3_server.rclone_json()
    async with api_of(cluster) as api:
        await api.load(model("iris", f"s3://{bucket}/iris", rclone_config=rclone))
        await api.available("iris", version=1)
        answer = await predict(agent, "iris", iris)
        assert answer["model_version"] == "1"

        # A changed modelSpec is a new version: it loads beside the old one, which goes once the new one serves.
        await api.load(model("iris", f"s3://{bucket}/iris-v2", rclone_config=rclone))
        await api.available("iris", version=2)

        async def rolled_out() -> bool:
            return await ready_on_server(agent, "iris_") == {"iris_2"} and on_disk(agent, "iris_") == ["iris_2"]

        await until(rolled_out, "MLServer holds iris_2 and not iris_1 (nor its folder)", cluster.diagnostics)
        states = await index(agent.server_url())
        assert "READY" not in states.get("iris_1", [])
        answer = await predict(agent, "iris", iris)
        assert answer["model_version"] == "2"

        await api.unload("iris")
        assert await api.gone("iris") == grpc.StatusCode.FAILED_PRECONDITION

        async def unloaded() -> bool:
            return not await ready_on_server(agent, "iris_") and not on_disk(agent, "iris_")

        await until(unloaded, "MLServer holds no iris_* and its repository no iris_* folder", cluster.diagnostics)
        status, _ = await infer(agent.proxy_url, "iris", iris.request)
        assert status == 404


# -- 2. local folders and http archives ------------------------------------------------------------------------


@dataclass
class HttpFiles:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture
async def http_files() -> AsyncIterator[HttpFiles]:
    """Serves ``files`` from this test's event loop on 127.0.0.1."""
    served = HttpFiles(base="")

    async def handle(request: web.Request) -> web.StreamResponse:
        body = served.files.get(request.path)
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    async with serving(app) as served.base:
        yield served


async def test_local_folders_and_http_archives(cluster: Cluster, http_files: HttpFiles, iris: Iris) -> None:
    archive = tar_gz_of(iris.folder)
    evil = make_tar([("model.joblib", iris.joblib), ("../evil", b"written outside")])
    http_files.files |= {"/models/iris.tar.gz": archive, "/models/evil.tar.gz": evil}
    digest = hashlib.sha256(archive).hexdigest()
    cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    async with api_of(cluster) as api:
        await api.load(model("local-iris", str(iris.folder)))
        await api.available("local-iris")
        await predict(agent, "local-iris", iris)

        url = http_files.url("/models/iris.tar.gz")
        await api.load(model("http-iris", url, parameters={"sha256": digest}))
        await api.available("http-iris")
        await predict(agent, "http-iris", iris)

        wrong = hashlib.sha256(b"something else").hexdigest()
        await api.load(model("bad-sum", url, parameters={"sha256": wrong}))
        reason = await api.failed("bad-sum")
        assert "sha256" in reason
        assert wrong in reason

        # The same mistake in a new version of a serving model: the new version fails, the old one serves on.
        await api.load(model("http-iris", url, parameters={"sha256": wrong}))
        reason = await api.failed("http-iris")
        assert "sha256" in reason
        assert (await api.status("http-iris")).versions[-1].version == 2
        answer = await predict(agent, "http-iris", iris)
        assert answer["model_version"] == "1"

        await api.load(model("evil-tar", http_files.url("/models/evil.tar.gz")))
        reason = await api.failed("evil-tar")
        assert "'../evil'" in reason

        held = await index(agent.server_url())
        assert not [name for name in held if name.startswith(("bad-sum", "evil-tar", "http-iris_2"))], held
        assert on_disk(agent, "bad-sum") == on_disk(agent, "evil-tar") == on_disk(agent, "http-iris_2") == []
        assert not [path for path in cluster.root.rglob("*evil*") if path.name != "evil-tar"]
        assert not (Path.cwd() / "evil").exists()
        # The failures left the models that serve alone.
        await predict(agent, "local-iris", iris)
        await predict(agent, "http-iris", iris)


async def test_a_decompression_bomb_fails_and_an_archive_is_linked_then_freed_on_unload(
    cluster: Cluster, http_files: HttpFiles, iris: Iris
) -> None:
    """The agent's own flags' defaults: 1 GiB of zeros in a ~1 MB .tar.gz is refused while extracting and
    leaves nothing; a model from an archive is linked, not copied, into MLServer's repository; unloading
    it frees the cache."""
    http_files.files |= {
        "/models/bomb.tar.gz": zero_bomb("tar.gz", 1 << 30, [("model.joblib", iris.joblib)]),
        "/models/iris.tar.gz": tar_gz_of(iris.folder),
    }
    cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    cache = agent.spec.work_dir.resolve() / "cache"
    async with api_of(cluster) as api:
        await api.load(model("bomb", http_files.url("/models/bomb.tar.gz")))
        reason = await api.failed("bomb")
        assert "compression ratio" in reason, reason
        assert "--max-compression-ratio" in reason, reason
        assert on_disk(agent, "bomb") == []
        assert [path for path in cache.rglob("*") if path.is_file()] == []

        await api.load(model("archived", http_files.url("/models/iris.tar.gz")))
        await api.available("archived")
        await predict(agent, "archived", iris)
        [cached] = [path for path in cache.rglob("model.joblib")]
        assert (agent.repository / "archived_1" / "model.joblib").stat().st_ino == cached.stat().st_ino

        await api.unload("archived")
        await api.gone("archived")

        async def freed() -> bool:
            return on_disk(agent, "archived") == [] and not [path for path in cache.rglob("*") if path.is_file()]

        await until(freed, "neither the repository nor the cache holds the unloaded model", cluster.diagnostics)


# -- 3. Triton ---------------------------------------------------------------------------------------------


async def test_triton_agent_serves_a_python_backend_model(cluster: Cluster, tmp_path: Path) -> None:
    artifact = write_doubler(tmp_path / "doubler")
    await asyncio.to_thread(server_venv, "triton")  # made here on a first run, not under the agent's ready timeout
    cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0, kind="triton"))
    async with api_of(cluster) as api:
        await api.load(model("doubler", str(artifact), requirements=("triton",)))
        await api.available("doubler")
        body = {"inputs": [{"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": [1, 2.5, -3]}]}
        status, answer = await infer(agent.proxy_url, "doubler", body)
        assert status == 200, f"{answer}\n{cluster.diagnostics()}"
        assert answer["model_name"] == "doubler"
        assert answer["outputs"][0]["name"] == "OUTPUT0"
        assert answer["outputs"][0]["data"] == [2.0, 5.0, -6.0]
        assert await ready_on_server(agent, "doubler_") == {"doubler_1"}

        await api.unload("doubler")
        await api.gone("doubler")

        async def unloaded() -> bool:
            return not await ready_on_server(agent, "doubler_") and not on_disk(agent, "doubler_")

        await until(unloaded, "Triton holds no doubler_* and its repository no doubler_* folder", cluster.diagnostics)


# -- 4. over-commit and LRU eviction ---------------------------------------------------------------------------

LRU_NAMES = ("lru-a", "lru-b", "lru-c")


async def lru_agent(cluster: Cluster) -> AgentProcess:
    """An agent with 20 MiB of memory and 100% over-commit: it accepts four 10 MiB models, its server holds two."""
    cluster.start_scheduler()
    [agent] = await asyncio.to_thread(
        cluster.start_agents, cluster.agent(0, memory="20MiB", extra=("--overcommit-percent=100",))
    )
    return agent


async def test_overcommit_accepts_more_than_fits_and_reloads_evicted_models(cluster: Cluster, iris: Iris) -> None:
    agent = await lru_agent(cluster)
    async with api_of(cluster) as api:
        for name in LRU_NAMES:
            await api.load(model(name, str(iris.folder)))
            await api.available(name)
            ready = await ready_on_server(agent, "lru-")
            assert len(ready) <= 2, ready
        assert await ready_on_server(agent, "lru-") == {"lru-b_1", "lru-c_1"}  # lru-a was least recently used
        for _round in range(2):
            for name in LRU_NAMES:
                await predict(agent, name, iris)  # an evicted model is loaded again on demand
                ready = await ready_on_server(agent, "lru-")
                assert f"{name}_1" in ready
                assert len(ready) <= 2, ready
        for name in LRU_NAMES:  # the scheduler still counts all three as Available on the replica
            status = await api.status(name)
            assert status.versions[-1].state.state == AVAILABLE


async def test_concurrent_loads_never_put_more_on_the_server_than_its_memory(cluster: Cluster, iris: Iris) -> None:
    agent = await lru_agent(cluster)
    async with api_of(cluster) as api:
        await asyncio.gather(*(api.load(model(name, str(iris.folder))) for name in LRU_NAMES))
        for name in LRU_NAMES:
            await api.available(name)
        ready = await ready_on_server(agent, "lru-")
        assert len(ready) <= 2, f"{sorted(ready)} are all READY on a server with room for two"


async def test_concurrent_requests_for_evicted_models_are_answered_within_the_servers_memory(
    cluster: Cluster, iris: Iris
) -> None:
    agent = await lru_agent(cluster)
    names = (*LRU_NAMES, "lru-d")
    async with api_of(cluster) as api:
        for name in names:
            await api.load(model(name, str(iris.folder)))
            await api.available(name)
        assert await ready_on_server(agent, "lru-") == {"lru-c_1", "lru-d_1"}
        # lru-a and lru-b were evicted: asked for at once, each reload must make room of its own.
        answers = await asyncio.gather(*(infer(agent.proxy_url, name, iris.request) for name in ("lru-a", "lru-b")))
        ready = await ready_on_server(agent, "lru-")
        served = [status == 200 and answer["outputs"][0]["data"] == iris.expected for status, answer in answers]
        within_memory = len(ready) <= 2
        assert (served, within_memory) == ([True, True], True), f"answers {answers}; READY: {sorted(ready)}"


# -- 5. failover after a crash ------------------------------------------------------------------------------


async def test_a_crashed_agents_model_moves_to_the_other_replica(cluster: Cluster, iris: Iris) -> None:
    cluster.start_scheduler()
    agents = await asyncio.to_thread(cluster.start_agents, cluster.agent(0), cluster.agent(1))
    async with api_of(cluster) as api:
        await api.load(model("failover", str(iris.folder)))
        await api.available("failover")
        crashed = agents[await api.holder("failover")]
        survivor = next(agent for agent in agents if agent is not crashed)
        await predict(crashed, "failover", iris)

        await asyncio.to_thread(kill_agent, crashed)
        kill_server_of(crashed)  # in a process group of its own, it outlived the agent

        await api.available("failover", replica=survivor.replica_idx)
        await predict(survivor, "failover", iris)
        assert await api.holder("failover") == survivor.replica_idx


# -- 6. scheduler restart ------------------------------------------------------------------------------------


def agent_loads(agent: AgentProcess, loaded_name: str) -> int:
    """How many load operations the agent completed for ``loaded_name``."""
    return sum(1 for line in agent.log().splitlines() if f"agent: loaded {loaded_name} in " in line)


async def test_a_restarted_scheduler_finds_the_models_available_without_reloading(cluster: Cluster, iris: Iris) -> None:
    first = cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    names = ("keep-a", "keep-b")
    async with api_of(cluster) as api:
        for name in names:
            await api.load(model(name, str(iris.folder)))
        for name in names:
            await api.available(name)
    before = {name: (server_loads(agent, f"{name}_1"), agent_loads(agent, f"{name}_1")) for name in names}
    assert before == {name: (1, 1) for name in names}

    os.kill(first.process.pid, signal.SIGKILL)
    await asyncio.to_thread(first.process.wait, 30)
    first.log_path.rename(first.log_path.with_name("scheduler-before-restart.log"))
    # Same state dir, same agent port: the agent reconnects there by itself.
    await asyncio.to_thread(cluster.start_scheduler, f"--agent-listen={first.agent_listen}")
    async with api_of(cluster) as api:
        for name in names:
            await api.available(name)

    async def registered_again() -> bool:
        return agent.log().count("registered with the scheduler") >= 2

    await until(registered_again, "the agent registered again", cluster.diagnostics)
    after = {name: (server_loads(agent, f"{name}_1"), agent_loads(agent, f"{name}_1")) for name in names}
    assert after == before, cluster.diagnostics()
    for name in names:
        await predict(agent, name, iris)


# -- 7. drain on SIGTERM --------------------------------------------------------------------------------------


async def test_sigterm_drains_the_model_to_the_other_replica_before_the_agent_exits(
    cluster: Cluster, iris: Iris
) -> None:
    cluster.start_scheduler()
    agents = await asyncio.to_thread(cluster.start_agents, cluster.agent(0), cluster.agent(1))
    async with api_of(cluster) as api:
        await api.load(model("drain-me", str(iris.folder)))
        await api.available("drain-me")
        leaving = agents[await api.holder("drain-me")]
        staying = next(agent for agent in agents if agent is not leaving)
        status, _ = await infer(staying.proxy_url, "drain-me", iris.request)
        assert status == 404  # not on the other replica yet

        os.kill(leaving.pid, signal.SIGTERM)
        leaving_alive_when_served: bool | None = None

        async def served_elsewhere() -> bool:
            nonlocal leaving_alive_when_served
            status, _ = await infer(staying.proxy_url, "drain-me", iris.request)
            if status == 200:
                leaving_alive_when_served = leaving.process.poll() is None
            return status == 200

        await until(served_elsewhere, "the other replica serves drain-me", cluster.diagnostics)
        assert leaving_alive_when_served is True, "the draining agent exited before its model served elsewhere"
        await predict(staying, "drain-me", iris)
        exit_status = await asyncio.to_thread(leaving.process.wait, 60)
        assert exit_status == 0, leaving.diagnostics()
        assert not leaving.server_pids(), "the agent stopped the server it launched"
        await api.available("drain-me", replica=staying.replica_idx)


# -- the V2 gRPC proxy -------------------------------------------------------------------------------------

# A client built from MLServer's own V2 gRPC stubs (in the MLServer venv): what any V2 gRPC client sends.
GRPC_CLIENT = r"""
import json, sys
import grpc
from mlserver.grpc import dataplane_pb2 as pb, dataplane_pb2_grpc as pb_grpc

target, name, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
flat = [value for row in rows for value in row]
with grpc.insecure_channel(target) as channel:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    ready = stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=30).ready
    request = pb.ModelInferRequest(model_name=name, id="req-1", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="predict", datatype="FP64", shape=[len(rows), len(rows[0])],
        contents=pb.InferTensorContents(fp64_contents=flat))])
    answer = stub.ModelInfer(request, timeout=30)
    try:
        stub.ModelReady(pb.ModelReadyRequest(name="no-such-model"), timeout=30)
        missing = "OK"
    except grpc.RpcError as error:
        missing = error.code().name
print(json.dumps({"ready": ready, "model_name": answer.model_name, "id": answer.id,
                  "classes": list(answer.outputs[0].contents.int64_contents), "missing": missing}))
"""


async def test_grpc_inference_through_the_agent_proxy(cluster: Cluster, iris: Iris) -> None:
    cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    async with api_of(cluster) as api:
        await api.load(model("grpc-iris", str(iris.folder)))
        await api.available("grpc-iris")
    rows = iris.request["inputs"][0]["data"]
    python = server_venv("mlserver") / "bin" / "python"
    done = await asyncio.to_thread(
        subprocess.run,
        [str(python), "-c", GRPC_CLIENT, agent.proxy_grpc, "grpc-iris", json.dumps(rows)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ready"] is True
    # The proxy sent the request to the server's grpc-iris_1 and gave the client back the name it used.
    assert answer["model_name"] == "grpc-iris"
    assert answer["id"] == "req-1"  # fields the proxy does not touch pass through
    assert answer["classes"] == iris.expected
    assert answer["missing"] == "NOT_FOUND"
