"""The TrafficRouter port over the scheduler's gRPC API: a canary is a Seldon-style Experiment named like the
stable name, with that name as its default and two candidates (the model served under the stable name, and the
candidate's own model), weighted 100-N / N. Gateways send a request for a name through the experiment whose
default it is (gateway/routing_table.py: experiment_for), so clients keep calling the stable name; the scheduler
allows an experiment named like a model only in front of that model as its default (scheduler/experiments/
validation.py: check_routing_name), which is this case.

Every call converges, so a promotion cut short by a restart completes when asked again: starting the same
experiment replaces it; stopping or unloading what is not there ("not found", which Seldon's scheduler answers
FAILED_PRECONDITION) is success.

An adapter at the registry's edge (it speaks gRPC); the service layer sees only CanarySplit and TrafficError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import grpc

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.auth.client_token import ClientToken
from modelplane.transport import TransportError, TransportSecurity, open_channel
from registry.ports import CanarySplit, TrafficError
from registry.scheduler_deployer import scheduler_failure

SUBSCRIBER: Final = "modelplane-registry"
CALL_TIMEOUT_SECONDS: Final = 30.0
T = TypeVar("T")


def canary_experiment(split: CanarySplit) -> pb.Experiment:
    return pb.Experiment(
        name=split.stable_name,
        default=split.stable_name,
        resourceType=pb.MODEL,
        candidates=[
            pb.ExperimentCandidate(name=split.stable_name, weight=100 - split.percent),
            pb.ExperimentCandidate(name=split.candidate, weight=split.percent),
        ],
    )


def _not_found(error: grpc.aio.AioRpcError) -> bool:
    """The scheduler's answer for an experiment or model it does not have (Seldon's FAILED_PRECONDITION)."""
    details = error.details() or ""
    return error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION) and details.endswith(
        "not found"
    )


@dataclass(frozen=True, slots=True)
class SchedulerTraffic:
    scheduler: Address
    security: TransportSecurity
    timeout_seconds: float = 300.0  # until the gateways route by a started experiment
    token: ClientToken | None = None

    async def _call(self, what: str, work: Callable[[pb_grpc.SchedulerAsyncStub], Awaitable[T]]) -> T:
        try:
            async with open_channel(self.scheduler, self.security, self.token) as channel:
                return await work(pb_grpc.SchedulerStub(channel))
        except TimeoutError:
            raise TrafficError(f"{what}: not done within {self.timeout_seconds:g} s") from None
        except (grpc.aio.AioRpcError, TransportError) as error:
            raise TrafficError(f"{what}: {scheduler_failure(self.scheduler, error)}") from None

    async def split(self, split: CanarySplit) -> None:
        experiment = canary_experiment(split)

        async def work(stub: pb_grpc.SchedulerAsyncStub) -> None:
            await stub.StartExperiment(pb.StartExperimentRequest(experiment=experiment), timeout=CALL_TIMEOUT_SECONDS)
            # Subscribed after the start: a started experiment replaces the old one whole, gateway acks included,
            # so what the stream says now is about this one.
            stream = stub.SubscribeExperimentStatus(pb.ExperimentSubscriptionRequest(subscriberName=SUBSCRIBER))
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    await _until_active(stream, split.stable_name)
            finally:
                stream.cancel()

        await self._call(f"canary {split.stable_name} -> {split.candidate} at {split.percent}%", work)

    async def unsplit(self, stable_name: str) -> None:
        async def work(stub: pb_grpc.SchedulerAsyncStub) -> None:
            try:
                await stub.StopExperiment(pb.StopExperimentRequest(name=stable_name), timeout=CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                if not _not_found(error):
                    raise

        await self._call(f"stopping experiment {stable_name}", work)

    async def unload(self, serving_name: str) -> None:
        async def work(stub: pb_grpc.SchedulerAsyncStub) -> None:
            request = pb.UnloadModelRequest(model=pb.ModelReference(name=serving_name))
            try:
                await stub.UnloadModel(request, timeout=CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                if not _not_found(error):
                    raise

        await self._call(f"unloading {serving_name}", work)


async def _until_active(stream: grpc.aio.UnaryStreamCall[Any, pb.ExperimentStatusResponse], name: str) -> None:
    """Until the experiment's candidates are ready and the gateways route by it."""
    while True:
        message = await stream.read()
        if not isinstance(message, pb.ExperimentStatusResponse):
            raise TrafficError("the scheduler closed its experiment status stream before the canary was active")
        if message.experimentName == name and message.active and message.candidatesReady:
            return
