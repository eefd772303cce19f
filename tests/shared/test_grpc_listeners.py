"""Every gRPC listener refuses a port that is already in use, like the REST listeners do.

gRPC turns SO_REUSEPORT on by default, so on Linux a second process could bind a port that a first gRPC
server holds, and the kernel would then share new connections between the two: two schedulers with
different states behind one address (split brain). Each test starts a real process on a port a real first
process of the same kind holds, and checks that the second exits non-zero with the message the REST
listeners give, and that the first keeps serving.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.transport import TransportSecurity, bind, new_server
from tests.support.cluster_fixtures import Cluster
from tests.support.processes import MODELPLANE, STARTED, SchedulerProcess, start_gateway, stop_process

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]

IN_USE = "address already in use"
SERVER_LIVE = "/inference.GRPCInferenceService/ServerLive"


def start_second(argv: list[str], ready_file: Path, log_path: Path, timeout: float = 90) -> tuple[int, str]:
    """Run ``modelplane ARGV`` until it exits; (exit status, output). Fails if it comes up serving instead."""
    with log_path.open("wb") as log:
        process = subprocess.Popen([*MODELPLANE, *argv], stdout=log, stderr=subprocess.STDOUT)
    STARTED.append(process)
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if ready_file.exists():
            stop_process(process)
            pytest.fail(f"the second {argv[0]} is serving on a port the first one holds:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            stop_process(process)
            pytest.fail(f"the second {argv[0]} neither served nor exited in {timeout}s:\n{log_path.read_text()}")
        time.sleep(0.05)
    return process.returncode, log_path.read_text(errors="replace")


def assert_refused(status: int, output: str, address: str) -> None:
    assert status == 1, output
    assert f"cannot listen on {address}: {IN_USE}" in output, output
    assert "Traceback" not in output, output


async def server_live(target: str) -> bytes:
    """A V2 ServerLive call as raw bytes (the request is empty): the listener answers."""
    async with aio.insecure_channel(target) as channel:
        call: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(SERVER_LIVE)
        return await call(b"", timeout=20)


@pytest.mark.parametrize("taken", ["listen", "agent-listen"])
async def test_a_second_scheduler_on_a_taken_port_exits_and_the_first_keeps_serving(
    tmp_path: Path, scheduler: SchedulerProcess, taken: str
) -> None:
    address = scheduler.listen if taken == "listen" else scheduler.agent_listen
    other = "agent-listen" if taken == "listen" else "listen"
    ready = tmp_path / "second-ready.json"
    argv = [
        "scheduler",
        f"--{taken}={address}",
        f"--{other}=127.0.0.1:0",
        f"--state-dir={tmp_path / 'second-state'}",  # its own state dir: only the port is shared
        f"--ready-file={ready}",
    ]
    status, output = start_second(argv, ready, tmp_path / "second.log")
    assert_refused(status, output, address)

    assert scheduler.process.poll() is None
    async with aio.insecure_channel(scheduler.listen) as channel:
        answer = await pb_grpc.SchedulerStub(channel).SchedulerStatus(pb.SchedulerStatusRequest(), timeout=20)
    assert answer.applicationVersion


async def test_a_second_gateway_on_a_taken_grpc_port_exits_and_the_first_keeps_serving(
    tmp_path: Path, scheduler: SchedulerProcess
) -> None:
    first = start_gateway(tmp_path / "first", scheduler.listen, "--grpc-listen=127.0.0.1:0")
    assert first.grpc_listen is not None
    ready = tmp_path / "second-ready.json"
    argv = [
        "gateway",
        f"--scheduler={scheduler.listen}",
        "--listen=127.0.0.1:0",
        f"--grpc-listen={first.grpc_listen}",
        f"--ready-file={ready}",
    ]
    try:
        status, output = start_second(argv, ready, tmp_path / "second.log")
        assert_refused(status, output, first.grpc_listen)
        assert first.process.poll() is None
        await server_live(first.grpc_listen)
    finally:
        stop_process(first.process)


@pytest.mark.servers
@pytest.mark.timeout(600)  # a hang guard: the agents launch MLServers
async def test_a_second_agent_on_a_taken_proxy_port_exits_and_the_first_keeps_serving(cluster: Cluster) -> None:
    cluster.start_scheduler()
    [first] = cluster.start_agents(cluster.agent(0))
    assert cluster.scheduler is not None
    work = cluster.root / "agent1"
    ready = cluster.root / "agent1.json"
    argv = [
        "agent",
        f"--scheduler={cluster.scheduler.agent_listen}",
        "--server-name=mlserver",
        "--replica-idx=1",
        "--launch-server",
        "--memory=200MiB",
        "--proxy-http=127.0.0.1:0",
        f"--proxy-grpc={first.proxy_grpc}",
        f"--work-dir={work}",
        f"--ready-file={ready}",
        "--drain-timeout=5",
    ]
    status, output = start_second(argv, ready, cluster.root / "agent1.log", timeout=300)
    assert_refused(status, output, first.proxy_grpc)

    assert first.process.poll() is None, first.diagnostics()
    await server_live(first.proxy_grpc)  # passed through to its MLServer


async def test_the_server_factory_refuses_a_port_another_grpc_server_holds() -> None:
    security = TransportSecurity(insecure=True)
    holder = new_server()
    port = bind(holder, Address("127.0.0.1", 0), security)
    await holder.start()
    try:
        with pytest.raises(Exception, match=f"cannot listen on 127.0.0.1:{port}: {IN_USE}"):
            bind(new_server(), Address("127.0.0.1", port), security)
    finally:
        await holder.stop(None)
