"""A scheduler with agents that launch real MLServer replicas, and the iris model, for end-to-end tests.

Test modules use it with ``pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures"]`` (the
fixtures then exist once per session however many modules ask) and import the names they call, so it is
imported before pytest could rewrite its asserts: PYTEST_DONT_REWRITE says that is expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.agent_processes import AgentProcess, AgentSpec, start_agents, stop_agent
from tests.support.iris_sample import train_iris_sample
from tests.support.processes import SchedulerProcess, start_scheduler, stop_process
from tests.support.waiting import wait_for_async

MIB = 1024 * 1024
WAIT = 120.0  # seconds: a hang guard for every wait, never an expectation


async def until(check: Callable[[], Awaitable[bool]], what: str, diagnostics: Callable[[], str] = str) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` (and what ``diagnostics()`` says) after WAIT seconds."""
    await wait_for_async(check, WAIT, what, diagnostics)


CALL_TIMEOUT = 10.0
State = pb.ModelStatus.ModelState
AVAILABLE = State.Value("ModelAvailable")
FAILED = State.Value("ModelFailed")
REPLICA_AVAILABLE = pb.ModelReplicaStatus.ModelReplicaState.Value("Available")
SCHEDULER_FLAGS = ("--sync-grace=2", "--heartbeat=0.5")
REPO = Path(__file__).resolve().parents[2]


# -- the model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Iris:
    folder: Path  # holds model.joblib only
    joblib: bytes
    request: dict[str, Any]  # a V2 inference request body
    expected: list[int]  # the classes the model predicts for it


@pytest.fixture(scope="session")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iris:
    """samples/train_iris.py run by the MLServer venv's Python, so the pickle matches MLServer's scikit-learn."""
    out = tmp_path_factory.mktemp("train")
    printed = train_iris_sample(out)
    folder = tmp_path_factory.mktemp("iris")
    joblib = (out / "model.joblib").read_bytes()
    (folder / "model.joblib").write_bytes(joblib)
    return Iris(folder, joblib, printed["request"], printed["expected"])


def model(
    name: str,
    uri: str,
    *,
    requirements: tuple[str, ...] = ("sklearn",),
    memory: int = 10 * MIB,
    rclone_config: str | None = None,
    parameters: dict[str, str] | None = None,
) -> pb.Model:
    spec = pb.ModelSpec(uri=uri, requirements=list(requirements), memoryBytes=memory)
    if rclone_config is not None:
        spec.storageConfig.CopyFrom(pb.StorageConfig(storageRcloneConfig=rclone_config))
    for key, value in (parameters or {}).items():
        spec.parameters.append(pb.ParameterSpec(name=key, value=value))
    return pb.Model(meta=pb.MetaData(name=name), modelSpec=spec, deploymentSpec=pb.DeploymentSpec(replicas=1))


# -- the scheduler and its agents --------------------------------------------------------------------------


@dataclass
class Cluster:
    """A scheduler and agents in one folder; ``close`` stops every process by PID, whatever state it is in."""

    root: Path
    scheduler: SchedulerProcess | None = None
    agents: list[AgentProcess] = field(default_factory=list)

    def start_scheduler(self, *extra: str) -> SchedulerProcess:
        self.scheduler = start_scheduler(self.root / "scheduler", *SCHEDULER_FLAGS, *extra)
        return self.scheduler

    def start_agents(self, *specs: AgentSpec) -> list[AgentProcess]:
        assert self.scheduler is not None
        started = start_agents(self.scheduler.agent_listen, list(specs))
        self.agents.extend(started)
        return started

    def agent(self, replica_idx: int = 0, **changes: Any) -> AgentSpec:
        return AgentSpec(self.root / f"agent{replica_idx}", replica_idx, **changes)

    def diagnostics(self) -> str:
        parts = [agent.diagnostics() for agent in self.agents]
        if self.scheduler is not None:
            parts.append("--- scheduler log:\n" + "\n".join(self.scheduler.log().splitlines()[-30:]))
        return "\n".join(parts)

    def close(self) -> None:
        # All agents at once: each drains (nowhere to go, so that is quick) and stops its server.
        for agent in self.agents:
            if agent.process.poll() is None:
                os.kill(agent.pid, signal.SIGTERM)
        for agent in self.agents:
            # Waited for, not signalled again: a second SIGTERM would make the agent skip its drain.
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.process.wait(60)
            stop_agent(agent)  # SIGKILL if it is still running, and whatever is left of its server
        if self.scheduler is not None:
            stop_process(self.scheduler.process)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    (tmp_path / "scheduler").mkdir()
    running = Cluster(tmp_path)
    try:
        yield running
    finally:
        running.close()


