"""Reading one dataset object from S3 with the minio SDK, settings from the run's environment.

The client comes from modelplane/s3.py, like the agent's. Failures are described the way
agent/artifacts/s3.py describes them, written here rather than imported: a training run executes in an image
that carries only what it needs (trainer/launchers/image_build.py), and the agent's artifacts package brings
the agent's whole fetch stack.

Environment: ``MODELPLANE_S3_ENDPOINT`` (``http://host:port``; without a scheme, https), ``AWS_ACCESS_KEY_ID``
and ``AWS_SECRET_ACCESS_KEY`` (both or neither: anonymous), optionally ``AWS_SESSION_TOKEN``, ``AWS_REGION``
(or ``AWS_DEFAULT_REGION``), and ``MODELPLANE_S3_SECURE`` (true|false, overriding the endpoint's scheme).
No message holds a key or a secret.
"""

from __future__ import annotations

from collections.abc import Mapping

import urllib3
from minio.error import MinioException, S3Error, ServerError

from modelplane.s3 import S3EndpointError, S3Settings, parse_s3_endpoint, s3_client
from trainer.run.errors import DatasetError, DatasetUnavailableError

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound", "NoSuchBucket"})
# The store's own trouble, not the request's: the same read may work later.
_UNAVAILABLE_CODES = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"})
_CHUNK = 1 << 16


def settings_from_env(environ: Mapping[str, str]) -> S3Settings:
    text = environ.get("MODELPLANE_S3_ENDPOINT", "").strip()
    if not text:
        raise DatasetError("an s3:// dataset needs MODELPLANE_S3_ENDPOINT in the run's environment")
    endpoint, secure = _parse_endpoint(text)
    secure_text = environ.get("MODELPLANE_S3_SECURE", "").strip().lower()
    if secure_text in _TRUE:
        secure = True
    elif secure_text in _FALSE:
        secure = False
    elif secure_text:
        raise DatasetError(f"MODELPLANE_S3_SECURE must be true or false, not {secure_text!r}")
    access_key = environ.get("AWS_ACCESS_KEY_ID") or None
    secret_key = environ.get("AWS_SECRET_ACCESS_KEY") or None
    if (access_key is None) != (secret_key is None):
        raise DatasetError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither (anonymous access)")
    return S3Settings(
        endpoint=endpoint,
        secure=secure,
        region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
        origin="the run's environment",
        access_key=access_key,
        secret_key=secret_key,
        session_token=environ.get("AWS_SESSION_TOKEN") or None,
    )


def _parse_endpoint(text: str) -> tuple[str, bool]:
    try:
        return parse_s3_endpoint(text)
    except S3EndpointError as error:
        raise DatasetError(f"MODELPLANE_S3_ENDPOINT: {error}") from None


def read_object(settings: S3Settings, bucket: str, key: str, max_bytes: int, timeout_seconds: float) -> bytes:
    """The object's bytes. DatasetError when it is missing, too large or refused (the event's fault);
    DatasetUnavailableError when the store cannot be reached or does not answer (retried later)."""
    shown = f"s3://{bucket}/{key}"
    response = None
    try:
        client = s3_client(settings, timeout_seconds=timeout_seconds, pool_size=2)
        size = client.stat_object(bucket, key).size or 0
        if size > max_bytes:
            raise DatasetError(f"dataset {shown} is {size} bytes; the limit is {max_bytes}")
        response = client.get_object(bucket, key)
        data = bytearray()
        for chunk in response.stream(_CHUNK):
            data.extend(chunk)
            if len(data) > max_bytes:
                raise DatasetError(f"dataset {shown} is larger than the limit of {max_bytes} bytes")
        return bytes(data)
    except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise _describe(exc, shown, settings) from None
    finally:
        if response is not None:
            response.close()
            response.release_conn()


def _describe(exc: Exception, shown: str, settings: S3Settings) -> DatasetError | DatasetUnavailableError:
    action = f"reading dataset {shown} from {settings.url}"
    if isinstance(exc, S3Error):
        return _describe_answer(exc, action, shown, settings)
    if isinstance(exc, ServerError):  # a 5xx without an S3 error body (a proxy in front of the store, say)
        return DatasetUnavailableError(f"{action} failed: HTTP {exc.status_code}")
    reason: object = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return DatasetUnavailableError(f"{action} failed: cannot connect")
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return DatasetUnavailableError(f"{action} timed out (no progress within the timeout)")
    if isinstance(reason, urllib3.exceptions.HTTPError | OSError):  # reset mid-answer, 5xx after retries, ...
        return DatasetUnavailableError(f"{action} failed: {type(reason).__name__}: {reason}")
    return DatasetError(f"{action} failed: {type(reason).__name__}: {reason}")


def _describe_answer(
    exc: S3Error, action: str, shown: str, settings: S3Settings
) -> DatasetError | DatasetUnavailableError:
    """An S3 error answer: the request's fault (refused, missing), or the store's (retried later)."""
    if exc.code in _CREDENTIAL_CODES:
        return DatasetError(f"{action} was refused ({exc.code}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if exc.code in _MISSING_CODES:
        return DatasetError(f"dataset {shown} does not exist on {settings.url} ({exc.code})")
    if exc.code in _UNAVAILABLE_CODES:
        return DatasetUnavailableError(f"{action} failed: {exc.code}: {exc.message}")
    return DatasetError(f"{action} failed: {exc.code}: {exc.message}")
