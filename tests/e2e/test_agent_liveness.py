"""What an agent does when what it depends on dies (issue 10): its inference server (kill -9 of MLServer or
Triton, SIGSTOP of a server it only reaches by URL), or the scheduler while the agent is asked to stop.

Real components: the scheduler and agents as subprocesses, each agent with the server it launched (or one
started here), models from local folders, V2 inference through the agents' proxies. Every wait has a generous
bound that only guards against hangs; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.inference_errors import SERVER_DOWN_HEADER
from servers.launch import launch_mlserver, server_venv
from tests.support.agent_processes import AgentProcess
from tests.support.agent_serving import infer, server_leader
from tests.support.cluster_fixtures import AVAILABLE, FAILED, WAIT, Api, Cluster, Iris, api_of, model, until
from tests.support.processes import start_gateway, stop_process
from tests.support.triton_models import DOUBLER_MODEL, write_doubler

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]

pytestmark = [pytest.mark.servers, pytest.mark.timeout(900)]  # the timeout is a hang guard only


PROGRESSING = pb.ModelStatus.ModelState.Value("ModelProgressing")
LOADED_UNAVAILABLE = pb.ModelReplicaStatus.ModelReplicaState.Value("LoadedUnavailable")
DOUBLER_REQUEST = {"inputs": [{"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": [1, 2.5, -3]}]}


async def predict(agent: AgentProcess, name: str, iris: Iris) -> None:
    """Asks ``agent``'s proxy for ``name``'s predictions and checks they are the expected classes."""
    status, answer = await infer(agent.proxy_url, name, iris.request)
    assert status == 200, f"{answer}\n{agent.diagnostics()}"
    assert answer["outputs"][0]["data"] == iris.expected


def reaped(pid: int) -> bool:
    """True once ``pid`` is gone from the process table: not running, and not a zombie waiting to be reaped."""
    return not Path(f"/proc/{pid}").exists()


def group_empty(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


async def left_available(api: Api, name: str) -> pb.ModelVersionStatus:
    """The status of ``name``'s latest version once it is no longer Available."""
    status = await api.wait(name, lambda s: bool(s.versions) and s.versions[-1].state.state != AVAILABLE, "down")
    return status.versions[-1]


def assert_down_because(version: pb.ModelVersionStatus, replica: int, *words: str) -> None:
    """The model is Progressing, its replica LoadedUnavailable, and both reasons say ``words``."""
    state = version.state
    replica_state = version.modelReplicaState[replica]
    assert (state.state, replica_state.state) == (PROGRESSING, LOADED_UNAVAILABLE), version
    for word in words:
        assert word in state.reason, version
        assert word in replica_state.reason, version


def exit_status(agent: AgentProcess) -> int | None:
    """The agent's exit status, waiting up to WAIT seconds (a hang guard); None if it is still running."""
    try:
        return agent.process.wait(WAIT)
    except subprocess.TimeoutExpired:
        return None


# -- SIGTERM while the scheduler is down (issue 10, last item) ------------------------------------------------


async def test_sigterm_with_the_scheduler_down_exits_without_waiting_for_a_drain(cluster: Cluster) -> None:
    scheduler = cluster.start_scheduler()
    # A drain timeout far beyond the hang guard: an agent that waited for it would fail the test.
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0, extra=("--drain-timeout=3600",)))
    os.kill(scheduler.process.pid, signal.SIGKILL)
    await asyncio.to_thread(scheduler.process.wait, 30)

    async def session_ended() -> bool:
        return "scheduler session ended" in agent.log()

    await until(session_ended, "the agent noticed the scheduler is gone", cluster.diagnostics)
    os.kill(agent.pid, signal.SIGTERM)
    status = await asyncio.to_thread(exit_status, agent)
    assert status == 0, f"exit status {status} (None: still waiting)\n{agent.diagnostics()}"
    assert "not draining: no session with the scheduler" in agent.log(), agent.diagnostics()
    assert not agent.server_pids(), "the agent stopped the server it launched"


# -- kill -9 of the server under an agent (defect 2) -----------------------------------------------------------


