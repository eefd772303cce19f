"""The status relay (status_relay/) against a real scheduler over real gRPC: what its subscribers see is what the
scheduler's own subscribers see; when it loses the scheduler it says so and serves nothing stale; a subscriber that
never reads holds nobody back; its callers are checked as the scheduler checks them.

The scheduler runs in this process where nothing is killed (tests/support/scheduler_in_process.py), as a real
process where it is killed; the relay in this process where its caches are checked, as a real process once.
Waits are hang guards on conditions, never timing assertions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from modelplane.auth.access_table import Role
from modelplane.spec import limits
from modelplane.spec.errors import InvalidArgument
from servers.launch.local import free_ports
from status_relay.process import RelayServing
from status_relay.status_cache import CacheState
from tests.support.auth_material import TOKENS, bearer, one_identity_per_role
from tests.support.grpc_agent import FakeGrpcAgent
from tests.support.metrics_reading import sample_sum, scrape_text
from tests.support.processes import start_scheduler, stop_process
from tests.support.scheduler_client import AVAILABLE, Client, ModelWatch, model_spec
from tests.support.scheduler_in_process import in_process_scheduler
from tests.support.stalled_streams import StalledCall
from tests.support.status_relays import in_process_relay, start_status_relay
from tests.support.waiting import wait_for, wait_for_async

pytestmark = pytest.mark.timeout(180)  # a hang guard

SUBSCRIBE_MODELS = "/seldon.mlops.scheduler.Scheduler/SubscribeModelStatus"


def without_render_time(status: Message) -> Message:
    """A status without the time it was rendered at (each subscription renders its own snapshot)."""
    copy = type(status)()
    copy.CopyFrom(status)
    if "timestamp" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("timestamp")
    return copy


def in_order(watch: ModelWatch) -> list[Message]:
    """The latest status of each model, in the order the models first came."""
    return [without_render_time(statuses[-1]) for statuses in watch.history.values()]


async def relay_current(relay: RelayServing) -> None:
    await wait_for(
        lambda: all(cache.state is CacheState.CURRENT for cache in relay.caches.values()),
        what="every kind of status current at the relay",
    )


def check_caches(relay: RelayServing) -> None:
    for cache in relay.caches.values():
        cache.check()


async def subscription_refused(address: str, metadata: tuple[tuple[str, str], ...] = ()) -> aio.AioRpcError:
    """Subscribe to models at ``address``; the call must end with an error before any status: that error."""
    async with aio.insecure_channel(address) as channel:
        call = pb_grpc.SchedulerStub(channel).SubscribeModelStatus(
            pb.ModelSubscriptionRequest(subscriberName="refused?"), metadata=metadata, timeout=30
        )
        try:
            status = await call.read()
        except aio.AioRpcError as error:
            return error
        raise AssertionError(f"not refused: {status}")


async def test_relay_subscribers_see_what_direct_subscribers_see() -> None:
    async with in_process_scheduler() as scheduler:
        agent = FakeGrpcAgent(scheduler.listen)
        await agent.start()
        client = Client(scheduler.listen)
        try:
            for index in range(4):
                await client.load(model_spec(f"m{index}"))
            for index in range(4):
                await client.wait_state(f"m{index}", AVAILABLE)
            async with in_process_relay(scheduler.listen, "--metrics-listen=127.0.0.1:0") as relay:
                await relay_current(relay)
                via = Client(str(relay.address))
                try:
                    direct_models, relay_models = client.watch_models("direct"), via.watch_models("through-relay")
                    direct_servers, relay_servers = client.watch_servers("direct"), via.watch_servers("through-relay")
                    await wait_for(lambda: len(direct_models.history) == len(relay_models.history) == 4, what="4")
                    assert in_order(relay_models) == in_order(direct_models)  # the snapshot, in the same order
                    await wait_for(lambda: len(relay_servers.seen) == len(direct_servers.seen) >= 1, what="servers")
                    assert [without_render_time(s) for s in relay_servers.seen] == [
                        without_render_time(s) for s in direct_servers.seen
                    ]

                    # Changes: new models, one unloaded (the scheduler forgets it, and so must the relay).
                    for index in range(4, 7):
                        await client.load(model_spec(f"m{index}"))
                    await client.unload("m0")
                    for index in range(4, 7):
                        await client.wait_state(f"m{index}", AVAILABLE)
                    await client.wait_state("m0", None)

                    def settled() -> bool:
                        return all(
                            watch.state(f"m{index}") == AVAILABLE and watch.terminated("m0")
                            for watch in (direct_models, relay_models)
                            for index in range(4, 7)
                        )

                    await wait_for(settled, what="both subscribers to see the changes")
                    assert in_order(relay_models) == in_order(direct_models)
                    check_caches(relay)
                    assert len(relay.caches["SubscribeModelStatus"]) == 6  # m0 is forgotten

                    # A new subscriber's snapshot through the relay is the scheduler's own: m0 is not in it.
                    fresh_direct, fresh_relay = client.watch_models("direct-2"), via.watch_models("through-relay-2")
                    await wait_for(lambda: len(fresh_direct.history) == len(fresh_relay.history) == 6, what="6")
                    assert in_order(fresh_relay) == in_order(fresh_direct)
                    assert "m0" not in fresh_relay.history
                    # The scheduler serves the relay one stream per kind, whatever the number of relay subscribers.
                    hub = scheduler.core.publisher.models_hub
                    assert relay.service.subscribers == 3
                    assert hub.subscriber_count == 3  # the relay's and the two direct subscribers
                    more = [via.watch_models(f"more-{index}") for index in range(5)]
                    await wait_for(lambda: all(len(watch.history) == 6 for watch in more), what="5 more snapshots")
                    assert relay.service.subscribers == 8
                    assert hub.subscriber_count == 3
                    # What the relay's /metrics says of it, read as Prometheus reads it.
                    assert relay.metrics_address is not None
                    families = await asyncio.to_thread(scrape_text, f"http://{relay.metrics_address}/metrics")
                    for kind in ("model", "server", "pipeline", "experiment"):
                        assert sample_sum(families, "modelplane_status_relay_current", kind=kind) == 1
                    assert sample_sum(families, "modelplane_status_relay_statuses", kind="model") == 6
                    assert sample_sum(families, "modelplane_status_relay_subscribers", kind="model") == 7
                    assert sample_sum(families, "modelplane_status_relay_subscribers", kind="server") == 1
                    assert sample_sum(families, "modelplane_status_relay_received_total", kind="model") >= 7
                    assert sample_sum(families, "modelplane_status_relay_upstream_attempts_total", kind="model") == 1
                    assert sample_sum(families, "modelplane_status_relay_refused_full_total") == 0
                finally:
                    await via.close()
        finally:
            await client.close()
            await agent.close()


async def test_a_lost_scheduler_ends_the_relays_streams_and_a_fresh_snapshot_follows(tmp_path: Path) -> None:
    [port] = free_ports(1)  # below the kernel's ephemeral range: the restart binds it again later
    scheduler_address = f"127.0.0.1:{port}"
    # The relay starts first, and waits for the scheduler, refusing subscribers meanwhile.
    relay = start_status_relay(tmp_path / "relay", scheduler_address, "--log-level=debug")
    try:
        refused = await subscription_refused(relay.listen)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
        assert "not current" in (refused.details() or ""), refused.details()

        scheduler = start_scheduler(tmp_path, f"--listen={scheduler_address}")
        agent = FakeGrpcAgent(scheduler.agent_listen)
        await agent.start()
        client = Client(scheduler.listen)
        via = Client(relay.listen)
        try:
            for name in ("a", "b"):
                await client.load(model_spec(name))
                await client.wait_state(name, AVAILABLE)

            watch = await watch_once_current(via, "before")
            await wait_for(lambda: watch.state("a") == watch.state("b") == AVAILABLE, what="a and b through the relay")

            os.kill(scheduler.process.pid, signal.SIGKILL)
            scheduler.process.wait()
            killed_at = time.time_ns()
            await agent.crash()
            with pytest.raises(aio.AioRpcError) as ended:
                await watch.task
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
            assert "lost its SubscribeModelStatus stream" in (ended.value.details() or ""), ended.value.details()
            refused = await subscription_refused(relay.listen)
            assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused  # nothing stale is served meanwhile

            # The scheduler comes back (its state restored) with one model more: the relay's new subscribers get a
            # fresh snapshot, every status of it rendered by the new scheduler.
            scheduler = start_scheduler(tmp_path, f"--listen={scheduler_address}")
            await client.close()
            client = Client(scheduler.listen)
            await client.load(model_spec("c"))
            after = await watch_once_current(via, "after")
            direct = client.watch_models("direct")
            await wait_for(lambda: set(after.history) == set(direct.history) == {"a", "b", "c"}, what="a, b, c")
            assert all(s.timestamp > killed_at for statuses in after.history.values() for s in statuses)
            # By name, not in order: after a restart the scheduler shows a restored model only once a replica
            # reports it or its first reconcile (scheduler/publishing.py), so the order a stream gets them in
            # depends on when it subscribed, at the scheduler as at the relay.
            await wait_for_async(
                lambda: _same(by_name(after), by_name(direct)),
                what="the same statuses through the relay",
                diagnostics=lambda: f"relay: {_brief(after)}\ndirect: {_brief(direct)}",
            )
            stop_process(scheduler.process)
        finally:
            await via.close()
            await client.close()
            await agent.close()
    finally:
        assert stop_process(relay.process) == 0, relay.log()


def _brief(watch: ModelWatch) -> str:
    return "; ".join(
        f"{name}: {[pb.ModelStatus.ModelState.Name(s.versions[-1].state.state) if s.versions else '-' for s in seen]}"
        for name, seen in watch.history.items()
    )


def by_name(watch: ModelWatch) -> dict[str, Message]:
    """The latest status of each model."""
    return {name: without_render_time(statuses[-1]) for name, statuses in watch.history.items()}


async def _same(left: object, right: object) -> bool:
    return left == right


async def watch_once_current(client: Client, name: str) -> ModelWatch:
    """A model watch through a relay, subscribed again while the relay refuses (it has no snapshot yet)."""
    watch: ModelWatch | None = None

    async def accepted() -> bool:
        nonlocal watch
        candidate = client.watch_models(name)
        try:
            await asyncio.wait_for(candidate.call.initial_metadata(), 10)
            code = await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(candidate.call.code())), 0.2)
        except TimeoutError:
            watch = candidate  # still streaming: accepted
            return True
        assert code == grpc.StatusCode.UNAVAILABLE, (code, await candidate.call.details())
        await candidate.close()
        return False

    await wait_for_async(accepted, 30, "the relay to accept a subscriber")
    assert watch is not None
    return watch


async def test_a_subscriber_that_never_reads_holds_no_other_back() -> None:
    async with in_process_scheduler() as scheduler:
        agent = FakeGrpcAgent(scheduler.listen)
        await agent.start()
        client = Client(scheduler.listen)
        async with in_process_relay(scheduler.listen, "--subscriber-lag=600") as relay:
            await relay_current(relay)
            stalled = StalledCall(str(relay.address), SUBSCRIBE_MODELS, pb.ModelSubscriptionRequest(subscriberName="x"))
            await stalled.open()
            via = Client(str(relay.address))
            try:
                reader = via.watch_models("reader")
                await wait_for(lambda: relay.service.subscribers == 2, what="both subscribed")
                names = [f"big-{index}" for index in range(12)]
                for name in names:
                    await client.load(model_spec(name, bulk_kib=40))

                def all_available() -> bool:
                    return all(reader.state(name) == AVAILABLE for name in names)

                await wait_for(all_available, what="the reader to see every model Available")
                assert not stalled.ended  # still subscribed, never having read a byte
                assert relay.service.subscribers == 2
                # Its lag comes, and it is dropped as at the scheduler, its backlog freed.
                relay.service.streams.lag_seconds = 0.5
                await wait_for(lambda: relay.service.streams.dropped["SubscribeModelStatus"] == 1, what="drop")
                end = await stalled.read_to_end(timeout=60)
                assert end.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], end
                assert "the status relay dropped it" in end.message, end
                await wait_for(lambda: relay.service.subscribers == 1, what="the stalled stream gone")
                check_caches(relay)
            finally:
                await stalled.close()
                await via.close()
        await client.close()
        await agent.close()


async def test_callers_are_checked_as_the_scheduler_checks_them(tmp_path: Path) -> None:
    tokens, policy = one_identity_per_role(tmp_path)
    auth = [f"--auth-tokens={tokens}", f"--auth-policy={policy}"]
    (tmp_path / "scheduler").mkdir()
    scheduler = start_scheduler(tmp_path / "scheduler", *auth)
    viewer_token = tmp_path / "relay-token"
    viewer_token.write_text(TOKENS[Role.VIEWER] + "\n")
    try:
        # Without credentials of its own the relay is refused by the scheduler, and says so to its subscribers.
        async with in_process_relay(scheduler.listen) as anonymous:
            await wait_for(lambda: _attempted(anonymous), what="the relay to try the scheduler")
            refused = await subscription_refused(str(anonymous.address))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
            assert "UNAUTHENTICATED" in (refused.details() or ""), refused.details()

        async with in_process_relay(
            scheduler.listen, *auth, f"--auth-token-file={viewer_token}", "--max-subscribers=2"
        ) as relay:
            await relay_current(relay)
            address = str(relay.address)
            viewer, operator = bearer(TOKENS[Role.VIEWER]), bearer(TOKENS[Role.OPERATOR])
            assert (await subscription_refused(address)).code() == grpc.StatusCode.UNAUTHENTICATED
            assert (await subscription_refused(address, operator)).code() == grpc.StatusCode.PERMISSION_DENIED

            async with aio.insecure_channel(address) as channel:
                stub = pb_grpc.SchedulerStub(channel)
                too_long = pb.ModelSubscriptionRequest(subscriberName="x" * 600)
                with pytest.raises(aio.AioRpcError) as invalid:
                    [s async for s in stub.SubscribeModelStatus(too_long, metadata=viewer, timeout=30)]
                assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT, invalid.value
                assert "subscriber" in (invalid.value.details() or "")

                with pytest.raises(aio.AioRpcError) as unimplemented:
                    await stub.LoadModel(pb.LoadModelRequest(model=model_spec("m")), metadata=operator, timeout=30)
                assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED, unimplemented.value
                assert "call LoadModel on the scheduler" in (unimplemented.value.details() or "")

                first = stub.SubscribeModelStatus(pb.ModelSubscriptionRequest(subscriberName="1"), metadata=viewer)
                second = stub.SubscribeServerStatus(pb.ServerSubscriptionRequest(subscriberName="2"), metadata=viewer)
                await first.initial_metadata()
                await second.initial_metadata()
                await wait_for(lambda: relay.service.subscribers == 2, what="two subscribers")
                full = await subscription_refused(address, viewer)
                assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, full
                assert "--max-subscribers" in (full.details() or "")

                # The viewer gets what the operator loads, through the relay.
                async with aio.insecure_channel(scheduler.listen) as direct:
                    load = pb.LoadModelRequest(model=model_spec("seen"))
                    await pb_grpc.SchedulerStub(direct).LoadModel(load, metadata=operator, timeout=30)
                status = await asyncio.wait_for(anext(aiter(first)), 30)
                assert status.modelName == "seen"
                first.cancel()
                second.cancel()
    finally:
        stop_process(scheduler.process)


def _attempted(relay: RelayServing) -> bool:
    return all("UNAUTHENTICATED" in cache.why_not_current for cache in relay.caches.values())


class RelayInThread:
    """A scheduler and a relay of it in an event loop of their own, on a thread: the property test below calls the
    relay synchronously, one example after the other, while they serve."""

    def __init__(self) -> None:
        self.address: str | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="relay", daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        if not self._ready.wait(60) or self.address is None:
            raise RuntimeError("the relay did not start")
        return self.address

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    async def _serve(self) -> None:
        self._stop, self._loop = asyncio.Event(), asyncio.get_running_loop()
        try:
            async with in_process_scheduler() as scheduler, in_process_relay(scheduler.listen) as relay:
                await relay_current(relay)
                self.address = str(relay.address)
                self._ready.set()
                await self._stop.wait()
        finally:
            self._ready.set()


def test_any_subscriber_name_is_served_or_refused_with_a_reason() -> None:
    with RelayInThread() as address, grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SchedulerStub(channel)

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.text(st.characters(codec="utf-8"), max_size=700))
        def served_or_refused(name: str) -> None:
            call = stub.SubscribeExperimentStatus(pb.ExperimentSubscriptionRequest(subscriberName=name), timeout=30)
            try:
                call.initial_metadata()  # the headers of a stream served, or the end of one refused
                try:
                    limits.check_text(name, "subscriberName", limits.SUBSCRIBER)
                except InvalidArgument:
                    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, call.details())
                    assert "subscriber" in call.details(), call.details()
                else:
                    assert call.is_active(), (name, call.code(), call.details())
            finally:
                call.cancel()

        served_or_refused()
