"""Validation of an experiment spec, on its own and against the other running experiments.

Malformed input raises ``InvalidArgument``; a well-formed experiment that conflicts with another running
experiment raises ``FailedPrecondition`` (Seldon's clients read that code as "do not retry").
Every message starts with the experiment's name and names the offending field or candidate.
"""

from __future__ import annotations

from collections.abc import Mapping

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import FailedPrecondition, InvalidArgument
from modelplane.spec.limits import check_fields
from modelplane.spec.names import check_kubernetes_meta, check_name

MAX_WEIGHT = 10_000
MIN_MIRROR_PERCENT = 1
MAX_MIRROR_PERCENT = 100

_KINDS: dict[int, str] = {pb.MODEL: "model", pb.PIPELINE: "pipeline"}


def resource_kind(resource_type: int) -> str:
    """'model' or 'pipeline' for a valid ResourceType; raises InvalidArgument otherwise."""
    kind = _KINDS.get(resource_type)
    if kind is None:
        raise InvalidArgument(
            f"resourceType {resource_type} is invalid: use MODEL ({pb.MODEL}) or PIPELINE ({pb.PIPELINE})"
        )
    return kind


def _check_name(name: str, what: str, where: str) -> None:
    try:
        check_name(name, what=what)
    except InvalidArgument as error:
        raise InvalidArgument(f"{where}: {error}") from None


def validate_experiment(experiment: pb.Experiment, others: Mapping[str, pb.Experiment]) -> None:
    """Raise if ``experiment`` may not be started; return None if it may.

    ``others`` are the experiments running now, by name; an entry with ``experiment``'s own name is ignored,
    because starting an existing experiment replaces it.
    """
    check_name(experiment.name, what="experiment")
    prefix = f"experiment {experiment.name!r}"
    check_fields(experiment, prefix)
    if experiment.HasField("kubernetesMeta"):
        check_kubernetes_meta(experiment.kubernetesMeta, prefix)
    try:
        kind = resource_kind(experiment.resourceType)
    except InvalidArgument as error:
        raise InvalidArgument(f"{prefix}: {error}") from None
    if not experiment.candidates and not experiment.HasField("mirror"):
        raise InvalidArgument(f"{prefix}: candidates is empty and there is no mirror; give at least one of them")
    candidates = _check_candidates(experiment, kind, prefix)
    if experiment.HasField("mirror"):
        _check_mirror(experiment.mirror, candidates, kind, prefix)
    if experiment.HasField("default"):
        _check_default(experiment, candidates, others, kind, prefix)


def _check_candidates(experiment: pb.Experiment, kind: str, prefix: str) -> set[str]:
    """The candidates' names, once each is checked (their number is limits.MAX_CANDIDATES's, by check_fields)."""
    seen: set[str] = set()
    for index, candidate in enumerate(experiment.candidates):
        _check_name(candidate.name, kind, f"{prefix} candidate {index}")
        where = f"{prefix} candidate {candidate.name!r}"
        if candidate.name in seen:
            raise InvalidArgument(f"{where} is listed more than once; candidate names must be unique")
        seen.add(candidate.name)
        if not 0 < candidate.weight <= MAX_WEIGHT:
            raise InvalidArgument(f"{where}: weight {candidate.weight} is invalid: use 1 to {MAX_WEIGHT}")
    return seen


def _check_mirror(mirror: pb.ExperimentMirror, candidates: set[str], kind: str, prefix: str) -> None:
    _check_name(mirror.name, kind, f"{prefix} mirror")
    if not MIN_MIRROR_PERCENT <= mirror.percent <= MAX_MIRROR_PERCENT:
        raise InvalidArgument(
            f"{prefix} mirror {mirror.name!r}: percent {mirror.percent} is invalid: "
            f"use {MIN_MIRROR_PERCENT} to {MAX_MIRROR_PERCENT}"
        )
    if mirror.name in candidates:
        raise InvalidArgument(f"{prefix} mirror {mirror.name!r} is also a candidate; a mirror must not be one")


def _check_default(
    experiment: pb.Experiment, candidates: set[str], others: Mapping[str, pb.Experiment], kind: str, prefix: str
) -> None:
    default = experiment.default
    _check_name(default, kind, f"{prefix} default")
    if default not in candidates:
        raise InvalidArgument(
            f"{prefix} default {default!r} is not one of the candidates ({', '.join(sorted(candidates)) or 'none'})"
        )
    for other_name, other in sorted(others.items()):
        if other_name == experiment.name:
            continue  # the same experiment being replaced is no conflict
        if other.HasField("default") and other.default == default and other.resourceType == experiment.resourceType:
            raise FailedPrecondition(
                f"{prefix} default {default!r}: {kind} {default!r} is already the default of running "
                f"experiment {other_name!r}; stop that experiment first"
            )


def check_routing_name(experiment: pb.Experiment, routed_as: int | None) -> None:
    """Refuse an experiment named like a model or pipeline: a request to that name would reach the experiment by
    its name (the gateway resolves an experiment's own name first), or the model or pipeline itself, depending on
    the path it takes (gateway/inference_router.py). Allowed only in front of its own default of that name and
    resource type (Seldon's case), where every path reaches the experiment. ``routed_as`` is pb.MODEL or
    pb.PIPELINE when a model or pipeline (not being deleted) has the experiment's name, else None.

    FailedPrecondition: the request is right once the state is fixed, and Seldon's clients do not retry it."""
    if routed_as is None:
        return
    name = experiment.name
    if experiment.resourceType == routed_as and experiment.HasField("default") and experiment.default == name:
        return
    kind = "model" if routed_as == pb.MODEL else "pipeline"
    raise FailedPrecondition(
        f"experiment {name!r}: {kind} {name!r} has that name, so requests to {name!r} could reach either; "
        f"name the experiment differently (an experiment in front of {kind} {name!r} takes its traffic with "
        f"default: {name})"
    )