async def test_kill_9_of_mlserver_is_reported_at_once_and_the_agent_restarts_it(cluster: Cluster, iris: Iris) -> None:
    cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    async with api_of(cluster) as api:
        await api.load(model("phoenix", str(iris.folder)))
        await api.available("phoenix")
        await predict(agent, "phoenix", iris)
        killed = server_leader(agent)

        os.kill(killed, signal.SIGKILL)
        down = await left_available(api, "phoenix")
        assert_down_because(down, 0, "MLServer", f"pid {killed}", "SIGKILL")

        async def no_zombie() -> bool:
            return reaped(killed) and group_empty(killed)

        await until(no_zombie, f"the killed MLServer {killed} is reaped, its process group empty", cluster.diagnostics)
        await api.available("phoenix")
        await predict(agent, "phoenix", iris)
        assert server_leader(agent) != killed
        assert "restarted" in agent.log(), agent.diagnostics()


async def test_kill_9_of_triton_is_reported_at_once_and_the_agent_restarts_it(cluster: Cluster, tmp_path: Path) -> None:
    artifact = write_doubler(tmp_path / "doubler")
    await asyncio.to_thread(server_venv, "triton")  # made here on a first run, not under the agent's ready timeout
    cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0, kind="triton"))
    async with api_of(cluster) as api:
        await api.load(model("doubler", str(artifact), requirements=("triton",)))
        await api.available("doubler")
        killed = server_leader(agent)

        os.kill(killed, signal.SIGKILL)
        down = await left_available(api, "doubler")
        assert_down_because(down, 0, "Triton", f"pid {killed}", "SIGKILL")

        async def no_zombie() -> bool:
            # The Python backend's stubs were in Triton's process group: they go with it.
            return reaped(killed) and group_empty(killed)

        await until(no_zombie, f"the killed Triton {killed} is reaped, its process group empty", cluster.diagnostics)
        await api.available("doubler")
        status, answer = await infer(agent.proxy_url, "doubler", DOUBLER_REQUEST)
        assert status == 200, f"{answer}\n{cluster.diagnostics()}"
        assert answer["outputs"][0]["data"] == [2.0, 5.0, -6.0]


async def test_a_model_on_a_dead_server_moves_to_the_other_replica(cluster: Cluster, iris: Iris) -> None:
    cluster.start_scheduler()
    # The dead server stays down for the whole test: the model can only go on serving by moving.
    stays_down = ("--server-restart-backoff=600",)
    agents = await asyncio.to_thread(
        cluster.start_agents, cluster.agent(0, extra=stays_down), cluster.agent(1, extra=stays_down)
    )
    async with api_of(cluster) as api:
        await api.load(model("mover", str(iris.folder)))
        await api.available("mover")
        dead = agents[await api.holder("mover")]
        survivor = next(agent for agent in agents if agent is not dead)

        assert cluster.scheduler is not None
        gateway = await asyncio.to_thread(start_gateway, cluster.root / "gateway", cluster.scheduler.listen)
        try:
            status, answer = await infer(gateway.url, "mover", iris.request)
            assert status == 200, answer

            os.kill(server_leader(dead), signal.SIGKILL)
            await api.available("mover", replica=survivor.replica_idx)
            await predict(survivor, "mover", iris)

            async def gateway_answers() -> bool:  # once its routes follow the move (it may retry meanwhile)
                status, answer = await infer(gateway.url, "mover", iris.request)
                return status == 200 and answer["outputs"][0]["data"] == iris.expected

            await until(gateway_answers, "the gateway answers from the surviving replica", cluster.diagnostics)
        finally:
            stop_process(gateway.process)

        async def left_the_dead_replica() -> bool:
            status = await api.status("mover")
            return dead.replica_idx not in status.versions[-1].modelReplicaState

        await until(left_the_dead_replica, "the dead replica's assignment is unloaded", cluster.diagnostics)
        status, answer = await infer(dead.proxy_url, "mover", iris.request)
        assert status in (404, 503), answer  # no longer held there, and the server is down anyway


# -- a server reached by URL that stops answering -------------------------------------------------------------


