"""The relay's side as a client of the scheduler: one subscription per kind of status, followed for as long as the
relay runs, reconnected with jittered backoff.

Each attempt opens a new channel (so the wait between attempts is this loop's backoff, not the channel's own, which
grows to two minutes) with the relay's own credentials, subscribes, waits for the scheduler to accept the
subscription (its response headers), lists the same kind (status_cache.py says why), and then passes every status
on to the cache as the bytes the scheduler sent: they are never decoded into a message that is sent again, only
parsed for their key. When the stream ends or fails, for whatever reason, the cache is told first (its subscribers
end with UNAVAILABLE at once), then the next attempt follows the backoff. A relay started before the scheduler
waits here, refusing subscribers, until the scheduler answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any

import grpc
from grpc import aio

from modelplane.addresses import Address
from modelplane.auth.client_token import ClientToken
from modelplane.backoff import Backoff
from modelplane.transport import TransportSecurity, open_channel
from status_relay.status_cache import CacheState, StatusCache

log = logging.getLogger(__name__)

SCHEDULER_SERVICE = "/seldon.mlops.scheduler.Scheduler/"
LIST_TIMEOUT_SECONDS = 60.0
FIRST_RETRY_SECONDS = 0.2
MOST_RETRY_SECONDS = 10.0
STEADY_SECONDS = 30.0  # a stream that lasted this long starts the backoff over
# Listed keys that stop arriving for this long are held back by the scheduler (status_cache.py, CONNECTING -> CURRENT).
STALLED_SNAPSHOT_SECONDS = 3.0
# How often a current cache lists its kind again to drop what the scheduler forgot silently (status_cache.py).
RELIST_SECONDS = 300.0


class UpstreamFeed:
    """Follows one kind's subscription at the scheduler into its StatusCache, until cancelled."""

    def __init__(
        self,
        cache: StatusCache,
        scheduler: Address,
        security: TransportSecurity,
        token: ClientToken | None,
        subscriber_name: str,
        *,
        on_state: Callable[[], None] = lambda: None,
        stalled_snapshot_seconds: float = STALLED_SNAPSHOT_SECONDS,
        relist_seconds: float = RELIST_SECONDS,
    ) -> None:
        self.cache = cache
        self._stalled_snapshot_seconds = stalled_snapshot_seconds
        self._relist_seconds = relist_seconds
        self._scheduler = scheduler
        self._security = security
        self._token = token
        self._subscriber_name = subscriber_name
        self._on_state = on_state  # told when the cache's state may have changed (health)
        self.attempts = 0
        self._seen_state = cache.state

    def _state_seen(self) -> None:
        """Tell whoever follows the cache's state (health) when it changed, and log it."""
        state = self.cache.state
        if state is self._seen_state:
            return
        self._seen_state = state
        if state is CacheState.CURRENT:
            log.info("%s statuses current: %d held", self.cache.kind.name, len(self.cache))
        self._on_state()

    async def run(self) -> None:
        backoff = Backoff(FIRST_RETRY_SECONDS, MOST_RETRY_SECONDS)
        loop = asyncio.get_running_loop()
        kind = self.cache.kind
        while True:
            self.attempts += 1
            started = loop.time()
            try:
                reason = await self._follow()
            except aio.AioRpcError as error:
                reason = f"{error.code().name}: {error.details()}"
            except Exception as error:
                # Anything else (a TLS file that cannot be read while it is rotated, a status that does not parse):
                # the feed must go on trying, and its subscribers must hear that the stream is gone, never be left
                # with a cache that no longer follows the scheduler.
                log.exception("%s stream from the scheduler failed", kind.subscribe_rpc)
                reason = f"{type(error).__name__}: {error}"
            was_current = self.cache.state is CacheState.CURRENT
            self.cache.lost(f"{reason}; reconnecting to {self._scheduler}")
            self._state_seen()
            if was_current or loop.time() - started > STEADY_SECONDS:
                backoff.reset()  # it worked: the scheduler is back soon, or another replica answers
            delay = backoff.next_jittered()
            (log.warning if was_current else log.info)(
                "%s stream from the scheduler at %s ended (%s); retrying in %.1f s",
                kind.subscribe_rpc,
                self._scheduler,
                reason,
                delay,
            )
            await asyncio.sleep(delay)

    async def _follow(self) -> str:
        """One attempt: subscribe, list, relay until the stream ends. Returns why it ended (raises AioRpcError when
        it failed)."""
        kind = self.cache.kind
        channel = open_channel(self._scheduler, self._security, self._token)
        try:
            subscribe: Any = channel.unary_stream(
                SCHEDULER_SERVICE + kind.subscribe_rpc,
                request_serializer=_serialize,
                response_deserializer=None,  # the bytes as the scheduler sent them
            )
            call: Any = subscribe(kind.subscribe_request(subscriberName=self._subscriber_name))
            await call.initial_metadata()  # the scheduler has registered the subscription (status_codes.py)
            self.cache.began()
            reader = asyncio.ensure_future(self._relay(call))
            listing = asyncio.ensure_future(self._list(channel))
            try:
                await asyncio.wait((reader, listing), return_when=asyncio.FIRST_COMPLETED)
                if not reader.done():
                    self.cache.listed(listing.result())
                    self._state_seen()
                    await self._until_current(reader)
                relister = asyncio.ensure_future(self._relist_now_and_then(channel))
                try:
                    return await reader
                finally:
                    relister.cancel()
            finally:
                listing.cancel()
                reader.cancel()
                call.cancel()
        finally:
            await channel.close()

    async def _until_current(self, reader: asyncio.Future[str]) -> None:
        """Wait while the listed keys arrive; once none has arrived for ``stalled_snapshot_seconds``, the scheduler
        is holding the rest back (after a restart it shows a restored model only once a replica reports it,
        scheduler/publishing.py; a server or experiment it forgot meanwhile never comes): the cache is as current as
        the scheduler's own stream, and serves (``StatusCache.settle``). Those keys come later as changes."""
        cache = self.cache
        awaited = cache.awaited_count
        while not self._current() and not reader.done():
            await asyncio.wait((reader,), timeout=self._stalled_snapshot_seconds)
            if self._current() or reader.done():
                return
            if cache.awaited_count == awaited:
                log.info(
                    "%s: %d listed key(s) not sent by the scheduler for %.1f s: serving without them until it does",
                    cache.kind.subscribe_rpc,
                    awaited,
                    self._stalled_snapshot_seconds,
                )
                cache.settle()
                self._state_seen()
                return
            awaited = cache.awaited_count

    async def _relist_now_and_then(self, channel: aio.Channel) -> None:
        """Every ``relist_seconds`` while current, list the kind again so the cache drops what the scheduler forgot
        without a status (status_cache.py); only kinds it forgets silently. A failed listing is tried again next
        time: the stream is what counts."""
        if not self.cache.kind.forgets_silently:
            return
        while True:
            await asyncio.sleep(self._relist_seconds)
            if not self._current():
                continue
            self.cache.begin_relist()
            try:
                keys = await self._list(channel)
            except aio.AioRpcError as error:
                log.info("%s: listing again failed (%s)", self.cache.kind.list_rpc, error.code().name)
                self.cache.relisted_failed()
                continue
            self.cache.relisted(keys)

    def _current(self) -> bool:
        return self.cache.state is CacheState.CURRENT

    async def _list(self, channel: aio.Channel) -> list[Hashable]:
        kind = self.cache.kind
        listing = channel.unary_stream(
            SCHEDULER_SERVICE + kind.list_rpc,
            request_serializer=_serialize,
            response_deserializer=kind.response.FromString,
        )
        request = kind.list_request(subscriberName=self._subscriber_name)
        return [kind.key(status) async for status in listing(request, timeout=LIST_TIMEOUT_SECONDS)]

    async def _relay(self, call: Any) -> str:
        cache = self.cache
        async for data in call:
            cache.receive(data)
            if cache.state is not self._seen_state:
                self._state_seen()
        code = await call.code()
        details = await call.details()
        if code == grpc.StatusCode.OK:
            return "the scheduler ended the stream (shutting down?)"
        return f"{code.name}: {details}"


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
