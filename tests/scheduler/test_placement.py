"""Placement: which server and replicas a model version goes to, and why not when nothing fits."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.placement import (
    DEFAULT_REPLICA_FILTERS,
    DEFAULT_SERVER_FILTERS,
    NO_SERVERS,
    PlacementDecision,
    PlacementRequest,
    ReplicaView,
    ServerView,
    format_bytes,
    place,
    sort_replicas,
)

MiB = 2**20
GiB = 2**30


def replica(
    index: int,
    *,
    free_mib: int = 1024,
    draining: bool = False,
    holds: bool = False,
    down: bool = False,
    killed: bool = False,
    capabilities: frozenset[str] = frozenset({"sklearn"}),
) -> ReplicaView:
    return ReplicaView(
        index=index,
        capabilities=capabilities,
        capacity_bytes=4 * GiB,
        used_bytes=4 * GiB - free_mib * MiB,
        draining=draining,
        holds_model=holds,
        server_down=down,
        server_died_loading=killed,
    )


def server(
    name: str,
    *replicas: ReplicaView,
    shared: bool = True,
    expected: int | None = None,
    max_replicas: int = 0,
    capabilities: frozenset[str] = frozenset({"sklearn"}),
) -> ServerView:
    return ServerView(
        name=name,
        shared=shared,
        expected_replicas=expected,
        max_replicas=max_replicas,
        capabilities=capabilities,
        replicas=replicas,
    )


def request(
    *,
    replicas: int = 1,
    min_replicas: int = 0,
    memory_mib: int = 300,
    requirements: frozenset[str] = frozenset({"sklearn"}),
    pin: str | None = None,
    explainer: bool = False,
    current: str | None = None,
) -> PlacementRequest:
    return PlacementRequest(
        model="iris",
        version=1,
        memory_bytes=memory_mib * MiB,
        requirements=requirements,
        server_pin=pin,
        replicas=replicas,
        min_replicas=min_replicas,
        is_explainer=explainer,
        current_server=current,
    )


def placed(name: str | None, *indexes: int, scale_up_to: int | None = None) -> PlacementDecision:
    return PlacementDecision(server=name, replicas=indexes, scale_up_to=scale_up_to, failure=None)


failed = PlacementDecision.failed


@pytest.mark.parametrize(
    ("req", "servers", "expected"),
    [
        pytest.param(request(), [server("mlserver", replica(0))], placed("mlserver", 0), id="smoke"),
        pytest.param(
            request(replicas=2),
            [server("a", replica(0)), server("b", replica(0), replica(1))],
            placed("b", 0, 1),
            id="two-replicas-picks-two-replica-server",
        ),
        pytest.param(
            request(replicas=2),
            [server("mlserver", replica(0))],
            failed("server mlserver: has 1 replica, model needs 2"),
            id="too-few-replicas",
        ),
        pytest.param(
            request(replicas=3, min_replicas=1),
            [server("mlserver", replica(0), replica(1))],
            placed("mlserver", 0, 1, scale_up_to=3),
            id="partial-asks-to-scale-up",
        ),
        pytest.param(
            request(replicas=3, min_replicas=1),
            [server("mlserver", replica(0), replica(1, draining=True), max_replicas=2)],
            placed("mlserver", 0, scale_up_to=2),
            id="partial-scale-up-capped-at-max-replicas",
        ),
        pytest.param(
            request(replicas=3, min_replicas=2),
            [server("mlserver", replica(0))],
            failed("server mlserver: has 1 replica, model needs at least 2"),
            id="partial-below-min-replicas",
        ),
        pytest.param(
            request(replicas=3, min_replicas=2),
            [server("mlserver", replica(0), replica(1, draining=True))],
            failed("server mlserver: 1 of 2 needed replicas fit (replica 1 is draining)"),
            id="partial-too-few-fit",
        ),
        pytest.param(
            request(replicas=2, min_replicas=1),
            [server("a", replica(0)), server("b", replica(0), replica(1))],
            placed("b", 0, 1),
            id="full-on-later-server-beats-partial-on-earlier",
        ),
        pytest.param(
            request(replicas=3, min_replicas=1),
            [server("b", replica(0), replica(1)), server("a", replica(0))],
            placed("a", 0, scale_up_to=3),
            id="first-partial-in-try-order",
        ),
        pytest.param(
            request(memory_mib=300),
            [server("a", replica(0, free_mib=100)), server("b", replica(0, free_mib=1024))],
            placed("b", 0),
            id="memory-limited-server-skipped",
        ),
        pytest.param(
            request(memory_mib=300),
            [server("mlserver", replica(0, free_mib=900), replica(1, free_mib=100, holds=True))],
            placed("mlserver", 1),
            id="already-loaded-replica-preferred-even-without-free-memory",
        ),
        pytest.param(
            request(),
            [server("a", replica(0), expected=0), server("b", replica(0), expected=1)],
            placed("b", 0),
            id="expected-zero-server-skipped",
        ),
        pytest.param(
            request(replicas=2),
            [server("mlserver", replica(0, free_mib=500), replica(1, free_mib=2000), replica(2, free_mib=1000))],
            placed("mlserver", 1, 2),
            id="most-free-memory-first",
        ),
        pytest.param(
            request(replicas=2),
            [server("mlserver", replica(2), replica(0), replica(1))],
            placed("mlserver", 0, 1),
            id="lowest-index-breaks-ties",
        ),
        pytest.param(
            request(replicas=2, current="mlserver"),
            [server("mlserver", replica(0, free_mib=2000), replica(1, free_mib=1000), replica(2, holds=True))],
            placed("mlserver", 2, 0),
            id="scale-up-keeps-loaded-replica",
        ),
        pytest.param(
            request(replicas=1, current="mlserver"),
            [server("mlserver", replica(0, free_mib=2000), replica(1, holds=True), replica(2, holds=True))],
            placed("mlserver", 1),
            id="scale-down-keeps-a-loaded-replica",
        ),
        pytest.param(
            request(),
            [server("mlserver", replica(0, draining=True, free_mib=4000), replica(1))],
            placed("mlserver", 1),
            id="draining-replica-excluded",
        ),
        pytest.param(
            request(current="mlserver"),
            [server("mlserver", replica(0, down=True, holds=True), replica(1))],
            placed("mlserver", 1),
            id="replica-with-a-dead-server-excluded-even-if-it-holds-the-model",
        ),
        pytest.param(
            request(),
            [server("mlserver", replica(0, down=True, free_mib=10))],
            failed("server mlserver: 0 of 1 needed replicas fit (replica 0's inference server is down)"),
            id="a-dead-server-is-the-reason-before-its-memory",
        ),
        pytest.param(
            request(current="mlserver"),
            [server("mlserver", replica(0, killed=True, free_mib=4096), replica(1))],
            placed("mlserver", 1),
            id="not-again-where-its-load-killed-the-server",
        ),
        pytest.param(
            request(),
            [server("mlserver", replica(0, killed=True))],
            failed("server mlserver: 0 of 1 needed replicas fit (replica 0's server died while loading this version)"),
            id="where-its-load-killed-the-server-is-the-reason",
        ),
        pytest.param(
            request(explainer=True),
            [server("mlserver", replica(0), replica(1, capabilities=frozenset({"alibi-explain"})))],
            placed("mlserver", 1),
            id="explainer-needs-alibi-explain",
        ),
        pytest.param(
            request(explainer=True),
            [server("mlserver", replica(0))],
            failed("server mlserver: 0 of 1 needed replicas fit (replica 0 lacks capability alibi-explain)"),
            id="explainer-without-alibi-explain-fails",
        ),
        pytest.param(
            request(pin="b"),
            [server("a", replica(0)), server("b", replica(0), shared=False)],
            placed("b", 0),
            id="pinned-server-honoured-even-if-unshared",
        ),
        pytest.param(
            request(),
            [server("a", replica(0), shared=False), server("b", replica(0))],
            placed("b", 0),
            id="unshared-server-skipped-for-unpinned-model",
        ),
        pytest.param(
            request(current="b"),
            [server("a", replica(0)), server("b", replica(0))],
            placed("b", 0),
            id="current-server-tried-first",
        ),
        pytest.param(
            request(replicas=0, current="mlserver"),
            [server("mlserver", replica(0, holds=True))],
            placed("mlserver"),
            id="scaled-down-to-zero",
        ),
        pytest.param(request(replicas=0), [], placed(None), id="scaled-down-model-nowhere"),
        pytest.param(request(), [], failed(NO_SERVERS), id="no-servers"),
        pytest.param(
            request(replicas=2),
            [
                server("mlserver", replica(0, free_mib=100), replica(1)),
                server("triton", replica(0), capabilities=frozenset()),
            ],
            failed(
                "server mlserver: 1 of 2 needed replicas fit (replica 0 has 100MiB free, model needs 300MiB); "
                "server triton: missing capability sklearn"
            ),
            id="failure-names-each-server",
        ),
    ],
)
def test_place(req: PlacementRequest, servers: list[ServerView], expected: PlacementDecision) -> None:
    assert place(req, servers) == expected


def test_failure_names_every_server_filter_in_try_order() -> None:
    servers = [
        server("e", replica(0), capabilities=frozenset({"xgboost"})),
        server("d", replica(0), expected=0),
        server("c", replica(0), shared=False),
        server("b"),
        server(
            "a",
            replica(0, free_mib=1),
            replica(1, draining=True),
            replica(2),
            capabilities=frozenset({"sklearn", "lightgbm"}),
        ),
    ]
    decision = place(request(replicas=3, requirements=frozenset({"sklearn", "lightgbm"}), current="e"), servers)
    assert decision.failure == (
        "server e: missing capabilities lightgbm, sklearn; "
        "server a: 1 of 3 needed replicas fit (replica 0 has 1MiB free, model needs 300MiB; replica 1 is draining); "
        "server b: no replicas connected; "
        "server c: server is not shared and the model names no server; "
        "server d: server is scaling to 0 replicas (expectedReplicas=0)"
    )
    assert not decision.ok


def test_a_replica_still_unloading_the_version_is_passed_over() -> None:
    unloading = dataclasses.replace(replica(0, free_mib=4000), unloading_model=True)
    assert place(request(), [server("mlserver", unloading, replica(1))]) == placed("mlserver", 1)
    assert place(request(), [server("mlserver", unloading)]) == failed(
        "server mlserver: 0 of 1 needed replicas fit (replica 0 is still unloading this version)"
    )


def test_pinned_model_rejected_elsewhere() -> None:
    decision = place(request(pin="triton"), [server("mlserver", replica(0))])
    assert decision == failed("server mlserver: model is pinned to server triton")


def test_memory_reason_falls_back_to_bytes_when_units_round_equal() -> None:
    tight = ReplicaView(
        index=0,
        capabilities=frozenset(),
        capacity_bytes=MiB - 1,
        used_bytes=0,
        draining=False,
        holds_model=False,
    )
    decision = place(
        dataclasses.replace(request(), memory_bytes=MiB),
        [server("mlserver", tight)],
    )
    assert (
        decision.failure
        == "server mlserver: 0 of 1 needed replicas fit (replica 0 has 1048575B free, model needs 1048576B)"
    )


def test_duplicate_replica_reports_count_once() -> None:
    decision = place(request(replicas=2), [server("mlserver", replica(0), replica(0))])
    assert decision == failed("server mlserver: has 1 replica, model needs 2")


def test_over_committed_replica_has_no_free_memory() -> None:
    view = ReplicaView(
        index=0, capabilities=frozenset(), capacity_bytes=MiB, used_bytes=2 * MiB, draining=False, holds_model=False
    )
    assert view.free_bytes == 0


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1KiB"),
        (1536, "1.5KiB"),
        (100 * MiB, "100MiB"),
        (300 * MiB + 300 * 1024, "300.3MiB"),
        (MiB - 1, "1MiB"),
        (3 * GiB, "3GiB"),
        (2048 * GiB, "2048GiB"),
    ],
)
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text


def test_sort_replicas_orders_by_holding_then_free_then_index() -> None:
    replicas = [
        replica(3, free_mib=10),
        replica(2, free_mib=10),
        replica(1, holds=True, free_mib=1),
        replica(0, free_mib=99),
    ]
    assert [view.index for view in sort_replicas(replicas)] == [1, 0, 2, 3]


@pytest.mark.parametrize("field", ["memory_bytes", "replicas", "min_replicas"])
def test_request_rejects_negative_counts(field: str) -> None:
    changes: dict[str, Any] = {field: -1}
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(request(), **changes)


def test_decision_is_either_placement_or_failure() -> None:
    with pytest.raises(ValueError, match="names no server"):
        PlacementDecision(server="mlserver", replicas=(), scale_up_to=None, failure="nope")
    with pytest.raises(ValueError, match="needs a reason"):
        PlacementDecision.failed("")
    assert placed("mlserver", 0, scale_up_to=2).is_partial
    assert not placed("mlserver", 0).is_partial


# Property tests: whatever the cluster looks like, a decision is internally consistent.

NAMES = ("alpha", "beta", "gamma", "delta")
CAPABILITIES = ("sklearn", "xgboost", "alibi-explain")
capability_sets = st.frozensets(st.sampled_from(CAPABILITIES))

replica_views = st.builds(
    ReplicaView,
    index=st.integers(0, 5),
    capabilities=capability_sets,
    capacity_bytes=st.sampled_from([0, 100 * MiB, GiB, 4 * GiB]),
    used_bytes=st.sampled_from([0, 50 * MiB, 900 * MiB, 5 * GiB]),
    draining=st.booleans(),
    holds_model=st.booleans(),
)


@st.composite
def server_views(draw: st.DrawFn, name: str) -> ServerView:
    return ServerView(
        name=name,
        shared=draw(st.booleans()),
        expected_replicas=draw(st.none() | st.integers(0, 4)),
        max_replicas=draw(st.integers(0, 5)),
        capabilities=draw(capability_sets),
        replicas=tuple(draw(st.lists(replica_views, max_size=5, unique_by=lambda view: view.index))),
    )


@st.composite
def clusters(draw: st.DrawFn) -> list[ServerView]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=len(NAMES)))
    return [draw(server_views(name)) for name in names]


@st.composite
def requests(draw: st.DrawFn) -> PlacementRequest:
    replicas = draw(st.integers(0, 4))
    return PlacementRequest(
        model="m",
        version=1,
        memory_bytes=draw(st.sampled_from([0, 10 * MiB, 200 * MiB, 2 * GiB])),
        requirements=draw(st.frozensets(st.sampled_from(CAPABILITIES[:2]))),
        server_pin=draw(st.none() | st.sampled_from(NAMES)),
        replicas=replicas,
        min_replicas=draw(st.integers(0, replicas)),
        is_explainer=draw(st.booleans()),
        current_server=draw(st.none() | st.sampled_from(NAMES)),
    )


@given(req=requests(), servers=clusters())
def test_decisions_are_consistent(req: PlacementRequest, servers: list[ServerView]) -> None:
    decision = place(req, servers)
    assert place(req, servers[::-1]) == decision, "input order must not matter"
    if not decision.ok:
        assert decision.failure
        assert decision.server is None
        assert decision.replicas == ()
        return
    if req.replicas == 0:
        assert decision == placed(req.current_server)
        return
    chosen = next(candidate for candidate in servers if candidate.name == decision.server)
    assert all(server_filter.reject(req, chosen) is None for server_filter in DEFAULT_SERVER_FILTERS)
    by_index = {view.index: view for view in chosen.replicas}
    assert len(set(decision.replicas)) == len(decision.replicas)
    assert set(decision.replicas) <= by_index.keys()
    for index in decision.replicas:
        assert all(replica_filter.reject(req, by_index[index]) is None for replica_filter in DEFAULT_REPLICA_FILTERS)
    all_or_nothing = place(dataclasses.replace(req, min_replicas=0), servers)
    if decision.is_partial:
        assert req.min_replicas > 0
        assert req.min_replicas <= len(decision.replicas) < req.replicas
        assert decision.scale_up_to is not None
        assert decision.scale_up_to <= req.replicas
        assert not all_or_nothing.ok, "a partial placement is chosen only when no server fits every replica"
    else:
        assert len(decision.replicas) == req.replicas
        assert all_or_nothing == decision
