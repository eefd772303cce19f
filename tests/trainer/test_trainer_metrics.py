# ruff: noqa: S106 -- tokens here are identifiers of design schemas, not passwords
"""The trainer's /metrics on its run status API, scraped from a live trainer process before and after it trained
one event, failed one (its design schema is missing) and rejected one it could not decode."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.kafka_broker import produce
from tests.support.metrics_reading import sample_sum, scrape
from tests.support.processes import stop_process
from tests.support.trainer_stack import (
    FAILURE,
    SUCCESS,
    Stack,
    event,
    put_schema,
    start_trainer,
    status_of,
    statuses_for,
)
from tests.support.training_schemas import iris_multiclass_logistic

pytest_plugins = ["tests.support.real_components", "tests.support.kafka_broker", "tests.support.redis_server"]

pytestmark = pytest.mark.timeout(300)


async def test_runs_and_events_are_counted_as_they_finish(stack: Stack) -> None:
    await put_schema(stack, "tok", iris_multiclass_logistic(design_token="metrics"))
    trainer, address, log = start_trainer(stack, "metrics")
    url = f"http://{address}/metrics"
    async with aiohttp.ClientSession(trust_env=False) as http:
        before = await scrape(http, url)
        assert sample_sum(before, "modelplane_trainer_events_consumed_total") == 0
        assert sample_sum(before, "modelplane_trainer_runs", state="training") == 0
        assert sample_sum(before, "modelplane_trainer_runs_finished_total") == 0

        await produce(
            stack.kafka.bootstrap,
            stack.training_topic,
            [event("trained", "tok"), event("no-design", "absent"), b"\xff\x00 not protobuf"],
        )
        # The undecodable record is reported by its position: the topic's one partition, the third offset.
        poison = f"kafka:{stack.training_topic}:0:2"
        statuses = await statuses_for(stack, ["trained", "no-design", poison], timeout=200)
        assert status_of(statuses["trained"][0]).status == SUCCESS, log.read_text()
        assert status_of(statuses["no-design"][0]).status == FAILURE
        assert status_of(statuses[poison][0]).status == FAILURE

        after = await scrape(http, url)
    assert sample_sum(after, "modelplane_trainer_events_consumed_total") == 3
    assert sample_sum(after, "modelplane_trainer_runs_finished_total", state="succeeded") == 1
    assert sample_sum(after, "modelplane_trainer_runs_finished_total", state="failed") == 2
    # Timed: the two runs that started (the undecodable record never did).
    assert sample_sum(after, "modelplane_trainer_run_duration_seconds_count", state="succeeded") == 1
    assert sample_sum(after, "modelplane_trainer_run_duration_seconds_count", state="failed") == 1
    assert sample_sum(after, "modelplane_trainer_run_duration_seconds_sum", state="succeeded") > 0
    assert sample_sum(after, "modelplane_trainer_runs") == 0  # none running any more
    assert stop_process(trainer, 60) == 0


async def test_a_run_ended_by_an_internal_error_is_no_longer_counted_as_running(stack: Stack) -> None:
    # A file where the trainer makes its job folders: the run fails on an error of the trainer's own (not the
    # event's), which the runner reports as a failed event. Before, that run stayed in modelplane_trainer_runs.
    stack.work.mkdir(parents=True, exist_ok=True)
    (stack.work / "jobs").write_text("in the way")
    await put_schema(stack, "tok", iris_multiclass_logistic(design_token="metrics"))
    trainer, address, log = start_trainer(stack, "internal")
    url = f"http://{address}/metrics"
    await produce(stack.kafka.bootstrap, stack.training_topic, [event("jobless", "tok")])
    # Reported as an internal error, by the record's position (as an event that could not be handled).
    reported = f"kafka:{stack.training_topic}:0:0"
    statuses = await statuses_for(stack, [reported], timeout=200)
    assert status_of(statuses[reported][0]).status == FAILURE, log.read_text()
    async with aiohttp.ClientSession(trust_env=False) as http:
        after = await scrape(http, url)
    assert sample_sum(after, "modelplane_trainer_runs_finished_total", state="failed") == 1
    assert sample_sum(after, "modelplane_trainer_runs") == 0, "the run that failed is still counted as running"
    assert stop_process(trainer, 60) == 0
