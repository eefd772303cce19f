"""gateway.replica_client against real HTTP servers on loopback ports standing in for replicas (each answers
what the test tells it and counts the requests it got): which answers are retried on another replica, what
the caller is told, and which replicas are skipped for a while (on a clock the test moves): only those that
cannot be connected to, or whose proxy says its server is down (SERVER_DOWN_HEADER)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from gateway.inference_types import InferenceError
from gateway.replica_client import EJECT_SECONDS, MAX_EJECT_SECONDS, ReplicaClient
from gateway.routing_table import Endpoint
from modelplane.inference_errors import SERVER_DOWN_HEADER
from tests.support.http_stand_ins import serving

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/root/.cache/modelplane/venvs/mlserver/lib/python3.11/site-packages/mlserver/codecs/numpy.py", '
    "line 163, in decode_input\n"
    "    return model_data.reshape(request_input.shape)\n"
    "ValueError: cannot reshape array of size 8 into shape (1,4)\n"
)


@dataclass
class Replica:
    """One stand-in replica: ``answer`` says what it answers; ``hits`` counts the requests."""

    index: int
    answer: Callable[[], web.Response] = lambda: web.json_response({"outputs": []})
    hits: int = 0
    stalled: asyncio.Event | None = None  # when set, requests wait for it before they are answered
    url: str = ""
    runner: web.AppRunner | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("mlserver", self.index, self.url, "")


async def _start(replica: Replica) -> None:
    async def infer(_request: web.Request) -> web.Response:
        replica.hits += 1
        if replica.stalled is not None:
            await replica.stalled.wait()
        return replica.answer()

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    replica.runner = web.AppRunner(app)
    await replica.runner.setup()
    site = web.TCPSite(replica.runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    replica.url = f"http://127.0.0.1:{port}"


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    started = [Replica(index) for index in range(3)]
    for replica in started:
        await _start(replica)
    yield started
    for replica in started:
        if replica.stalled is not None:
            replica.stalled.set()
        if replica.runner is not None:
            await replica.runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[ReplicaClient]:
    made = ReplicaClient(max_attempts=3, timeout_seconds=30)
    yield made
    await made.close()


async def send(client: ReplicaClient, replicas: list[Replica]) -> bytes:
    answer = await client.send(
        [r.endpoint for r in replicas],
        method="POST",
        path="/v2/models/m/infer",
        body=b"{}",
        headers={},
        what="model 'm'",
    )
    return answer.body


def text(status: int, body: str) -> Callable[[], web.Response]:
    return lambda: web.Response(status=status, text=body)


def error(status: int, message: str) -> Callable[[], web.Response]:
    return lambda: web.json_response({"error": message}, status=status)


def server_down(message: str = "the inference server is down: MLServer exited") -> Callable[[], web.Response]:
    """What an agent's proxy answers while its server is down or unreachable."""
    return lambda: web.json_response({"error": message}, status=503, headers={SERVER_DOWN_HEADER: "1"})


@pytest.mark.parametrize(
    ("answer", "status", "words"),
    [
        (error(400, "The 'np' codec only supports a single input tensor"), 400, "single input tensor"),
        (text(500, TRACEBACK), 400, "ValueError: cannot reshape array of size 8 into shape (1,4)"),
        (
            lambda: web.json_response(
                {"detail": [{"loc": ["body", "inputs", 0, "datatype"], "msg": "bad"}]}, status=422
            ),
            422,
            "inputs.0.datatype: bad",
        ),
        (error(500, "Unable to parse 'data': Shape does not match true shape of 'data' field"), 400, "Unable to parse"),
        (error(413, "too large"), 413, "too large"),
    ],
)
async def test_a_request_the_replica_found_invalid_is_answered_at_once_and_not_retried(
    client: ReplicaClient, replicas: list[Replica], answer: Callable[[], web.Response], status: int, words: str
) -> None:
    for replica in replicas:
        replica.answer = answer
    with pytest.raises(InferenceError) as raised:
        await send(client, replicas)
    assert raised.value.status == status
    assert words in raised.value.message
    assert raised.value.message.startswith("model 'm': ")
    assert "Traceback" not in raised.value.message
    assert "site-packages" not in raised.value.message
    assert sum(r.hits for r in replicas) == 1, "another replica would say the same: no retry"


