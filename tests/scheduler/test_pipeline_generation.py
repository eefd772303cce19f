"""A LoadPipeline whose spec is unchanged but whose kubernetesMeta.generation is new (a Pipeline resource whose
metadata or unknown fields changed) keeps the version and records the new generation: the status then says which
generation it describes, so a controller never reads an old generation's status as the new one's, and never sees a
new version for an unchanged spec."""

from __future__ import annotations

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from scheduler.persistence import MemoryStateStore
from tests.support.scheduler_in_process import in_process_scheduler


def a_pipeline(generation: int) -> pb.Pipeline:
    return pb.Pipeline(
        name="chain",
        steps=[
            pb.PipelineStep(name="first", inputs=["chain.inputs"]),
            pb.PipelineStep(name="second", inputs=["first"]),
        ],
        output=pb.PipelineOutput(steps=["second"]),
        kubernetesMeta=pb.KubernetesMeta(namespace="team-a", generation=generation),
    )


async def latest(stub: pb_grpc.SchedulerAsyncStub) -> pb.PipelineWithState:
    statuses = [
        status async for status in stub.PipelineStatus(pb.PipelineStatusRequest(subscriberName="t", name="chain"))
    ]
    return statuses[-1].versions[-1]


async def test_a_new_generation_of_an_unchanged_pipeline_keeps_its_version_and_records_the_generation() -> None:
    store = MemoryStateStore()
    async with in_process_scheduler(store) as scheduler:
        stub = pb_grpc.SchedulerStub(scheduler.channel())
        await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=a_pipeline(1)))
        first = await latest(stub)
        await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=a_pipeline(2)))
        second = await latest(stub)
        assert second.pipeline.version == first.pipeline.version == 1, "an unchanged spec makes no new version"
        assert second.pipeline.uid == first.pipeline.uid
        assert second.pipeline.kubernetesMeta.generation == 2, "the status describes the generation last sent"
        scheduler.core.check_invariants()
    async with in_process_scheduler(store) as restarted:
        stub = pb_grpc.SchedulerStub(restarted.channel())
        again = await latest(stub)
        assert (again.pipeline.version, again.pipeline.kubernetesMeta.generation) == (1, 2), "and it is durable"
