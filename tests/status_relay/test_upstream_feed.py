"""status_relay/upstream.py against a scripted scheduler over real gRPC: when the feed's cache becomes current, and
that no failure, of whatever kind, stops the feed.

The scripted scheduler answers SubscribeModelStatus with its headers and then the statuses it is told to send, and
ModelStatus (the listing) with the models it is told to list, as the scheduler does after a restart: it lists every
model but its stream holds back the restored ones no replica has reported yet (scheduler/publishing.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.addresses import Address
from modelplane.transport import TransportSecurity
from status_relay.status_cache import CacheState, StatusCache
from status_relay.status_kinds import KINDS, StatusKind
from status_relay.upstream import UpstreamFeed
from tests.support.waiting import wait_for

MODELS = next(kind for kind in KINDS if kind.subscribe_rpc == "SubscribeModelStatus")
EXPERIMENTS = next(kind for kind in KINDS if kind.subscribe_rpc == "SubscribeExperimentStatus")


def _status(name: str) -> pb.ModelStatusResponse:
    return pb.ModelStatusResponse(modelName=name, versions=[pb.ModelVersionStatus(version=1)])


class ScriptedScheduler:
    """Lists ``listed``; streams ``streamed`` and then holds the stream open; for ``kind`` (models by default)."""

    def __init__(self, listed: list[str], streamed: list[str], kind: StatusKind = MODELS) -> None:
        self.listed = listed
        self.streamed = streamed
        self.listings = 0
        self._kind = kind
        self.server = aio.server()
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            kind.subscribe_rpc: grpc.unary_stream_rpc_method_handler(
                self._subscribe, kind.subscribe_request.FromString, _serialize
            ),
            kind.list_rpc: grpc.unary_stream_rpc_method_handler(self._list, kind.list_request.FromString, _serialize),
        }
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("seldon.mlops.scheduler.Scheduler", handlers)]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _status(self, name: str) -> Message:
        if self._kind is MODELS:
            return _status(name)
        return pb.ExperimentStatusResponse(experimentName=name, active=False, statusDescription="stopped")

    async def _subscribe(self, _request: Any, context: Any) -> AsyncIterator[Message]:
        await context.send_initial_metadata(())
        for name in self.streamed:
            yield self._status(name)
        await asyncio.Event().wait()  # held open, as the scheduler's stream between changes

    async def _list(self, _request: Any, _context: Any) -> AsyncIterator[Message]:
        self.listings += 1
        for name in self.listed:
            yield self._status(name)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def _feeding(
    cache: StatusCache, scheduler: Address, security: TransportSecurity
) -> tuple[UpstreamFeed, asyncio.Task[None]]:
    feed = UpstreamFeed(
        cache, scheduler, security, None, "relay-test", stalled_snapshot_seconds=0.5, relist_seconds=0.3
    )
    return feed, asyncio.create_task(feed.run())


async def test_listed_keys_the_scheduler_holds_back_do_not_keep_the_cache_from_serving() -> None:
    scheduler = ScriptedScheduler(listed=["a", "held-back"], streamed=["a"])
    await scheduler.server.start()
    cache = StatusCache(MODELS, 100, "the scripted scheduler")
    feed, task = await _feeding(cache, Address("127.0.0.1", scheduler.port), TransportSecurity())
    try:
        await wait_for(lambda: cache.state is CacheState.CURRENT, 20, "the cache to serve without the held-back key")
        assert len(cache) == 1  # what the scheduler's own stream shows: "a" only
        assert feed.attempts == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await scheduler.server.stop(None)


async def test_a_feed_that_cannot_open_its_channel_keeps_trying_and_serves_nothing(tmp_path: Path) -> None:
    cache = StatusCache(MODELS, 100, "a scheduler behind a CA file that is gone")
    security = TransportSecurity(ca_file=tmp_path / "rotated-away.pem")
    feed, task = await _feeding(cache, Address("127.0.0.1", 1), security)
    try:
        await wait_for(lambda: feed.attempts >= 2 or task.done(), 20, "a second attempt")
        assert not task.done(), task.exception()
        assert cache.state is CacheState.CONNECTING
        assert "does not exist" in cache.why_not_current
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_keys_the_scheduler_forgot_without_a_status_leave_the_cache_at_the_next_listing() -> None:
    # A stopped experiment past its TTL (or a server) is forgotten with no status saying so: only a listing tells.
    scheduler = ScriptedScheduler(listed=["kept", "forgotten"], streamed=["kept", "forgotten"], kind=EXPERIMENTS)
    await scheduler.server.start()
    cache = StatusCache(EXPERIMENTS, 100, "the scripted scheduler")
    feed, task = await _feeding(cache, Address("127.0.0.1", scheduler.port), TransportSecurity())
    try:
        await wait_for(lambda: cache.state is CacheState.CURRENT and len(cache) == 2, 20, "both cached")
        scheduler.listed = ["kept"]
        await wait_for(lambda: len(cache) == 1, 20, "the forgotten key to leave the cache")
        assert cache.forgotten == 1
        assert cache.state is CacheState.CURRENT
        assert feed.attempts == 1  # one stream throughout: the listing is asked on the side
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await scheduler.server.stop(None)


async def test_models_are_not_listed_again_they_end_with_a_final_status() -> None:
    scheduler = ScriptedScheduler(listed=["a"], streamed=["a"])
    await scheduler.server.start()
    cache = StatusCache(MODELS, 100, "the scripted scheduler")
    _feed, task = await _feeding(cache, Address("127.0.0.1", scheduler.port), TransportSecurity())
    try:
        await wait_for(lambda: cache.state is CacheState.CURRENT, 20, "the cache to serve")
        await asyncio.sleep(1.0)  # a few relist intervals (0.3 s): none may list models
        assert scheduler.listings == 1  # the listing that made the cache current, no other
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await scheduler.server.stop(None)
