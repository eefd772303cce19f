# ruff: noqa: S106 -- tokens here are identifiers of design schemas, not passwords
"""Redis and S3 going away under the trainer, and S3 under model loads, with real processes: a `modelplane
trainer` with real runs, Tansu, Redis and SeaweedFS, and a scheduler with an agent driving a real MLServer.

What the user must see: a run waits or fails with a status that says why, never SUCCESS for a model that is not
stored; when the store returns the trainer goes on by itself. A model load from a silent or stopped S3 never
hangs and is never Available falsely: it succeeds once S3 answers, or fails naming S3, and loads when asked again.

tests/trainer/test_service.py has the design-schema fetch waiting for a Redis that is not there yet (in-process);
tests/trainer/test_process.py has kill -9 of the trainer mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

from tests.e2e.harness import (
    processes_mentioning,
    recording_statuses,
    requests_waiting_on,
    run_processes,
    sigstopped,
)
from tests.support.agent_serving import predict
from tests.support.cluster_fixtures import WAIT, Cluster, Iris, api_of, model, until
from tests.support.kafka_broker import KafkaBroker, Record, produce
from tests.support.real_components import S3Server
from tests.support.redis_server import RedisServer, start_redis, stop_redis
from tests.support.trainer_stack import (
    FAILURE,
    SUCCESS,
    Stack,
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

pytest_plugins = [
    "tests.support.real_components",
    "tests.support.cluster_fixtures",
    "tests.support.kafka_broker",
    "tests.support.redis_server",
]
pytestmark = pytest.mark.timeout(600)  # a hang guard only


async def records_now(bootstrap: str, topic: str) -> list[Record]:
    """Every record the topic holds right now (up to its end offsets): no waiting for more to arrive."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:

        async def assigned() -> bool:
            return bool(consumer.assignment())

        await until(assigned, f"the partitions of {topic}")
        ends = await consumer.end_offsets(list(consumer.assignment()))
        records: list[Record] = []
        while True:
            positions = {tp: await consumer.position(tp) for tp in ends}
            if all(positions[tp] >= end for tp, end in ends.items()):
                return records
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()


def stored_artifact_sha256(s3: S3Server, stack: Stack, record: Record) -> str:
    """The SHA-256 of the artifact a SUCCESS status says it stored, read back from S3."""
    uri = headers_of(record)["modelplane-artifact-uri"]
    key = uri.removeprefix(f"s3://{stack.bucket}/")
    return hashlib.sha256(s3.client.get_object(stack.bucket, key).read()).hexdigest()


async def run_of(address: str, run_id: str) -> dict[str, Any]:
    code, run = await get_json(f"http://{address}/runs/{run_id}")
    assert code == 200, run
    return dict(run)


# -- Redis stopped during training -----------------------------------------------------------------------------


async def test_redis_stopped_mid_run_the_trainer_waits_and_finishes_every_event_once(
    kafka_broker: KafkaBroker, s3_server: S3Server, tmp_path: Path
) -> None:
    """Redis holds the design schemas and the runs' records and claims. Stopped (and started again with its
    append-only file, as a production Redis restarts) while a run trains and another event waits."""
    folder = tmp_path / "redis"
    folder.mkdir()
    (tmp_path / "stack").mkdir()
    redis = start_redis(folder, durable=True)
    try:
        stack = await stack_for(kafka_broker, redis, s3_server, tmp_path / "stack")
        await put_schema(stack, "tok", iris_multiclass_logistic(design_token="redis-outage"))
        _, address, log = start_trainer(stack, "trainer", "--max-concurrent-runs=1")
        await produce(kafka_broker.bootstrap, stack.training_topic, [event("first", "tok"), event("second", "tok")])
        running = await wait_for_run_state(address, "training")
        assert running["event_id"] == "first"
        job = stack.work / "jobs" / running["run_id"]
        with sigstopped(*await run_processes(job)):  # the run cannot finish before Redis is down
            stop_redis(redis)
        # The status API says what is wrong rather than failing or hanging...
        code, body = await get_json(f"http://{address}/runs")
        assert code == 503
        assert "Redis" in body["error"]

        # ...and the run trains to its end, then waits for Redis to record it.
        async def trained() -> bool:
            return not processes_mentioning(str(job))

        await until(trained, "the first run's process finished", log.read_text)
        assert not await records_now(kafka_broker.bootstrap, stack.status_topic)  # nothing reported yet
        redis = start_redis(folder, port=redis.port, durable=True)

        statuses = await statuses_for(stack, ["first", "second"], timeout=WAIT)
        for event_id in ("first", "second"):
            assert [status_of(record).status for record in statuses[event_id]] == [SUCCESS], statuses[event_id]
            [record] = statuses[event_id]
            assert stored_artifact_sha256(s3_server, stack, record) == headers_of(record)["modelplane-artifact-sha256"]
        code, listing = await get_json(f"http://{address}/runs")
        assert code == 200
        assert sorted((run["event_id"], run["state"]) for run in listing["runs"]) == [
            ("first", "succeeded"),
            ("second", "succeeded"),
        ]
    finally:
        stop_redis(redis)


# -- S3 stopped during training ----------------------------------------------------------------------------------


