"""The registry's consumer of the trainer's status topic (``--kafka-bootstrap``, ``--status-topic``): every run the
trainer reports as SUCCESS is registered (registry/service/trainer_runs.py) from what it stored in the model store.

One consumer group (``--consumer-group``, default modelplane-registry) of its own, so the registry reads every
status whatever else reads the topic; offsets are committed by hand, a record's only once its version is committed
to the database (or once it is known to be no run to register), so a registry that stops or crashes reads again
from the first record it had not finished: at least once, and registering is idempotent (a version's id is the
run's). A record that is not a status message (malformed, too large, wrong headers), a failure status, or a run
whose stored folder is not a run's, is skipped with a warning and its offset moves on: nothing on the topic stops
the registry. The model store or the database unavailable is not the record's fault: the record is read again
after a backoff, its offset uncommitted meanwhile, and the consumer keeps polling so the group keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from aiokafka.errors import KafkaError  # type: ignore[import-untyped]
from aiokafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]

from modelplane.backoff import Backoff
from modelplane.kafka_membership import commit_only_as_a_member, group_member
from modelplane.model_store_settings import ModelStoreSettings
from registry.errors import RegistryError
from registry.service.trainer_runs import TrainerRunsService
from registry.settings import TrainerRunsSettings
from registry.trainer_runs.reports import ReportError, read_report
from registry.trainer_runs.stored_runs import StoredRunError, StoreUnavailableError, read_stored_run

log = logging.getLogger(__name__)

MAX_RECORDS_PER_POLL: Final = 32
POLL_MS: Final = 500


class TrainerRunsConsumer:
    def __init__(self, settings: TrainerRunsSettings, store: ModelStoreSettings, service: TrainerRunsService) -> None:
        self._settings = settings
        self._store = store
        self._service = service
        self._backoff = Backoff(0.5, 15.0)
        self.registered = 0  # runs registered by this consumer (for the log)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; a consumer that fails unexpectedly is said in the log and started again."""
        while not stop.is_set():
            try:
                await self._run_once(stop)
            except Exception:
                log.exception("registry: the consumer of the trainer's runs failed; starting it again")
                await _pause(stop, self._backoff.next())

    async def _run_once(self, stop: asyncio.Event) -> None:
        settings = self._settings
        consumer = group_member(
            settings.status_topic,
            bootstrap=settings.bootstrap,
            group_id=settings.consumer_group,
            session_timeout_ms=settings.session_timeout_ms,
            max_record_bytes=settings.max_message_bytes,
        )
        try:
            if await self._start(consumer, stop):
                commit_only_as_a_member(consumer)
                log.info("registry: registering the trainer's runs from %s", settings.status_topic)
                await self._consume(consumer, stop)
        finally:
            await consumer.stop()

    async def _start(self, consumer: Any, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            try:
                await consumer.start()
                return True
            except KafkaError as error:
                log.warning("registry: Kafka at %s unreachable (%s); retrying", self._settings.bootstrap, error)
                await _pause(stop, self._backoff.next())
        return False

    async def _consume(self, consumer: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS_PER_POLL)
            except KafkaError as error:
                log.warning("registry: reading %s failed (%s); retrying", self._settings.status_topic, error)
                await _pause(stop, self._backoff.next())
                continue
            for tp, records in batches.items():
                for record in records:
                    if stop.is_set():
                        return
                    if not await self._handle(record):
                        consumer.seek(tp, record.offset)  # read again after the pause; nothing after it is done
                        await _pause(stop, self._backoff.next())
                        break
                    self._backoff.reset()
                    await self._commit(consumer, tp, record.offset + 1)

    async def _handle(self, record: Any) -> bool:
        """Register what ``record`` reports; True when it is done with (registered, or skipped for good), False
        when it must be read again (the model store or the database unavailable)."""
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        try:
            report = read_report(record.value, record.headers, self._settings.max_message_bytes)
            if report is None:
                return True  # a failure: no model to register
            if report.bucket != self._store.bucket:
                raise ReportError(
                    f"the model is in bucket {report.bucket!r}, not this registry's {self._store.bucket!r}"
                )
            if await self._service.is_registered(report.run_id):
                # Redelivered: the store (a whole artifact, hashed) is not read again; register() checks too (races).
                log.info(
                    "registry: run %s of design %s is registered already (%s)",
                    report.run_id,
                    report.design_schema_id,
                    where,
                )
                return True
            stored = await asyncio.to_thread(read_stored_run, self._store, report, self._store.timeout_seconds)
            if await self._service.register(report, stored):
                self.registered += 1
                log.info("registry: registered run %s of design %s (%s)", report.run_id, report.design_schema_id, where)
        except (ReportError, StoredRunError) as error:
            log.warning("registry: skipped the trainer's status record %s: %s", where, error)
        except StoreUnavailableError as error:
            log.warning("registry: the record %s waits for the model store: %s", where, error)
            return False
        except RegistryError as error:
            log.warning("registry: the record %s waits for the database: %s", where, error.message)
            return False
        except Exception:  # a bug: said loudly, and the record is not read forever
            log.exception("registry: skipped the trainer's status record %s: it could not be registered", where)
        return True

    async def _commit(self, consumer: Any, tp: Any, offset: int) -> None:
        try:
            await consumer.commit({tp: OffsetAndMetadata(offset, "")})
        except KafkaError as error:
            # Rebalancing or the broker away: the record is read again by the partition's owner, and found registered.
            log.warning("registry: committing %s at %d failed: %s", tp, offset, error)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
