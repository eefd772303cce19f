"""One training event's life in the trainer service: decode, claim, fetch the design, run, store, deploy and
publish the status (the message formats and headers are described in trainer/service/consumer.py). The Kafka
loop that hands records to it, and commits their offsets, is :mod:`trainer.service.consumer`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from generated.mlops.training.v1 import training_pb2
from modelplane import logs
from modelplane.spec.names import model_name_for
from modelplane.spec.training_status import H_ARTIFACT_URI
from trainer.launchers.base import Launcher, LaunchOutcome, LaunchVerdict
from trainer.run.jobs import DESIGN_SCHEMA_FILE, OUTPUT_DIR, RESULT_FILE, RunResult, TrainingJob
from trainer.service.design_store import REDIS_RETRYABLE, DesignInvalidError, DesignNotFoundError, DesignStore
from trainer.service.events import PoisonEventError, RecordPosition, TrainingRequest, dataset_for_run, decode_event
from trainer.service.model_store import TRANSIENT_ERRORS, ArtifactMismatchError, ModelStore
from trainer.service.run_registry import ClaimKind, FinalRecord, RunRecord, RunRegistry, RunState
from trainer.service.status_messages import (
    H_AUTO_DEPLOY,
    RunOutcome,
    id_headers,
    status_message,
    truncate,
)
from trainer.service.stopping import StoppingError, UntilStopped
from trainer.service.trainer_metrics import TrainerMetrics
from trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)


class Deployer(Protocol):
    async def deploy(self, name: str, storage_uri: str) -> None: ...


class EventRunner:
    """One training event's life, from its Kafka record to its status message (see trainer/service/consumer.py
    for the steps): claim, fetch the design, run the job with retries, store, deploy, announce. Every step that
    waits on Redis, S3 or Kafka retries until it succeeds or ``stopping`` is set; then it raises StoppingError
    and the event stays uncommitted."""

    def __init__(
        self,
        *,
        settings: TrainerSettings,
        launcher: Launcher,
        registry: RunRegistry,
        designs: DesignStore,
        model_store: ModelStore,
        deployer: Deployer | None,
        instance: str,
        stopping: asyncio.Event,
        metrics: TrainerMetrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else TrainerMetrics()
        self.settings = settings
        self.launcher = launcher
        self.registry = registry
        self.designs = designs
        self.model_store = model_store
        self.deployer = deployer
        self.instance = instance
        self.producer: Any = None  # the service's Kafka producer, set once it is started
        self._until = UntilStopped(stopping)

    async def handle(self, record: Any) -> bool:
        """Process one record; True when it is finished (its offset may be committed), False when it is left
        for redelivery (the service is stopping)."""
        position = RecordPosition(record.topic, record.partition, record.offset)
        try:
            return await self._handle_record(record, position)
        except (StoppingError, asyncio.CancelledError):
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
        # The event's id is the request id its lines carry; its run's id is bound once the run has one.
        with logs.bound(request_id=request.event_id):
            try:
                await self._train_event(request, position)
            except StoppingError:
                logger.info("stopping: event left for redelivery", extra={"fields": {"event_id": request.event_id}})
                return False
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
            await self._until.retrying("record the run", lambda: self.registry.save(run, new=True))
            self.metrics.run_finished(run.run_id, RunState.FAILED)
            await self._publish_status(run, training_pb2.TRAINING_STATUS_FAILURE, [poison.reason])
        except StoppingError:
            return False
        return True

    def _new_run_id(self) -> str:
        return f"run-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:10]}"

    async def _claim(self, request: TrainingRequest, owner: str) -> FinalRecord | None:
        """Wait until the event is ours (returns None) or already finished (returns its final record)."""
        while True:
            claim = await self._until.retrying("claim the event", lambda: self.registry.claim(request.event_id, owner))
            if claim.kind is ClaimKind.CLAIMED:
                return None
            if claim.kind is ClaimKind.DONE:
                return claim.final
            # Held: being trained elsewhere, or by a trainer that died (its lease runs out). Wait for either.
            logger.info("event is held by another run; waiting", extra={"fields": {"holder": claim.holder}})
            await self._until.sleep(min(1.0, self.registry.lease_ms / 3000))

    async def _train_event(self, request: TrainingRequest, position: RecordPosition) -> None:
        run_id = self._new_run_id()
        logs.bind(run_id=run_id)  # this task's context is _handle_record's block: it ends with it
        owner = f"{self.instance}/{run_id}"
        final = await self._claim(request, owner)
        if final is not None:
            logger.info(
                "duplicate event: already finished; not training again",
                extra={"fields": {"event_id": request.event_id, "run_id": final.run_id}},
            )
            return
        previous = await self._until.retrying(
            "read the earlier run", lambda: self.registry.latest_run_for(request.event_id)
        )
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
                await self._until.retrying("record the abandoned run", lambda: self.registry.save(previous))
        await self._until.retrying("record the run", lambda: self.registry.save(run, new=True))
        self.metrics.run_state(run_id, RunState(run.state))
        renewer = asyncio.create_task(self._keep_lease(request.event_id, owner))
        try:
            outcome = await self._run_to_outcome(request, run)
            run.errors.extend(outcome.errors)
            run.metrics = outcome.metrics
            if outcome.stored is not None:
                run.model_uri = outcome.stored.folder_uri
            status = training_pb2.TRAINING_STATUS_SUCCESS if outcome.succeeded else training_pb2.TRAINING_STATUS_FAILURE
            final_state = RunState.SUCCEEDED if outcome.succeeded else RunState.FAILED
            self.metrics.run_finished(run_id, final_state)  # counted once its outcome is known, before it is told
            await self._publish_status(run, status, outcome.errors, outcome)
            run.state = final_state.value
            await self._until.retrying("record the run", lambda: self.registry.save(run))
            final = FinalRecord(run_id, outcome.succeeded, run.errors, run.model_uri, time.time())
            await self._until.retrying(
                "record the outcome", lambda: self.registry.finish(request.event_id, owner, final)
            )
            logger.info(
                "run finished",
                extra={"fields": {"run_id": run_id, "state": run.state, "errors": run.errors[:3]}},
            )
        except (StoppingError, asyncio.CancelledError):
            # Shutting down mid-run: free the event at once so the next owner retrains it without waiting.
            with contextlib.suppress(*REDIS_RETRYABLE):
                await asyncio.shield(self.registry.release(request.event_id, owner))
            raise
        finally:
            # However the run ended without an outcome (stopping, or an error of the trainer's own, which handle()
            # reports as a failed event under another run): no longer running here. After run_finished, a no-op.
            self.metrics.run_left(run_id)
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
        self.metrics.run_state(run.run_id, state)
        await self._until.retrying("record the run", lambda: self.registry.save(run))

    async def _run_to_outcome(self, request: TrainingRequest, run: RunRecord) -> RunOutcome:
        await self._set_state(run, RunState.FETCHING)
        if request.model_key_token:
            try:
                schema = await self._until.cancellable(self.designs.fetch(request.model_key_token))
            except (DesignNotFoundError, DesignInvalidError) as error:
                return RunOutcome(False, [str(error)])
        elif request.embedded_schema is not None:
            schema = request.embedded_schema
        else:  # events.py refuses such an event; kept so a future change cannot train an empty schema
            return RunOutcome(False, ["the event names no design schema"])
        run.design_schema_id = schema.design_token.value or request.model_key_token
        if run.attempts >= self.settings.max_attempts:
            return RunOutcome(
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
    ) -> tuple[Path, RunResult] | RunOutcome:
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
                        job_dir, RunOutcome(False, [f"the run exited 0 but {RESULT_FILE} says no success"])
                    )
                return job_dir, result
            if outcome.verdict is LaunchVerdict.FAILED_PERMANENTLY:
                errors = result.errors if result is not None and result.errors else [truncate(outcome.detail)]
                return self._discard(job_dir, RunOutcome(False, errors))
            # What the run said (its dataset's store was unreachable, say) and how it ended; else the log's tail.
            said = "; ".join(result.errors) if result is not None and result.errors else ""
            ended = outcome.detail.partition("\n")[0]
            last_detail = truncate(f"{said} ({ended})" if said else outcome.detail)
            run.errors.append(f"attempt {run.attempts}: {last_detail}")
            logger.warning("retryable run failure", extra={"fields": {"attempt": run.attempts, "detail": last_detail}})
            self._discard(job_dir, None)
            if run.attempts < self.settings.max_attempts:
                await self._until.sleep(self.settings.retry_backoff_seconds * run.attempts)
        return RunOutcome(False, [f"gave up after {run.attempts} attempts; last: {last_detail}"])

    def _discard(self, job_dir: Path, outcome: RunOutcome | None) -> RunOutcome:
        if not self.settings.keep_job_dirs:
            shutil.rmtree(job_dir, ignore_errors=True)
        return outcome or RunOutcome(False, [])

    async def _store_and_announce(
        self,
        request: TrainingRequest,
        schema: training_pb2.ModelDesignSchema,
        run: RunRecord,
        job_dir: Path,
        result: RunResult,
    ) -> RunOutcome:
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
                return RunOutcome(False, [str(error)])
            except TRANSIENT_ERRORS as error:
                logger.warning("model store upload failed", extra={"fields": {"attempt": attempt, "error": str(error)}})
                if attempt == self.settings.max_attempts:
                    return RunOutcome(False, [f"model store upload failed after {attempt} attempts: {error}"])
                await self._until.sleep(self.settings.retry_backoff_seconds * attempt)
        outcome = RunOutcome(True, [], dict(result.metrics), stored)
        if self._wants_deploy(request) and self.deployer is not None:
            name = model_name_for(run.design_schema_id)
            try:
                await self.deployer.deploy(name, stored.folder_uri)
                outcome.deploy_note = f"loaded {name}"
            except Exception as error:  # any deploy failure is reported, never fails the training
                outcome.deploy_note = truncate(f"failed: {error}")
                run.errors.append(f"auto-deploy of {name}: {outcome.deploy_note}")
        if schema.output_store.WhichOneof("options") == "inference_store" and schema.output_store.inference_store:
            message = training_pb2.InferenceStoreMessage(
                model_id=run.design_schema_id, dataset_artifact_url=stored.folder_uri
            )
            headers = [*id_headers(run), (H_ARTIFACT_URI, stored.artifact_uri.encode())]
            await self._publish(self.settings.inference_store_topic, run.design_schema_id, message, headers)
        return outcome

    def _wants_deploy(self, request: TrainingRequest) -> bool:
        asked = request.headers.get(H_AUTO_DEPLOY, "").strip().lower()
        if asked in {"true", "1", "yes"}:
            return True
        if asked in {"false", "0", "no"}:
            return False
        return self.settings.auto_deploy

    # ------------------------------------------------------------------ publishing

    async def _publish_status(
        self,
        run: RunRecord,
        status: training_pb2.ModelTrainingStatusEnum.ValueType,
        errors: list[str],
        outcome: RunOutcome | None = None,
    ) -> None:
        message, headers = status_message(run, status, errors, outcome)
        await self._publish(self.settings.status_topic, run.design_schema_id, message, headers)

    async def _publish(self, topic: str, key: str, message: Any, headers: list[tuple[str, bytes]]) -> None:
        value = message.SerializeToString()

        async def send() -> None:
            await self.producer.send_and_wait(topic, value, key=key.encode() or None, headers=headers)

        await self._until.retrying(f"publish on {topic}", send, retryable=(KafkaError, *REDIS_RETRYABLE))


def _read_result(job_dir: Path) -> RunResult | None:
    try:
        return RunResult.read(job_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