async def test_s3_stopped_under_training_the_run_is_retried_until_s3_returns_or_reported_failed(
    kafka_broker: KafkaBroker, redis_server: RedisServer, s3_server: S3Server, tmp_path: Path
) -> None:
    """S3 holds the model store and, for some events, the dataset. Stopped while a run reads its dataset, and
    while a run uploads its model: an outage is the infrastructure's fault, not the event's, so it is retried."""
    stack = await stack_for(kafka_broker, redis_server, s3_server, tmp_path)
    await put_schema(stack, "tok", iris_multiclass_logistic(design_token="s3-outage"))
    datasets = s3_server.new_bucket({"iris.csv": (stack.datasets / "iris.csv").read_bytes()})
    # Patient: runs and uploads are retried (20 attempts, backing off from 0.5 s) for as long as S3 takes to return.
    patient, address, log = start_trainer(stack, "patient", "--max-attempts=20", "--retry-backoff=0.5")

    # The dataset cannot be read: the run fails as retryable, and is run again once S3 is back.
    with s3_server.stopped():
        from_s3 = event("dataset-in-s3", "tok", dataset_artifact_url=f"s3://{datasets}/iris.csv")
        await produce(kafka_broker.bootstrap, stack.training_topic, [from_s3])

        async def run_failed() -> bool:
            return "retryable run failure" in log.read_text()

        await until(run_failed, "a run failed reading its dataset from the stopped S3, to be retried", log.read_text)
    [record] = (await statuses_for(stack, ["dataset-in-s3"], timeout=WAIT))["dataset-in-s3"]
    assert status_of(record).status == SUCCESS, status_of(record).errors
    assert int(headers_of(record)["modelplane-attempts"]) >= 2
    assert stored_artifact_sha256(s3_server, stack, record) == headers_of(record)["modelplane-artifact-sha256"]

    # The model cannot be uploaded: the upload is retried, and nothing is reported until it is stored.
    await produce(kafka_broker.bootstrap, stack.training_topic, [event("patient", "tok")])
    running = await wait_for_run_state(address, "training")
    with contextlib.ExitStack() as outage:
        with sigstopped(*await run_processes(stack.work / "jobs" / running["run_id"])):
            outage.enter_context(s3_server.stopped())  # down before the run can finish

        async def upload_failed() -> bool:
            return "model store upload failed" in log.read_text()

        await until(upload_failed, "an upload to the stopped S3 failed", log.read_text)
        assert (await run_of(address, running["run_id"]))["state"] == "uploading"  # not reported done
        reported = {
            headers_of(record)["modelplane-event-id"]
            for record in await records_now(kafka_broker.bootstrap, stack.status_topic)
        }
        assert reported == {"dataset-in-s3"}
    [record] = (await statuses_for(stack, ["patient"], timeout=WAIT))["patient"]
    assert status_of(record).status == SUCCESS, status_of(record).errors
    assert stored_artifact_sha256(s3_server, stack, record) == headers_of(record)["modelplane-artifact-sha256"]
    assert (await run_of(address, running["run_id"]))["state"] == "succeeded"
    patient.terminate()
    await asyncio.to_thread(patient.wait, 60)

    # Impatient (one attempt): the run is reported failed, saying the model store failed; nothing is stored.
    impatient, address, log = start_trainer(stack, "impatient", "--max-attempts=1")
    await produce(kafka_broker.bootstrap, stack.training_topic, [event("impatient", "tok")])
    running = await wait_for_run_state(address, "training")
    with contextlib.ExitStack() as outage:
        with sigstopped(*await run_processes(stack.work / "jobs" / running["run_id"])):
            outage.enter_context(s3_server.stopped())
        [record] = (await statuses_for(stack, ["impatient"], timeout=WAIT))["impatient"]
    status = status_of(record)
    assert status.status == FAILURE
    assert "model store upload failed" in " ".join(status.errors), status.errors
    assert "modelplane-model-uri" not in headers_of(record)
    assert (await run_of(address, running["run_id"]))["state"] == "failed"
    impatient.terminate()
    await asyncio.to_thread(impatient.wait, 60)


# -- S3 stopped during model loads ------------------------------------------------------------------------------


@pytest.mark.servers
async def test_a_model_load_from_a_silent_or_stopped_s3_never_hangs_nor_lies(
    cluster: Cluster, iris: Iris, s3_server: S3Server
) -> None:
    bucket = s3_server.new_bucket({"iris/model.joblib": iris.joblib})
    rclone = s3_server.rclone_json()
    s3_port = int(s3_server.endpoint.rsplit(":", 1)[1])
    scheduler = cluster.start_scheduler()
    [agent] = await asyncio.to_thread(cluster.start_agents, cluster.agent(0))
    async with api_of(cluster) as api, recording_statuses(scheduler.listen) as seen:
        # Silent (SIGSTOP): the download waits on S3, the model is not Available meanwhile, and it loads once S3
        # answers again.
        with s3_server.paused():
            await api.load(model("s3-silent", f"s3://{bucket}/iris", rclone_config=rclone))
            await seen.first_of("s3-silent")

            async def downloading() -> bool:
                return requests_waiting_on(s3_port) > 0

            await until(downloading, "the agent's request waits on the silent S3", cluster.diagnostics)
            silent = seen.mark()
        await api.available("s3-silent")
        await predict(agent, "s3-silent", iris)
        assert [s for s in seen.of("s3-silent", until=silent) if s.available] == []

        # Stopped (connections refused): the load fails naming S3, never Available; asked again once S3 is
        # back, it loads.
        with s3_server.stopped():
            await api.load(model("s3-down", f"s3://{bucket}/iris", rclone_config=rclone))
            reason = await api.failed("s3-down")
            assert s3_server.endpoint in reason, reason
            assert "cannot connect" in reason, reason
        assert [s for s in seen.of("s3-down") if s.available] == []
        await api.load(model("s3-down", f"s3://{bucket}/iris", rclone_config=rclone))
        await api.available("s3-down")
        await predict(agent, "s3-down", iris)
        status = await api.status("s3-down")
        assert [v.version for v in status.versions] == [1]  # the same spec: retried, not a new version
