"""The one way modelplane makes an S3 client (the minio SDK): every request bounded, a few retries.

The minio SDK's default HTTP pool waits forever on a server that accepts a connection and never answers;
every caller here (the agent fetching artifacts, a training run reading its dataset, the trainer's model
store) would hang with it. So: connect and read timeouts, and urllib3 retrying connection failures and 5xx
answers a couple of times with backoff. Light on purpose (urllib3 and minio only): training images carry it.
"""

from __future__ import annotations

import urllib3
from minio import Minio

RETRIES = 2
_RETRIED_STATUSES = (500, 502, 503, 504)


def minio_client(
    endpoint: str,
    *,
    access_key: str | None,
    secret_key: str | None,
    secure: bool,
    region: str | None,
    timeout_seconds: float,
    session_token: str | None = None,
    pool_size: int = 4,
) -> Minio:
    """A client for ``endpoint`` (host[:port]); raises ValueError for an endpoint the SDK refuses."""
    pool = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds),
        retries=urllib3.Retry(total=RETRIES, backoff_factor=0.2, status_forcelist=_RETRIED_STATUSES),
        maxsize=pool_size,
    )
    return Minio(
        endpoint,
        access_key=access_key,
        secret_key=secret_key,
        session_token=session_token,
        secure=secure,
        region=region,
        http_client=pool,
    )
