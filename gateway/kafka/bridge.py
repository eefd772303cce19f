"""The gateway's Kafka side: V2 inference requests consumed from the ``.inputs`` topics of the models and
pipelines the gateway serves, answered on their ``.outputs`` topics, failures on the errors topic.

Record formats and headers: :mod:`gateway.kafka.messages`; topic names: :mod:`gateway.kafka.topics`.

Delivery is at-least-once, with duplicate suppression:
- offsets are committed by hand (no auto-commit), per partition, only up to the lowest offset whose answer (or
  error record) the broker has acknowledged with acks=all; records of a partition run concurrently (up to
  ``max_in_flight`` in all), so an ordered per-partition tracker decides what may be committed;
- a record redelivered after a rebalance or a restart is run again unless its (input topic, request id) is in
  this process's window of recently answered requests (``dedupe_window`` entries) or still in flight here.
  Across process restarts (or when another gateway took the partition over) the window is empty: a
  redelivered request whose answer was produced but not yet committed is answered again. Consumers of
  ``.outputs`` should therefore treat the ``x-request-id`` header as an idempotency key. (Reading the outputs
  topic back to find earlier answers was judged not worth its cost and failure modes.)
- Tansu, the test broker, has no idempotent producer or transactions, and the design does not need them.

All gateways share one consumer group (``group_id``), so each request is handled by one of them.

Over 400 lines on purpose: the bridge is one state machine around one consumer and one producer (connect,
subscription, held partitions after a rebalance, in-flight records, duplicate window, per-partition offsets),
and every method reads or changes that shared state under the same two locks; cut apart, the halves would hand
each other private state. What is separable already lives beside it: record formats (messages.py), topic names
(topics.py), settings, the offset tracker and duplicate window (modelplane/kafka_delivery.py) and the commit
guard (modelplane/kafka_membership.py). The next seam, if it grows: topic creation (``_ensure_topics``) and the
answering of one record (``_serve`` .. ``_produce``) as their own classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

# aiokafka ships no type information: its names are Any here.
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError, MessageSizeTooLargeError  # type: ignore[import-untyped]

from gateway.inference_types import InferenceError, ModelCaller
from gateway.kafka.messages import (
    DecodedRequest,
    MalformedRecordError,
    answer_headers,
    decode_request,
    encode_error,
    encode_response,
)
from gateway.kafka.settings import KafkaBridgeSettings
from gateway.kafka.topics import Resource, ResourceKind
from modelplane import logs
from modelplane.backoff import Backoff
from modelplane.kafka_delivery import OffsetTracker, RecentIds
from modelplane.kafka_membership import commit_only_as_a_member

__all__ = ["BridgeStats", "KafkaBridge", "KafkaBridgeSettings"]

log = logging.getLogger(__name__)

# Kafka's error code for "topic already exists": creating a topic that another gateway created is fine.
_TOPIC_ALREADY_EXISTS = 36


@dataclass
class BridgeStats:
    """Counters since start, for logs, metrics and tests."""

    answered: int = 0  # answers produced on .outputs
    errors: int = 0  # error records produced
    duplicates: int = 0  # records not run again because their request id was answered recently
    skipped: int = 0  # fetched records of resources or partitions no longer ours, left for a later owner
    assignments: int = 0  # partition assignments received from the group (the first, then one per rebalance)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka's base class is untyped
    def __init__(self, bridge: KafkaBridge) -> None:
        self._bridge = bridge

    async def on_partitions_revoked(self, revoked: Collection[Any]) -> None:
        await self._bridge._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Collection[Any]) -> None:
        await self._bridge._on_assigned(assigned)


class KafkaBridge:
    """Serves V2 inference over Kafka for the gateway's models and pipelines.

    ``infer_model`` and ``infer_pipeline`` are the gateway's routing callables; the bridge never talks to a
    replica itself. Call :meth:`start`, then :meth:`update_resources` whenever the routing table changes
    (before or after start), and :meth:`stop` at shutdown."""

    def __init__(self, settings: KafkaBridgeSettings, infer_model: ModelCaller, infer_pipeline: ModelCaller) -> None:
        self._settings = settings
        self._names = settings.topic_names()
        self._callers: dict[ResourceKind, ModelCaller] = {
            ResourceKind.MODEL: infer_model,
            ResourceKind.PIPELINE: infer_pipeline,
        }
        self.stats = BridgeStats()
        self._wanted: dict[str, Resource] = {}  # input topic -> the resource it serves
        self._consumer: Any = None
        self._producer: Any = None
        self._listener = _Rebalance(self)
        self._trackers: dict[Any, OffsetTracker] = {}  # TopicPartition -> its tracker, for assigned partitions
        self._answered = RecentIds(settings.dedupe_window)
        self._pending: dict[tuple[str, str], asyncio.Event] = {}  # (input topic, request id) being handled
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._stopping = asyncio.Event()
        self._resources_changed = asyncio.Event()
        self._commit_wanted = asyncio.Event()
        self._update_lock = asyncio.Lock()
        self._commit_lock = asyncio.Lock()
        self._topics_missing: set[str] = set()  # topics whose creation failed; retried by the fetch loop
        self._run_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._connected = False
        self._assigned_since_connect = False  # the first assignment after a connect follows _connect's topic check
        self._held: set[Any] = set()  # partitions paused until the topics are checked after a rebalance

    # ---- public API -------------------------------------------------------------------------------------

    def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition that has had records since its assignment: records fetched or waiting on the
        broker that are not answered yet (the high watermark last fetched minus the next offset to commit)."""
        consumer = self._consumer
        lags: dict[tuple[str, int], int] = {}
        if consumer is None:
            return lags
        for partition, tracker in list(self._trackers.items()):
            high = consumer.highwater(partition)
            position = tracker.committable()
            if high is not None and position is not None:
                lags[(partition.topic, partition.partition)] = max(0, high - position)
        return lags

    @property
    def subscribed_topics(self) -> frozenset[str]:
        """The input topics the bridge consumes (or will, once connected)."""
        return frozenset(self._wanted)

    @property
    def assignment(self) -> frozenset[tuple[str, int]]:
        """The (topic, partition) pairs this member of the group currently handles."""
        return frozenset((tp.topic, tp.partition) for tp in self._trackers)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        """Start consuming in the background. Returns at once: an unreachable broker is retried with backoff,
        so the gateway's REST and gRPC sides never wait for Kafka."""
        if self._run_task is not None:
            raise RuntimeError("the Kafka bridge is already started")
        self._run_task = asyncio.create_task(self._run(), name="kafka-bridge")
        self._commit_task = asyncio.create_task(self._commit_loop(), name="kafka-bridge-commits")

    async def update_resources(self, models: Iterable[str], pipelines: Iterable[str]) -> None:
        """Consume exactly the ``.inputs`` topics of these models and pipelines from now on, creating missing
        topics. A name that cannot make a legal Kafka topic is logged and left out. When the set changes,
        in-flight requests get up to ``revoke_timeout_s`` to finish (so their offsets are committed) before
        the group rebalances."""
        wanted: dict[str, Resource] = {}
        for kind, names in ((ResourceKind.MODEL, models), (ResourceKind.PIPELINE, pipelines)):
            for name in names:
                resource = Resource(kind, name)
                if not self._names.usable(resource):
                    log.warning("kafka bridge: %s cannot be served over Kafka: its topic name is illegal", resource)
                    continue
                wanted[self._names.inputs(resource)] = resource
        async with self._update_lock:
            if wanted == self._wanted:
                return
            self._wanted = wanted
            self._resources_changed.set()
            if self._connected:
                await self._ensure_topics()
                # Stop fetching while in-flight requests finish, or a steady stream would never let them drain.
                # The new subscription starts a new assignment, unpaused.
                paused = self._consumer.assignment()
                self._consumer.pause(*paused)
                await self._drain_and_commit(list(self._trackers), self._settings.revoke_timeout_s)
                if not self._apply_subscription():
                    current = self._consumer.assignment()
                    self._consumer.resume(*(tp for tp in paused if tp in current and tp not in self._held))

    async def stop(self) -> None:
        """Stop fetching, let in-flight requests finish (up to ``drain_timeout_s``), commit what was answered,
        and leave the group. Requests abandoned at the deadline stay uncommitted: another member (or the next
        start) answers them."""
        if self._run_task is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._run_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._run_task
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self._settings.drain_timeout_s)
            if late:
                log.warning("kafka bridge: abandoning %d requests still in flight at shutdown", len(late))
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        await self._commit()
        if self._commit_task is not None:
            self._commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._commit_task
        # Nothing is left to commit: the revocation that leaving the group triggers must not wait for trackers
        # of abandoned requests.
        self._trackers.clear()
        await self._close_consumer()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(KafkaError, OSError):
                await producer.stop()

    # ---- connection and fetching --------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self._settings.backoff_initial_s, self._settings.backoff_max_s)
        while not self._stopping.is_set():
            connected_at: float | None = None
            try:
                await self._connect()
                connected_at = time.monotonic()
                await self._fetch_loop()
            except (KafkaError, OSError) as error:
                self._reset_after_a_good_run(backoff, connected_at)
                delay = backoff.next()
                log.warning("kafka bridge: broker trouble (%r); reconnecting in %.1fs", error, delay)
            except Exception:
                # A bug must not end the gateway's Kafka side for good: start over with a fresh consumer.
                self._reset_after_a_good_run(backoff, connected_at)
                delay = backoff.next()
                log.exception("kafka bridge: consume loop failed; restarting in %.1fs", delay)
            else:
                return
            await self._close_consumer()
            await asyncio.sleep(delay)

    def _reset_after_a_good_run(self, backoff: Backoff, connected_at: float | None) -> None:
        # Back off from the start only after a connection that lasted: one failing at every fetch must not make
        # the bridge reconnect in a tight loop.
        if connected_at is not None and time.monotonic() - connected_at > self._settings.backoff_max_s:
            backoff.reset()

    async def _connect(self) -> None:
        settings = self._settings
        reused_producer = self._producer is not None
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=settings.bootstrap_servers,
                client_id=settings.client_id,
                acks="all",
                # Tansu (and some managed brokers) lack InitProducerId: idempotence would fail at start.
                enable_idempotence=False,
                max_request_size=settings.max_message_bytes,
                metadata_max_age_ms=settings.metadata_max_age_ms,
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=settings.client_id,
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(1, settings.session_timeout_ms // 3),
            # Revocation may wait revoke_timeout_s for in-flight work; the group must wait at least that long.
            rebalance_timeout_ms=max(settings.session_timeout_ms, int(settings.revoke_timeout_s * 1000) + 5_000),
            metadata_max_age_ms=settings.metadata_max_age_ms,
            max_poll_records=settings.max_in_flight,
        )
        await self._consumer.start()
        commit_only_as_a_member(self._consumer)
        async with self._update_lock:
            await self._ensure_topics()
            if reused_producer:
                # A reconnect may follow a broker restart: the kept producer's metadata may name what is gone.
                await self._refresh_producer_metadata()
            self._apply_subscription()
            self._assigned_since_connect = False
            self._connected = True

    async def _close_consumer(self) -> None:
        # Under the update lock: update_resources uses the consumer across awaits.
        async with self._update_lock:
            self._connected = False
            self._trackers.clear()
            self._held.clear()
            if self._consumer is not None:
                consumer, self._consumer = self._consumer, None
                with contextlib.suppress(KafkaError, OSError):
                    await consumer.stop()

    def _apply_subscription(self) -> bool:
        """Point the consumer at the wanted topics; False when it already was."""
        topics = sorted(self._wanted)
        if frozenset(topics) == frozenset(self._consumer.subscription()):
            return False
        if topics:
            self._consumer.subscribe(topics, listener=self._listener)
        else:
            self._consumer.unsubscribe()
            self._trackers.clear()
        log.info("kafka bridge: consuming %s", topics or "nothing")
        return True

    async def _fetch_loop(self) -> None:
        last_topic_attempt = time.monotonic()
        while not self._stopping.is_set():
            if self._held:
                await self._release_held()
            # Retry topic creation that failed; and with nothing assigned for a while, check the topics still
            # exist: a broker without durable storage that restarted, or an operator, may have removed them.
            since_attempt = time.monotonic() - last_topic_attempt
            if (self._topics_missing or not self._trackers) and since_attempt > self._settings.backoff_max_s:
                last_topic_attempt = time.monotonic()
                async with self._update_lock:
                    await self._ensure_topics()
            if not self._wanted:
                self._resources_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._resources_changed.wait(), timeout=1.0)
                continue
            batches = await self._consumer.getmany(timeout_ms=500, max_records=self._settings.max_in_flight)
            for partition, records in batches.items():
                for record in records:
                    await self._slots.acquire()
                    try:
                        admitted = self._admit(partition, record)
                    except BaseException:
                        self._slots.release()  # the slot belongs to a task that was never created
                        raise
                    if not admitted:
                        self._slots.release()
                        break

    def _admit(self, partition: Any, record: Any) -> bool:
        """Start handling one fetched record, or refuse when it is no longer ours to handle."""
        resource = self._wanted.get(record.topic)
        tracker = self._trackers.get(partition)
        if resource is None or tracker is None:
            # Its resource was removed, or the partition was revoked while the record waited for a slot. It
            # stays uncommitted, so whoever consumes the partition next gets it. With the partition's tracker
            # gone, nothing later on it is committed past this record either.
            self._trackers.pop(partition, None)
            self.stats.skipped += 1
            return False
        tracker.add(record.offset)
        task = asyncio.create_task(self._handle(record, resource, tracker), name=f"kafka-request-{record.offset}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _ensure_topics(self) -> None:
        """Create the topics the wanted resources use (inputs, outputs, errors) that do not exist. A failure is
        logged and retried later: the gateway's routing update must not fail because Kafka is away."""
        topics = {self._names.errors()}
        for resource in self._wanted.values():
            topics.add(self._names.inputs(resource))
            topics.add(self._names.outputs(resource))
        settings = self._settings
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id=settings.client_id)
        try:
            await asyncio.wait_for(admin.start(), timeout=10)
            missing = topics - set(await asyncio.wait_for(admin.list_topics(), timeout=10))
            if missing:
                response = await asyncio.wait_for(
                    admin.create_topics(
                        [
                            NewTopic(
                                name=topic,
                                num_partitions=settings.topic_partitions,
                                replication_factor=settings.replication_factor,
                            )
                            for topic in sorted(missing)
                        ]
                    ),
                    timeout=10,
                )
                for entry in getattr(response, "topic_errors", []):
                    if entry[1] not in (0, _TOPIC_ALREADY_EXISTS):
                        log.warning(
                            "kafka bridge: cannot create topic %s: error code %s %s",
                            entry[0],
                            entry[1],
                            entry[2] if len(entry) > 2 else "",
                        )
                await self._wait_listed(admin, missing)
            self._topics_missing -= topics  # only what this call checked: a newer failure stays marked
        except (KafkaError, OSError, TimeoutError) as error:
            self._topics_missing = topics
            log.warning("kafka bridge: cannot create topics %s yet (%r); will retry", sorted(topics), error)
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()

    @staticmethod
    async def _wait_listed(admin: Any, topics: set[str]) -> None:
        # Subscribing before the broker's metadata lists a topic would leave it unassigned until the next
        # metadata refresh.
        for _ in range(100):
            if topics <= set(await admin.list_topics()):
                return
            await asyncio.sleep(0.05)

    # ---- handling one record ----------------------------------------------------------------------------

    async def _handle(self, record: Any, resource: Resource, tracker: OffsetTracker) -> None:
        try:
            await self._serve(record, resource)
        except asyncio.CancelledError:
            raise  # abandoned at shutdown: stays uncommitted
        except Exception:
            # Unreachable by design (_serve answers every failure); if it happens, leave the record
            # uncommitted rather than lose it.
            log.exception("kafka bridge: record %s-%d-%d not handled", record.topic, record.partition, record.offset)
        else:
            tracker.done(record.offset)
            self._commit_wanted.set()
        finally:
            self._slots.release()

    async def _serve(self, record: Any, resource: Resource) -> None:
        decoded: DecodedRequest | MalformedRecordError
        try:
            decoded = decode_request(
                record.value,
                record.headers or (),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                max_value_bytes=self._settings.max_message_bytes,
            )
        except MalformedRecordError as malformed:
            decoded = malformed
        request_id = decoded.request_id
        key = (record.topic, request_id)
        while True:
            if key in self._answered:
                self.stats.duplicates += 1
                log.info("kafka bridge: request %s to %s already answered; not run again", request_id, resource)
                return
            earlier = self._pending.get(key)
            if earlier is None:
                break
            # The same request is being handled from another record: wait for it, then count this one as a
            # duplicate (or run it, if the earlier one was abandoned).
            await earlier.wait()
        finished = asyncio.Event()
        self._pending[key] = finished
        ids: logs.LogContext = {"request_id": request_id}
        ids["model" if resource.kind is ResourceKind.MODEL else "pipeline"] = resource.name
        token = logs.bind(**ids)
        try:
            if isinstance(decoded, MalformedRecordError):
                await self._produce_error(record, resource, request_id, decoded.status, decoded.message)
            else:
                await self._answer(record, resource, decoded)
            self._answered.add(key)
        finally:
            logs.unbind(token)
            del self._pending[key]
            finished.set()

    async def _answer(self, record: Any, resource: Resource, decoded: DecodedRequest) -> None:
        call = self._callers[resource.kind]
        request_id = decoded.request_id
        try:
            response = await call(resource.name, decoded.body, decoded.headers)
            value = encode_response(response, request_id, protobuf=decoded.protobuf)
        except InferenceError as error:
            status, message = error.status, error.message
        except TimeoutError:
            status, message = 504, f"{resource} did not answer in time"
        except Exception as error:
            log.exception("kafka bridge: %s failed unexpectedly", resource)
            status, message = 500, f"internal error: {type(error).__name__}"
        else:
            try:
                headers = answer_headers(request_id, protobuf=decoded.protobuf)
                await self._produce(self._names.outputs(resource), value, record.key, headers)
            except MessageSizeTooLargeError:
                status, message = 413, f"the response is {len(value)} bytes, more than the broker accepts"
            else:
                self.stats.answered += 1
                return
        await self._produce_error(record, resource, request_id, status, message)

    async def _produce_error(self, record: Any, resource: Resource, request_id: str, status: int, message: str) -> None:
        log.info("kafka bridge: request %s to %s failed with %d: %s", request_id, resource, status, message)
        value = encode_error(
            request_id=request_id,
            resource=resource,
            status=status,
            message=message[:2000],
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        await self._produce(self._names.errors(), value, record.key, answer_headers(request_id))
        self.stats.errors += 1

    async def _produce(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        """Send with acks=all, retrying broker trouble with backoff until it succeeds or the request is
        abandoned (cancelled at shutdown). Oversized values raise MessageSizeTooLargeError."""
        backoff = Backoff(self._settings.backoff_initial_s, self._settings.backoff_max_s)
        while True:
            producer = self._producer
            if producer is None:
                raise KafkaError("the producer is closed")
            try:
                await producer.send_and_wait(topic, value, key=key, headers=headers)
                return
            except MessageSizeTooLargeError:
                raise
            except KafkaError as error:
                # The topic may be gone (deleted, or a broker restarted without durable storage): have the fetch
                # loop check and recreate it, or the retries below could never succeed.
                self._topics_missing.add(topic)
                delay = backoff.next()
                log.warning("kafka bridge: producing to %s failed (%r); retrying in %.1fs", topic, error, delay)
                await asyncio.sleep(delay)

    # ---- offsets ----------------------------------------------------------------------------------------

    async def _on_assigned(self, assigned: Collection[Any]) -> None:
        # A fresh tracker per assignment: the fetch position restarts at the committed offset, and records still
        # in flight from an earlier assignment are recognised by request id (pending or recently answered).
        for partition in assigned:
            self._trackers[partition] = OffsetTracker()
        log.info("kafka bridge: assigned %s", sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))
        if self._assigned_since_connect and self._consumer is not None:
            # A rebalance on a live connection may mean the broker restarted (see _release_held). The new
            # partitions stay paused until the fetch loop has checked; not here: the group's heartbeats wait
            # for this listener, and the check may take longer than a session.
            self._consumer.pause(*assigned)
            self._held.update(assigned)
        self._assigned_since_connect = True
        self.stats.assignments += 1

    async def _release_held(self) -> None:
        """Resume the partitions a rebalance brought once topics and the producer's metadata are checked.

        A rebalance on a live connection may mean the broker restarted, and a broker without durable storage
        comes back without our topics. An answer produced with the old broker's metadata to a topic that no longer
        exists is lost by some brokers (Tansu's memory engine acknowledges it at offset 0 and never serves it)."""
        async with self._update_lock:
            await self._ensure_topics()
            await self._refresh_producer_metadata()
        held, self._held = self._held, set()
        current = self._consumer.assignment()
        self._consumer.resume(*(partition for partition in held if partition in current))

    async def _refresh_producer_metadata(self) -> None:
        producer = self._producer
        if producer is not None:
            with contextlib.suppress(TimeoutError, KafkaError):
                await asyncio.wait_for(producer.client.force_metadata_update(), timeout=10)

    async def _on_revoked(self, revoked: Collection[Any]) -> None:
        await self._drain_and_commit(list(revoked), self._settings.revoke_timeout_s)
        for partition in revoked:
            self._trackers.pop(partition, None)

    async def _drain_and_commit(self, partitions: list[Any], timeout: float) -> None:
        trackers = [self._trackers[tp] for tp in partitions if tp in self._trackers]
        if trackers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(tracker.wait_idle() for tracker in trackers)), timeout)
        await self._commit(partitions)

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await asyncio.sleep(self._settings.commit_interval_s)  # batch the commits of a burst of answers
            await self._commit()

    async def _commit(self, partitions: Collection[Any] | None = None) -> None:
        async with self._commit_lock:
            consumer = self._consumer
            if consumer is None:
                return
            assigned = consumer.assignment()
            offsets: dict[Any, int] = {}
            committing: list[tuple[OffsetTracker, int]] = []
            for partition, tracker in list(self._trackers.items()):
                if (partitions is not None and partition not in partitions) or partition not in assigned:
                    continue
                position = tracker.to_commit()
                if position is not None:
                    offsets[partition] = position
                    committing.append((tracker, position))
            if not offsets:
                return
            try:
                await consumer.commit(offsets)
            except KafkaError as error:
                # Typically the group rebalanced meanwhile: the new owner starts from the last good commit.
                log.info("kafka bridge: commit of %s failed: %r", offsets, error)
                return
            for tracker, position in committing:
                tracker.mark_committed(position)
