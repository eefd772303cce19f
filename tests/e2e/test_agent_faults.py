"""Agents that crash, freeze or die with their scheduler, with real processes: a `modelplane scheduler`, agents
that launch (or are given) a real MLServer, and a `modelplane gateway`. Each test injects its fault and asserts
what a user sees meanwhile and afterwards: model status from the Scheduler API, answers through the gateway or
the agents' proxies, and that nothing acknowledged is lost or loaded twice.

Existing tests cover neighbouring faults and are not repeated here: kill -9 of an agent whose model then moves
to another replica (tests/e2e/test_agent.py, and under the gateway tests/e2e/test_gateway.py), kill -9 of the
scheduler alone (the same two files), SIGTERM drains (tests/e2e/test_agent.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from generated.mlops.scheduler import scheduler_pb2 as pb
from servers.launch import launch_mlserver
from tests.e2e.harness import (
    held_files,
    recording_statuses,
    restart_agent,
    sigstopped,
)
from tests.support.agent_processes import AgentProcess, kill_agent
from tests.support.agent_serving import index, predict, server_leader, server_loads, tar_gz_of
from tests.support.cluster_fixtures import (
    AVAILABLE,
    CALL_TIMEOUT,
    FAILED,
    REPLICA_AVAILABLE,
    WAIT,
    Cluster,
    Iris,
    State,
    api_of,
    model,
    until,
)
from tests.support.processes import start_gateway

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]  # the timeout is a hang guard only

ARCHIVE = "/models/iris.tar.gz"
SCHEDULE_FAILED = State.Value("ScheduleFailed")


# -- kill -9 of the agent mid-load ------------------------------------------------------------------------------


async def test_an_agent_killed_mid_load_serves_the_model_after_its_restart_and_loads_it_once(
    cluster: Cluster, iris: Iris
) -> None:
    archive = tar_gz_of(iris.folder)
    scheduler = cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    async with held_files() as files, api_of(cluster) as api, recording_statuses(scheduler.listen) as seen:
        files.files[ARCHIVE] = archive
        files.held.add(ARCHIVE)
        uri = files.url(ARCHIVE)
        await api.load(model("midload", uri, parameters={"sha256": hashlib.sha256(archive).hexdigest()}))
        await seen.first_of("midload")

        async def downloading() -> bool:
            return files.waiting == 1

        await until(downloading, "the agent is downloading the artifact (the load is in flight)", cluster.diagnostics)
        await asyncio.to_thread(kill_agent, agent)  # kill -9 with the load in flight
        # Meanwhile the user is told why nothing serves it, rather than seeing it progress forever.
        reason = await api.wait(
            "midload", lambda s: s.versions[-1].state.state == SCHEDULE_FAILED, "ScheduleFailed while its agent is gone"
        )
        assert "no replicas connected" in reason.versions[-1].state.reason
        files.release()

        restarting = seen.mark()
        restarted = await restart_agent(cluster, agent)
        await api.available("midload")
        await predict(restarted, "midload", iris)

        # Never Available before the restarted agent had it; then on its replica only.
        assert not [s for s in seen.of("midload", until=restarting) if s.available], seen.of("midload")
        assert {s.available_replicas for s in seen.of("midload") if s.available} == {(0,)}
        status = await api.status("midload")
        assert [v.version for v in status.versions] == [1]
        assert status.versions[-1].state.state == AVAILABLE
        # Loaded once on the server that serves it: the restarted agent's load, no second one.
        assert server_loads(restarted, "midload_1") == 1, restarted.diagnostics()
        held = await index(restarted.server_url())
        assert held.get("midload_1") == ["READY"], held


# -- SIGSTOP of an agent past the heartbeat timeout, then SIGCONT ------------------------------------------------


async def gateway_answers(http: aiohttp.ClientSession, url: str, iris: Iris) -> tuple[int, Any]:
    async with http.post(url, json=iris.request) as response:
        return response.status, await response.json(content_type=None)


async def gateway_ready(http: aiohttp.ClientSession, gateway_url: str, name: str) -> bool:
    """The gateway's own view (its routing table): does a replica serve ``name``?"""
    async with http.get(f"{gateway_url}/v2/models/{name}/ready") as response:
        return response.status == 200


