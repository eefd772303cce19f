"""The one way modelplane describes an S3 store (:class:`S3Settings`), reads an endpoint URL, and makes a client
for it (the minio SDK): every request bounded, a few retries.

The minio SDK's default HTTP pool waits forever on a server that accepts a connection and never answers;
every caller here (the agent fetching artifacts, a training run reading its dataset, the trainer's model
store) would hang with it. So: connect and read timeouts, and urllib3 retrying connection failures and 5xx
answers a couple of times with backoff. Light on purpose (urllib3 and minio only): training images carry it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import S3Error, ServerError

RETRIES = 2
_RETRIED_STATUSES = (500, 502, 503, 504)


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Where an S3 store is and how to sign requests to it. The credentials never appear in its repr.

    The agent reads them from a model's storage config, a training run from its environment, the trainer's model
    store from its flags (trainer/settings.py ``ModelStoreSettings`` adds the bucket and prefix)."""

    endpoint: str  # host[:port], as the minio SDK takes it
    secure: bool
    region: str | None
    origin: str = ""  # where these settings came from, for messages
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"


class S3EndpointError(ValueError):
    """An S3 endpoint URL that names no usable store; the message says why (callers prefix where it came from)."""


def parse_s3_endpoint(value: str) -> tuple[str, bool]:
    """``(host[:port], secure)`` from an endpoint URL such as ``http://127.0.0.1:9000``. Without a scheme it is
    https, as in rclone. The agent reads it from a model's storage config, a training run from its environment."""
    raw = value.strip()
    if not raw:
        raise S3EndpointError("the S3 endpoint is empty")
    if "://" not in raw:
        raw = f"https://{raw}"
    try:
        parts = urlsplit(raw)
        if parts.username is not None or parts.password is not None:
            raise S3EndpointError("the S3 endpoint must not hold credentials: give them as the access and secret key")
        host = parts.hostname
        port = parts.port
    except S3EndpointError:
        raise
    except ValueError as exc:
        raise S3EndpointError(f"bad S3 endpoint {value.strip()!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise S3EndpointError(f"S3 endpoint {value.strip()!r} must be http:// or https://, not {scheme}://")
    if not host:
        raise S3EndpointError(f"S3 endpoint {value.strip()!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise S3EndpointError(f"S3 endpoint {value.strip()!r} must be scheme://host[:port], without a path")
    if ":" in host:
        host = f"[{host}]"
    return (host if port is None else f"{host}:{port}"), scheme == "https"


def s3_client(settings: S3Settings, *, timeout_seconds: float, pool_size: int = 4) -> Minio:
    """A client for the store ``settings`` name; raises ValueError for an endpoint the SDK refuses."""
    return minio_client(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        session_token=settings.session_token,
        secure=settings.secure,
        region=settings.region,
        timeout_seconds=timeout_seconds,
        pool_size=pool_size,
    )


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


def failure_reason(exc: Exception) -> str:
    """What went wrong with an S3 request, in a few words fit for a status reason (never a credential): the
    store's error code, its HTTP status, a refused connection, a timeout."""
    if isinstance(exc, S3Error):
        return f"{exc.code}" + (f": {exc.message}" if exc.message else "")
    if isinstance(exc, ServerError):
        return f"HTTP {exc.status_code}"
    reason: object = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # before TimeoutError: it is one, sadly
        return "cannot connect"
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return "timed out (no answer within the timeout)"
    return type(reason).__name__
