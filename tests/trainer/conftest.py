"""Fixtures of the trainer tests. ``stack`` needs the session's servers: its modules register
tests.support.real_components, kafka_broker and redis_server with ``pytest_plugins``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.kafka_broker import KafkaBroker
from tests.support.real_components import S3Server
from tests.support.redis_server import RedisServer
from tests.support.trainer_stack import Stack, stack_for


@pytest.fixture
async def stack(kafka_broker: KafkaBroker, redis_server: RedisServer, s3_server: S3Server, tmp_path: Path) -> Stack:
    """This test's slice of the session's Tansu, Redis and SeaweedFS (its own topics, group, prefix and bucket)."""
    return await stack_for(kafka_broker, redis_server, s3_server, tmp_path)
