"""A STAND-IN for the controller's side of SubscribeControlPlane, until the real controller (built on another branch)
lands: it holds what a controller reads from the API server's resources (Models with their generation, Servers
with their replicas), keeps a SubscribeControlPlane stream open to the scheduler, and answers each ask by sending
everything again: SEND_SERVERS with one ServerNotify (isFirstSync), SEND_MODELS with a LoadModel per model. When
the stream ends (the scheduler died, a new leader took over) it subscribes again with backoff. It applies nothing
else of a controller (no watches, no status written back, no finalizers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from grpc import StatusCode, aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Event = pb.ControlPlaneResponse.Event
CALL_TIMEOUT = 10.0
_RETRIED = (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED)


class ControllerStandIn:
    def __init__(self, scheduler: str, *, subscriber: str = "controller-stand-in") -> None:
        self.scheduler = scheduler  # HOST:PORT of the Scheduler API (on Kubernetes: the scheduler's Service)
        self.subscriber = subscriber
        self.models: dict[str, pb.Model] = {}  # the Model resources, by name
        self.servers: dict[str, pb.ServerNotify] = {}  # the Server resources, by name
        self.asked: list[int] = []  # every ControlPlaneResponse event the scheduler sent, in order
        self.resent_models = 0  # how many times every model was sent again (SEND_MODELS answered)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._subscribe_forever(), name="controller-stand-in")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def apply(self, model: pb.Model) -> None:
        """A Model resource was created or changed: send it (acknowledged when this returns) and keep it."""
        self.models[model.meta.name] = model
        async with aio.insecure_channel(self.scheduler) as channel:
            await _send_model(pb_grpc.SchedulerStub(channel), model)

    async def _subscribe_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with aio.insecure_channel(self.scheduler) as channel:
                    stub = pb_grpc.SchedulerStub(channel)
                    stream = stub.SubscribeControlPlane(
                        pb.ControlPlaneSubscriptionRequest(subscriberName=self.subscriber)
                    )
                    async for response in stream:
                        backoff = 0.1
                        self.asked.append(response.event)
                        await self._answer(stub, response.event)
            except aio.AioRpcError as error:
                log.info("controller stand-in: control-plane stream ended: %s", error.code().name)
            await asyncio.sleep(backoff)
            backoff = min(2.0, backoff * 2)

    async def _answer(self, stub: pb_grpc.SchedulerAsyncStub, event: int) -> None:
        if event == Event.SEND_SERVERS and self.servers:
            request = pb.ServerNotifyRequest(servers=list(self.servers.values()), isFirstSync=True)
            await _retrying(lambda: stub.ServerNotify(request, timeout=CALL_TIMEOUT))
        elif event == Event.SEND_MODELS:
            for model in list(self.models.values()):
                await _send_model(stub, model)
            self.resent_models += 1


async def _send_model(stub: pb_grpc.SchedulerAsyncStub, model: pb.Model) -> None:
    request = pb.LoadModelRequest(model=model)
    await _retrying(lambda: stub.LoadModel(request, timeout=CALL_TIMEOUT))


async def _retrying(call: Callable[[], Awaitable[object]]) -> None:
    """Retry UNAVAILABLE (a standby, a scheduler starting) with backoff; FAILED_PRECONDITION and the rest are final
    (Seldon's convention), raised."""
    backoff = 0.1
    for _ in range(50):
        try:
            await call()
            return
        except aio.AioRpcError as error:
            if error.code() not in _RETRIED:
                raise
        await asyncio.sleep(backoff)
        backoff = min(2.0, backoff * 2)
    raise TimeoutError("the scheduler stayed unavailable")