@pytest.mark.parametrize(
    ("failing", "final_status"),
    [
        (text(500, TRACEBACK.replace("ValueError", "KeyError")), 502),  # the server failed on it
        (error(500, "something broke"), 502),
        (error(503, "busy"), 503),  # could not answer now
        (error(503, "could not load m: the server said 500"), 503),  # this model, on this replica
        (server_down(), 503),
        (error(502, "the inference server's answer was unusable"), 503),
        (error(404, "model m is not loaded on this replica"), 503),  # moving
    ],
)
async def test_failures_go_to_another_replica_and_are_summed_up_when_all_fail(
    client: ReplicaClient, replicas: list[Replica], failing: Callable[[], web.Response], final_status: int
) -> None:
    replicas[0].answer = failing
    replicas[1].answer = failing
    for _ in range(6):  # whichever replica is tried first, the request ends on the good one
        assert json.loads(await send(client, replicas)) == {"outputs": []}
    assert replicas[2].hits == 6
    replicas[2].answer = failing
    with pytest.raises(InferenceError) as raised:
        await send(client, replicas)
    assert raised.value.status == final_status
    for replica in replicas:
        assert f"mlserver/{replica.index}" in raised.value.message
    assert "Traceback" not in raised.value.message
    assert len(raised.value.message) < 1200


async def test_a_replica_that_cannot_be_reached_is_skipped(client: ReplicaClient, replicas: list[Replica]) -> None:
    assert replicas[0].runner is not None
    await replicas[0].runner.cleanup()  # its port now refuses connections
    replicas[0].runner = None
    for _ in range(6):
        assert json.loads(await send(client, replicas)) == {"outputs": []}
    assert replicas[1].hits + replicas[2].hits == 6


async def test_only_tracing_headers_that_http_can_carry_are_forwarded(
    client: ReplicaClient, replicas: list[Replica]
) -> None:
    seen: list[dict[str, str]] = []

    async def infer(request: web.Request) -> web.Response:
        seen.append({name.lower(): value for name, value in request.headers.items()})
        return web.json_response({"outputs": []})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    async with serving(app) as base:
        headers = {
            "x-request-id": "abc",
            "traceparent": "ok\u00e9",
            "authorization": "secret",
            "tracestate": "x" * 5000,
        }
        await client.send(
            [Endpoint("s", 0, base, "")],
            method="POST",
            path="/v2/models/m/infer",
            body=b"{}",
            headers=headers,
            what="m",
        )
    [got] = seen
    assert got.get("x-request-id") == "abc"
    assert "traceparent" not in got  # not something an HTTP header can carry as given
    assert "tracestate" not in got  # too long
    assert "authorization" not in got  # not ours to pass on


# ----------------------------------------------------------------- passive ejection


