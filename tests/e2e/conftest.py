"""Fixtures of the fault tests (their helpers are in tests/e2e/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kafka_broker import DurableBroker
from tests.support.real_components import ACCESS_KEY, SECRET_KEY, S3Server


@pytest.fixture
def durable_broker(s3_server: S3Server, tmp_path: Path) -> Iterator[DurableBroker]:
    """A Tansu broker of this test's own, keeping its data in a bucket of the session's SeaweedFS: started, and
    stopped by PID afterwards. Kill it and start it again to restart it with nothing forgotten."""
    folder = tmp_path / "tansu"
    folder.mkdir()
    broker = DurableBroker(
        folder,
        s3_endpoint=s3_server.endpoint,
        bucket=s3_server.new_bucket(),
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
