"""Flags every Kafka consumer group member of modelplane takes alike (the trainer, the registry): kept here, light
(no aiokafka), so a settings module can build its parser without loading the Kafka client."""

from __future__ import annotations

import argparse

from modelplane.flag_types import bounded_int


def add_session_timeout_flag(group: argparse._ArgumentGroup) -> None:
    """``--session-timeout-ms``: how long the group waits for a silent member (modelplane/kafka_membership.py's
    group_member heartbeats three times in it)."""
    group.add_argument(
        "--session-timeout-ms",
        type=bounded_int(1000, 300_000),
        default=10_000,
        metavar="MS",
        help="how long the group waits for a silent member before reassigning its partitions (default 10000)",
    )
