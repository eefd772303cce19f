"""Settings of the gateway's Kafka bridge (:mod:`gateway.kafka.bridge`): every knob, documented here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.kafka.topics import TopicNames


@dataclass(frozen=True)
class KafkaBridgeSettings:
    """Every knob of the gateway's Kafka side."""

    bootstrap_servers: str
    topic_prefix: str = "seldon"
    namespace: str = "default"
    # Shared by every gateway replica, so each request is handled once across them.
    group_id: str = "modelplane-gateway"
    errors_topic: str | None = None  # None: ``<prefix>.<namespace>.errors``
    session_timeout_ms: int = 10_000
    max_in_flight: int = 64  # requests being handled at once, over all partitions
    dedupe_window: int = 10_000  # recently answered request ids remembered for duplicate suppression
    # Larger input values are answered with status 413; also the producer's limit for one answer.
    max_message_bytes: int = 1024 * 1024
    # What a group with no committed offset reads first. "earliest": requests produced before the gateway
    # subscribed (for example right after it created the topic) are still answered.
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    topic_partitions: int = 1  # for topics the bridge creates
    replication_factor: int = 1
    drain_timeout_s: float = 30.0  # stop() lets in-flight requests finish this long, then abandons them
    # Before a rebalance or a subscription change, in-flight requests of the affected partitions get this long
    # to finish so their offsets can be committed (fewer duplicates); the group waits meanwhile.
    revoke_timeout_s: float = 5.0
    commit_interval_s: float = 0.2  # commits are batched over this interval
    backoff_initial_s: float = 0.2  # reconnects and produce retries back off from here...
    backoff_max_s: float = 10.0  # ...doubling up to here
    # How often the consumer refreshes metadata (notices topics created by others); Kafka's default is 5 minutes.
    metadata_max_age_ms: int = 30_000
    client_id: str = "modelplane-gateway"

    def __post_init__(self) -> None:
        positive = {
            "session_timeout_ms": self.session_timeout_ms,
            "max_in_flight": self.max_in_flight,
            "max_message_bytes": self.max_message_bytes,
            "topic_partitions": self.topic_partitions,
            "replication_factor": self.replication_factor,
            "metadata_max_age_ms": self.metadata_max_age_ms,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        non_negative = {
            "dedupe_window": self.dedupe_window,
            "drain_timeout_s": self.drain_timeout_s,
            "revoke_timeout_s": self.revoke_timeout_s,
            "commit_interval_s": self.commit_interval_s,
        }
        for name, number in non_negative.items():
            if number < 0:
                raise ValueError(f"{name} must not be negative, not {number}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("backoff_initial_s must be positive and at most backoff_max_s")
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap_servers must name at least one broker")

    def topic_names(self) -> TopicNames:
        return TopicNames(self.topic_prefix, self.namespace, self.errors_topic)
