"""A Scheduler API client for tests over real gRPC: the calls they make, model status and server status streams
read in the background, a model spec builder, loading many models at once, and the running experiments as the
routing stream gives them to gateways."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterable

import grpc
from grpc import aio

from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.routing.v1 import routing_pb2_grpc as rpb_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.grpc_agent import MiB
from tests.support.waiting import wait_for_async

CALL_TIMEOUT = 10.0

State = pb.ModelStatus
Replica = pb.ModelReplicaStatus
AVAILABLE = State.ModelAvailable
FAILED = State.ModelFailed
TERMINATING = State.ModelTerminating
TERMINATED = State.ModelTerminated
SCHEDULE_FAILED = State.ScheduleFailed


def model_spec(
    name: str,
    *,
    uri: str = "gs://models/iris",
    replicas: int | None = 1,
    min_replicas: int = 0,
    max_replicas: int = 0,
    memory: int = 10 * MiB,
    requirements: Iterable[str] = ("sklearn",),
    generation: int = 0,
    bulk_kib: int = 0,
) -> pb.Model:
    """A model as a client would send it; ``bulk_kib`` adds that many KiB of parameters (big statuses)."""
    model = pb.Model(
        meta=pb.MetaData(name=name),
        modelSpec=pb.ModelSpec(uri=uri, requirements=list(requirements), memoryBytes=memory),
    )
    if generation:
        model.meta.kubernetesMeta.CopyFrom(pb.KubernetesMeta(namespace="seldon-mesh", generation=generation))
    for index in range(0, bulk_kib, 10):
        model.modelSpec.parameters.append(pb.ParameterSpec(name=f"bulk-{index}", value="x" * 10 * 1024))
    if replicas is not None:
        model.deploymentSpec.CopyFrom(
            pb.DeploymentSpec(replicas=replicas, minReplicas=min_replicas, maxReplicas=max_replicas)
        )
    return model


def is_final(status: pb.ModelStatusResponse) -> bool:
    """The status says the model is deleted and terminated (or, with no versions, removed)."""
    return status.deleted and (not status.versions or status.versions[-1].state.state == TERMINATED)


class ModelWatch:
    """A SubscribeModelStatus stream read in the background: every status, per model, in arrival order."""

    def __init__(self, stub: pb_grpc.SchedulerAsyncStub, subscriber: str) -> None:
        self.call = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName=subscriber))
        self.history: defaultdict[str, list[pb.ModelStatusResponse]] = defaultdict(list)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for status in self.call:
            self.history[status.modelName].append(status)

    def latest(self, name: str) -> pb.ModelStatusResponse | None:
        seen = self.history.get(name)
        return seen[-1] if seen else None

    def state(self, name: str) -> int | None:
        """The latest version's state in the newest status of ``name``; None if none or gone."""
        latest = self.latest(name)
        return latest.versions[-1].state.state if latest is not None and latest.versions else None

    def states(self, name: str) -> list[int]:
        """The latest version's state in every status of ``name`` that had one, in order."""
        return [s.versions[-1].state.state for s in self.history.get(name, []) if s.versions]

    def terminated(self, name: str) -> bool:
        latest = self.latest(name)
        return latest is not None and is_final(latest)

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, aio.AioRpcError):
            await self.task


class ServerWatch:
    """A SubscribeServerStatus stream read in the background."""

    def __init__(self, stub: pb_grpc.SchedulerAsyncStub, subscriber: str) -> None:
        self.call = stub.SubscribeServerStatus(pb.ServerSubscriptionRequest(subscriberName=subscriber))
        self.seen: list[pb.ServerStatusResponse] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for status in self.call:
            self.seen.append(status)

    def updates(self, server: str) -> list[pb.ServerStatusResponse]:
        return [s for s in self.seen if s.serverName == server and s.type == pb.ServerStatusResponse.StatusUpdate]

    def scaling_requests(self, server: str) -> list[pb.ServerStatusResponse]:
        return [s for s in self.seen if s.serverName == server and s.type == pb.ServerStatusResponse.ScalingRequest]

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, aio.AioRpcError):
            await self.task


