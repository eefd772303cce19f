"""The dashboard's HTTP sources. The trainer's: against the trainer's real run status API (its Redis run registry
on a real Redis), runs and their metrics reach the board as they change, and a trainer that cannot answer shows as
down with why, its last runs kept; against stand-ins (named so), answers too big or not runs are refused with why.
The gateway's metrics: a page read whole however it is chunked, the share following the counters."""

from __future__ import annotations

import asyncio
import contextlib
import functools

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from dashboard.board_state import Kind
from dashboard.http_sources import MAX_RUNS_BYTES, GatewayMetricsPoller, TrainerRunsPoller, runs_url
from dashboard.live_board import LiveBoard
from modelplane.addresses import Address
from tests.support.http_stand_ins import serving
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for
from trainer.service.run_registry import RunRecord, RunRegistry
from trainer.service.status_api import start_status_api

pytest_plugins = ["tests.support.redis_server"]

TIMEOUT = 30.0


def _source(board: LiveBoard) -> dict[str, object]:
    view = board.state.view(Kind.SOURCE, "trainer")
    assert view is not None
    return view


async def test_training_runs_and_their_metrics_follow_the_trainers_status_api(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    registry = RunRegistry(client, redis_server.unique_prefix("dashboard"), lease_seconds=30, ttl_seconds=600)
    runner, port = await start_status_api(Address("127.0.0.1", 0), registry, lambda: {})
    board = LiveBoard()
    poller = asyncio.create_task(TrainerRunsPoller(board, runs_url(f"http://127.0.0.1:{port}"), 0.2, None, None).run())
    try:
        run = RunRecord(run_id="run-1", event_id="event-1", state="training")
        await registry.save(run, new=True)
        await wait_for(lambda: board.state.view(Kind.RUN, "run-1") is not None, TIMEOUT, "the run on the board")
        view = board.state.view(Kind.RUN, "run-1")
        assert view is not None
        assert (view["state"], view["metrics"]) == ("training", {})
        assert _source(board)["ok"] is True

        run.state, run.metrics, run.model_uri = "succeeded", {"accuracy": 0.96, "f1": 0.95}, "s3://models/run-1"
        await registry.save(run)
        await wait_for(
            lambda: (board.state.view(Kind.RUN, "run-1") or {}).get("state") == "succeeded", TIMEOUT, "the run's end"
        )
        view = board.state.view(Kind.RUN, "run-1")
        assert view is not None
        assert view["metrics"] == {"accuracy": 0.96, "f1": 0.95}
        assert view["modelUri"] == "s3://models/run-1"

        await runner.cleanup()  # the trainer goes away
        await wait_for(lambda: _source(board)["ok"] is False, TIMEOUT, "the trainer shown as down")
        assert _source(board)["detail"]
        assert board.state.view(Kind.RUN, "run-1") is not None  # its last runs stay
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await runner.cleanup()
        await client.aclose()


async def _answer_with(body: bytes, content_type: str, request: web.Request) -> web.StreamResponse:
    """A stand-in for a trainer or gateway that answers ``body`` in chunks, as a big answer comes."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    for start in range(0, len(body), 64 * 1024):
        await response.write(body[start : start + 64 * 1024])
    await response.write_eof()
    return response


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"runs": [' + b'{"run_id": "r", "padding": "' + b"x" * MAX_RUNS_BYTES + b'"}]}', "answered more than"),
        (b"<html>not json</html>", "not JSON"),
        (b'{"records": []}', 'without a "runs" list'),
    ],
)
async def test_a_trainer_answer_that_is_too_big_or_not_runs_shows_the_source_down_with_why(
    body: bytes, why: str
) -> None:
    app = web.Application()
    app.router.add_get("/runs", functools.partial(_answer_with, body, "application/json"))
    board = LiveBoard()
    async with serving(app) as url:
        poller = asyncio.create_task(TrainerRunsPoller(board, runs_url(url), 0.2, None, None).run())
        try:
            await wait_for(lambda: why in str(_source(board)["detail"]), TIMEOUT, f"the trainer shown down: {why}")
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
    assert _source(board)["ok"] is False
    assert list(board.state.names(Kind.RUN)) == []


async def test_experiment_traffic_comes_from_a_metrics_page_read_in_chunks() -> None:
    """The gateway poller reads a page larger than one chunk whole, and shares traffic between the experiment's
    routes by the counters' growth between scrapes."""
    counts = {"a": 0, "b": 0}
    filler = "".join(f"# a comment line to make the page long {index}\n" for index in range(5000)).encode()

    async def metrics(request: web.Request) -> web.StreamResponse:
        lines = [
            f'modelplane_gateway_experiment_routes_total{{experiment="ab",route="{route}"}} {float(count)}\n'
            for route, count in counts.items()
        ]
        return await _answer_with(filler + "".join(lines).encode(), "text/plain", request)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    board = LiveBoard()
    board.put(
        Kind.EXPERIMENT_SPEC,
        "ab",
        {"name": "ab", "resourceType": "model", "default": "", "candidates": [{"name": "a"}, {"name": "b"}]},
    )
    async with serving(app) as url:
        poller = asyncio.create_task(GatewayMetricsPoller(board, url + "/metrics", 0.1, None, None, window=2).run())
        try:
            await wait_for(lambda: board.state.view(Kind.TRAFFIC, "ab") is not None, TIMEOUT, "a first scrape")
            counts.update(a=3, b=1)
            await wait_for(
                lambda: (board.state.view(Kind.TRAFFIC, "ab") or {}).get("total") == 4.0, TIMEOUT, "the new requests"
            )
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
    traffic = board.state.view(Kind.TRAFFIC, "ab")
    assert traffic is not None
    assert [(route["name"], route["share"]) for route in traffic["routes"]] == [("a", 0.75), ("b", 0.25)]
