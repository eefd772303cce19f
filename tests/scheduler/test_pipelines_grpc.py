"""The pipeline RPCs over real gRPC against a `modelplane scheduler` process."""

from __future__ import annotations

import grpc
import pytest

from generated.mlops.chainer import chainer_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.processes import SchedulerProcess

Status = pb.PipelineVersionState.PipelineStatus


def two_steps(name: str) -> pb.Pipeline:
    return pb.Pipeline(
        name=name,
        steps=[pb.PipelineStep(name="pre"), pb.PipelineStep(name="model", inputs=["pre.outputs"])],
        output=pb.PipelineOutput(steps=["model"]),
    )


async def test_load_status_ack_unload(scheduler: SchedulerProcess) -> None:
    async with grpc.aio.insecure_channel(scheduler.listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        subscription = stub.SubscribePipelineStatus(pb.PipelineSubscriptionRequest(subscriberName="t"))
        await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=two_steps("flow")), timeout=10)
        first = await subscription.read()
        assert isinstance(first, pb.PipelineStatusResponse)
        assert first.pipelineName == "flow"
        [status] = [s async for s in stub.PipelineStatus(pb.PipelineStatusRequest(name="flow"), timeout=10)]
        version = status.versions[-1]
        assert version.state.pipelineVersion == 1
        assert version.pipeline.uid  # each version gets its own uid
        assert version.state.status == Status.Value("PipelineCreating")  # its models are not loaded
        assert version.state.modelsReady is False

        ack = chainer_pb2.PipelineUpdateStatusMessage(
            update=chainer_pb2.PipelineUpdateMessage(
                op=chainer_pb2.PipelineUpdateMessage.Create, pipeline="flow", version=1, uid=version.pipeline.uid
            ),
            success=True,
        )
        await stub.PipelineStatusEvent(ack, timeout=10)
        [status] = [s async for s in stub.PipelineStatus(pb.PipelineStatusRequest(name="flow"), timeout=10)]
        assert status.versions[-1].state.pipelineGwStatus == Status.Value("PipelineReady")

        await stub.UnloadPipeline(pb.UnloadPipelineRequest(name="flow"), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            [s async for s in stub.PipelineStatus(pb.PipelineStatusRequest(name="flow"), timeout=10)]
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        subscription.cancel()


@pytest.mark.parametrize(
    ("pipeline", "words"),
    [
        (pb.Pipeline(name="empty"), "step"),
        (pb.Pipeline(name="Bad_Name", steps=[pb.PipelineStep(name="a")]), "Bad_Name"),
        (pb.Pipeline(name="p", steps=[pb.PipelineStep(name="a", inputs=["ghost.outputs"])]), "ghost"),
        (pb.Pipeline(name="p", steps=[pb.PipelineStep(name="p")]), "'p'"),
    ],
)
async def test_bad_pipelines_are_failed_precondition(
    scheduler: SchedulerProcess, pipeline: pb.Pipeline, words: str
) -> None:
    async with grpc.aio.insecure_channel(scheduler.listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=pipeline), timeout=10)
        # Seldon reports pipeline validation as FAILED_PRECONDITION; its clients depend on that code.
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert words in (raised.value.details() or "")
