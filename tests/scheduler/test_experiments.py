"""The experiment control-plane domain: validation, records, the registry (no grpc)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import FailedPrecondition, IllegalTransition, InvalidArgument
from modelplane.spec.limits import MAX_CANDIDATES
from scheduler.experiments import (
    STOPPED,
    ExperimentRecord,
    ExperimentRegistry,
    validate_experiment,
)
from scheduler.experiments.experiment_state import TRANSITIONS, ExperimentState


def experiment(
    name: str = "ab",
    *,
    candidates: tuple[tuple[str, int], ...] = (("iris-v1", 50), ("iris-v2", 50)),
    default: str | None = "iris-v1",
    mirror: tuple[str, int] | None = None,
    resource_type: int = pb.MODEL,
    sticky: bool = False,
) -> pb.Experiment:
    spec = pb.Experiment(
        name=name,
        candidates=[pb.ExperimentCandidate(name=n, weight=w) for n, w in candidates],
        resourceType=resource_type,  # type: ignore[arg-type]  # deliberately also invalid values
    )
    if default is not None:
        spec.default = default
    if mirror is not None:
        spec.mirror.CopyFrom(pb.ExperimentMirror(name=mirror[0], percent=mirror[1]))
    if sticky:
        spec.config.stickySessions = True
    return spec


def started(registry: ExperimentRegistry, spec: pb.Experiment) -> None:
    prepared = registry.prepare_start(spec)
    assert prepared is not None
    registry.apply_start(prepared)


def stopped(registry: ExperimentRegistry, name: str) -> None:
    registry.prepare_stop(name)
    registry.apply_stop(name)


# ----------------------------------------------------------------- validation table


def test_good_experiments_validate() -> None:
    validate_experiment(experiment(), {})
    validate_experiment(experiment(default=None), {})
    validate_experiment(experiment(mirror=("iris-shadow", 100)), {})
    validate_experiment(experiment(candidates=(), default=None, mirror=("iris-shadow", 1)), {})
    validate_experiment(experiment(candidates=(("p1", 10_000),), default="p1", resource_type=pb.PIPELINE), {})
    many = tuple((f"m{i}", 1) for i in range(MAX_CANDIDATES))
    validate_experiment(experiment(candidates=many, default="m0"), {})


BAD: list[tuple[str, pb.Experiment, str]] = [
    ("experiment name empty", experiment(name=""), "experiment name is empty"),
    ("experiment name invalid", experiment(name="A_B"), "experiment name 'A_B'"),
    ("experiment name too long", experiment(name="x" * 64), "experiment name"),
    ("resource type", experiment(resource_type=7), "resourceType 7"),
    ("nothing to route", experiment(candidates=(), default=None), "candidates is empty"),
    (
        "too many candidates",
        experiment(candidates=tuple((f"m{i}", 1) for i in range(MAX_CANDIDATES + 1)), default=None),
        f"candidates has {MAX_CANDIDATES + 1} entries",
    ),
    ("candidate name", experiment(candidates=(("Bad.Name", 1),), default=None), "candidate 0: model name 'Bad.Name'"),
    (
        "pipeline candidate name",
        experiment(candidates=(("", 1),), default=None, resource_type=pb.PIPELINE),
        "candidate 0: pipeline name is empty",
    ),
    ("duplicate candidate", experiment(candidates=(("a", 1), ("a", 2)), default="a"), "candidate 'a' is listed more"),
    ("zero weight", experiment(candidates=(("a", 0),), default=None), "candidate 'a': weight 0"),
    ("huge weight", experiment(candidates=(("a", 10_001),), default=None), "candidate 'a': weight 10001"),
    ("mirror name", experiment(mirror=("", 10)), "mirror: model name is empty"),
    ("mirror percent 0", experiment(mirror=("shadow", 0)), "mirror 'shadow': percent 0"),
    ("mirror percent 101", experiment(mirror=("shadow", 101)), "mirror 'shadow': percent 101"),
    ("mirror is a candidate", experiment(mirror=("iris-v2", 10)), "mirror 'iris-v2' is also a candidate"),
    ("default not a candidate", experiment(default="iris-v3"), "default 'iris-v3' is not one of the candidates"),
    ("default empty", experiment(default=""), "default: model name is empty"),
]


@pytest.mark.parametrize(("spec", "words"), [(spec, words) for _, spec, words in BAD], ids=[i for i, _, _ in BAD])
def test_malformed_experiments_are_invalid_arguments(spec: pb.Experiment, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_experiment(spec, {})
    assert words in str(caught.value)
    if spec.name == "ab":
        assert str(caught.value).startswith("experiment 'ab'")


def test_the_same_default_in_two_running_experiments_conflicts() -> None:
    other = experiment(name="other", candidates=(("iris-v1", 1), ("iris-v9", 1)))
    with pytest.raises(FailedPrecondition) as caught:
        validate_experiment(experiment(), {"other": other})
    message = str(caught.value)
    assert "'iris-v1'" in message
    assert "'other'" in message
    # Not a conflict: replacing the same experiment, a different default, or a pipeline of that name.
    validate_experiment(experiment(), {"ab": experiment()})
    validate_experiment(experiment(default="iris-v2"), {"other": other})
    validate_experiment(experiment(default=None), {"other": other})
    pipeline = experiment(name="p", resource_type=pb.PIPELINE)
    validate_experiment(pipeline, {"other": other})


def test_registry_baseline_conflicts_until_the_other_is_stopped() -> None:
    registry = ExperimentRegistry()
    started(registry, experiment(name="first"))
    with pytest.raises(FailedPrecondition, match="experiment 'first'"):
        registry.prepare_start(experiment(name="second"))
    # Replacing the experiment that holds the default is fine.
    started(registry, experiment(name="first", candidates=(("iris-v1", 1), ("iris-v3", 2))))
    stopped(registry, "first")
    started(registry, experiment(name="second"))
    assert registry.default_routes() == {"iris-v1": "second"}
    # ... and now restarting "first" conflicts with "second".
    with pytest.raises(FailedPrecondition, match="experiment 'second'"):
        registry.prepare_start(experiment(name="first"))


# ----------------------------------------------------------------- start / stop


def test_start_replaces_the_whole_experiment() -> None:
    registry = ExperimentRegistry()
    started(registry, experiment(mirror=("shadow", 10), sticky=True))
    started(registry, experiment(candidates=(("iris-v1", 70), ("iris-v3", 30))))
    spec = registry.records["ab"].spec
    assert [(c.name, c.weight) for c in spec.candidates] == [("iris-v1", 70), ("iris-v3", 30)]
    assert not spec.HasField("mirror")
    assert not spec.HasField("config")
    assert list(registry.records) == ["ab"]


def test_identical_start_changes_nothing() -> None:
    registry = ExperimentRegistry()
    spec = experiment()
    assert registry.prepare_start(spec) is not None
    assert "ab" not in registry.records  # prepare changes nothing
    started(registry, spec)
    assert registry.prepare_start(experiment()) is None
    assert registry.prepare_start(experiment(default="iris-v2")) is not None


def test_prepared_record_does_not_alias_the_request() -> None:
    registry = ExperimentRegistry()
    spec = experiment()
    started(registry, spec)
    spec.candidates[0].weight = 1
    assert registry.records["ab"].spec.candidates[0].weight == 50


def test_stop_keeps_a_terminated_record_and_start_again_revives_it() -> None:
    registry = ExperimentRegistry()
    started(registry, experiment())
    registry.refresh(all_ready)
    registry.record_gateway_ack("ab", "gw-1", active=True, reason="")
    prepared = registry.prepare_stop("ab")
    assert prepared.stopped
    assert "ab" in registry.running()  # prepare changes nothing
    registry.apply_stop("ab")
    [status] = registry.status("ab")
    assert (status.experimentName, status.active, status.statusDescription) == ("ab", False, STOPPED)
    assert registry.default_routes() == {}
    assert registry.running() == {}
    # A stale gateway ack does not revive it; stopping again is harmless.
    assert not registry.record_gateway_ack("ab", "gw-1", active=True, reason="")
    stopped(registry, "ab")
    assert registry.records["ab"].stopped
    assert registry.running() == {}
    # Starting a stopped experiment, even unchanged, starts it again.
    assert registry.prepare_start(experiment()) is not None
    started(registry, experiment())
    assert "ab" in registry.running()


def test_stop_and_status_of_unknown_experiments_fail_precondition() -> None:
    registry = ExperimentRegistry()
    with pytest.raises(FailedPrecondition, match="experiment 'nope' not found"):
        registry.prepare_stop("nope")
    with pytest.raises(FailedPrecondition, match="experiment 'nope' not found"):
        registry.status("nope")
    assert registry.status() == []


def test_status_lists_all_sorted_with_kubernetes_meta() -> None:
    registry = ExperimentRegistry()
    spec = experiment(name="b")
    spec.kubernetesMeta.namespace = "seldon"
    spec.kubernetesMeta.generation = 3
    started(registry, spec)
    started(registry, experiment(name="a", default=None))
    statuses = registry.status()
    assert [s.experimentName for s in statuses] == ["a", "b"]
    assert statuses[1].kubernetesMeta.namespace == "seldon"
    assert statuses[1].kubernetesMeta.generation == 3
    assert not statuses[0].HasField("kubernetesMeta")


# ----------------------------------------------------------------- refresh and gateway acks


def only(*ready: str) -> Callable[[str, int], str | None]:
    """Every name in ``ready`` is; any other is "<name> is gone"."""
    return lambda name, _kind: None if name in ready else f"{name} is gone"


def all_ready(_name: str, _kind: int) -> None:
    """Everything is ready."""
    return None


@pytest.mark.parametrize(
    ("mirror", "ready", "candidates_ready", "mirror_ready", "description"),
    [
        (None, ("iris-v1", "iris-v2"), True, True, "not active yet"),
        (
            None,
            ("iris-v1",),
            False,
            True,
            "degraded: requests go to the candidates that are ready; "
            "candidate iris-v2 not ready (iris-v2 is gone); not active yet",
        ),
        (
            None,
            (),
            False,
            True,
            "candidate iris-v1 not ready (iris-v1 is gone); candidate iris-v2 not ready (iris-v2 is gone); "
            "no candidate can take requests; not active yet",
        ),
        (("shadow", 5), ("iris-v1", "iris-v2", "shadow"), True, True, "not active yet"),
        (
            ("shadow", 5),
            ("iris-v1", "iris-v2"),
            True,
            False,
            "mirror shadow not ready (shadow is gone); not active yet",
        ),
        (
            ("shadow", 5),
            ("shadow",),
            False,
            True,
            "candidate iris-v1 not ready (iris-v1 is gone); candidate iris-v2 not ready (iris-v2 is gone); "
            "no candidate can take requests",
        ),
    ],
)
def test_refresh(
    mirror: tuple[str, int] | None,
    ready: tuple[str, ...],
    candidates_ready: bool,
    mirror_ready: bool,
    description: str,
) -> None:
    registry = ExperimentRegistry()
    started(registry, experiment(mirror=mirror))
    registry.refresh(only(*ready))
    [status] = registry.status("ab")
    assert (status.candidatesReady, status.mirrorReady) == (candidates_ready, mirror_ready)
    assert status.statusDescription.startswith(description)


def test_refresh_passes_the_resource_type_and_reports_changes_only() -> None:
    registry = ExperimentRegistry()
    started(registry, experiment(name="models"))
    started(registry, experiment(name="pipes", candidates=(("p1", 1),), default="p1", resource_type=pb.PIPELINE))
    asked: list[tuple[str, int]] = []

    def ready(name: str, kind: int) -> str | None:
        asked.append((name, kind))
        return None if kind == pb.PIPELINE else "ModelProgressing"

    # A started experiment is assumed not ready until checked: "models" stays not ready, and now says why.
    assert registry.refresh(ready) == {"pipes", "models"}
    assert ("p1", pb.PIPELINE) in asked
    assert ("iris-v1", pb.MODEL) in asked
    assert not registry.status("models")[0].candidatesReady
    assert "candidate iris-v1 not ready (ModelProgressing)" in registry.status("models")[0].statusDescription
    assert registry.refresh(ready) == set()
    assert registry.refresh(all_ready) == {"models"}
    stopped(registry, "models")
    assert registry.refresh(lambda _name, _kind: "not loaded") == {"pipes"}
    assert registry.status("models")[0].statusDescription == STOPPED


def test_gateway_acks_set_active() -> None:
    registry = ExperimentRegistry()
    started(registry, experiment())
    registry.refresh(all_ready)
    assert registry.record_gateway_ack("ab", "gw-1", active=True, reason="")
    assert not registry.record_gateway_ack("ab", "gw-1", active=True, reason="")
    [status] = registry.status("ab")
    assert status.active
    assert status.statusDescription == "active"
    assert registry.record_gateway_ack("ab", "gw-1", active=False, reason="envoy rejected the route")
    [status] = registry.status("ab")
    assert not status.active
    assert "envoy rejected the route" in status.statusDescription
    assert not registry.record_gateway_ack("unknown", "gw-1", active=True, reason="")
    # A replaced experiment waits for the gateways again.
    started(registry, experiment(default="iris-v2"))
    assert not registry.records["ab"].active


def test_active_while_any_connected_gateway_routes_it() -> None:
    registry = ExperimentRegistry()
    started(registry, experiment())
    registry.refresh(all_ready)
    assert registry.record_gateway_ack("ab", "gw-1", active=True)
    assert not registry.record_gateway_ack("ab", "gw-2", active=False, reason="no route to iris-v2")
    assert registry.records["ab"].active  # gw-1 routes it
    assert registry.forget_gateway("gw-1") == {"ab"}
    [status] = registry.status("ab")
    assert not status.active
    assert status.statusDescription == "not active in gateways: gw-2: no route to iris-v2"
    assert registry.forget_gateway("gw-2") == {"ab"}
    [status] = registry.status("ab")
    assert (status.active, status.statusDescription) == (False, "not active yet")
    assert registry.forget_gateway("gw-3") == set()  # never said anything: nothing changes


# ----------------------------------------------------------------- durability and routes


def test_durable_round_trip() -> None:
    record = ExperimentRecord(spec=experiment(mirror=("shadow", 5), sticky=True), state=ExperimentState.STOPPED)
    record.gateway_acks["gw-1"] = (True, "")
    assert record.active
    record.candidates_ready = True
    back = ExperimentRecord.from_bytes("ab", record.to_bytes())
    assert back.spec == record.spec
    assert back.stopped
    assert not back.active  # observed, not durable
    assert not back.candidates_ready
    running = ExperimentRecord.from_bytes("ab", ExperimentRecord(spec=experiment()).to_bytes())
    assert not running.stopped
    with pytest.raises(ValueError, match="holds the spec of 'ab'"):
        ExperimentRecord.from_bytes("other", record.to_bytes())


def test_restore_installs_stored_records() -> None:
    registry = ExperimentRegistry()
    registry.restore(ExperimentRecord.from_bytes("ab", ExperimentRecord(spec=experiment()).to_bytes()))
    stored_stopped = ExperimentRecord(spec=experiment(name="old"), state=ExperimentState.STOPPED)
    registry.restore(ExperimentRecord.from_bytes("old", stored_stopped.to_bytes()))
    assert registry.default_routes() == {"iris-v1": "ab"}
    assert registry.status("old")[0].statusDescription == STOPPED
    assert registry.prepare_start(experiment()) is None


def test_default_routes() -> None:
    registry = ExperimentRegistry()
    started(registry, experiment(name="a"))
    started(registry, experiment(name="b", candidates=(("x", 1), ("y", 1)), default=None))
    started(registry, experiment(name="c", candidates=(("p", 1), ("q", 1)), default="q", resource_type=pb.PIPELINE))
    started(registry, experiment(name="d", candidates=(("iris-v1", 1),), default="iris-v1", resource_type=pb.PIPELINE))
    assert registry.default_routes() == {"iris-v1": "a"}
    assert registry.default_routes(pb.MODEL) == {"iris-v1": "a"}
    assert registry.default_routes(pb.PIPELINE) == {"q": "c", "iris-v1": "d"}


# ----------------------------------------------------------------- property: only domain errors

NAMES = st.one_of(
    st.sampled_from(["a", "b", "iris", "iris-v2", "m0", ""]),
    st.text(alphabet="abAB-_.0 z", max_size=8),
    st.text(max_size=70),
)
U32 = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def experiments(draw: st.DrawFn) -> pb.Experiment:
    spec = pb.Experiment(
        name=draw(NAMES),
        resourceType=draw(st.sampled_from([0, 1, 2, 99])),  # type: ignore[arg-type]
    )
    for name, weight in draw(st.lists(st.tuples(NAMES, st.one_of(st.integers(0, 10_002), U32)), max_size=70)):
        spec.candidates.add(name=name, weight=weight)
    if draw(st.booleans()):
        spec.mirror.name = draw(NAMES)
        spec.mirror.percent = draw(st.one_of(st.integers(0, 102), U32))
    if draw(st.booleans()):
        spec.default = draw(st.one_of(NAMES, st.sampled_from([c.name for c in spec.candidates] or ["a"])))
    if draw(st.booleans()):
        spec.config.stickySessions = draw(st.booleans())
    return spec


@settings(max_examples=300, deadline=None)
@given(spec=experiments(), others=st.lists(experiments(), max_size=3))
def test_any_experiment_validates_or_raises_a_domain_error(spec: pb.Experiment, others: list[pb.Experiment]) -> None:
    try:
        validate_experiment(spec, {o.name: o for o in others})
    except (InvalidArgument, FailedPrecondition) as error:
        assert str(error)
    registry = ExperimentRegistry()
    for other in others:
        try:
            prepared = registry.prepare_start(other)
        except (InvalidArgument, FailedPrecondition):
            continue
        if prepared is not None:
            registry.apply_start(prepared)
    try:
        prepared = registry.prepare_start(spec)
    except (InvalidArgument, FailedPrecondition):
        return
    if prepared is not None:
        registry.apply_start(prepared)
    assert registry.records[spec.name].spec == spec
    registry.refresh(all_ready)


# ----------------------------------------------------------------- state table


def state_of(registry: ExperimentRegistry, name: str = "ab") -> ExperimentState:
    return registry.records[name].state


def test_experiment_state_follows_its_table() -> None:
    """Pending until a connected gateway routes it, Active while one does, Pending again when none does; Stopped
    is final for the record (starting again installs a new one), and a change off the table is refused."""
    registry = ExperimentRegistry()
    started(registry, experiment())
    record = registry.records["ab"]
    assert state_of(registry) is ExperimentState.PENDING
    assert not record.to_status().active
    registry.record_gateway_ack("ab", "gw-1", active=True, reason="")
    registry.record_gateway_ack("ab", "gw-2", active=False, reason="no route yet")
    assert record.to_status().active
    assert state_of(registry) is ExperimentState.ACTIVE
    registry.forget_gateway("gw-1")  # the one gateway that routed it is gone
    assert not record.to_status().active
    assert state_of(registry) is ExperimentState.PENDING
    stopped(registry, "ab")
    assert record.to_status().statusDescription == STOPPED
    assert state_of(registry) is ExperimentState.STOPPED
    with pytest.raises(IllegalTransition):
        record.move_to(ExperimentState.ACTIVE)
    assert not registry.record_gateway_ack("ab", "gw-2", active=True, reason="")  # stale: ignored
    assert registry.records["ab"].stopped
    started(registry, experiment())
    assert state_of(registry) is ExperimentState.PENDING
    for state, allowed in TRANSITIONS.items():
        assert state not in allowed  # every change is a change: no state moves to itself
    # Only stopped-or-not is durable: a restart restores Stopped, or Pending until gateways route it again.
    restored = ExperimentRecord.from_bytes("ab", registry.records["ab"].to_bytes())
    assert restored.state is ExperimentState.PENDING


# ----------------------------------------------------------------- stopped experiments forgotten


def test_stopped_experiments_expire_by_age_and_beyond_a_count_and_running_ones_never() -> None:
    registry = ExperimentRegistry()
    for name in ("a", "b", "c", "live"):
        started(registry, experiment(name=name, default=None))
    for name, at in (("a", 100.0), ("b", 200.0), ("c", 300.0)):
        prepared = registry.prepare_stop(name)
        registry.apply_stop(name, at)
        assert prepared.stopped_at is not None
    assert registry.expired(now=250.0, ttl_seconds=100.0) == ["a"]
    assert registry.expired(now=250.0, ttl_seconds=1000.0) == []
    assert registry.expired(now=250.0, ttl_seconds=1000.0, keep_at_most=1) == ["a", "b"]  # the oldest go first
    assert "live" not in registry.expired(now=10_000.0, ttl_seconds=1.0)
    registry.forget("a")
    registry.forget("live")  # running: not forgotten
    assert sorted(registry.records) == ["b", "c", "live"]
    with pytest.raises(FailedPrecondition, match="not found"):
        registry.status("a")


def test_a_stop_time_is_durable_a_retried_stop_keeps_it_and_a_restart_clears_it() -> None:
    registry = ExperimentRegistry()
    started(registry, experiment())
    first = registry.prepare_stop("ab")
    assert first.stopped_at is not None
    registry.apply_stop("ab", first.stopped_at)
    stored = ExperimentRecord.from_bytes("ab", first.to_bytes())
    assert stored.stopped_at == first.stopped_at
    assert registry.prepare_stop("ab").stopped_at == first.stopped_at  # a retry does not extend its life
    started(registry, experiment())
    assert registry.records["ab"].stopped_at is None
    assert registry.expired(now=first.stopped_at + 10**9, ttl_seconds=1.0) == []
    restored = ExperimentRegistry()
    restored.restore(stored)
    assert restored.records["ab"].stopped_at == first.stopped_at
    legacy = ExperimentRecord(spec=experiment(), state=ExperimentState.STOPPED).to_bytes()  # written without it
    assert b"stoppedAt" not in legacy
    restored.restore(ExperimentRecord.from_bytes("ab", legacy))
    assert restored.records["ab"].stopped_at is not None  # counted from the restore