class Client:
    """A Scheduler API client on a grpc.aio channel, with the calls the tests make."""

    def __init__(self, address: str) -> None:
        self.channel = aio.insecure_channel(address)
        self.stub = pb_grpc.SchedulerStub(self.channel)
        self._watches: list[ModelWatch | ServerWatch] = []

    async def load(self, model: pb.Model) -> None:
        await self.stub.LoadModel(pb.LoadModelRequest(model=model), timeout=CALL_TIMEOUT)

    async def unload(self, name: str) -> None:
        await self.stub.UnloadModel(pb.UnloadModelRequest(model=pb.ModelReference(name=name)), timeout=CALL_TIMEOUT)

    async def status(self, name: str, *, all_versions: bool = False) -> pb.ModelStatusResponse:
        request = pb.ModelStatusRequest(
            subscriberName="test", model=pb.ModelReference(name=name), allVersions=all_versions
        )
        [status] = [s async for s in self.stub.ModelStatus(request, timeout=CALL_TIMEOUT)]
        return status

    async def all_statuses(self) -> list[pb.ModelStatusResponse]:
        request = pb.ModelStatusRequest(subscriberName="test")
        return [s async for s in self.stub.ModelStatus(request, timeout=CALL_TIMEOUT)]

    async def state(self, name: str) -> int | None:
        """The latest version's state, or None when the scheduler does not know the model."""
        try:
            status = await self.status(name)
        except aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return None
            raise
        return status.versions[-1].state.state

    async def server_status(self, name: str) -> pb.ServerStatusResponse:
        request = pb.ServerStatusRequest(subscriberName="test", name=name)
        [status] = [s async for s in self.stub.ServerStatus(request, timeout=CALL_TIMEOUT)]
        return status

    def watch_models(self, subscriber: str = "test-models") -> ModelWatch:
        watch = ModelWatch(self.stub, subscriber)
        self._watches.append(watch)
        return watch

    def watch_servers(self, subscriber: str = "test-servers") -> ServerWatch:
        watch = ServerWatch(self.stub, subscriber)
        self._watches.append(watch)
        return watch

    async def wait_state(self, name: str, state: int | None, timeout: float = 20.0) -> None:
        """Wait until the latest version of ``name`` is in ``state`` (None: until the model is gone)."""

        async def reached() -> bool:
            return await self.state(name) == state

        await wait_for_async(reached, timeout, f"model {name} in state {state_name(state)}")

    async def close(self) -> None:
        for watch in self._watches:
            await watch.close()
        await self.channel.close()


def state_name(state: int | None) -> str:
    return "gone" if state is None else State.ModelState.Name(state)  # type: ignore[arg-type]


async def load_many(client: Client, names: Iterable[str], *, bulk_kib: int) -> None:
    """Load models concurrently (a few calls at a time), each with ``bulk_kib`` KiB of parameters."""
    gate = asyncio.Semaphore(16)

    async def load(name: str) -> None:
        async with gate:
            await client.load(model_spec(name, memory=MiB, bulk_kib=bulk_kib))

    await asyncio.gather(*(load(name) for name in names))


async def routed_experiments(channel: grpc.aio.Channel) -> dict[str, pb.Experiment]:
    """The running experiments' whole specs, as the routing stream's snapshot gives them to gateways."""
    experiments: dict[str, pb.Experiment] = {}
    stream = rpb_grpc.RoutingServiceStub(channel).WatchRoutes(rpb.WatchRoutesRequest(gateway_name="test"))
    async for update in stream:
        if update.snapshot_complete:
            break
        if update.WhichOneof("route") == "experiment":
            experiments[update.experiment.name] = update.experiment.experiment
    stream.cancel()
    return experiments
