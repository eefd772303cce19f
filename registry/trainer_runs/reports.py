"""One record of the trainer's status topic read as a :class:`RunReport`, with a limit on every part of it: the
value a ModelTrainingStatus (generated/mlops/training/v1), the headers modelplane/spec/training_status.py names.
A record that is not one is refused with :class:`ReportError` (the consumer skips it with a warning: the topic is
the trainer's, and nothing a broken producer writes may stop the registry). A status other than SUCCESS is no run
to register (:func:`read_report` answers None).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from google.protobuf.message import DecodeError

from generated.mlops.training.v1 import training_pb2
from modelplane.spec.training_status import (
    H_ARTIFACT_SHA256,
    H_ARTIFACT_URI,
    H_EVENT_ID,
    H_METRICS,
    H_MODEL_URI,
    H_RUN_ID,
)

MAX_ID_CHARS: Final = 128  # a run id, an event id (the registry's columns hold 128)
MAX_DESIGN_ID_CHARS: Final = 1024
MAX_URI_CHARS: Final = 2048
MAX_METRICS: Final = 64
MAX_METRIC_NAME_CHARS: Final = 64
MAX_METRICS_JSON_BYTES: Final = 16 * 1024
MAX_HEADERS: Final = 64
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_PRINTABLE: Final = re.compile(r"[^\x00-\x1f\x7f]+")


class ReportError(ValueError):
    """A status record that is no run report; the message says which part, without echoing it."""


@dataclass(frozen=True, slots=True)
class RunReport:
    """A finished run the trainer reports: its ids, its metrics, where its model is (``s3://bucket/folder``)."""

    design_schema_id: str
    event_id: str
    run_id: str
    metrics: dict[str, float]
    bucket: str
    folder: str  # the run's key prefix in the bucket (no trailing slash)
    artifact_key: str  # the artifact's key (inside ``folder``)
    artifact_sha256: str

    @property
    def model_uri(self) -> str:
        return f"s3://{self.bucket}/{self.folder}"


def read_report(value: bytes | None, headers: Sequence[tuple[str, bytes]] | None, max_bytes: int) -> RunReport | None:
    """The run ``value`` and ``headers`` report; None for a status that reports no model (a failure);
    ReportError when the record is not a well-formed status message."""
    if value is None:
        raise ReportError("the record has no value")
    if len(value) > max_bytes:
        raise ReportError(f"the record is {len(value)} bytes; the limit is {max_bytes}")
    status = training_pb2.ModelTrainingStatus()
    try:
        status.ParseFromString(value)
    except (DecodeError, RuntimeError, ValueError):
        raise ReportError("the value is not a ModelTrainingStatus message") from None
    if status.status != training_pb2.TRAINING_STATUS_SUCCESS:
        return None
    named = _headers(headers or [])
    design = _text(status.design_schema_id, "design_schema_id", MAX_DESIGN_ID_CHARS)
    bucket, folder = _s3_uri(_header(named, H_MODEL_URI, MAX_URI_CHARS), H_MODEL_URI)
    artifact_bucket, artifact_key = _s3_uri(_header(named, H_ARTIFACT_URI, MAX_URI_CHARS), H_ARTIFACT_URI)
    if artifact_bucket != bucket or not artifact_key.startswith(f"{folder}/"):
        raise ReportError(f"{H_ARTIFACT_URI} is not inside {H_MODEL_URI}")
    sha256 = _header(named, H_ARTIFACT_SHA256, 64).lower()
    if not _SHA256.fullmatch(sha256):
        raise ReportError(f"{H_ARTIFACT_SHA256} is not a sha256 (64 hex digits)")
    return RunReport(
        design_schema_id=design,
        event_id=_header(named, H_EVENT_ID, MAX_ID_CHARS),
        run_id=_header(named, H_RUN_ID, MAX_ID_CHARS),
        metrics=_metrics(named.get(H_METRICS, b"{}")),
        bucket=bucket,
        folder=folder,
        artifact_key=artifact_key,
        artifact_sha256=sha256,
    )


def _headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, bytes]:
    if len(headers) > MAX_HEADERS:
        raise ReportError(f"the record has {len(headers)} headers; the limit is {MAX_HEADERS}")
    named: dict[str, bytes] = {}
    for name, value in headers:
        if not isinstance(name, str) or not isinstance(value, bytes | bytearray):
            raise ReportError("a header is not a name and bytes")
        if name in named:
            raise ReportError(f"the header {name[:64]!r} is given twice")
        named[name] = bytes(value)
    return named


def _text(value: str, what: str, limit: int) -> str:
    if not value:
        raise ReportError(f"{what} is empty")
    if len(value) > limit:
        raise ReportError(f"{what} is longer than {limit} characters")
    if not _PRINTABLE.fullmatch(value):
        raise ReportError(f"{what} holds control characters")
    return value


def _header(named: dict[str, bytes], name: str, limit: int) -> str:
    raw = named.get(name)
    if raw is None:
        raise ReportError(f"the header {name} is missing")
    if len(raw) > limit * 4:
        raise ReportError(f"the header {name} is longer than {limit} characters")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"the header {name} is not UTF-8") from None
    return _text(text, f"the header {name}", limit)


def _s3_uri(text: str, what: str) -> tuple[str, str]:
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ReportError(f"{what} is not a URL") from None
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
        raise ReportError(f"{what} is not an s3://bucket/key URL")
    key = parts.path.strip("/")
    if not key or any(segment in ("", ".", "..") for segment in key.split("/")):
        raise ReportError(f"{what} names no object key, or a key with empty, '.' or '..' segments")
    return parts.netloc, key


def _metrics(raw: bytes) -> dict[str, float]:
    if len(raw) > MAX_METRICS_JSON_BYTES:
        raise ReportError(f"the header {H_METRICS} is larger than {MAX_METRICS_JSON_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise ReportError(f"the header {H_METRICS} is not JSON") from None
    if not isinstance(document, dict) or len(document) > MAX_METRICS:
        raise ReportError(f"the header {H_METRICS} is not an object of at most {MAX_METRICS} metrics")
    metrics: dict[str, float] = {}
    for name, number in document.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_METRIC_NAME_CHARS or not _PRINTABLE.fullmatch(name):
            raise ReportError(f"the header {H_METRICS} has a metric name that is empty, long or not printable")
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            raise ReportError(f"the header {H_METRICS}: metric {name!r} is not a finite number")
        metrics[name] = float(number)
    return metrics
