"""The trainer's consumer loop: training events in, trained models and status messages out.

Per event (seeds/000): decode -> claim (dedupe by event id, run_registry.py) -> fetch the design schema from
Redis -> write a job folder (trainer/run/jobs.py) -> ``launcher.run`` (retryable failures retried up to
``max_attempts``) -> upload to S3 -> optional LoadModel -> InferenceStoreMessage -> ModelTrainingStatus.

Delivery is at least once end to end: offsets are committed by hand, per partition, only up to the lowest
offset whose processing has finished, so a crash never skips an unfinished event; the event-id claim in Redis
keeps a redelivered event from being trained twice. The producer uses acks=all and neither idempotence nor
transactions (Tansu has neither), so a crash between publishing and committing can repeat a status message:
consumers deduplicate on the ``modelplane-event-id`` header.

Messages published (protobuf binary, header ``content-type: application/x-protobuf``):

- status topic: ``ModelTrainingStatus``, key = ``design_schema_id`` (the design token; the model_key_token
  when the schema names none). Headers: ``modelplane-event-id``, ``modelplane-run-id``,
  ``modelplane-attempts``; on SUCCESS also ``modelplane-metrics`` (a JSON object of metric name to number: the
  proto has no metrics field, and protos are not changed for it), ``modelplane-model-uri`` (the run's S3
  folder), ``modelplane-artifact-uri``, ``modelplane-artifact-sha256``, and after an auto-deploy
  ``modelplane-deploy`` (``loaded <name>`` or ``failed: <why>``; a failed deploy does not fail the training).
- inference-store topic, when the schema's ``output_store`` is ``inference_store``: ``InferenceStoreMessage``
  with ``model_id`` = design_schema_id and ``dataset_artifact_url`` = the run's S3 folder URI (the seed: "the
  training result ... its path will be pushed to inference queue"), key = design_schema_id, the same id headers.

Event headers read: ``content-type`` (events.py) and ``modelplane-auto-deploy`` (``true`` deploys this model
even without ``--auto-deploy``; ``false`` skips it even with it).

Here: the Kafka loop (consume with fetching paused while ``max_concurrent_runs`` are in flight, per-partition
offsets, rebalances, the shutdown grace). One event's life is trainer/service/event_runs.py, the messages it
publishes trainer/service/status_messages.py, the retry-until-stopping rule trainer/service/stopping.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]

from modelplane.backoff import Backoff
from modelplane.kafka_delivery import OffsetTracker
from modelplane.kafka_membership import commit_only_as_a_member, group_member
from trainer.launchers.base import Launcher
from trainer.service.design_store import DesignStore
from trainer.service.event_runs import Deployer, EventRunner
from trainer.service.model_store import ModelStore
from trainer.service.run_registry import RunRegistry
from trainer.service.trainer_metrics import TrainerMetrics
from trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)


class TrainerService:
    def __init__(
        self,
        settings: TrainerSettings,
        launcher: Launcher,
        redis_client: aioredis.Redis,
        model_store: ModelStore,
        deployer: Deployer | None = None,
    ) -> None:
        self.settings = settings
        self.launcher = launcher
        self.registry = RunRegistry(
            redis_client,
            settings.redis_prefix,
            lease_seconds=settings.lease_seconds,
            ttl_seconds=settings.dedupe_ttl_seconds,
        )
        self.designs = DesignStore(redis_client, settings.design_key_template)
        self.model_store = model_store
        self.deployer = deployer
        self.instance = uuid.uuid4().hex[:12]
        self.consuming = False
        self._stopping = asyncio.Event()
        self._no_grace = asyncio.Event()
        self._tasks: set[asyncio.Task[bool]] = set()
        self._offsets: dict[Any, OffsetTracker] = {}  # TopicPartition -> its tracker, for assigned partitions
        self._consumer: Any = None
        self._producer: Any = None
        self.metrics = TrainerMetrics()
        self._events = EventRunner(
            metrics=self.metrics,
            settings=settings,
            launcher=launcher,
            registry=self.registry,
            designs=self.designs,
            model_store=model_store,
            deployer=deployer,
            instance=self.instance,
            stopping=self._stopping,
        )

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then let in-flight runs finish (up to the grace), commit, and return."""
        settings = self.settings
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=False, linger_ms=0
        )
        self._events.producer = self._producer
        self._consumer = group_member(
            bootstrap=settings.kafka_bootstrap,
            group_id=settings.consumer_group,
            session_timeout_ms=settings.session_timeout_ms,
            max_record_bytes=settings.max_event_bytes,
        )
        try:
            if await self._start(self._producer, "producer", stop) and await self._start(
                self._consumer, "consumer", stop
            ):
                commit_only_as_a_member(self._consumer)
                self._consumer.subscribe([settings.training_topic], listener=_Rebalance(self))
                self.consuming = True
                try:
                    await self._consume(stop)
                finally:
                    self.consuming = False
                    await self._drain()
                    await self._commit_ready()
        finally:
            # Also when a start failed or was given up: aiokafka warns about (and leaks) unclosed clients.
            await self._consumer.stop()
            await self._producer.stop()

    async def _start(self, client: Any, what: str, stop: asyncio.Event) -> bool:
        """Start a Kafka client, retrying while the brokers are unreachable; False if stopped meanwhile."""
        backoff = Backoff(0.5, 10.0)
        while not stop.is_set():
            try:
                await client.start()
                return True
            except KafkaError as error:
                delay = backoff.next()
                logger.warning(
                    f"Kafka unreachable starting the {what}; retrying",
                    extra={"fields": {"bootstrap": self.settings.kafka_bootstrap, "error": str(error)}},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        return False

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        while not stop.is_set():
            free = self.settings.max_concurrent_runs - len(self._tasks)
            assigned = consumer.assignment()
            # Keep polling even when full (aiokafka's group membership needs it), with fetching paused.
            if free <= 0:
                consumer.pause(*assigned)
            else:
                consumer.resume(*assigned)
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=max(1, free))
            except KafkaError as error:
                # The broker away or a rebalance in progress: nothing is lost (nothing was committed), try again.
                logger.warning("fetching training events failed; retrying", extra={"fields": {"error": str(error)}})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            for tp, records in batches.items():
                for record in records:
                    self._dispatch(tp, record)
            await self._commit_ready()

    def _dispatch(self, tp: Any, record: Any) -> None:
        tracker = self._offsets.get(tp)
        if tracker is None:
            tracker = self._offsets[tp] = OffsetTracker()
        tracker.add(record.offset)
        self.metrics.event_consumed()
        task = asyncio.create_task(
            self._events.handle(record), name=f"event {tp.topic}[{tp.partition}]@{record.offset}"
        )
        self._tasks.add(task)

        def done(finished: asyncio.Task[bool]) -> None:
            self._tasks.discard(finished)
            # Only an event whose processing completed may be committed past: one left for redelivery (stopping,
            # cancelled) must not be. And a partition revoked (maybe reassigned) since has a new tracker: the new
            # owner's to commit.
            completed = not finished.cancelled() and finished.exception() is None and finished.result()
            if completed and self._offsets.get(tp) is tracker:
                tracker.done(record.offset)

        task.add_done_callback(done)

    async def _commit_ready(self) -> None:
        ready = {}
        for tp, tracker in self._offsets.items():
            point = tracker.to_commit()
            if point is not None:
                ready[tp] = (tracker, point)
        if not ready:
            return
        try:
            await self._consumer.commit({tp: OffsetAndMetadata(point, "") for tp, (_, point) in ready.items()})
        except KafkaError as error:
            # Rebalancing: the events stay uncommitted and are redelivered; the claim keeps them from retraining.
            logger.warning("offset commit failed", extra={"fields": {"error": str(error)}})
            return
        for tracker, point in ready.values():
            tracker.mark_committed(point)

    def _forget(self, partitions: Any) -> None:
        for tp in partitions:
            self._offsets.pop(tp, None)

    def cut_grace(self) -> None:
        """Stop waiting for in-flight runs: cancel them now (a second SIGTERM)."""
        self._no_grace.set()

    async def _drain(self) -> None:
        """Let in-flight runs finish up to the grace; cancel the rest (their events stay uncommitted)."""
        self._stopping.set()
        if self._tasks:
            logger.info("stopping: waiting for in-flight runs", extra={"fields": {"runs": len(self._tasks)}})
            cut = asyncio.create_task(self._no_grace.wait())
            finished = asyncio.create_task(asyncio.wait(set(self._tasks)))
            await asyncio.wait(
                {finished, cut}, timeout=self.settings.shutdown_grace_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            cut.cancel()
            finished.cancel()
            pending = {task for task in self._tasks if not task.done()}
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, service: TrainerService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Commit what is finished while the partitions are still ours; in-flight events on them stay claimed
        # in Redis, so their next owner waits for our outcome instead of training them again.
        with contextlib.suppress(KafkaError):
            await self._service._commit_ready()
        self._service._forget(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        logger.info("partitions assigned", extra={"fields": {"partitions": [str(tp) for tp in assigned]}})
