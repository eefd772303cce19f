"""Kafka consumer groups: committing only while the group still knows the member.

Both of modelplane's consumers (the gateway's Kafka bridge and the trainer) commit offsets by hand after the work
for them is done; this module is where that commit is kept honest across lost group membership."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

__all__ = ["ForgottenMemberError", "commit_only_as_a_member", "group_member"]

# The generation aiokafka gives a member its group has forgotten (OffsetCommitRequest.DEFAULT_GENERATION_ID).
_NO_GENERATION = -1


class ForgottenMemberError(KafkaError):  # type: ignore[misc]  # aiokafka's errors are untyped
    """A commit refused because the group no longer knows this member (not retriable)."""


def commit_only_as_a_member(consumer: Any) -> None:
    """Make ``consumer`` refuse to commit offsets once its group has forgotten it.

    When the broker no longer knows the member (its session expired, or the broker restarted without its state),
    aiokafka resets the member to generation -1 and goes on retrying a pending commit with it; a broker takes such
    a commit for a group without members. After a restart that lost the log, the old log's offsets then land on the
    new one and the records that arrive below them are never read. Kafka's Java client fails such a commit (and
    tells lost partitions from revoked ones, KIP-429); aiokafka has neither, so this wraps its coordinator's one
    commit request. Records whose offsets were not committed are handled again by their next owner: at least once,
    never lost."""
    coordinator = consumer._coordinator
    send_commit = coordinator._do_commit_offsets

    async def commit_as_a_member(assignment: Any, offsets: Any) -> Any:
        if coordinator.generation == _NO_GENERATION:
            raise ForgottenMemberError(
                "the group no longer knows this member; its next owner reads from the last commit"
            )
        return await send_commit(assignment, offsets)

    coordinator._do_commit_offsets = commit_as_a_member


def group_member(
    *topics: str, bootstrap: str, group_id: str, session_timeout_ms: int, max_record_bytes: int
) -> AIOKafkaConsumer:
    """A consumer of ``topics`` in ``group_id`` that commits by hand (after the work is done), starts a new group
    at the earliest record, heartbeats three times a session, and fetches at least one record of
    ``max_record_bytes`` (a larger one is the caller's to skip, not a fetch that never completes). Call
    ``commit_only_as_a_member`` on it once started."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(100, session_timeout_ms // 3),
        max_partition_fetch_bytes=max(max_record_bytes + 65_536, 1 << 20),
        fetch_max_bytes=max(max_record_bytes * 2, 50 << 20),
    )
