"""kill -9 of the scheduler in the middle of a burst of LoadPipeline or StartExperiment calls.

Workers send calls back to back, each for names of its own, every name first in one spec and then changed, so
calls are in flight when the scheduler dies. After a restart over the same state directory: every acknowledged
call's effect is there with its whole spec; an unacknowledged one is there whole or not at all, never in part,
never in a spec nobody sent.

tests/scheduler/test_control_plane_durability.py covers a kill after a quiet sequence of calls (versions, stops, the
experiment's routed spec); this adds the kill mid-burst.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf.message import Message

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.cluster_fixtures import WAIT
from tests.support.processes import SchedulerProcess, start_scheduler, stop_process
from tests.support.scheduler_client import routed_experiments

pytestmark = pytest.mark.timeout(300)  # a hang guard only

WORKERS = 8
KILL_AFTER = 60  # acknowledgements before the kill; the workers keep sending, so calls are in flight then
Spec = TypeVar("Spec", bound=Message)


@dataclass
class Burst:
    """Per name, the specs one worker sent in order and how many of them were acknowledged."""

    sent: dict[str, list[bytes]] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    failures: list[grpc.StatusCode] = field(default_factory=list)

    def total_acked(self) -> int:
        return sum(self.acked.values())

    def check(self, name: str, stored: list[bytes]) -> None:
        """``stored`` (what the restarted scheduler holds for ``name``, oldest first) must be what was sent, in
        order, up to at least every acknowledged call: nothing acknowledged lost, nothing half there."""
        sent = self.sent.get(name, [])
        acked = self.acked.get(name, 0)
        assert stored == sent[: len(stored)], f"{name}: stored specs are not the ones sent, in order"
        assert len(stored) >= acked, f"{name}: {acked} call(s) acknowledged, {len(stored)} stored"


async def burst_then_kill(
    scheduler: SchedulerProcess,
    make: Callable[[str, int], Spec],
    send: Callable[[pb_grpc.SchedulerAsyncStub, Spec], Awaitable[object]],
) -> Burst:
    """WORKERS workers each send ``make(name, 0)`` then ``make(name, 1)`` for one name after another until a
    call fails; the scheduler is killed with SIGKILL once KILL_AFTER calls were acknowledged."""
    burst = Burst()
    enough = asyncio.Event()

    async def worker(number: int, stub: pb_grpc.SchedulerAsyncStub) -> None:
        call = 0
        while True:
            name, variant = f"w{number}-{call // 2}", call % 2
            call += 1
            spec = make(name, variant)
            burst.sent.setdefault(name, []).append(spec.SerializeToString(deterministic=True))
            try:
                await send(stub, spec)
            except grpc.aio.AioRpcError as error:
                burst.failures.append(error.code())
                return
            burst.acked[name] = burst.acked.get(name, 0) + 1
            if burst.total_acked() >= KILL_AFTER:
                enough.set()

    async with grpc.aio.insecure_channel(scheduler.listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        workers = [asyncio.create_task(worker(number, stub)) for number in range(WORKERS)]
        await asyncio.wait_for(enough.wait(), WAIT)
        os.kill(scheduler.process.pid, signal.SIGKILL)
        await asyncio.to_thread(scheduler.process.wait, 30)
        await asyncio.wait_for(asyncio.gather(*workers), WAIT)
    # Every worker ended on a failed call: the kill came mid-burst, with calls in flight.
    assert len(burst.failures) == WORKERS
    assert set(burst.failures) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, burst.failures
    return burst


# -- pipelines -----------------------------------------------------------------------------------------------------


def pipeline(name: str, variant: int) -> pb.Pipeline:
    first = f"{name}-m{variant}"
    return pb.Pipeline(
        name=name,
        steps=[pb.PipelineStep(name=first), pb.PipelineStep(name=f"{name}-out", inputs=[f"{first}.outputs"])],
        output=pb.PipelineOutput(steps=[f"{name}-out"]),
    )


async def load_pipeline(stub: pb_grpc.SchedulerAsyncStub, spec: pb.Pipeline) -> None:
    await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=spec), timeout=WAIT)


async def test_every_acknowledged_pipeline_survives_a_kill_mid_burst(tmp_path: Path) -> None:
    burst = await burst_then_kill(start_scheduler(tmp_path), pipeline, load_pipeline)
    second = start_scheduler(tmp_path)
    try:
        async with grpc.aio.insecure_channel(second.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            request = pb.PipelineStatusRequest(allVersions=True)
            statuses = [status async for status in stub.PipelineStatus(request, timeout=WAIT)]
            # The restarted scheduler takes new calls on top of what it restored.
            await load_pipeline(stub, pipeline("after-restart", 0))
    finally:
        stop_process(second.process)
    stored: dict[str, list[bytes]] = {}
    for status in statuses:
        versions = []
        for number, version in enumerate(status.versions, 1):
            assert version.pipeline.version == number, status
            spec = pb.Pipeline()
            spec.CopyFrom(version.pipeline)
            spec.ClearField("uid")  # given by the scheduler, not sent
            spec.ClearField("version")
            versions.append(spec.SerializeToString(deterministic=True))
        stored[status.pipelineName] = versions
    assert set(stored) <= set(burst.sent), sorted(set(stored) - set(burst.sent))
    for name in burst.sent:
        burst.check(name, stored.get(name, []))


# -- experiments ---------------------------------------------------------------------------------------------------


def experiment(name: str, variant: int) -> pb.Experiment:
    return pb.Experiment(
        name=name,
        default=f"{name}-a",
        candidates=[
            pb.ExperimentCandidate(name=f"{name}-a", weight=1 + variant),
            pb.ExperimentCandidate(name=f"{name}-b", weight=3),
        ],
        resourceType=pb.MODEL,
    )


async def start_experiment(stub: pb_grpc.SchedulerAsyncStub, spec: pb.Experiment) -> None:
    await stub.StartExperiment(pb.StartExperimentRequest(experiment=spec), timeout=WAIT)


async def test_every_acknowledged_experiment_survives_a_kill_mid_burst(tmp_path: Path) -> None:
    burst = await burst_then_kill(start_scheduler(tmp_path), experiment, start_experiment)
    second = start_scheduler(tmp_path)
    try:
        async with grpc.aio.insecure_channel(second.listen) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            names = {s.experimentName async for s in stub.ExperimentStatus(pb.ExperimentStatusRequest(), timeout=WAIT)}
            routed = await routed_experiments(channel)  # each running experiment's whole spec
            await start_experiment(stub, experiment("after-restart", 0))
    finally:
        stop_process(second.process)
    assert names == set(routed)
    assert names <= set(burst.sent), sorted(names - set(burst.sent))
    for name in burst.sent:
        spec = routed.get(name)
        stored = [] if spec is None else [spec.SerializeToString(deterministic=True)]
        # StartExperiment with the same name replaces the experiment whole: only the last spec is kept.
        sent, acked = burst.sent[name], burst.acked.get(name, 0)
        if acked == 0:
            assert stored in ([], sent[:1]), name
        else:
            assert stored, f"{name}: {acked} call(s) acknowledged, nothing stored"
            assert stored[0] in sent[acked - 1 :], f"{name}: {acked} call(s) acknowledged, stored {spec}"
