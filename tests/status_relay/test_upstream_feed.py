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
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.addresses import Address
from modelplane.transport import TransportSecurity
from status_relay.status_cache import CacheState, StatusCache
from status_relay.status_kinds import KINDS
from status_relay.upstream import UpstreamFeed
from tests.support.waiting import wait_for

MODELS = next(kind for kind in KINDS if kind.subscribe_rpc == "SubscribeModelStatus")


def _status(name: str) -> pb.ModelStatusResponse:
    return pb.ModelStatusResponse(modelName=name, versions=[pb.ModelVersionStatus(version=1)])


class ScriptedScheduler:
    """Lists ``listed``; streams ``streamed`` and then holds the stream open."""

    def __init__(self, listed: list[str], streamed: list[str]) -> None:
        self.listed = listed
        self.streamed = streamed
        self.server = aio.server()
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "SubscribeModelStatus": grpc.unary_stream_rpc_method_handler(
                self._subscribe, pb.ModelSubscriptionRequest.FromString, pb.ModelStatusResponse.SerializeToString
            ),
            "ModelStatus": grpc.unary_stream_rpc_method_handler(
                self._list, pb.ModelStatusRequest.FromString, pb.ModelStatusResponse.SerializeToString
            ),
        }
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("seldon.mlops.scheduler.Scheduler", handlers)]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _subscribe(self, _request: Any, context: Any) -> AsyncIterator[pb.ModelStatusResponse]:
        await context.send_initial_metadata(())
        for name in self.streamed:
            yield _status(name)
        await asyncio.Event().wait()  # held open, as the scheduler's stream between changes

    async def _list(self, _request: Any, _context: Any) -> AsyncIterator[pb.ModelStatusResponse]:
        for name in self.listed:
            yield _status(name)


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
    # A server, or a stopped experiment past its TTL, is forgotten with no status saying so: only a listing tells.
    scheduler = ScriptedScheduler(listed=["kept", "forgotten"], streamed=["kept", "forgotten"])
    await scheduler.server.start()
    cache = StatusCache(MODELS, 100, "the scripted scheduler")
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
