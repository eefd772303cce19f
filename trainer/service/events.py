"""Turn one Kafka record from the training topic into a validated :class:`TrainingRequest`, or say why not.

Wire format of a training event (the record's value):

- ``ModelTrainingEvent`` (proto/mlops/training/v1/training.proto) serialised as protobuf binary. This is the
  default: a record without a ``content-type`` header, or with ``application/x-protobuf`` /
  ``application/protobuf``, is parsed as binary.
- Its proto3 JSON form (``google.protobuf.json_format``) when the ``content-type`` header is
  ``application/json`` (parameters such as ``; charset=utf-8`` are ignored). Unknown JSON fields are an
  error: a typo in a field name must not silently train something else.

Rules, each a poison reason when broken (a poison event is answered with a FAILURE status naming the reason,
its offset is committed, and it is never retried: the same bytes would fail again):

- The record is at most ``max_event_bytes`` long and decodes.
- ``event_id``: 1-128 characters of ``A-Z a-z 0-9 . _ : -``. When the producer leaves it empty (the seed's
  producers do not know it) it is derived from the record's position, ``kafka:<topic>:<partition>:<offset>``:
  a redelivery of the same record is then still recognised, but a producer that re-sends the event as a new
  record gets it trained again. Producers that retry should set ``event_id``.
- The design schema: ``model_key_token`` (the seed's ``modelKeyToken``, step 2) names the Redis key the
  schema is fetched from, and wins over an embedded ``design_schema``. Without a token the embedded schema is
  used, and must then carry ``design_token.value`` (it becomes the status message's ``design_schema_id``).
  Neither: poison. A token is 1-256 printable characters without whitespace.
- The dataset: exactly one of ``dataset_path`` (seed step 3: a path on the mounted volume) and
  ``dataset_artifact_url``. A path must resolve inside the configured datasets root (relative paths are taken
  from the root; absolute paths must point into it; ``..`` and symlinks out of it are refused). A URL is
  ``s3://bucket/key``, ``http(s)://...``, or ``file://`` (whose path follows the dataset_path rules).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from generated.mlops.training.v1 import training_pb2
from trainer.run.jobs import DatasetSource

CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPES = frozenset({"application/json", "text/json"})
BINARY_CONTENT_TYPES = frozenset({"application/x-protobuf", "application/protobuf", "application/octet-stream"})
MAX_EVENT_ID_LENGTH = 128
MAX_TOKEN_LENGTH = 256
MAX_LOCATION_LENGTH = 4096
_EVENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_URL_SCHEMES = ("s3", "http", "https", "file")


class PoisonEventError(ValueError):
    """An event that can never be trained as sent; the message says why, for the FAILURE status."""

    def __init__(self, reason: str, *, event_id: str, design_schema_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id
        self.design_schema_id = design_schema_id


@dataclass(frozen=True)
class RecordPosition:
    topic: str
    partition: int
    offset: int

    def derived_event_id(self) -> str:
        return f"kafka:{self.topic}:{self.partition}:{self.offset}"

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class TrainingRequest:
    event_id: str
    # The Redis token to fetch the schema by; empty when the event embeds its schema.
    model_key_token: str
    # The embedded schema, used when model_key_token is empty.
    embedded_schema: training_pb2.ModelDesignSchema | None
    dataset: DatasetSource
    headers: dict[str, str]

    @property
    def provisional_design_id(self) -> str:
        """The design_schema_id to report before the schema is known."""
        if self.model_key_token:
            return self.model_key_token
        return self.embedded_schema.design_token.value if self.embedded_schema is not None else ""


def header_map(headers: object) -> dict[str, str]:
    """Kafka headers (a sequence of (name, bytes)) as lower-cased names to text; undecodable values dropped,
    the first of repeated names kept."""
    result: dict[str, str] = {}
    if not isinstance(headers, list | tuple):
        return result
    for item in headers:
        if not (isinstance(item, tuple) and len(item) == 2):
            continue
        name, value = item
        if not isinstance(name, str) or not isinstance(value, bytes | None):
            continue
        try:
            text = (value or b"").decode("utf-8")
        except UnicodeDecodeError:
            continue
        result.setdefault(name.lower(), text)
    return result


def _media_type(headers: dict[str, str]) -> str:
    return headers.get(CONTENT_TYPE_HEADER, "").split(";", 1)[0].strip().lower()


def _parse(value: bytes, media_type: str, event_id: str) -> training_pb2.ModelTrainingEvent:
    event = training_pb2.ModelTrainingEvent()
    if media_type in JSON_CONTENT_TYPES:
        try:
            json_format.Parse(value.decode("utf-8"), event, ignore_unknown_fields=False)
        except (json_format.ParseError, UnicodeDecodeError, RecursionError) as error:
            raise PoisonEventError(
                f"undecodable event: not a ModelTrainingEvent in JSON: {error}", event_id=event_id
            ) from None
        return event
    if media_type and media_type not in BINARY_CONTENT_TYPES:
        raise PoisonEventError(
            f"undecodable event: content-type {media_type!r} is neither protobuf nor application/json",
            event_id=event_id,
        )
    try:
        event.ParseFromString(value)
    except (DecodeError, RecursionError, ValueError) as error:
        raise PoisonEventError(
            f"undecodable event: not a protobuf ModelTrainingEvent ({error or 'malformed'})", event_id=event_id
        ) from None
    return event


def _check_token(token: str, event_id: str) -> None:
    if len(token) > MAX_TOKEN_LENGTH:
        raise PoisonEventError(
            f"model_key_token is {len(token)} characters; the limit is {MAX_TOKEN_LENGTH}", event_id=event_id
        )
    if not token.isprintable() or any(character.isspace() for character in token):
        raise PoisonEventError(
            f"model_key_token {token[:40]!r} has whitespace or unprintable characters", event_id=event_id
        )


def resolve_dataset_path(raw: str, root: Path | None) -> Path:
    """The real path of ``raw`` inside ``root``; ValueError saying why when it is not allowed."""
    if root is None:
        raise ValueError("dataset_path is not accepted: this trainer has no --datasets-root configured")
    if not raw or "\0" in raw or len(raw) > MAX_LOCATION_LENGTH:
        raise ValueError("dataset_path is empty, too long or holds a NUL character")
    if ".." in PurePosixPath(raw).parts:
        raise ValueError(f"dataset_path {raw!r} contains '..'")
    root = root.resolve()
    candidate = Path(raw) if os.path.isabs(raw) else root / raw
    resolved = candidate.resolve()  # follows symlinks: one pointing out of the root is caught below
    if resolved != root and not resolved.is_relative_to(root):
        raise ValueError(f"dataset_path {raw!r} is outside the datasets root {root}")
    return resolved


def _dataset(event: training_pb2.ModelTrainingEvent, root: Path | None, event_id: str) -> DatasetSource:
    path, url = event.dataset_path, event.dataset_artifact_url
    if bool(path) == bool(url):
        which = "both" if path else "neither"
        raise PoisonEventError(
            f"the event must name exactly one of dataset_path and dataset_artifact_url; it names {which}",
            event_id=event_id,
        )
    if path:
        try:
            return DatasetSource(path=str(resolve_dataset_path(path, root)))
        except ValueError as error:
            raise PoisonEventError(str(error), event_id=event_id) from None
    if len(url) > MAX_LOCATION_LENGTH or not url.isprintable():
        raise PoisonEventError("dataset_artifact_url is too long or holds unprintable characters", event_id=event_id)
    parts = urlsplit(url)
    if parts.scheme not in _URL_SCHEMES:
        raise PoisonEventError(
            f"dataset_artifact_url {url[:80]!r}: scheme must be one of {', '.join(_URL_SCHEMES)}", event_id=event_id
        )
    if parts.scheme == "file":
        try:
            resolved = resolve_dataset_path(unquote(parts.path), root)
        except ValueError as error:
            raise PoisonEventError(f"dataset_artifact_url: {error}", event_id=event_id) from None
        return DatasetSource(url=resolved.as_uri())
    if not parts.netloc or (parts.scheme == "s3" and not parts.path.strip("/")):
        raise PoisonEventError(f"dataset_artifact_url {url[:80]!r} names no bucket/host and object", event_id=event_id)
    return DatasetSource(url=url)


def decode_event(
    value: bytes | None,
    headers: object,
    position: RecordPosition,
    *,
    max_bytes: int,
    datasets_root: Path | None,
) -> TrainingRequest:
    """Validate one record; raise PoisonEventError naming the first rule it breaks."""
    header_values = header_map(headers)
    fallback_id = position.derived_event_id()
    if value is None:
        raise PoisonEventError("undecodable event: the record has no value (a tombstone)", event_id=fallback_id)
    if len(value) > max_bytes:
        raise PoisonEventError(
            f"event of {len(value)} bytes exceeds the limit of {max_bytes} bytes", event_id=fallback_id
        )
    event = _parse(value, _media_type(header_values), fallback_id)
    event_id = event.event_id or fallback_id
    if not _EVENT_ID.match(event_id):
        raise PoisonEventError(
            f"event_id {event_id[:40]!r} is invalid: 1-{MAX_EVENT_ID_LENGTH} of A-Z a-z 0-9 . _ : -",
            event_id=fallback_id,
        )
    token = event.model_key_token
    embedded = event.design_schema if event.HasField("design_schema") else None
    design_id = token or (embedded.design_token.value if embedded is not None else "")
    try:
        if token:
            _check_token(token, event_id)
            embedded = None  # the token wins: the embedded schema may be a summary
        elif embedded is None:
            raise PoisonEventError(
                "the event names no design schema: set model_key_token (the Redis key's token) or design_schema",
                event_id=event_id,
            )
        elif not embedded.design_token.value:
            raise PoisonEventError(
                "the embedded design_schema has no design_token.value (the status would name no schema)",
                event_id=event_id,
            )
        dataset = _dataset(event, datasets_root, event_id)
    except PoisonEventError as poison:
        poison.design_schema_id = design_id[:MAX_TOKEN_LENGTH]
        raise
    return TrainingRequest(event_id, token, embedded, dataset, header_values)


def dataset_for_run(dataset: DatasetSource, datasets_root: Path | None, run_root: Path | None) -> DatasetSource:
    """``dataset`` as the run sees it: a path (or file:// URL) under the trainer's datasets root moved under
    the run's (a Kubernetes Job mounts the same volume elsewhere). Other URLs pass unchanged."""
    if datasets_root is None or run_root is None or run_root == datasets_root:
        return dataset
    if dataset.path:
        return DatasetSource(path=str(run_root / Path(dataset.path).relative_to(datasets_root)))
    parts = urlsplit(dataset.url)
    if parts.scheme == "file":
        moved = run_root / Path(unquote(parts.path)).relative_to(datasets_root)
        return DatasetSource(url=moved.as_uri())
    return dataset
