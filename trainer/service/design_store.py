"""Fetch a ModelDesignSchema from Redis by its token (seed step 2).

The key is the configured template with ``{token}`` replaced (default ``modelplane:design:{token}``). The
value is the schema serialised as protobuf binary, or its proto3 JSON form when the value starts with ``{``
(the sniff is safe: as the first byte of binary, ``{`` would be field 15 with wire type 3, a group start,
which no serializer emits for this message: field 15 is a length-delimited message).

A missing key or an unparsable value is the event's fault (:class:`DesignNotFoundError`, :class:`DesignInvalidError`):
retrying cannot help. Redis being unreachable is not: :meth:`DesignStore.fetch` keeps retrying with backoff,
so the event waits rather than being failed.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from generated.mlops.training.v1 import training_pb2
from modelplane.backoff import Backoff

logger = logging.getLogger(__name__)

MAX_SCHEMA_BYTES = 16 * 1024 * 1024
REDIS_RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class DesignNotFoundError(LookupError):
    pass


class DesignInvalidError(ValueError):
    pass


def design_key(template: str, token: str) -> str:
    # str.replace, not str.format: a token holding braces must not be interpreted.
    return template.replace("{token}", token)


def parse_schema(raw: bytes, key: str) -> training_pb2.ModelDesignSchema:
    if len(raw) > MAX_SCHEMA_BYTES:
        raise DesignInvalidError(f"design schema {key} is {len(raw)} bytes; the limit is {MAX_SCHEMA_BYTES}")
    schema = training_pb2.ModelDesignSchema()
    if raw.lstrip()[:1] == b"{":
        try:
            json_format.Parse(raw.decode("utf-8"), schema, ignore_unknown_fields=False)
        except (json_format.ParseError, UnicodeDecodeError, RecursionError) as error:
            raise DesignInvalidError(f"design schema {key} is not a ModelDesignSchema in JSON: {error}") from None
        return schema
    try:
        schema.ParseFromString(raw)
    except (DecodeError, RecursionError, ValueError) as error:
        raise DesignInvalidError(f"design schema {key} is not a protobuf ModelDesignSchema ({error})") from None
    return schema


class DesignStore:
    def __init__(
        self,
        client: aioredis.Redis,
        template: str,
        *,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
    ) -> None:
        self._client = client
        self._template = template
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max

    async def fetch(self, token: str) -> training_pb2.ModelDesignSchema:
        """The schema stored under ``token``; retries while Redis is unreachable (cancel to give up)."""
        key = design_key(self._template, token)
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        while True:
            try:
                raw = await self._client.get(key)
                break
            except REDIS_RETRYABLE as error:
                delay = backoff.next()
                logger.warning(
                    "Redis unreachable fetching a design schema; retrying",
                    extra={"fields": {"key": key, "error": str(error), "retry_in": delay}},
                )
                await asyncio.sleep(delay)
        if raw is None:
            raise DesignNotFoundError(f"design schema {key} not found in Redis")
        if not isinstance(raw, bytes):  # a client made with decode_responses=True
            raw = str(raw).encode()
        return parse_schema(raw, key)
