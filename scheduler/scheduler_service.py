"""The Seldon Core v2 Scheduler API servicer: protobuf in, domain calls, protobuf out.

Thin on purpose: validation and state live in SchedulerCore; errors map to codes in status_codes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from grpc import aio

from generated.mlops.chainer import chainer_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane import __version__, logs
from modelplane.grpc_handlers import add_with_raw_responses
from modelplane.spec.errors import InvalidArgument
from modelplane.stream_watchdog import StreamWatchdog
from scheduler import status_codes
from scheduler.core import SchedulerCore

Context = aio.ServicerContext[Any, Any]


# The status subscriptions send each status as the bytes it was serialised to once, for every subscriber: the same
# bytes gRPC would have made of the message (scheduler/publishing.py), so no client sees a difference.
RAW_RESPONSES = (
    "SubscribeModelStatus",
    "SubscribeServerStatus",
    "SubscribeExperimentStatus",
    "SubscribePipelineStatus",
)


class SchedulerService(pb_grpc.SchedulerServicer):
    def __init__(
        self, core: SchedulerCore, streams: StreamWatchdog, *, observe_load: Callable[[float], None] | None = None
    ) -> None:
        self.core = core
        self.streams = streams  # every streaming answer goes through it (the subscriber lag)
        self._observe_load = observe_load  # told each LoadModel's seconds (scheduler/scheduler_metrics.py)

    def add_to(self, server: aio.Server) -> None:
        """Serve this on ``server``: the generated registration, with ``RAW_RESPONSES`` sending bytes as they are."""
        add_with_raw_responses(pb_grpc.add_SchedulerServicer_to_server, self, server, RAW_RESPONSES)

    async def SchedulerStatus(self, request: pb.SchedulerStatusRequest, context: Context) -> pb.SchedulerStatusResponse:
        return pb.SchedulerStatusResponse(applicationVersion=__version__)

    async def LoadModel(self, request: pb.LoadModelRequest, context: Context) -> pb.LoadModelResponse:
        async def call() -> None:
            if not request.HasField("model"):
                raise InvalidArgument("LoadModelRequest.model is missing")
            with logs.bound(model=request.model.meta.name):
                await self.core.load_model(request.model)

        started = time.perf_counter()
        try:
            await status_codes.unary(context, call)
        finally:
            if self._observe_load is not None:
                self._observe_load(time.perf_counter() - started)
        return pb.LoadModelResponse()

    async def UnloadModel(self, request: pb.UnloadModelRequest, context: Context) -> pb.UnloadModelResponse:
        async def call() -> None:
            if not request.HasField("model"):
                raise InvalidArgument("UnloadModelRequest.model is missing")
            with logs.bound(model=request.model.name):
                await self.core.unload_model(request.model.name)

        await status_codes.unary(context, call)
        return pb.UnloadModelResponse()

    async def ServerNotify(self, request: pb.ServerNotifyRequest, context: Context) -> pb.ServerNotifyResponse:
        await status_codes.unary(context, lambda: self.core.notify_servers(request.servers, request.isFirstSync))
        return pb.ServerNotifyResponse()

    async def ModelStatusEvent(
        self, request: pb.ModelUpdateStatusMessage, context: Context
    ) -> pb.ModelUpdateStatusResponse:
        self.core.record_gateway_status(request.update, request.success, request.reason)
        return pb.ModelUpdateStatusResponse()

    # grpc.aio recognises a streaming handler by its being an async generator function, so each
    # streaming RPC is one, relaying the domain stream.
    async def ModelStatus(
        self, request: pb.ModelStatusRequest, context: Context
    ) -> AsyncIterator[pb.ModelStatusResponse]:
        # Unset (no model, like the optional names of the other status RPCs) asks for all, as in Seldon; a name
        # that is set, even "", is looked up, so "" is INVALID_ARGUMENT like any malformed name (README, API notes).
        name = request.model.name if request.HasField("model") else None
        produce = lambda: self.core.model_status(name, all_versions=request.allVersions)  # noqa: E731
        async for status in status_codes.stream_list(
            context, produce, self.streams, rpc="ModelStatus", subscriber=request.subscriberName
        ):
            yield status

    async def ServerStatus(
        self, request: pb.ServerStatusRequest, context: Context
    ) -> AsyncIterator[pb.ServerStatusResponse]:
        name = request.name if request.HasField("name") else None
        produce = lambda: self.core.server_status(name)  # noqa: E731
        async for status in status_codes.stream_list(
            context, produce, self.streams, rpc="ServerStatus", subscriber=request.subscriberName
        ):
            yield status

    async def SubscribeModelStatus(  # type: ignore[override] # serialised already: RAW_RESPONSES
        self, request: pb.ModelSubscriptionRequest, context: Context
    ) -> AsyncIterator[bytes]:
        subscription = self.core.subscribe_models(request.subscriberName)
        async for status in status_codes.subscription(
            context, subscription, self.streams, rpc="SubscribeModelStatus", subscriber=request.subscriberName
        ):
            yield status

    async def SubscribeServerStatus(  # type: ignore[override] # serialised already: RAW_RESPONSES
        self, request: pb.ServerSubscriptionRequest, context: Context
    ) -> AsyncIterator[bytes]:
        subscription = self.core.subscribe_servers(request.subscriberName)
        async for status in status_codes.subscription(
            context, subscription, self.streams, rpc="SubscribeServerStatus", subscriber=request.subscriberName
        ):
            yield status

    async def SubscribeControlPlane(
        self, request: pb.ControlPlaneSubscriptionRequest, context: Context
    ) -> AsyncIterator[pb.ControlPlaneResponse]:
        events = self.core.control_plane_events()
        async for event in status_codes.stream(
            context, events, self.streams, rpc="SubscribeControlPlane", subscriber=request.subscriberName
        ):
            yield event

    async def StartExperiment(self, request: pb.StartExperimentRequest, context: Context) -> pb.StartExperimentResponse:
        async def call() -> None:
            if not request.HasField("experiment"):
                raise InvalidArgument("StartExperimentRequest.experiment is missing")
            with logs.bound(experiment=request.experiment.name):
                await self.core.start_experiment(request.experiment)

        await status_codes.unary(context, call)
        return pb.StartExperimentResponse()

    async def StopExperiment(self, request: pb.StopExperimentRequest, context: Context) -> pb.StopExperimentResponse:
        with logs.bound(experiment=request.name):
            await status_codes.unary(context, lambda: self.core.stop_experiment(request.name))
        return pb.StopExperimentResponse()

    async def ExperimentStatus(
        self, request: pb.ExperimentStatusRequest, context: Context
    ) -> AsyncIterator[pb.ExperimentStatusResponse]:
        name = request.name if request.HasField("name") else None
        produce = lambda: self.core.experiment_status(name)  # noqa: E731
        async for status in status_codes.stream_list(
            context, produce, self.streams, rpc="ExperimentStatus", subscriber=request.subscriberName
        ):
            yield status

    async def SubscribeExperimentStatus(  # type: ignore[override] # serialised already: RAW_RESPONSES
        self, request: pb.ExperimentSubscriptionRequest, context: Context
    ) -> AsyncIterator[bytes]:
        subscription = self.core.subscribe_experiments(request.subscriberName)
        async for status in status_codes.subscription(
            context, subscription, self.streams, rpc="SubscribeExperimentStatus", subscriber=request.subscriberName
        ):
            yield status

    async def LoadPipeline(self, request: pb.LoadPipelineRequest, context: Context) -> pb.LoadPipelineResponse:
        async def call() -> None:
            if not request.HasField("pipeline"):
                raise InvalidArgument("LoadPipelineRequest.pipeline is missing")
            with logs.bound(pipeline=request.pipeline.name):
                await self.core.load_pipeline(request.pipeline)

        await status_codes.unary(context, call)
        return pb.LoadPipelineResponse()

    async def UnloadPipeline(self, request: pb.UnloadPipelineRequest, context: Context) -> pb.UnloadPipelineResponse:
        with logs.bound(pipeline=request.name):
            await status_codes.unary(context, lambda: self.core.unload_pipeline(request.name))
        return pb.UnloadPipelineResponse()

    async def PipelineStatus(
        self, request: pb.PipelineStatusRequest, context: Context
    ) -> AsyncIterator[pb.PipelineStatusResponse]:
        name = request.name if request.HasField("name") else None
        produce = lambda: self.core.pipeline_status(name, all_versions=request.allVersions)  # noqa: E731
        async for status in status_codes.stream_list(
            context, produce, self.streams, rpc="PipelineStatus", subscriber=request.subscriberName
        ):
            yield status

    async def SubscribePipelineStatus(  # type: ignore[override] # serialised already: RAW_RESPONSES
        self, request: pb.PipelineSubscriptionRequest, context: Context
    ) -> AsyncIterator[bytes]:
        subscription = self.core.subscribe_pipelines(request.subscriberName)
        async for status in status_codes.subscription(
            context, subscription, self.streams, rpc="SubscribePipelineStatus", subscriber=request.subscriberName
        ):
            yield status

    async def PipelineStatusEvent(
        self, request: chainer_pb2.PipelineUpdateStatusMessage, context: Context
    ) -> chainer_pb2.PipelineUpdateStatusResponse:
        update = request.update
        self.core.record_pipeline_ack(update.pipeline, update.version, request.success, request.reason)
        return chainer_pb2.PipelineUpdateStatusResponse()
