"""Pipelines and experiments survive kill -9 of the scheduler: what was acknowledged is there after a restart."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.processes import start_scheduler, stop_process
from tests.support.scheduler_client import routed_experiments


def _pipeline(name: str, second_input: str) -> pb.Pipeline:
    return pb.Pipeline(
        name=name,
        steps=[pb.PipelineStep(name="a"), pb.PipelineStep(name="b", inputs=[second_input])],
        output=pb.PipelineOutput(steps=["b"]),
    )


async def test_pipelines_and_experiments_survive_kill_minus_nine(tmp_path: Path) -> None:
    first = start_scheduler(tmp_path)
    try:
        async with grpc.aio.insecure_channel(first.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=_pipeline("flow", "a")), timeout=10)
            await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=_pipeline("flow", "a.outputs")), timeout=10)
            await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=_pipeline("other", "a")), timeout=10)
            experiment = pb.Experiment(
                name="ab",
                default="a",
                candidates=[pb.ExperimentCandidate(name="a", weight=3), pb.ExperimentCandidate(name="b", weight=1)],
                mirror=pb.ExperimentMirror(name="c", percent=20),
                resourceType=pb.MODEL,
            )
            await stub.StartExperiment(pb.StartExperimentRequest(experiment=experiment), timeout=10)
            gone = pb.Experiment(name="old", candidates=[pb.ExperimentCandidate(name="c", weight=1)])
            await stub.StartExperiment(pb.StartExperimentRequest(experiment=gone), timeout=10)
            await stub.StopExperiment(pb.StopExperimentRequest(name="old"), timeout=10)
            before_pipelines = [
                (s.pipelineName, v.pipeline.version, v.pipeline.uid, v.pipeline)
                async for s in stub.PipelineStatus(pb.PipelineStatusRequest(allVersions=True), timeout=10)
                for v in s.versions
            ]
            before_experiments = [
                (s.experimentName, s.statusDescription)
                async for s in stub.ExperimentStatus(pb.ExperimentStatusRequest(), timeout=10)
            ]
        os.kill(first.process.pid, signal.SIGKILL)  # acknowledged is acknowledged: no graceful save here
        first.process.wait(10)
    finally:
        stop_process(first.process)

    second = start_scheduler(tmp_path)
    try:
        async with grpc.aio.insecure_channel(second.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            after_pipelines = [
                (s.pipelineName, v.pipeline.version, v.pipeline.uid, v.pipeline)
                async for s in stub.PipelineStatus(pb.PipelineStatusRequest(allVersions=True), timeout=10)
                for v in s.versions
            ]
            after_experiments = [
                (s.experimentName, s.statusDescription)
                async for s in stub.ExperimentStatus(pb.ExperimentStatusRequest(), timeout=10)
            ]
            # The experiment's whole spec came back (the stopped one is not routed), not just its name.
            routed = await routed_experiments(channel)
    finally:
        stop_process(second.process)
    assert sorted((n, v, u) for n, v, u, _ in before_pipelines) == sorted((n, v, u) for n, v, u, _ in after_pipelines)
    assert [
        p.SerializeToString(deterministic=True) for *_, p in sorted(before_pipelines, key=lambda t: (t[0], t[1]))
    ] == [p.SerializeToString(deterministic=True) for *_, p in sorted(after_pipelines, key=lambda t: (t[0], t[1]))]
    assert {n for n, *_ in after_pipelines} == {"flow", "other"}
    assert {v for n, v, *_ in after_pipelines if n == "flow"} >= {2}
    assert sorted(before_experiments) == sorted(after_experiments)
    assert {name for name, _ in after_experiments} == {"ab", "old"}
    assert routed == {"ab": experiment}