async def test_a_frozen_agent_s_model_leaves_available_and_returns_after_sigcont_without_a_reload(
    cluster: Cluster, iris: Iris
) -> None:
    scheduler = cluster.start_scheduler()  # --heartbeat=0.5: a silent agent's session ends after 1.5 s
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    async with (
        api_of(cluster) as api,
        recording_statuses(scheduler.listen) as seen,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
    ):
        await api.load(model("frozen", str(iris.folder)))
        await api.available("frozen")
        await seen.first_of("frozen")
        gateway = await asyncio.to_thread(start_gateway, cluster.root / "gateway", scheduler.listen)
        url = f"{gateway.url}/v2/models/frozen/infer"
        status, answer = await gateway_answers(http, url, iris)
        assert (status, answer["outputs"][0]["data"]) == (200, iris.expected), answer

        with sigstopped(agent.pid):
            # The scheduler stops hearing the agent and says the model is not available...
            await api.wait("frozen", lambda s: s.versions[-1].state.state != AVAILABLE, "no longer Available")
            left = seen.mark()

            # ...and the route to the frozen replica goes: the gateway answers that nothing serves the model,
            # instead of sending requests to a proxy that cannot answer.
            async def unrouted() -> bool:
                return not await gateway_ready(http, gateway.url, "frozen")

            await until(unrouted, "the gateway no longer routes to the frozen replica", cluster.diagnostics)
            status, answer = await gateway_answers(http, url, iris)
            assert status == 503, answer
            assert "frozen" in answer["error"]
            resumed = seen.mark()
        # SIGCONT: the agent finds its session gone and registers again with what its server still holds.
        await api.available("frozen")
        await predict(agent, "frozen", iris)

        async def routed() -> bool:
            return await gateway_ready(http, gateway.url, "frozen")

        await until(routed, "the gateway routes the model again", cluster.diagnostics)
        status, answer = await gateway_answers(http, url, iris)
        assert (status, answer["outputs"][0]["data"]) == (200, iris.expected), answer
        while_frozen = seen.of("frozen", left, resumed)
        assert not [s for s in while_frozen if s.available], while_frozen
    assert agent.log().count("registered with the scheduler") == 2, agent.diagnostics()
    assert server_loads(agent, "frozen_1") == 1, agent.diagnostics()  # taken back, not loaded again


async def test_a_frozen_agent_s_model_moves_keeps_answering_and_converges_after_sigcont(
    cluster: Cluster, iris: Iris
) -> None:
    scheduler = cluster.start_scheduler()
    agents = await asyncio.to_thread(cluster.start_agents, cluster.agent(0), cluster.agent(1))
    answers: list[tuple[str, int, Any]] = []  # (phase sent in, status, body) of every request through the gateway
    phase = "before"
    asking = True
    enough_after_convergence = asyncio.Event()
    async with api_of(cluster) as api, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await api.load(model("mover", str(iris.folder)))
        await api.available("mover")
        frozen = agents[await api.holder("mover")]
        other = next(agent for agent in agents if agent is not frozen)
        # A request the gateway sent to the frozen replica before its route went is given up after 5 s and tried
        # on another replica (--max-attempts), rather than waiting the default minute.
        gateway = await asyncio.to_thread(
            start_gateway, cluster.root / "gateway", scheduler.listen, "--request-timeout=5"
        )
        url = f"{gateway.url}/v2/models/mover/infer"

        async def keep_asking() -> None:
            while asking:
                sent_in = phase  # the phase the request was sent in, not the one it was answered in
                status, body = await gateway_answers(http, url, iris)
                answers.append((sent_in, status, body))
                if sum(1 for p, _, _ in answers if p == "converged") >= 20:
                    enough_after_convergence.set()
                await asyncio.sleep(0.02)

        asker = asyncio.create_task(keep_asking())
        try:
            with sigstopped(frozen.pid):
                phase = "frozen"
                await api.available("mover", replica=other.replica_idx)
                # A new version while the old holder is frozen: it must never answer for the model again.
                await api.load(model("mover", str(iris.folder), parameters={"rollout": "2"}))
                await api.available("mover", version=2, replica=other.replica_idx)

                async def serves_version_2() -> bool:
                    status, body = await gateway_answers(http, url, iris)
                    return status == 200 and body["model_version"] == "2"

                await until(serves_version_2, "the gateway serves version 2", cluster.diagnostics)
                phase = "moved"
            # SIGCONT: the frozen agent registers again, still holding version 1, which nothing wants any more.

            async def converged() -> bool:
                held = await index(frozen.server_url())
                return not [name for name, states in held.items() if name.startswith("mover") and "READY" in states]

            await until(converged, "the thawed replica no longer holds any version of mover", cluster.diagnostics)
            phase = "converged"
            await asyncio.wait_for(enough_after_convergence.wait(), WAIT)
        finally:
            asking = False
            await asker
        status = await api.status("mover")
    assert [v.version for v in status.versions] == [2], status
    serving = [i for i, r in status.versions[-1].modelReplicaState.items() if r.state == REPLICA_AVAILABLE]
    assert serving == [other.replica_idx], status
    assert status.versions[-1].state.state == AVAILABLE
    assert (await index(other.server_url())).get("mover_2") == ["READY"]
    # Every answer was right or an honest error naming the model; from the move on, only version 2 answered.
    for phase_of, code, body in answers:
        assert code in (200, 502, 503), (phase_of, code, body)
        if code == 200:
            assert body["outputs"][0]["data"] == iris.expected
        else:
            assert "mover" in body["error"], body
    after_move = [(p, code, body.get("model_version")) for p, code, body in answers if p in ("moved", "converged")]
    assert after_move
    assert {(code, version) for _, code, version in after_move} == {(200, "2")}, after_move


