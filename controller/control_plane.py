"""Follows the scheduler's SubscribeControlPlane stream: each SEND_* event asks for every resource of a kind again
(the scheduler sends them after it starts, in the order it needs them: servers, experiments, models, pipelines).

The stream is opened again with backoff whenever it ends or fails (a scheduler restart, a new leader), and a new
stream's events are what make the controller re-send: nothing is re-sent on a timer. Events wait until every
watched kind has been listed once, so "every resource" is never a partial cache.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc import aio

from controller.backoff import Backoff
from controller.scheduler_connection import SchedulerConnection
from generated.mlops.scheduler import scheduler_pb2 as pb

log = logging.getLogger(__name__)

EventHandler = Callable[[int], None]


class ControlPlaneFollower:
    def __init__(
        self,
        connection: SchedulerConnection,
        subscriber: str,
        on_event: EventHandler,
        caches_synced: Callable[[], Awaitable[None]],
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._connection = connection
        self._subscriber = subscriber
        self._on_event = on_event
        self._caches_synced = caches_synced
        self._backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        self.connected = False
        self.streams_opened = 0

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            call = self._connection.stub.SubscribeControlPlane(
                pb.ControlPlaneSubscriptionRequest(subscriberName=self._subscriber)
            )
            try:
                await self._follow(call)
                log.info("the scheduler at %s ended the control-plane stream", self._connection.address)
            except aio.AioRpcError as error:
                log.warning(
                    "control-plane stream from %s: %s %s",
                    self._connection.address,
                    error.code().name,
                    error.details(),
                )
                if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    log.error("the scheduler refuses this controller's identity: check its token or certificate")
            finally:
                self.connected = False
                call.cancel()
            await asyncio.sleep(self._backoff.next_delay())

    async def _follow(
        self, call: aio.UnaryStreamCall[pb.ControlPlaneSubscriptionRequest, pb.ControlPlaneResponse]
    ) -> None:
        async for response in call:
            if not self.connected:
                self.connected = True
                self.streams_opened += 1
                self._backoff.reset()
                log.info("control-plane stream from %s open", self._connection.address)
            await self._caches_synced()
            log.info("the scheduler asks for %s", pb.ControlPlaneResponse.Event.Name(response.event))
            self._on_event(response.event)
