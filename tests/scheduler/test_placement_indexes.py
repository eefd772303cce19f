"""The indexes placement decides from (issue 14) decide what judging every replica decides.

- ``ReplicasByFreeMemory`` (a heap with lazy deletion) against a plain dict, over any sequence of changes: the
  replicas it offers are those a full sort would, in the same order, and its invariants hold after every step.
- The scheduler's ``ServerCandidates`` (holders first, then the free-memory order while the memory lasts) against
  the same servers with every replica listed, over cluster states built through the Cluster's own changes
  (registrations with held models, servers down, drains, expected counts, loads): the same decision, failures
  and their reasons included.
"""

from __future__ import annotations

import dataclasses

from hypothesis import example, given, settings
from hypothesis import strategies as st

from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from scheduler.agent_sessions import AgentSession
from scheduler.models.cluster import Cluster
from scheduler.models.cluster_state import ReplicaConfig
from scheduler.models.free_memory_order import ReplicasByFreeMemory
from scheduler.models.model_records import ModelVersion
from scheduler.placement import EXPLAINER_CAPABILITY, PlacementRequest, place
from tests.support.scheduler_harness import model_spec

MiB = 2**20

# ----------------------------------------------------------------------------- the heap on its own

changes = st.lists(
    st.tuples(st.integers(0, 11), st.none() | st.sampled_from([0, 1, 5, 5, 9, 100])),  # (replica, free or None)
    max_size=60,
)
questions = st.tuples(st.integers(0, 6), st.sampled_from([0, 1, 5, 9, 50]), st.frozensets(st.integers(0, 11)))


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(changes, questions), min_size=1, max_size=8))
def test_the_free_memory_heap_offers_what_a_full_sort_would(
    steps: list[tuple[list[tuple[int, int | None]], tuple[int, int, frozenset[int]]]],
) -> None:
    heap = ReplicasByFreeMemory()
    truth: dict[int, int] = {}
    for updates, (wanted, least_free, refused) in steps:
        for index, free in updates:
            heap.update(index, free)
            if free is None:
                truth.pop(index, None)
            else:
                truth[index] = free
            heap.check(truth)
        expected = [
            index
            for index, free in sorted(truth.items(), key=lambda item: (-item[1], item[0]))
            if free >= least_free and index not in refused
        ][:wanted]
        asked: list[int] = []

        def accept(index: int, refused: frozenset[int] = refused, asked: list[int] = asked) -> bool:
            asked.append(index)
            return index not in refused

        assert heap.take(wanted, least_free, accept) == expected
        assert len(asked) == len(set(asked)), "a replica was offered twice"
        heap.check(truth)  # taking changes nothing


# ----------------------------------------------------------------------------- the scheduler's candidates


@dataclasses.dataclass(frozen=True)
class ReplicaPlan:
    server: str
    index: int
    memory_mib: int
    explainer: bool
    down: bool
    drain: bool
    held: int  # models of the catalogue it holds when it registers


replica_plans = st.builds(
    ReplicaPlan,
    server=st.sampled_from(["a", "b"]),
    index=st.integers(0, 7),
    memory_mib=st.sampled_from([10, 100, 400, 1000]),
    explainer=st.booleans(),
    down=st.booleans(),
    drain=st.booleans(),
    held=st.integers(0, 3),
)


@st.composite
def requests(draw: st.DrawFn) -> PlacementRequest:
    replicas = draw(st.integers(0, 4))
    return PlacementRequest(
        model="probe",
        version=1,
        memory_bytes=draw(st.sampled_from([0, 1, 50, 150, 600])) * MiB,
        requirements=draw(st.sampled_from([frozenset(), frozenset({"sklearn"}), frozenset({"gpu"})])),
        server_pin=draw(st.none() | st.sampled_from(["a", "b"])),
        replicas=replicas,
        min_replicas=draw(st.integers(0, replicas)),
        is_explainer=draw(st.booleans()),
        current_server=draw(st.none() | st.sampled_from(["a", "b"])),
    )


def build(plans: list[ReplicaPlan], expected: int | None) -> Cluster:
    """A cluster state made by the Cluster's own changes, as agents and clients would make it."""
    cluster = Cluster()
    catalogue = [f"m-{number}" for number in range(6)]
    for number, name in enumerate(catalogue):
        # Up to three replicas each, so that a version is held by several replicas of a server at once.
        spec = model_spec(name, memory=(number + 1) * 20 * MiB, replicas=number % 3 + 1)
        _change, record = cluster.prepare_load(spec)
        assert record is not None
        cluster.apply_load(_change, record)
    sessions = {}
    for plan in plans:
        capabilities = {"sklearn", EXPLAINER_CAPABILITY} if plan.explainer else {"sklearn"}
        config = ReplicaConfig(
            server=plan.server,
            index=plan.index,
            shared=True,
            capabilities=frozenset(capabilities),
            total_memory=plan.memory_mib * MiB,
            overcommit_percent=0,
            http_url="http://127.0.0.1:1",
            grpc_target="127.0.0.1:1",
            agent_id=f"{plan.server}-{plan.index}",
        )
        first = (plan.index * 2) % len(catalogue)
        loaded = [
            agent_pb2.LoadedModel(name=name, version=1, memory_bytes=0) for name in catalogue[first : first + plan.held]
        ]
        session = AgentSession(config.agent_id)
        sessions[(plan.server, plan.index)] = session
        cluster.register_replica(config, loaded, session, server_down="exited" if plan.down else None)
    for plan in plans:
        session = sessions[(plan.server, plan.index)]
        if plan.drain:
            cluster.drain_replica(plan.server, plan.index, session)
    if expected is not None and "a" in cluster.servers:
        cluster.notify_server(pb.ServerNotify(name="a", expectedReplicas=expected, shared=True))
    for name in catalogue:  # places what no replica holds: memory gets used
        cluster.reconcile(name, retry_failed=True)
    cluster.check_invariants()
    return cluster


# Several holders whose free memory runs against their indexes: holders go first, most free first.
HOLDERS = [
    ReplicaPlan("a", 0, 1000, explainer=False, down=False, drain=False, held=3),
    ReplicaPlan("a", 1, 100, explainer=False, down=False, drain=False, held=3),
    ReplicaPlan("a", 4, 400, explainer=False, down=False, drain=False, held=3),
]
EVERY_REPLICA = PlacementRequest(
    model="probe",
    version=1,
    memory_bytes=0,
    requirements=frozenset(),
    server_pin=None,
    replicas=3,
    min_replicas=0,
    is_explainer=False,
    current_server=None,
)


@settings(max_examples=500, deadline=None)
@example(plans=HOLDERS, expected=None, request=EVERY_REPLICA, holding="m-2")
@given(
    plans=st.lists(replica_plans, max_size=8, unique_by=lambda plan: (plan.server, plan.index)),
    expected=st.none() | st.integers(0, 8),
    request=requests(),
    holding=st.sampled_from(["nothing", "m-0", "m-2", "m-5"]),
)
def test_the_indexed_candidates_decide_what_listing_every_replica_decides(
    plans: list[ReplicaPlan], expected: int | None, request: PlacementRequest, holding: str
) -> None:
    cluster = build(plans, expected)
    record = cluster.models.get(holding)
    version = record.latest if record is not None else ModelVersion(1, model_spec("probe"))
    indexed = cluster._views(version)
    listed = [dataclasses.replace(view, replicas=tuple(view.replicas)) for view in indexed]
    assert place(request, indexed) == place(request, listed)
