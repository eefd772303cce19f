"""gateway.replica_client against real HTTP servers on loopback ports standing in for replicas (each answers
what the test tells it and counts the requests it got): which answers are retried on another replica, and
what the caller is told."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from gateway.inference_types import InferenceError
from gateway.replica_client import ReplicaClient
from gateway.routing_table import Endpoint

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
    url: str = ""
    runner: web.AppRunner | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("mlserver", self.index, self.url, "")


async def _start(replica: Replica) -> None:
    async def infer(_request: web.Request) -> web.Response:
        replica.hits += 1
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
        (error(502, "the inference server is unreachable"), 503),
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
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        headers = {
            "x-request-id": "abc",
            "traceparent": "ok\u00e9",
            "authorization": "secret",
            "tracestate": "x" * 5000,
        }
        await client.send(
            [Endpoint("s", 0, f"http://127.0.0.1:{port}", "")],
            method="POST",
            path="/v2/models/m/infer",
            body=b"{}",
            headers=headers,
            what="m",
        )
    finally:
        await runner.cleanup()
    [got] = seen
    assert got.get("x-request-id") == "abc"
    assert "traceparent" not in got  # not something an HTTP header can carry as given
    assert "tracestate" not in got  # too long
    assert "authorization" not in got  # not ours to pass on
