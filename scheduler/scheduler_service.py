"""The Seldon Core v2 Scheduler API servicer: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from typing import Any

from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane import __version__
from scheduler.unimplemented import not_built


class SchedulerService(pb_grpc.SchedulerServicer):
    async def SchedulerStatus(
        self, request: pb.SchedulerStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.SchedulerStatusResponse:
        return pb.SchedulerStatusResponse(applicationVersion=__version__)

    ServerNotify = not_built("ServerNotify")
    LoadModel = not_built("LoadModel")
    UnloadModel = not_built("UnloadModel")
    LoadPipeline = not_built("LoadPipeline")
    UnloadPipeline = not_built("UnloadPipeline")
    StartExperiment = not_built("StartExperiment")
    StopExperiment = not_built("StopExperiment")
    ServerStatus = not_built("ServerStatus")
    ModelStatus = not_built("ModelStatus")
    PipelineStatus = not_built("PipelineStatus")
    ExperimentStatus = not_built("ExperimentStatus")
    SubscribeServerStatus = not_built("SubscribeServerStatus")
    SubscribeModelStatus = not_built("SubscribeModelStatus")
    SubscribeExperimentStatus = not_built("SubscribeExperimentStatus")
    SubscribePipelineStatus = not_built("SubscribePipelineStatus")
    PipelineStatusEvent = not_built("PipelineStatusEvent")
    ModelStatusEvent = not_built("ModelStatusEvent")
    SubscribeControlPlane = not_built("SubscribeControlPlane")