# -- the scheduler and the agent killed together ------------------------------------------------------------------


async def test_scheduler_and_agent_killed_together_bring_back_every_acknowledged_model_without_reloads(
    cluster: Cluster, iris: Iris
) -> None:
    """kill -9 of both at once. The agent drives a server it did not launch (--server-url), which outlives
    them, so "no reload of what still serves" applies: the restarted agent takes over what the server holds and
    the restarted scheduler finds it there. A model whose LoadModel was acknowledged but whose load was still in
    flight at the kill is loaded after the restart."""
    archive = tar_gz_of(iris.folder)
    spec = cluster.agent(0)
    server = await launch_mlserver((spec.work_dir / "mlserver").resolve())
    try:
        # In the folder a launched one would have, so the helpers find its repository and log.
        spec = cluster.agent(0, existing_server=(server.http_url, server.grpc_target, server.repository))
        first = cluster.start_scheduler()
        [agent] = await asyncio.to_thread(cluster.start_agents, spec)
        names = ("both-a", "both-b")
        async with held_files() as files:  # serves the late model's artifact until the end
            async with api_of(cluster) as api:
                for name in (*names, "both-gone"):
                    await api.load(model(name, str(iris.folder)))
                for name in (*names, "both-gone"):
                    await api.available(name)
                await api.unload("both-gone")  # acknowledged: it must stay gone
                files.files[ARCHIVE] = archive
                files.held.add(ARCHIVE)
                parameters = {"sha256": hashlib.sha256(archive).hexdigest()}
                await api.load(model("both-late", files.url(ARCHIVE), parameters=parameters))  # acknowledged

                async def downloading() -> bool:
                    return files.waiting == 1

                await until(downloading, "the late model's load is in flight", cluster.diagnostics)
            os.kill(first.process.pid, signal.SIGKILL)
            os.kill(agent.pid, signal.SIGKILL)
            await asyncio.to_thread(first.process.wait, 30)
            await asyncio.to_thread(agent.process.wait, 30)
            files.release()
            assert server.running, "the server the agent drove outlives it"
            before = {name: server_loads(agent, f"{name}_1") for name in names}
            assert before == {name: 1 for name in names}

            first.log_path.rename(first.log_path.with_name("scheduler-before-kill.log"))
            await asyncio.to_thread(cluster.start_scheduler, f"--agent-listen={first.agent_listen}")
            restarted = await restart_agent(cluster, agent)
            async with api_of(cluster) as api:
                for name in (*names, "both-late"):
                    await api.available(name)
                    await predict(restarted, name, iris)
                    status = await api.status(name)
                    assert [v.version for v in status.versions] == [1], status
                assert await api.gone("both-gone") == grpc.StatusCode.FAILED_PRECONDITION

            async def unloaded() -> bool:
                return "READY" not in (await index(server.http_url)).get("both-gone_1", [])

            await until(unloaded, "the server no longer holds the unloaded model", cluster.diagnostics)
        after = {name: server_loads(restarted, f"{name}_1") for name in names}
        assert after == before, restarted.diagnostics()  # taken over, not loaded again
        assert server_loads(restarted, "both-late_1") == 1
    finally:
        await server.stop()


# -- a model whose load kills its server (review 1.3), and one whose load blocks it (review 1.4) ------------------

# MLServer runtimes shipped in the artifact (its own model-settings.json names them). parallel_workers is 0, so a
# model loads in MLServer's own process: this one kills it, as a segfault or the OOM killer would.
KILLER_RUNTIME = """import os
import signal

from mlserver import MLModel


class Killer(MLModel):
    async def load(self) -> bool:
        os.kill(os.getpid(), signal.SIGKILL)
        return True
"""

