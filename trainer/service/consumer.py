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

Over 400 lines on purpose: one class owns the consumer group membership, the in-flight runs and their shutdown
grace, and every step of an event's life goes through the same retry-until-stopping rule (``_retrying``, which
leaves an event uncommitted when the service stops): the Kafka loop and the event's life share that stopping state
and the producer. The parts with their own state already live beside it: the run registry (run_registry.py), the
design and model stores, events (decoding), the deploy, the offset tracker (modelplane/kafka_delivery.py). The
seam if it grows: one event's life (``_handle`` .. ``_publish``) as a class given the registry, the stores and a
stopping event, leaving this module the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]

from generated.mlops.training.v1 import training_pb2
from modelplane import logs
from modelplane.kafka_delivery import OffsetTracker
from modelplane.kafka_membership import commit_only_as_a_member
from trainer.launchers.base import Launcher, LaunchOutcome, LaunchVerdict
from trainer.run.jobs import DESIGN_SCHEMA_FILE, OUTPUT_DIR, RESULT_FILE, RunResult, TrainingJob
from trainer.service.deploy import model_name_for
from trainer.service.design_store import REDIS_RETRYABLE, DesignInvalidError, DesignNotFoundError, DesignStore
from trainer.service.events import PoisonEventError, RecordPosition, TrainingRequest, dataset_for_run, decode_event
from trainer.service.model_store import TRANSIENT_ERRORS, ArtifactMismatchError, ModelStore, StoredModel
from trainer.service.run_registry import ClaimKind, FinalRecord, RunRecord, RunRegistry, RunState
from trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-protobuf"
H_EVENT_ID = "modelplane-event-id"
H_RUN_ID = "modelplane-run-id"
H_ATTEMPTS = "modelplane-attempts"
H_METRICS = "modelplane-metrics"
H_MODEL_URI = "modelplane-model-uri"
H_ARTIFACT_URI = "modelplane-artifact-uri"
H_ARTIFACT_SHA256 = "modelplane-artifact-sha256"
H_DEPLOY = "modelplane-deploy"
H_AUTO_DEPLOY = "modelplane-auto-deploy"
MAX_ERROR_CHARS = 2000
_T = TypeVar("_T")


class Deployer(Protocol):
    async def deploy(self, name: str, storage_uri: str) -> None: ...


class _StoppingError(Exception):
    """The service is stopping while an event waits on infrastructure: leave the event uncommitted."""


