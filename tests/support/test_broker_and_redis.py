"""The session fixtures for the real broker and Redis do what the other test modules rely on."""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.support.kafka_broker import KafkaBroker, consume, create_topics, produce, unique_topic
from tests.support.redis_server import RedisServer

pytest_plugins = ["tests.support.kafka_broker", "tests.support.redis_server"]


async def test_broker_round_trips_records_with_keys_and_headers(kafka_broker: KafkaBroker) -> None:
    topic = unique_topic("probe")
    await create_topics(kafka_broker.bootstrap, [topic], partitions=2)
    offsets = await produce(kafka_broker.bootstrap, topic, [b"a", b"b"], key=b"k", headers=[("h", b"v")])
    assert offsets == [0, 1]
    records = await consume(kafka_broker.bootstrap, topic, 2, timeout=20)
    assert sorted(record.value for record in records) == [b"a", b"b"]
    assert all(record.key == b"k" and list(record.headers) == [("h", b"v")] for record in records)


async def test_redis_answers_and_does_not_persist(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        key = redis_server.unique_prefix() + "x"
        assert await client.set(key, b"1", nx=True)
        assert not await client.set(key, b"2", nx=True)
        assert await client.get(key) == b"1"
        assert (await client.config_get("save"))["save"] == ""
    finally:
        await client.aclose()
