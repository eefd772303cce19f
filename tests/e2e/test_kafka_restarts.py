# ruff: noqa: S106 -- tokens here are identifiers of design schemas, not passwords
"""The Kafka broker restarted under its users, as a real Kafka restarts: Tansu keeping its topics, records and
committed offsets in S3 (tests/support/kafka_broker.py's DurableBroker), killed with SIGKILL and started again on the
same port.

- Under the gateway's Kafka bridge (a `modelplane gateway --kafka` process routing to a real MLServer): every
  request produced before the kill or while the broker was down is answered after it returns (at least once),
  and V2 REST keeps answering throughout.
- Under the trainer (a `modelplane trainer` process with real runs): no training event is lost, each is trained
  once, and every status message arrives.

tests/gateway/test_kafka.py has the bridge (in-process) riding out a restart of Tansu's memory engine, which
forgets every topic and group: a different fault (a broker that lost its state), kept there.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from gateway.kafka.topics import Resource, ResourceKind, TopicNames
from tests.e2e.harness import requests_waiting_on, run_processes, sigstopped
from tests.support.cluster_fixtures import WAIT, Cluster, Iris, api_of, model, until
from tests.support.kafka_broker import DurableBroker, Record, consume_until, create_topics
from tests.support.processes import start_gateway, stop_process
from tests.support.real_components import S3Server
from tests.support.redis_server import RedisServer
from tests.support.trainer_stack import (
    SUCCESS,
    event,
    get_json,
    headers_of,
    put_schema,
    stack_for,
    start_trainer,
    status_of,
    statuses_for,
    wait_for_run_state,
)
from tests.support.training_schemas import iris_multiclass_logistic

pytest_plugins = ["tests.support.real_components", "tests.support.cluster_fixtures", "tests.support.redis_server"]
pytestmark = pytest.mark.timeout(600)  # a hang guard only


def request_ids(records: list[Record]) -> list[str]:
    return [value.decode() for record in records for key, value in record.headers if key == "x-request-id"]


def waiting_producer(bootstrap: str) -> Any:
    """A producer whose sends wait (and retry) up to WAIT seconds for a broker that is away, as a client riding
    out a broker restart does; acks=all, so a send that returns is acknowledged."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        request_timeout_ms=int(WAIT * 1000),
        retry_backoff_ms=200,
    )


# -- under the gateway's Kafka bridge --------------------------------------------------------------------------


@pytest.mark.servers
async def test_every_kafka_request_is_answered_across_a_broker_restart(
    cluster: Cluster, iris: Iris, durable_broker: DurableBroker
) -> None:
    # A long heartbeat: the agent is frozen below to keep requests in flight, and must not be given up meanwhile.
    scheduler = cluster.start_scheduler("--heartbeat=30")
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    topics = TopicNames("seldon", "default")
    served = Resource(ResourceKind.MODEL, "kafka-iris")
    inputs, outputs = topics.inputs(served), topics.outputs(served)
    bootstrap = durable_broker.bootstrap
    async with api_of(cluster) as api:
        await api.load(model("kafka-iris", str(iris.folder)))
        await api.available("kafka-iris")
    gateway = await asyncio.to_thread(
        start_gateway, cluster.root / "gateway", scheduler.listen, f"--kafka={bootstrap}", "--kafka-group=gateways"
    )
    await create_topics(bootstrap, [inputs, outputs])
    body = json.dumps(iris.request).encode()
    proxy_port = int(agent.proxy_http.rsplit(":", 1)[1])
    producer = waiting_producer(bootstrap)
    await producer.start()
    try:
        # The bridge serves (its group joined): a first request comes back.
        await producer.send_and_wait(inputs, body, headers=[("x-request-id", b"warm")])
        await consume_until(bootstrap, outputs, lambda got: "warm" in request_ids(got), timeout=WAIT)

        before = [f"before-{n}" for n in range(10)]
        with sigstopped(agent.pid):
            # The bridge fetches these and sends them on; the frozen replica holds them: in flight, uncommitted.
            for request_id in before:
                await producer.send_and_wait(inputs, body, headers=[("x-request-id", request_id.encode())])

            async def in_flight() -> bool:
                return requests_waiting_on(proxy_port) > 0

            await until(in_flight, "requests from the Kafka bridge wait on the frozen replica", cluster.diagnostics)
            durable_broker.kill()
        # The replica answers them now, with the broker down: the bridge must hold the answers and its offsets.

        # While the broker is down: requests are sent (they wait for it), and V2 REST still answers.
        during = [f"during-{n}" for n in range(10)]
        sending = [
            asyncio.create_task(producer.send_and_wait(inputs, body, headers=[("x-request-id", rid.encode())]))
            for rid in during
        ]
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
            http.post(f"{gateway.url}/v2/models/kafka-iris/infer", json=iris.request) as response,
        ):
            assert response.status == 200
            assert (await response.json())["outputs"][0]["data"] == iris.expected
        assert not any(task.done() for task in sending)  # nothing is acknowledged while the broker is away

        await asyncio.to_thread(durable_broker.start)
        await asyncio.wait_for(asyncio.gather(*sending), WAIT)  # acknowledged now
    finally:
        await producer.stop()
    wanted = {"warm", *before, *during}
    answers = await consume_until(bootstrap, outputs, lambda got: wanted <= set(request_ids(got)), timeout=WAIT)
    for record in answers:
        answer = json.loads(record.value)
        assert answer["outputs"][0]["data"] == iris.expected, answer
    assert set(request_ids(answers)) == wanted  # nothing answered that was not asked
    stop_process(gateway.process)


