"""modelplane/s3.py: every S3 request is bounded. An endpoint that accepts connections and never
answers fails the call (a retryable error) instead of hanging the agent or the trainer. No time is asserted:
pytest-timeout fails the test if a call hangs, as it did before the client had timeouts."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelplane.s3 import minio_client
from trainer.model_store_settings import ModelStoreSettings
from trainer.service.model_store import TRANSIENT_ERRORS, ModelStore


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """host:port of a server that accepts every connection, reads nothing and answers nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()


@pytest.mark.timeout(60)
def test_a_silent_endpoint_fails_a_request_instead_of_hanging(silent_endpoint: str) -> None:
    client = minio_client(
        silent_endpoint,
        access_key="k",
        secret_key="s",  # noqa: S106 -- nothing checks it
        secure=False,
        region="us-east-1",
        timeout_seconds=0.3,
    )
    with pytest.raises(TRANSIENT_ERRORS):
        client.bucket_exists("models")


@pytest.mark.timeout(60)
async def test_the_model_store_upload_fails_retryably_against_a_silent_endpoint(
    silent_endpoint: str, tmp_path: Path
) -> None:
    artifact = tmp_path / "model.pkl"
    artifact.write_bytes(b"weights")
    settings = ModelStoreSettings(
        endpoint=silent_endpoint,
        access_key="k",
        secret_key="s",  # noqa: S106 -- nothing checks it
        bucket="models",
        prefix="m",
        secure=False,
        region="us-east-1",
        timeout_seconds=0.3,
    )
    with pytest.raises(TRANSIENT_ERRORS):
        await ModelStore(settings).upload(
            tmp_path,
            artifact_name="model.pkl",
            design_token="d",  # noqa: S106 -- an identifier
            version="1",
            run_id="r",
            reported_sha256=hashlib.sha256(b"weights").hexdigest(),
        )