@dataclass
class _Outcome:
    succeeded: bool
    errors: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    stored: StoredModel | None = None
    deploy_note: str = ""


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


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
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.session_timeout_ms // 3),
            max_partition_fetch_bytes=max(settings.max_event_bytes + 1024, 1 << 20),
            fetch_max_bytes=max(settings.max_event_bytes * 2, 50 << 20),
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
        delay = 0.5
        while not stop.is_set():
            try:
                await client.start()
                return True
            except KafkaError as error:
                logger.warning(
                    f"Kafka unreachable starting the {what}; retrying",
                    extra={"fields": {"bootstrap": self.settings.kafka_bootstrap, "error": str(error)}},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10.0)
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
        task = asyncio.create_task(self._handle(record), name=f"event {tp.topic}[{tp.partition}]@{record.offset}")
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

    # ------------------------------------------------------------------ one event

    async def _handle(self, record: Any) -> bool:
        """Process one record; True when it is finished (its offset may be committed), False when it is left
        for redelivery (the service is stopping)."""
        position = RecordPosition(record.topic, record.partition, record.offset)
        try:
            return await self._handle_record(record, position)
        except (_StoppingError, asyncio.CancelledError):
            raise
        except Exception as error:
            # A bug must not wedge the partition (nothing behind this offset could be committed) nor loop on
            # redelivery: report the event failed and move on.
            logger.exception("internal error handling an event", extra={"fields": {"at": str(position)}})
            poison = PoisonEventError(f"internal error in the trainer: {error!r}", event_id=position.derived_event_id())
            return await self._reject_poison(poison, position)

    async def _handle_record(self, record: Any, position: RecordPosition) -> bool:
        try:
            request = decode_event(
                record.value,
                record.headers,
                position,
                max_bytes=self.settings.max_event_bytes,
                datasets_root=self.settings.datasets_root,
            )
        except PoisonEventError as poison:
            return await self._reject_poison(poison, position)
        token = logs.request_id.set(request.event_id)
        try:
            await self._train_event(request, position)
        except _StoppingError:
            logger.info("stopping: event left for redelivery", extra={"fields": {"event_id": request.event_id}})
            return False
        finally:
            logs.request_id.reset(token)
        return True

    async def _reject_poison(self, poison: PoisonEventError, position: RecordPosition) -> bool:
        run = RunRecord(
            run_id=self._new_run_id(),
            event_id=poison.event_id,
            design_schema_id=poison.design_schema_id,
            state=RunState.FAILED.value,
            errors=[poison.reason],
            owner=self.instance,
            source=str(position),
        )
        logger.warning("poison event", extra={"fields": {"at": str(position), "reason": poison.reason}})
        try:
            await self._retrying("record the run", lambda: self.registry.save(run, new=True))
            await self._publish_status(run, training_pb2.TRAINING_STATUS_FAILURE, [poison.reason])
        except _StoppingError:
            return False
        return True

    def _new_run_id(self) -> str:
        return f"run-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:10]}"

    async def _claim(self, request: TrainingRequest, owner: str) -> FinalRecord | None:
        """Wait until the event is ours (returns None) or already finished (returns its final record)."""
        while True:
            claim = await self._retrying("claim the event", lambda: self.registry.claim(request.event_id, owner))
            if claim.kind is ClaimKind.CLAIMED:
                return None
            if claim.kind is ClaimKind.DONE:
                return claim.final
            # Held: being trained elsewhere, or by a trainer that died (its lease runs out). Wait for either.
            logger.info("event is held by another run; waiting", extra={"fields": {"holder": claim.holder}})
            await self._sleep(min(1.0, self.registry.lease_ms / 3000))

    async def _train_event(self, request: TrainingRequest, position: RecordPosition) -> None:
        run_id = self._new_run_id()
        owner = f"{self.instance}/{run_id}"
        final = await self._claim(request, owner)
        if final is not None:
            logger.info(
                "duplicate event: already finished; not training again",
                extra={"fields": {"event_id": request.event_id, "run_id": final.run_id}},
            )
            return
        previous = await self._retrying("read the earlier run", lambda: self.registry.latest_run_for(request.event_id))
        run = RunRecord(
            run_id=run_id,
            event_id=request.event_id,
            design_schema_id=request.provisional_design_id,
            owner=self.instance,
            source=str(position),
        )
        if previous is not None and previous.state not in {RunState.SUCCEEDED, RunState.FAILED}:
            # Its trainer vanished mid-run (the lease expired): carry its attempts, so a run that keeps killing
            # its trainer stops after max_attempts instead of looping forever.
            run.previous_run_id = previous.run_id
            run.attempts = previous.attempts
            if previous.state != RunState.ABANDONED:
                previous.state = RunState.ABANDONED.value
                previous.errors.append(f"its trainer stopped mid-run; the event was retried as {run_id}")
                await self._retrying("record the abandoned run", lambda: self.registry.save(previous))
        await self._retrying("record the run", lambda: self.registry.save(run, new=True))
        renewer = asyncio.create_task(self._keep_lease(request.event_id, owner))
        try:
            outcome = await self._run_to_outcome(request, run)
            run.errors.extend(outcome.errors)
            run.metrics = outcome.metrics
            if outcome.stored is not None:
                run.model_uri = outcome.stored.folder_uri
            status = training_pb2.TRAINING_STATUS_SUCCESS if outcome.succeeded else training_pb2.TRAINING_STATUS_FAILURE
            await self._publish_status(run, status, outcome.errors, outcome)
            run.state = (RunState.SUCCEEDED if outcome.succeeded else RunState.FAILED).value
            await self._retrying("record the run", lambda: self.registry.save(run))
            final = FinalRecord(run_id, outcome.succeeded, run.errors, run.model_uri, time.time())
            await self._retrying("record the outcome", lambda: self.registry.finish(request.event_id, owner, final))
            logger.info(
                "run finished",
                extra={"fields": {"run_id": run_id, "state": run.state, "errors": run.errors[:3]}},
            )
        except (_StoppingError, asyncio.CancelledError):
            # Shutting down mid-run: free the event at once so the next owner retrains it without waiting.
            with contextlib.suppress(*REDIS_RETRYABLE):
                await asyncio.shield(self.registry.release(request.event_id, owner))
            raise
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _keep_lease(self, event_id: str, owner: str) -> None:
        interval = self.registry.lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.registry.renew(event_id, owner):
                    logger.warning("lost the event's lease: another trainer may train it too")
            except REDIS_RETRYABLE as error:
                logger.warning("cannot renew the event's lease", extra={"fields": {"error": str(error)}})

    async def _set_state(self, run: RunRecord, state: RunState) -> None:
        run.state = state.value
        await self._retrying("record the run", lambda: self.registry.save(run))

    async def _run_to_outcome(self, request: TrainingRequest, run: RunRecord) -> _Outcome:
        await self._set_state(run, RunState.FETCHING)
        if request.model_key_token:
            try:
                schema = await self._retrying_cancellable(self.designs.fetch(request.model_key_token))
            except (DesignNotFoundError, DesignInvalidError) as error:
                return _Outcome(False, [str(error)])
        elif request.embedded_schema is not None:
            schema = request.embedded_schema
        else:  # events.py refuses such an event; kept so a future change cannot train an empty schema
            return _Outcome(False, ["the event names no design schema"])
        run.design_schema_id = schema.design_token.value or request.model_key_token
        if run.attempts >= self.settings.max_attempts:
            return _Outcome(
                False, [f"gave up after {run.attempts} attempts: the trainer running it stopped mid-run each time"]
            )
        result = await self._train(request, schema, run)
        if not isinstance(result, tuple):
            return result
        job_dir, run_result = result
        try:
            return await self._store_and_announce(request, schema, run, job_dir, run_result)
        finally:
            if not self.settings.keep_job_dirs:
                shutil.rmtree(job_dir.parent, ignore_errors=True)

    async def _train(
        self, request: TrainingRequest, schema: training_pb2.ModelDesignSchema, run: RunRecord
    ) -> tuple[Path, RunResult] | _Outcome:
        """Run the job, retrying retryable failures; the job folder and result on success."""
        last_detail = ""
        while run.attempts < self.settings.max_attempts:
            run.attempts += 1
            await self._set_state(run, RunState.TRAINING)
            job_dir = self.settings.work_dir / "jobs" / run.run_id / f"attempt-{run.attempts}"
            job_dir.mkdir(parents=True, exist_ok=True)
            TrainingJob(
                run_id=run.run_id,
                event_id=request.event_id,
                dataset=dataset_for_run(request.dataset, self.settings.datasets_root, self.settings.run_datasets_root),
                artifact_name=self.settings.artifact_name,
                timeout_seconds=self.settings.run_timeout_seconds,
            ).write(job_dir)
            (job_dir / DESIGN_SCHEMA_FILE).write_bytes(schema.SerializeToString())
            try:
                outcome = await self.launcher.run(job_dir, schema)
            except (OSError, RuntimeError) as error:
                outcome = LaunchOutcome(LaunchVerdict.FAILED_RETRYABLE, None, f"launcher error: {error}")
            result = _read_result(job_dir)
            if outcome.verdict is LaunchVerdict.SUCCEEDED:
                if result is None or not result.succeeded:
                    return self._discard(
                        job_dir, _Outcome(False, [f"the run exited 0 but {RESULT_FILE} says no success"])
                    )
                return job_dir, result
            if outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY:
                errors = result.errors if result is not None and result.errors else [_truncate(outcome.detail)]
                return self._discard(job_dir, _Outcome(False, errors))
            # What the run said (its dataset's store was unreachable, say) and how it ended; else the log's tail.
            said = "; ".join(result.errors) if result is not None and result.errors else ""
            ended = outcome.detail.partition("\n")[0]
            last_detail = _truncate(f"{said} ({ended})" if said else outcome.detail)
            run.errors.append(f"attempt {run.attempts}: {last_detail}")
            logger.warning("retryable run failure", extra={"fields": {"attempt": run.attempts, "detail": last_detail}})
            self._discard(job_dir, None)
            if run.attempts < self.settings.max_attempts:
                await self._sleep(self.settings.retry_backoff_seconds * run.attempts)
        return _Outcome(False, [f"gave up after {run.attempts} attempts; last: {last_detail}"])

    def _discard(self, job_dir: Path, outcome: _Outcome | None) -> _Outcome:
        if not self.settings.keep_job_dirs:
            shutil.rmtree(job_dir, ignore_errors=True)
        return outcome or _Outcome(False, [])

    async def _store_and_announce(
        self,
        request: TrainingRequest,
        schema: training_pb2.ModelDesignSchema,
        run: RunRecord,
        job_dir: Path,
        result: RunResult,
    ) -> _Outcome:
        await self._set_state(run, RunState.UPLOADING)
        attempt = 0
        while True:
            attempt += 1
            try:
                stored = await self.model_store.upload(
                    job_dir / OUTPUT_DIR,
                    artifact_name=self.settings.artifact_name,
                    design_token=run.design_schema_id,
                    version=schema.version.version,
                    run_id=run.run_id,
                    reported_sha256=result.artifact_sha256,
                )
                break
            except ArtifactMismatchError as error:
                return _Outcome(False, [str(error)])
            except TRANSIENT_ERRORS as error:
                logger.warning("model store upload failed", extra={"fields": {"attempt": attempt, "error": str(error)}})
                if attempt == self.settings.max_attempts:
                    return _Outcome(False, [f"model store upload failed after {attempt} attempts: {error}"])
                await self._sleep(self.settings.retry_backoff_seconds * attempt)
        outcome = _Outcome(True, [], dict(result.metrics), stored)
        if self._wants_deploy(request) and self.deployer is not None:
            name = model_name_for(run.design_schema_id)
            try:
                await self.deployer.deploy(name, stored.folder_uri)
                outcome.deploy_note = f"loaded {name}"
            except Exception as error:  # any deploy failure is reported, never fails the training
                outcome.deploy_note = _truncate(f"failed: {error}")
                run.errors.append(f"auto-deploy of {name}: {outcome.deploy_note}")
        if schema.output_store.WhichOneof("options") == "inference_store" and schema.output_store.inference_store:
            message = training_pb2.InferenceStoreMessage(
                model_id=run.design_schema_id, dataset_artifact_url=stored.folder_uri
            )
            headers = [*self._id_headers(run), (H_ARTIFACT_URI, stored.artifact_uri.encode())]
            await self._publish(self.settings.inference_store_topic, run.design_schema_id, message, headers)
        return outcome

    def _wants_deploy(self, request: TrainingRequest) -> bool:
        asked = request.headers.get(H_AUTO_DEPLOY, "").strip().lower()
        if asked in {"true", "1", "yes"}:
            return True
        if asked in {"false", "0", "no"}:
            return False
        return self.settings.auto_deploy

    # ------------------------------------------------------------------ publishing and retries

    def _id_headers(self, run: RunRecord) -> list[tuple[str, bytes]]:
        return [
            ("content-type", CONTENT_TYPE.encode()),
            (H_EVENT_ID, run.event_id.encode()),
            (H_RUN_ID, run.run_id.encode()),
        ]

    async def _publish_status(
        self,
        run: RunRecord,
        status: training_pb2.ModelTrainingStatusEnum.ValueType,
        errors: list[str],
        outcome: _Outcome | None = None,
    ) -> None:
        message = training_pb2.ModelTrainingStatus(
            design_schema_id=run.design_schema_id,
            status=status,
            errors=[_truncate(error) for error in errors],
        )
        headers = [*self._id_headers(run), (H_ATTEMPTS, str(run.attempts).encode())]
        if outcome is not None and outcome.stored is not None:
            headers += [
                (H_METRICS, json.dumps(outcome.metrics, sort_keys=True).encode()),
                (H_MODEL_URI, outcome.stored.folder_uri.encode()),
                (H_ARTIFACT_URI, outcome.stored.artifact_uri.encode()),
                (H_ARTIFACT_SHA256, outcome.stored.sha256.encode()),
            ]
        if outcome is not None and outcome.deploy_note:
            headers.append((H_DEPLOY, outcome.deploy_note.encode()))
        await self._publish(self.settings.status_topic, run.design_schema_id, message, headers)

    async def _publish(self, topic: str, key: str, message: Any, headers: list[tuple[str, bytes]]) -> None:
        value = message.SerializeToString()

        async def send() -> None:
            await self._producer.send_and_wait(topic, value, key=key.encode() or None, headers=headers)

        await self._retrying(f"publish on {topic}", send, retryable=(KafkaError, *REDIS_RETRYABLE))

    async def _retrying(
        self,
        what: str,
        call: Callable[[], Awaitable[_T]],
        retryable: tuple[type[BaseException], ...] = REDIS_RETRYABLE,
    ) -> _T:
        """``call()`` until it succeeds, backing off while the infrastructure is away; raises _StoppingError when
        the service stops meanwhile (the event then stays uncommitted and is redelivered)."""
        delay = 0.2
        while True:
            try:
                return await call()
            except retryable as error:
                if self._stopping.is_set():
                    raise _StoppingError(what) from error
                logger.warning(f"cannot {what}; retrying", extra={"fields": {"error": str(error), "retry_in": delay}})
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _retrying_cancellable(self, call: Awaitable[_T]) -> _T:
        """Await ``call`` (which retries by itself), but give up with _StoppingError once stopping is asked."""
        task = asyncio.ensure_future(call)
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise _StoppingError("fetching the design schema")
        return task.result()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, cut short (with _StoppingError) when the service stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        if self._stopping.is_set():
            raise _StoppingError("stopping")


def _read_result(job_dir: Path) -> RunResult | None:
    try:
        return RunResult.read(job_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