# -- under the trainer -----------------------------------------------------------------------------------------


async def test_no_training_event_or_status_is_lost_across_a_broker_restart(
    durable_broker: DurableBroker, redis_server: RedisServer, s3_server: S3Server, tmp_path: Path
) -> None:
    stack = await stack_for(durable_broker.broker, redis_server, s3_server, tmp_path)
    await put_schema(stack, "tok", iris_multiclass_logistic(design_token="broker-restart"))
    _, address, log = start_trainer(stack, "trainer", "--max-concurrent-runs=1")
    producer = waiting_producer(durable_broker.bootstrap)
    await producer.start()
    try:
        for event_id in ("first", "second"):
            await producer.send_and_wait(stack.training_topic, event(event_id, "tok"))
        running = await wait_for_run_state(address, "training")
        assert running["event_id"] == "first"
        with sigstopped(*await run_processes(stack.work / "jobs" / running["run_id"])):  # no status before the kill
            durable_broker.kill()  # "first" is training, "second" waits behind it (one run at a time)
        late = asyncio.create_task(producer.send_and_wait(stack.training_topic, event("third", "tok")))

        # The run finishes meanwhile; its status cannot be published yet, and nothing claims it succeeded.
        async def trained() -> bool:
            code, run = await get_json(f"http://{address}/runs/{running['run_id']}")
            return code == 200 and run["state"] == "uploading"

        await until(trained, "the first run finished training, its status waiting for the broker", log.read_text)
        assert not late.done()

        await asyncio.to_thread(durable_broker.start)
        await asyncio.wait_for(late, WAIT)
    finally:
        await producer.stop()
    events = ["first", "second", "third"]
    statuses = await statuses_for(stack, events, timeout=WAIT)
    # At least once: a status may come twice (a crash between publishing and committing), never a failure.
    for event_id in events:
        assert {status_of(record).status for record in statuses[event_id]} == {SUCCESS}, statuses[event_id]
        [uri] = {headers_of(record)["modelplane-model-uri"] for record in statuses[event_id]}
        folder = uri.removeprefix(f"s3://{stack.bucket}/")
        assert [o.object_name for o in s3_server.client.list_objects(stack.bucket, prefix=f"{folder}/")]
    # Each event was trained once: one run per event, all succeeded.
    deadline = time.monotonic() + WAIT
    while True:
        _, listing = await get_json(f"http://{address}/runs")
        runs = sorted((run["event_id"], run["state"]) for run in listing["runs"])
        if runs == [(event_id, "succeeded") for event_id in sorted(events)] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert runs == [(event_id, "succeeded") for event_id in sorted(events)], runs