async def test_a_server_reached_by_url_that_stops_answering_is_reported_down_and_back(
    cluster: Cluster, iris: Iris, tmp_path: Path
) -> None:
    server = await launch_mlserver(tmp_path / "mlserver")
    try:
        cluster.start_scheduler()
        probes = ("--server-probe-interval=0.5", "--server-probe-timeout=1", "--server-probe-failures=2")
        spec = cluster.agent(0, existing_server=(server.http_url, server.grpc_target, server.repository), extra=probes)
        [agent] = await asyncio.to_thread(cluster.start_agents, spec)
        async with api_of(cluster) as api:
            await api.load(model("sleeper", str(iris.folder)))
            await api.available("sleeper")
            await predict(agent, "sleeper", iris)

            os.kill(server.pid, signal.SIGSTOP)
            try:
                down = await left_available(api, "sleeper")
                assert_down_because(down, 0, server.http_url, "did not answer")
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
                    session.post(f"{agent.proxy_url}/v2/models/sleeper/infer", json=iris.request) as response,
                ):
                    status, answer = response.status, await response.json(content_type=None)
                    marked = response.headers.get(SERVER_DOWN_HEADER)
                assert status == 503, answer
                assert "down" in answer["error"], answer
                assert marked == "1", "the gateway skips this replica for this answer"
            finally:
                os.kill(server.pid, signal.SIGCONT)
            await api.available("sleeper")
            await predict(agent, "sleeper", iris)
    finally:
        cluster.close()
        await server.stop()


async def test_a_launched_server_that_hangs_is_killed_and_restarted(cluster: Cluster, iris: Iris) -> None:
    cluster.start_scheduler()
    probes = (
        "--server-probe-interval=0.5",
        "--server-probe-timeout=1",
        "--server-probe-failures=2",
        "--server-hung-timeout=5",
    )
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0, extra=probes))
    async with api_of(cluster) as api:
        await api.load(model("hung", str(iris.folder)))
        await api.available("hung")
        stopped = server_leader(agent)

        os.kill(stopped, signal.SIGSTOP)  # alive, but answers nothing
        down = await left_available(api, "hung")
        assert_down_because(down, 0, f"MLServer (pid {stopped}) did not answer its liveness probe")
        # Reported down at once; killed only once it has answered nothing for --server-hung-timeout.
        assert "it may be busy: killed if it answers nothing for 5s" in down.state.reason, down

        async def killed() -> bool:
            return reaped(stopped) and group_empty(stopped)

        await until(killed, f"the hung MLServer {stopped} is killed and reaped", cluster.diagnostics)
        await api.available("hung")
        await predict(agent, "hung", iris)


# -- a load in flight when the server dies ---------------------------------------------------------------------

# The doubler, whose load waits while a file exists: a load that is in flight for as long as the test wants.
SLOW_LOAD = """import os
import time

HOLD = {hold!r}


class Model:
    def initialize(self, args):
        while os.path.exists(HOLD):
            time.sleep(0.05)
"""


async def test_a_load_in_flight_when_triton_dies_ends_failed_and_loads_when_asked_again_once_it_is_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    hold = tmp_path / "hold-the-load"
    hold.touch()
    model_py = SLOW_LOAD.format(hold=str(hold)) + DOUBLER_MODEL.replace(
        "class TritonPythonModel:", "class TritonPythonModel(Model):"
    )
    artifact = write_doubler(tmp_path / "slow", model_py)
    await asyncio.to_thread(server_venv, "triton")
    cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0, kind="triton"))
    async with api_of(cluster) as api:
        await api.load(model("slow", str(artifact), requirements=("triton",)))

        async def loading() -> bool:
            return "slow_1" in agent.server_log()

        await until(loading, "Triton is loading slow_1", cluster.diagnostics)
        killed = server_leader(agent)
        os.kill(killed, signal.SIGKILL)
        failed = await api.wait("slow", lambda s: bool(s.versions) and s.versions[-1].state.state == FAILED, "Failed")
        reason = failed.versions[-1].state.reason
        assert "the inference server is down" in reason, failed
        assert f"pid {killed}" in reason, failed
        # Its load may be what killed the server: the scheduler's crash-loop guard keeps it off this replica, its
        # only one, until the user asks for another try.
        assert reason.startswith("its server died during this load, so it is not placed on this replica"), failed

        hold.unlink()  # the restarted Triton's load may finish
        await api.load(model("slow", str(artifact), requirements=("triton",)))  # the same spec: try again
        await api.available("slow")
        status, answer = await infer(agent.proxy_url, "slow", DOUBLER_REQUEST)
        assert status == 200, f"{answer}\n{cluster.diagnostics()}"
        assert answer["outputs"][0]["data"] == [2.0, 5.0, -6.0]