class Clock:
    """time.monotonic as the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def timed() -> AsyncIterator[tuple[ReplicaClient, Clock, list[tuple[str, float]]]]:
    clock = Clock()
    ejections: list[tuple[str, float]] = []
    made = ReplicaClient(
        max_attempts=3,
        timeout_seconds=30,
        clock=clock,
        on_eject=lambda endpoint, seconds, _reason: ejections.append((endpoint.key, seconds)),
    )
    yield made, clock, ejections
    await made.close()


async def sends(client: ReplicaClient, replicas: list[Replica], count: int) -> None:
    for _ in range(count):
        assert json.loads(await send(client, replicas)) == {"outputs": []}


@pytest.mark.parametrize("down", ["refuses connections", "says its server is down"])
async def test_a_replica_that_cannot_answer_is_skipped_for_a_while_then_tried_again(
    timed: tuple[ReplicaClient, Clock, list[tuple[str, float]]], replicas: list[Replica], down: str
) -> None:
    client, clock, ejections = timed
    dead = replicas[0]
    if down == "refuses connections":
        assert dead.runner is not None
        await dead.runner.cleanup()
        dead.runner = None
    else:
        dead.answer = server_down()
    await sends(client, replicas, 30)  # every one answered by the others
    assert ejections == [("mlserver/0", EJECT_SECONDS)]
    if dead.runner is not None:
        assert dead.hits == 1, "after one failure it is skipped"
    # The period ends: the next requests try it again (one of them fails over), and it is skipped twice as long.
    clock.now += EJECT_SECONDS
    await sends(client, replicas, 3)
    assert ejections[-1] == ("mlserver/0", 2 * EJECT_SECONDS)
    clock.now += 1.5 * EJECT_SECONDS
    await sends(client, replicas, 10)
    assert len(ejections) == 2, "still skipped"
    # Each failure in a row doubles the period, up to the most.
    for _ in range(10):
        clock.now += MAX_EJECT_SECONDS
        await sends(client, replicas, 3)
    assert ejections[-1] == ("mlserver/0", MAX_EJECT_SECONDS)
    assert [seconds for _, seconds in ejections[:6]] == [1, 2, 4, 8, 16, MAX_EJECT_SECONDS]
    if dead.runner is not None:
        # It answers again: the next time it is tried it is back, and a later failure starts from 1 s.
        dead.answer = lambda: web.json_response({"outputs": []})
        clock.now += MAX_EJECT_SECONDS
        before = dead.hits
        await sends(client, replicas, 9)
        assert dead.hits >= before + 3, "back in the rotation"
        dead.answer = server_down()
        await sends(client, replicas, 3)
        assert ejections[-1] == ("mlserver/0", EJECT_SECONDS)


async def test_a_models_only_replica_still_gets_every_request_while_skipped(
    timed: tuple[ReplicaClient, Clock, list[tuple[str, float]]], replicas: list[Replica]
) -> None:
    client, _, ejections = timed
    only = replicas[:1]
    only[0].answer = server_down()
    for _ in range(3):
        with pytest.raises(InferenceError) as raised:
            await send(client, only)
        assert raised.value.status == 503
    assert only[0].hits == 3
    assert len(ejections) == 1
    only[0].answer = lambda: web.json_response({"outputs": []})
    await sends(client, only, 1)
    assert only[0].hits == 4


async def test_skipped_replicas_are_tried_last_when_the_others_fail(
    timed: tuple[ReplicaClient, Clock, list[tuple[str, float]]], replicas: list[Replica]
) -> None:
    client, _, ejections = timed
    replicas[0].answer = server_down()
    await sends(client, replicas, 6)
    assert ejections == [("mlserver/0", EJECT_SECONDS)]  # replica 0 is now skipped
    replicas[0].answer = lambda: web.json_response({"outputs": []})
    replicas[1].answer = replicas[2].answer = error(500, "broken")
    hits = replicas[0].hits
    await sends(client, replicas, 1)  # 1 and 2 fail, then the skipped one answers
    assert replicas[0].hits == hits + 1


@pytest.mark.parametrize(
    "answer",
    [
        error(404, "not here"),
        error(400, "bad request"),
        error(500, "broken"),
        text(500, TRACEBACK),
        # One model that could not be loaded again on the replica: its other models still answer there.
        error(503, "could not load m: MLServer answered 500"),
        error(503, "no room on this replica to load m again"),
        error(502, "the inference server's answer was unusable"),
        error(429, "too many requests"),
        error(504, "the inference server did not answer in time"),  # one slow request
    ],
)
async def test_a_replica_that_answers_is_not_skipped(
    timed: tuple[ReplicaClient, Clock, list[tuple[str, float]]],
    replicas: list[Replica],
    answer: Callable[[], web.Response],
) -> None:
    client, _, ejections = timed
    for replica in replicas:
        replica.answer = answer
    for _ in range(6):
        with pytest.raises(InferenceError):
            await send(client, replicas)
    assert ejections == []
    assert min(replica.hits for replica in replicas) >= 2


async def test_a_request_that_timed_out_is_not_retried_and_its_replica_is_not_skipped(
    replicas: list[Replica],
) -> None:
    ejections: list[str] = []
    # The stalled replica never answers: the client's own timeout ends the request (the test waits for
    # nothing else; a slow machine only makes the other replicas' requests slower, never time out here).
    client = ReplicaClient(max_attempts=3, timeout_seconds=2, on_eject=lambda e, _s, _r: ejections.append(e.key))
    try:
        for replica in replicas:
            replica.stalled = asyncio.Event()
        with pytest.raises(InferenceError) as raised:
            await send(client, replicas)
        assert raised.value.status == 504
        assert "did not answer within 2s" in raised.value.message
        assert sum(r.hits for r in replicas) == 1, "a request that took too long on one replica is not tried again"
        assert ejections == []
        # The proxy's own 504 (its server did not answer in time) is not retried either.
        for replica in replicas:
            assert replica.stalled is not None
            replica.stalled.set()  # the stalled request's handler ends (its caller is long gone)
            replica.stalled = None
            replica.answer = error(504, "the inference server did not answer in time")
        with pytest.raises(InferenceError) as raised:
            await send(client, replicas)
        assert raised.value.status == 504
        assert sum(r.hits for r in replicas) == 2
        assert ejections == []
    finally:
        await client.close()
