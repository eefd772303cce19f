"""The dashboard's feed against a real scheduler process: models, pipelines and experiments (with their weights)
reach the board from the status streams; a scheduler that goes away shows as down with why; and the one that
answers after it is listed whole, so what it does not hold leaves the board (nothing stale stays on the page)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from grpc import aio

from dashboard.board_state import Kind
from dashboard.live_board import LiveBoard
from dashboard.scheduler_feed import SchedulerFeed
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.addresses import Address
from modelplane.transport import TransportSecurity
from tests.support.processes import SchedulerProcess, start_scheduler, stop_process
from tests.support.scheduler_client import model_spec
from tests.support.waiting import wait_for

TIMEOUT = 60.0  # hang guard: the feed reconnects with a backoff of up to 10 s


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _scheduler(folder: Path, port: int) -> SchedulerProcess:
    """A scheduler on ``port`` with its state in ``folder`` (started off the event loop: the feed runs on it)."""
    await asyncio.to_thread(folder.mkdir)
    return await asyncio.to_thread(start_scheduler, folder, f"--listen=127.0.0.1:{port}")


def _source(board: LiveBoard) -> dict[str, object]:
    view = board.state.view(Kind.SOURCE, "scheduler")
    assert view is not None
    return view


async def test_the_board_follows_the_scheduler_and_a_new_one_replaces_what_the_old_one_held(tmp_path: Path) -> None:
    port = _free_port()
    first = await _scheduler(tmp_path / "first", port)
    board = LiveBoard()
    feed = asyncio.create_task(SchedulerFeed(board, Address("127.0.0.1", port), TransportSecurity(), None).run())
    try:
        await wait_for(lambda: _source(board)["ok"] is True, TIMEOUT, "the feed to follow every stream")
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.SchedulerStub(channel)
            for name in ("a", "b"):
                await stub.LoadModel(pb.LoadModelRequest(model=model_spec(name)), timeout=30)
            pipeline = pb.Pipeline(name="p")
            pipeline.steps.add(name="a")
            pipeline.steps.add(name="b", inputs=["a.outputs"])
            await stub.LoadPipeline(pb.LoadPipelineRequest(pipeline=pipeline), timeout=30)
            experiment = pb.Experiment(name="ab", default="a")
            experiment.candidates.add(name="a", weight=60)
            experiment.candidates.add(name="b", weight=40)
            await stub.StartExperiment(pb.StartExperimentRequest(experiment=experiment), timeout=30)
        state = board.state
        await wait_for(
            lambda: (
                {"a", "b"} <= set(state.names(Kind.MODEL))
                and state.view(Kind.PIPELINE, "p") is not None
                and state.view(Kind.EXPERIMENT, "ab") is not None
                and state.view(Kind.EXPERIMENT_SPEC, "ab") is not None
            ),
            TIMEOUT,
            "the models, the pipeline and the experiment on the board",
        )
        pipeline_view = state.view(Kind.PIPELINE, "p")
        assert pipeline_view is not None
        assert pipeline_view["steps"] == [{"name": "a", "inputs": []}, {"name": "b", "inputs": ["a"]}]
        spec = state.view(Kind.EXPERIMENT_SPEC, "ab")
        assert spec is not None
        assert spec["candidates"] == [{"name": "a", "weight": 60}, {"name": "b", "weight": 40}]

        await asyncio.to_thread(stop_process, first.process)
        # First "the scheduler ended the stream" (it closes them as it stops), then, once it retried, why it cannot.
        await wait_for(
            lambda: _source(board)["ok"] is False and "cannot reach the scheduler" in str(_source(board)["detail"]),
            TIMEOUT,
            "the feed to say the scheduler cannot be reached",
        )
        assert {"a", "b"} <= set(state.names(Kind.MODEL))  # the last known state stays while it is down

        second = await _scheduler(tmp_path / "second", port)  # a fresh state: none of them
        try:
            await wait_for(lambda: _source(board)["ok"] is True, TIMEOUT, "the feed to follow the new scheduler")
            assert list(state.names(Kind.MODEL)) == []
            assert list(state.names(Kind.PIPELINE)) == []
            assert list(state.names(Kind.EXPERIMENT)) == []
            assert list(state.names(Kind.EXPERIMENT_SPEC)) == []
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.SchedulerStub(channel)
                await stub.LoadModel(pb.LoadModelRequest(model=model_spec("c")), timeout=30)
                await wait_for(lambda: state.view(Kind.MODEL, "c") is not None, TIMEOUT, "model c on the board")
                await stub.UnloadModel(pb.UnloadModelRequest(model=pb.ModelReference(name="c")), timeout=30)
                await wait_for(lambda: state.view(Kind.MODEL, "c") is None, TIMEOUT, "model c gone from the board")
        finally:
            await asyncio.to_thread(stop_process, second.process)
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
