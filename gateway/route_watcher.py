"""Keeps the gateway's routing table current from the scheduler's WatchRoutes stream, and acknowledges.

* A fresh table is built from each stream's snapshot and swapped in whole at ``snapshot_complete``; until
  then the previous table (if any) keeps serving, so a scheduler restart does not interrupt inference.
* After the swap, every update is applied in place as it arrives.
* The stream reconnects with jittered exponential backoff, forever, until stopped.
* Acknowledgements tell the scheduler what this gateway routes: ModelStatusEvent for each model version
  it can reach, PipelineStatusEvent for each pipeline version it can execute (or why not), and
  RoutingService.ExperimentRouted for experiments. They are idempotent, so after a reconnect everything
  is acknowledged again. They are sent from their own task: a slow scheduler never stalls the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from grpc import aio

from gateway.routing_table import RoutingTable
from generated.mlops.chainer import chainer_pb2
from generated.mlops.routing.v1 import routing_pb2 as rpb
from generated.mlops.routing.v1 import routing_pb2_grpc as rpb_grpc
from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.transport import TransportError

log = logging.getLogger(__name__)

# Checks a pipeline route can be executed here; returns why not, or None.
PipelineCheck = Callable[[rpb.PipelineRoute], str | None]
# Called with the new table after a swap and after each applied update.
TableListener = Callable[[RoutingTable], None]


@dataclass(frozen=True, slots=True)
class _Ack:
    kind: str
    name: str
    version: int
    uid: str
    ok: bool
    removed: bool
    reason: str


class RouteWatcher:
    def __init__(
        self,
        connect: Callable[[], aio.Channel],
        gateway_name: str,
        *,
        check_pipeline: PipelineCheck | None = None,
        on_table: TableListener | None = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        ack_timeout: float = 10.0,
    ) -> None:
        self.table = RoutingTable()
        self.synced = asyncio.Event()  # set once a first snapshot is complete
        # Why the table may be out of date now (None while a stream is up and its snapshot complete): a name
        # the table lacks may exist, and the gateway says so rather than "not found".
        self.stale_reason: str | None = "it has had no routing table from the scheduler yet"
        self._connect = connect
        self._channel = connect()  # a channel that cannot be made stops the gateway at start, saying why
        self._routes = rpb_grpc.RoutingServiceStub(self._channel)
        self._scheduler = pb_grpc.SchedulerStub(self._channel)
        self._name = gateway_name
        self._check_pipeline = check_pipeline
        self._on_table = on_table
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._ack_timeout = ack_timeout
        self._acks: asyncio.Queue[_Ack] = asyncio.Queue()
        self._acked: dict[tuple[str, str], tuple[int, ...] | str] = {}  # model: versions; pipeline: uid
        self.snapshots = 0  # how many snapshots were swapped in (tests, logs)

    async def run(self) -> None:
        """Watch until cancelled."""
        acker = asyncio.create_task(self._send_acks())
        backoff = self._initial_backoff
        try:
            while True:
                try:
                    if await self._watch_once():
                        backoff = self._initial_backoff
                    self.stale_reason = "its routing stream from the scheduler ended; it is reconnecting"
                except aio.AioRpcError as error:
                    log.warning("routing stream from the scheduler ended: %s %s", error.code().name, error.details())
                    said = (error.details() or "")[:200]
                    self.stale_reason = f"the scheduler cannot be reached ({error.code().name}: {said})"
                delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
                await asyncio.sleep(delay)
                backoff = min(self._max_backoff, backoff * 2)
                await self._reconnect()
        finally:
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acker

    async def close(self) -> None:
        await self._channel.close()

    async def _reconnect(self) -> None:
        """Watch on a new channel: it reads the TLS files and the token again. gRPC fixes a channel's credentials
        when it is made, so without this a rotated client certificate, CA or token would never be used, and a
        scheduler that trusts only the new ones would stay unreachable until the gateway restarts."""
        try:
            fresh = self._connect()
        except (TransportError, OSError) as error:
            log.warning("keeping the channel to the scheduler: a new one cannot be made: %s", error)
            return
        old, self._channel = self._channel, fresh
        self._routes = rpb_grpc.RoutingServiceStub(fresh)
        self._scheduler = pb_grpc.SchedulerStub(fresh)
        await old.close()  # an acknowledgement in flight on it is sent again after the next snapshot

    async def _watch_once(self) -> bool:
        """One stream; returns True when it got as far as a complete snapshot."""
        call = self._routes.WatchRoutes(rpb.WatchRoutesRequest(gateway_name=self._name))
        building: RoutingTable | None = RoutingTable()
        complete = False
        try:
            async for update in call:
                if update.snapshot_complete:
                    if building is not None:
                        self._swap(building)
                        building, complete = None, True
                    continue
                if building is not None:
                    building.apply(update)
                else:
                    self.table.apply(update)
                    self._acknowledge(update)
                    if self._on_table is not None:
                        self._on_table(self.table)
        finally:
            call.cancel()
        return complete

    def _swap(self, table: RoutingTable) -> None:
        self.table = table
        self.stale_reason = None
        self.snapshots += 1
        self._acked.clear()  # a new stream: acknowledge everything again (idempotent on the scheduler)
        for route in table.models.values():
            self._acknowledge(rpb.WatchRoutesResponse(model=_model_route_message(route.name, route.versions)))
        for name, experiment in table.experiments.items():
            self._acknowledge(rpb.WatchRoutesResponse(experiment=rpb.ExperimentRoute(name=name, experiment=experiment)))
        for pipeline in table.pipelines.values():
            message = rpb.PipelineRoute(
                name=pipeline.name, version=pipeline.version, uid=pipeline.uid, pipeline=pipeline.spec
            )
            self._acknowledge(rpb.WatchRoutesResponse(pipeline=message))
        log.info(
            "routing table %d: %d models, %d experiments, %d pipelines",
            self.snapshots,
            len(table.models),
            len(table.experiments),
            len(table.pipelines),
        )
        self.synced.set()
        if self._on_table is not None:
            self._on_table(table)

    def _acknowledge(self, update: rpb.WatchRoutesResponse) -> None:
        kind = update.WhichOneof("route")
        if kind == "model":
            model = update.model
            versions = tuple(sorted(v.version for v in model.versions if v.endpoints))
            if model.removed:
                self._acked.pop(("model", model.name), None)
                return  # Seldon's gateways acknowledge deletes; ours have nothing to release
            previous = self._acked.get(("model", model.name), ())
            for version in versions:
                if version not in previous:
                    self._acks.put_nowait(_Ack("model", model.name, version, "", True, False, ""))
            self._acked[("model", model.name)] = versions
        elif kind == "experiment":
            experiment = update.experiment
            self._acks.put_nowait(_Ack("experiment", experiment.name, 0, "", True, experiment.removed, ""))
        elif kind == "pipeline":
            pipeline = update.pipeline
            if pipeline.removed:
                self._acked.pop(("pipeline", pipeline.name), None)
                return
            if self._acked.get(("pipeline", pipeline.name)) == pipeline.uid:
                return
            problem = self._check_pipeline(pipeline) if self._check_pipeline is not None else None
            self._acked[("pipeline", pipeline.name)] = pipeline.uid
            ack = _Ack("pipeline", pipeline.name, pipeline.version, pipeline.uid, problem is None, False, problem or "")
            self._acks.put_nowait(ack)

    async def _send_acks(self) -> None:
        while True:
            ack = await self._acks.get()
            try:
                await self._send(ack)
            except aio.AioRpcError as error:
                # Lost with the stream; everything is acknowledged again after the next snapshot.
                log.info("acknowledgement of %s %s not delivered: %s", ack.kind, ack.name, error.code().name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("acknowledgement of %s %s failed", ack.kind, ack.name)

    async def _send(self, ack: _Ack) -> None:
        timeout = self._ack_timeout
        if ack.kind == "model":
            update = pb.ModelUpdateMessage(op=pb.ModelUpdateMessage.Create, model=ack.name, version=ack.version)
            status = pb.ModelUpdateStatusMessage(update=update, success=ack.ok, reason=ack.reason)
            await self._scheduler.ModelStatusEvent(status, timeout=timeout)
        elif ack.kind == "pipeline":
            message = chainer_pb2.PipelineUpdateMessage(
                op=chainer_pb2.PipelineUpdateMessage.Create, pipeline=ack.name, version=ack.version, uid=ack.uid
            )
            pipeline_status = chainer_pb2.PipelineUpdateStatusMessage(update=message, success=ack.ok, reason=ack.reason)
            await self._scheduler.PipelineStatusEvent(pipeline_status, timeout=timeout)
        else:
            request = rpb.ExperimentRoutedRequest(
                gateway_name=self._name, experiment_name=ack.name, active=not ack.removed, reason=ack.reason
            )
            await self._routes.ExperimentRouted(request, timeout=timeout)


def _model_route_message(name: str, versions: Mapping[int, tuple[object, ...]]) -> rpb.ModelRoute:
    # Only versions and whether they have endpoints matter to acknowledgements.
    return rpb.ModelRoute(
        name=name,
        versions=[
            rpb.ModelVersionRoute(version=v, endpoints=[rpb.ModelEndpoint()] if endpoints else [])
            for v, endpoints in versions.items()
        ],
    )
