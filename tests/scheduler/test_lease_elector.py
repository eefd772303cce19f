"""The scheduler's Lease elector (scheduler/leadership/) against the FAKE Kubernetes API through the real
``kubernetes.aio`` client: acquiring, renewing, racing, riding out and giving up under an API outage, taking over
from a dead leader, a released Lease and a long-dead one.

Timings are short so the tests are quick; every wait is on a condition under a hang guard, and what is asserted is
the order of events (a leader steps down before a standby leads), never how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.aio import client as k8s

from modelplane.kubernetes_api import KubernetesConnection, kubernetes_client
from modelplane.spec.errors import IllegalTransition
from scheduler.leadership.kubernetes_leases import KubernetesLeases
from scheduler.leadership.leadership_state import LeadershipEvent, LeadershipState, next_state
from scheduler.leadership.lease_elector import LeaseElector
from scheduler.leadership.lease_records import (
    AGENT_ADDRESS_ANNOTATION,
    API_ADDRESS_ANNOTATION,
    LeaderAddresses,
    LeaseTiming,
    LeaseTimingError,
)
from tests.support.fake_kubernetes_api import LEASES, FakeKubernetesApi
from tests.support.waiting import wait_for

LEASE = "scheduler"
QUICK = LeaseTiming(lease_duration_seconds=2, renew_deadline_seconds=1.0, retry_period_seconds=0.1)
# A renew deadline far beyond a short outage's few retries, so riding it out does not depend on the machine's load.
PATIENT = LeaseTiming(lease_duration_seconds=20, renew_deadline_seconds=15.0, retry_period_seconds=0.1)
HANG_GUARD = 30.0
MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture
async def api() -> AsyncIterator[FakeKubernetesApi]:
    async with FakeKubernetesApi() as fake:
        yield fake


@pytest.fixture
async def client(api: FakeKubernetesApi) -> AsyncIterator[k8s.ApiClient]:
    async with kubernetes_client(KubernetesConnection(host=api.url)) as api_client:
        yield api_client


def addresses(identity: str) -> LeaderAddresses:
    return LeaderAddresses(api=f"{identity}.scheduler:9004", agent=f"{identity}.scheduler:9005")


@dataclass
class Running:
    """An elector running as a task, with when (monotonic) it started leading and stepped down."""

    elector: LeaseElector
    task: asyncio.Task[None]
    moments: dict[str, float] = field(default_factory=dict)
    watchers: list[asyncio.Task[None]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def electors(
    client: k8s.ApiClient, *identities: str, timing: LeaseTiming = QUICK
) -> AsyncIterator[list[Running]]:
    running: list[Running] = []
    for identity in identities:
        elector = LeaseElector(KubernetesLeases(client, "default", LEASE), identity, addresses(identity), timing)
        entry = Running(elector, elector.start())
        for name, event in (("leading", elector.leading), ("stepped_down", elector.stepped_down)):
            entry.watchers.append(asyncio.create_task(_note(entry.moments, name, event.wait)))
        running.append(entry)
    try:
        yield running
    finally:
        for entry in running:
            await entry.elector.stop(release=False)
            for task in entry.watchers:
                task.cancel()
            await asyncio.gather(*entry.watchers, return_exceptions=True)


async def _note(moments: dict[str, float], name: str, wait: Callable[[], Any]) -> None:
    await wait()
    moments[name] = time.monotonic()


def lease_spec(api: FakeKubernetesApi) -> dict[str, Any]:
    lease = api.get(LEASES, LEASE)
    assert lease is not None
    spec: dict[str, Any] = lease["spec"]
    return spec


def lease_annotations(api: FakeKubernetesApi) -> dict[str, str]:
    lease = api.get(LEASES, LEASE)
    assert lease is not None
    annotations: dict[str, str] = lease["metadata"].get("annotations") or {}
    return annotations


async def wait_leading(entry: Running, what: str = "") -> None:
    """Until the entry leads AND its watcher has noted when: the event is set a loop turn before the watcher runs, so
    a poll of the event alone could return with ``moments["leading"]`` not yet written (it failed so under load)."""
    await wait_for(lambda: "leading" in entry.moments, HANG_GUARD, what or f"{entry.elector.identity} to lead")
    assert entry.elector.leading.is_set()


# -- the rules on their own ------------------------------------------------------------------------------------------


def test_the_state_table_ends_in_stepped_down_for_good() -> None:
    assert next_state(LeadershipState.STANDBY, LeadershipEvent.ACQUIRED) is LeadershipState.LEADING
    assert next_state(LeadershipState.LEADING, LeadershipEvent.RENEWED) is LeadershipState.LEADING
    for event in (LeadershipEvent.LOST, LeadershipEvent.RELEASED, LeadershipEvent.STOPPED):
        assert next_state(LeadershipState.LEADING, event) is LeadershipState.STEPPED_DOWN
    for event in LeadershipEvent:
        with pytest.raises(IllegalTransition):
            next_state(LeadershipState.STEPPED_DOWN, event)
    for event in (LeadershipEvent.RENEWED, LeadershipEvent.LOST, LeadershipEvent.RELEASED):
        with pytest.raises(IllegalTransition):
            next_state(LeadershipState.STANDBY, event)


@pytest.mark.parametrize(
    ("duration", "renew", "retry", "complaint"),
    [
        (10, 10.0, 2.0, "renew deadline 10s must be shorter than the lease duration 10s"),
        (10, 12.0, 2.0, "must be shorter than the lease duration"),
        (10, 5.0, 5.0, "retry period 5s must be at least"),
        (10, 5.0, 0.01, "retry period 0.01s must be at least 0.05s"),
        (0, 5.0, 1.0, "lease duration 0s is out of range"),
        (3601, 5.0, 1.0, "out of range"),
    ],
)
def test_timings_that_cannot_keep_two_leaders_apart_are_refused(
    duration: int, renew: float, retry: float, complaint: str
) -> None:
    with pytest.raises(LeaseTimingError, match=re.escape(complaint)):
        LeaseTiming(duration, renew, retry)


# -- against the fake API ----------------------------------------------------------------------------------------------


async def test_the_first_replica_creates_the_lease_leads_and_renews_it(
    api: FakeKubernetesApi, client: k8s.ApiClient
) -> None:
    async with electors(client, "scheduler-0") as [leader]:
        await wait_leading(leader)
        spec = lease_spec(api)
        assert spec["holderIdentity"] == "scheduler-0"
        assert spec["leaseDurationSeconds"] == QUICK.lease_duration_seconds
        assert spec["leaseTransitions"] == 1
        assert MICRO_TIME.fullmatch(spec["renewTime"]), "the API server's MicroTime: six fractional digits, UTC"
        assert lease_annotations(api)[API_ADDRESS_ANNOTATION] == "scheduler-0.scheduler:9004"
        assert lease_annotations(api)[AGENT_ADDRESS_ANNOTATION] == "scheduler-0.scheduler:9005"
        assert leader.elector.term is not None
        assert (leader.elector.term.holder, leader.elector.term.transitions) == ("scheduler-0", 1)
        first_renewal = spec["renewTime"]
        await wait_for(lambda: lease_spec(api)["renewTime"] != first_renewal, HANG_GUARD, "a renewal")
        assert leader.elector.state is LeadershipState.LEADING
        assert lease_spec(api)["leaseTransitions"] == 1, "renewals are no transitions"


async def test_two_replicas_racing_for_one_lease_elect_exactly_one(
    api: FakeKubernetesApi, client: k8s.ApiClient
) -> None:
    api.put(LEASES, {"metadata": {"name": LEASE}, "spec": {}})
    held = api.hold("PATCH", f"/leases/{LEASE}")
    async with electors(client, "scheduler-0", "scheduler-1") as running:
        await wait_for(lambda: held.waiting == 2, HANG_GUARD, "both replicas writing the same version of the lease")
        held.release()
        await wait_for(lambda: any(e.elector.leading.is_set() for e in running), HANG_GUARD, "a leader")
        [winner] = [e for e in running if e.elector.leading.is_set()]
        [loser] = [e for e in running if e is not winner]
        await wait_for(lambda: loser.elector.leader() is not None, HANG_GUARD, "the standby to name the leader")
        assert loser.elector.state is LeadershipState.STANDBY
        assert loser.elector.leader() == addresses(winner.elector.identity)
        assert lease_spec(api)["holderIdentity"] == winner.elector.identity
        assert lease_spec(api)["leaseTransitions"] == 1, "the loser's write of the same version was refused (409)"


async def test_a_leader_rides_out_an_api_outage_shorter_than_its_renew_deadline(
    api: FakeKubernetesApi, client: k8s.ApiClient
) -> None:
    async with electors(client, "scheduler-0", timing=PATIENT) as [leader]:
        await wait_leading(leader)
        writes_before = len(api.requests_for("PATCH", f"/leases/{LEASE}"))
        api.inject_error("PATCH", f"/leases/{LEASE}", 503, "ServiceUnavailable", times=3)
        renewed = lease_spec(api)["renewTime"]
        await wait_for(
            lambda: lease_spec(api)["renewTime"] != renewed, HANG_GUARD, "a renewal once the API server answers again"
        )
        assert len(api.requests_for("PATCH", f"/leases/{LEASE}")) >= writes_before + 4, "3 refused, then renewed"
        assert leader.elector.state is LeadershipState.LEADING
        assert not leader.elector.stepped_down.is_set()
        assert lease_spec(api)["leaseTransitions"] == 1


async def test_a_leader_that_cannot_renew_steps_down_before_a_standby_takes_over(
    api: FakeKubernetesApi, client: k8s.ApiClient
) -> None:
    async with electors(client, "scheduler-0") as [first]:
        await wait_leading(first)
        async with electors(client, "scheduler-1") as [standby]:
            await wait_for(lambda: standby.elector.leader() is not None, HANG_GUARD, "the standby to name the leader")
            assert standby.elector.leader() == addresses("scheduler-0")
            # The API server stops taking writes (for everyone): the leader cannot renew, the standby cannot acquire.
            api.inject_error("PATCH", f"/leases/{LEASE}", 503, "ServiceUnavailable", times=10_000)
            await wait_for(first.elector.stepped_down.is_set, HANG_GUARD, "the leader to step down")
            assert first.elector.state is LeadershipState.STEPPED_DOWN
            assert "renew deadline" in first.elector.why_stepped_down
            assert first.elector.leader() is None
            api.clear_errors()
            await wait_leading(standby, "the standby to take over once the API server answers again")
            assert first.moments["stepped_down"] < standby.moments["leading"], "never two leaders at once"
            assert lease_spec(api)["holderIdentity"] == "scheduler-1"
            assert lease_spec(api)["leaseTransitions"] == 2
            assert lease_annotations(api)[API_ADDRESS_ANNOTATION] == "scheduler-1.scheduler:9004"


async def test_a_standby_takes_over_from_a_leader_that_died(api: FakeKubernetesApi, client: k8s.ApiClient) -> None:
    async with electors(client, "scheduler-0", "scheduler-1") as running:
        await wait_for(lambda: any(e.elector.leading.is_set() for e in running), HANG_GUARD, "a leader")
        [leader] = [e for e in running if e.elector.leading.is_set()]
        [standby] = [e for e in running if e is not leader]
        leader.task.cancel()  # dies without releasing: the Lease stays in its name until it expires
        await asyncio.gather(leader.task, return_exceptions=True)
        assert lease_spec(api)["holderIdentity"] == leader.elector.identity
        await wait_leading(standby, "the standby to take over the expired lease")
        assert lease_spec(api)["holderIdentity"] == standby.elector.identity
        assert lease_spec(api)["leaseTransitions"] == 2
        assert standby.elector.term is not None
        assert standby.elector.term.transitions == 2


async def test_a_graceful_leader_releases_and_a_standby_takes_over_at_once(
    api: FakeKubernetesApi, client: k8s.ApiClient
) -> None:
    slow = LeaseTiming(lease_duration_seconds=600, renew_deadline_seconds=300.0, retry_period_seconds=0.1)
    async with electors(client, "scheduler-0", timing=slow) as [leader]:
        await wait_leading(leader)
        async with electors(client, "scheduler-1", timing=slow) as [standby]:
            await wait_for(lambda: standby.elector.leader() is not None, HANG_GUARD, "the standby to name the leader")
            await leader.elector.stop(release=True)
            assert leader.elector.state is LeadershipState.STEPPED_DOWN
            assert not lease_spec(api).get("holderIdentity")
            assert API_ADDRESS_ANNOTATION not in lease_annotations(api)
            await wait_leading(standby, "the standby to take the released lease")
            assert leader.moments["stepped_down"] < standby.moments["leading"]
            assert lease_spec(api)["holderIdentity"] == "scheduler-1"


async def test_a_leader_steps_down_at_once_when_another_holder_wrote_the_lease(
    api: FakeKubernetesApi, client: k8s.ApiClient
) -> None:
    async with electors(client, "scheduler-0", timing=PATIENT) as [leader]:
        await wait_leading(leader)
        lease = api.get(LEASES, LEASE)
        assert lease is not None
        lease["spec"]["holderIdentity"] = "intruder"
        lease["metadata"].pop("resourceVersion")
        api.put(LEASES, lease)
        await wait_for(leader.elector.stepped_down.is_set, HANG_GUARD, "the leader to step down")
        assert "held by intruder" in leader.elector.why_stepped_down
        assert lease_spec(api)["holderIdentity"] == "intruder", "the leader does not fight for the lease"


async def test_a_fresh_replica_takes_a_long_dead_lease_at_once_and_leaves_a_live_one(
    api: FakeKubernetesApi, client: k8s.ApiClient
) -> None:
    long_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    recently = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The holders' own durations are an hour: only the wall-clock rule can find the first one expired in time.
    api.put(
        LEASES,
        {
            "metadata": {"name": LEASE, "annotations": addresses("old").annotations()},
            "spec": {
                "holderIdentity": "old",
                "leaseDurationSeconds": 3600,
                "renewTime": long_ago,
                "leaseTransitions": 4,
            },
        },
    )
    async with electors(client, "scheduler-0") as [fresh]:
        await wait_leading(fresh, "the fresh replica to take the long-dead lease")
        assert lease_spec(api)["leaseTransitions"] == 5

    api.put(
        LEASES,
        {
            "metadata": {"name": "live", "annotations": addresses("alive").annotations()},
            "spec": {"holderIdentity": "alive", "leaseDurationSeconds": 3600, "renewTime": recently},
        },
    )
    elector = LeaseElector(KubernetesLeases(client, "default", "live"), "scheduler-1", addresses("scheduler-1"), QUICK)
    elector.start()
    try:
        reads_before = len(api.requests_for("GET", "/leases/live"))
        await wait_for(
            lambda: len(api.requests_for("GET", "/leases/live")) >= reads_before + 5, HANG_GUARD, "several looks"
        )
        assert elector.state is LeadershipState.STANDBY
        assert elector.leader() == addresses("alive")
        assert not api.requests_for("PATCH", "/leases/live"), "a live lease is not even tried"
    finally:
        await elector.stop(release=False)
    assert elector.stepped_down.is_set(), "a stopped standby is done too"