class Api:
    """The Scheduler API over grpc.aio, with the waits the tests need."""

    def __init__(self, channel: aio.Channel, cluster: Cluster) -> None:
        self.stub = pb_grpc.SchedulerStub(channel)
        self.cluster = cluster

    async def load(self, spec: pb.Model) -> None:
        await self.stub.LoadModel(pb.LoadModelRequest(model=spec), timeout=CALL_TIMEOUT)

    async def unload(self, name: str) -> None:
        await self.stub.UnloadModel(pb.UnloadModelRequest(model=pb.ModelReference(name=name)), timeout=CALL_TIMEOUT)

    async def status(self, name: str) -> pb.ModelStatusResponse:
        request = pb.ModelStatusRequest(subscriberName="e2e", model=pb.ModelReference(name=name), allVersions=True)
        [status] = [s async for s in self.stub.ModelStatus(request, timeout=CALL_TIMEOUT)]
        return status

    async def wait(
        self, name: str, done: Callable[[pb.ModelStatusResponse], bool], what: str
    ) -> pb.ModelStatusResponse:
        """The first status of ``name`` on a SubscribeModelStatus stream for which ``done`` holds."""
        stream = self.stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName=f"e2e-{uuid.uuid4()}"))
        last: pb.ModelStatusResponse | None = None
        try:
            async with asyncio.timeout(WAIT):
                async for status in stream:
                    if status.modelName == name:
                        last = status
                        if done(status):
                            return status
        except TimeoutError:
            pass
        finally:
            stream.cancel()
        raise AssertionError(
            f"{name} was not {what} within {WAIT:g}s; last status:\n{last}\n{self.cluster.diagnostics()}"
        )

    async def available(self, name: str, version: int | None = None, replica: int | None = None) -> None:
        def done(status: pb.ModelStatusResponse) -> bool:
            if not status.versions:
                return False
            latest = status.versions[-1]
            return (
                latest.state.state == AVAILABLE
                and (version is None or latest.version == version)
                and (replica is None or latest.modelReplicaState[replica].state == REPLICA_AVAILABLE)
            )

        in_version = "" if version is None else f" in version {version}"
        on_replica = "" if replica is None else f" on replica {replica}"
        await self.wait(name, done, f"Available{in_version}{on_replica}")

    async def failed(self, name: str) -> str:
        """Waits for ModelFailed; returns the reason."""
        status = await self.wait(name, lambda s: bool(s.versions) and s.versions[-1].state.state == FAILED, "Failed")
        return status.versions[-1].state.reason

    async def gone(self, name: str) -> grpc.StatusCode:
        """Polls ModelStatus until the scheduler no longer knows ``name``; returns the status code it answers."""
        status: pb.ModelStatusResponse | None = None
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    try:
                        status = await self.status(name)
                    except aio.AioRpcError as error:
                        return error.code()
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(
                f"{name} still known after {WAIT:g}s:\n{status}\n{self.cluster.diagnostics()}"
            ) from None

    async def holder(self, name: str) -> int:
        """The replica index that serves ``name`` now."""
        status = await self.status(name)
        serving = [i for i, r in status.versions[-1].modelReplicaState.items() if r.state == REPLICA_AVAILABLE]
        assert len(serving) == 1, status
        return serving[0]


@contextlib.asynccontextmanager
async def api_of(cluster: Cluster) -> AsyncIterator[Api]:
    assert cluster.scheduler is not None
    async with aio.insecure_channel(cluster.scheduler.listen) as channel:
        yield Api(channel, cluster)