# And this one blocks MLServer's event loop as it loads (as a big synchronous load does), for longer than the agent's
# probes take to report a server that does not answer; then it answers like the iris model.
BLOCKING_RUNTIME = """import time

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

BLOCK_SECONDS = {seconds}


class Blocking(MLModel):
    async def load(self) -> bool:
        time.sleep(BLOCK_SECONDS)  # the event loop answers nothing meanwhile, not even /v2/health/live
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        values = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("echo", values)])
"""
# Probes that report a silent server after 2 failures, 0.5 s apart, 1 s each: the load blocks far longer.
FAST_PROBES = ("--server-probe-interval=0.5", "--server-probe-timeout=1", "--server-probe-failures=2")
ECHO_REQUEST = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}


def runtime_artifact(folder: Path, module: str, runtime: str, class_name: str) -> Path:
    folder.mkdir(parents=True)
    (folder / f"{module}.py").write_text(runtime)
    settings = {"name": module, "implementation": f"{module}.{class_name}"}
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder


def load_failures(agent: AgentProcess, loaded_name: str) -> int:
    """How many load operations the agent ended with LOAD_FAILED for ``loaded_name``."""
    return sum(1 for line in agent.log().splitlines() if f"load failed {loaded_name} in " in line)


async def test_a_model_whose_load_kills_its_server_kills_each_replica_once_then_fails(
    cluster: Cluster, iris: Iris, tmp_path: Path
) -> None:
    killer = runtime_artifact(tmp_path / "killer", "modelplane_test_killer", KILLER_RUNTIME, "Killer")
    cluster.start_scheduler()
    agents = await asyncio.to_thread(cluster.start_agents, cluster.agent(0), cluster.agent(1))
    async with api_of(cluster) as api:
        await api.load(model("killer", str(killer), requirements=()))

        def failed_for_good(status: pb.ModelStatusResponse) -> bool:
            # Failed already after the first death (that load failed), until it is placed on the other replica.
            latest = status.versions[-1].state if status.versions else None
            return latest is not None and latest.state == FAILED and "killed its server" in latest.reason

        status = await api.wait("killer", failed_for_good, "Failed by the crash-loop guard")
        reason = status.versions[-1].state.reason
        assert "its load killed its server 2 times (replicas mlserver/" in reason, reason
        assert "until its spec changes or LoadModel is sent for it again" in reason, reason

        # Both servers come back (new capacity, twice): another model loads and serves, the killer does not. The
        # scheduler answers each server's return before that later load, so by then any load of the killer the
        # returns caused would have been sent.
        await api.load(model("survivor", str(iris.folder)))
        await api.available("survivor")
        serving = agents[await api.holder("survivor")]
        await predict(serving, "survivor", iris)

        async def both_back() -> bool:
            [status] = [
                s
                async for s in api.stub.ServerStatus(
                    pb.ServerStatusRequest(subscriberName="e2e", name="mlserver"), timeout=CALL_TIMEOUT
                )
            ]
            return status.availableReplicas == 2

        await until(both_back, "both servers serve again", cluster.diagnostics)
        await api.load(model("after", str(iris.folder)))  # one more round trip with every agent's news applied
        await api.available("after")
        for agent in agents:
            assert load_failures(agent, "killer_1") == 1, agent.diagnostics()
            assert agent.log().count("restarted MLServer") == 1, agent.diagnostics()
        status = await api.status("killer")
        assert status.versions[-1].state.state == FAILED, status


async def test_a_server_blocked_by_a_long_load_is_not_restarted_and_the_model_serves(
    cluster: Cluster, tmp_path: Path
) -> None:
    blocking = runtime_artifact(
        tmp_path / "blocking", "modelplane_test_blocking", BLOCKING_RUNTIME.format(seconds=8), "Blocking"
    )
    cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0, extra=FAST_PROBES))
    server = server_leader(agent)
    async with api_of(cluster) as api:
        await api.load(model("blocking", str(blocking), requirements=()))
        await api.available("blocking")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{agent.proxy_url}/v2/models/blocking/infer", json=ECHO_REQUEST) as response,
        ):
            assert response.status == 200, await response.text()
            assert (await response.json())["outputs"][0]["data"] == [1, 2, 3]
    log = agent.log()
    assert "does not answer its liveness probe while a call is in flight on it" in log, agent.diagnostics()
    assert "inference server is down" not in log, agent.diagnostics()
    assert "restarting" not in log, agent.diagnostics()
    assert server_leader(agent) == server  # the same MLServer process throughout
