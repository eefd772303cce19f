"""The ``status`` a Seldon resource shows, as its users read it (``kubectl get model``, ``kubectl wait --for
condition=Ready``): conditions (``ModelReady``/``PipelineReady``/``ExperimentReady`` and the summary ``Ready``, each
with status True/False, reason, message and lastTransitionTime), ``observedGeneration`` and, for models,
``replicas`` and ``availableReplicas``.

A status only ever describes one generation of the resource, named by ``observedGeneration``: the one the scheduler
says it holds (its status carries kubernetesMeta.generation), or the one a final refusal was about.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from controller.resource_kinds import JsonObject

MAX_MESSAGE_CHARS = 1024  # a condition's message: the scheduler's reasons are bounded; this bounds ours too


@dataclass(frozen=True, slots=True)
class Observed:
    """What the scheduler says of one generation of a resource."""

    generation: int
    ready: bool
    reason: str  # one CamelCase word (the scheduler's state name, or ours)
    message: str
    replicas: int | None = None  # models only
    available_replicas: int | None = None


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bounded(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_MESSAGE_CHARS else f"{flat[: MAX_MESSAGE_CHARS - 3]}..."


def _conditions(document: JsonObject | None) -> list[JsonObject]:
    """The conditions a status holds, as far as they are conditions: a status is anyone's to write (a user with
    rights on the status subresource, another tool), and the API server checks it only against the CRD's schema, so
    what is there is read, never trusted to have the shape ours have."""
    found = (document or {}).get("conditions")
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def _condition(kind: str, observed: Observed, previous: list[JsonObject]) -> JsonObject:
    status = "True" if observed.ready else "False"
    condition: JsonObject = {"type": kind, "status": status, "reason": observed.reason}
    message = _bounded(observed.message)
    if message:
        condition["message"] = message
    # The time the status last changed: kept while it stays the same, as Kubernetes' conditions do.
    old = next((c for c in previous if c.get("type") == kind), None)
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == status else None
    condition["lastTransitionTime"] = since if isinstance(since, str) and since else now()
    return condition


def status_document(condition_type: str, observed: Observed, current: JsonObject | None) -> JsonObject:
    """The status to write for ``observed``; ``current`` (the resource's status now) gives the transition times."""
    previous = _conditions(current)
    document: JsonObject = {
        "conditions": [_condition(condition_type, observed, previous), _condition("Ready", observed, previous)],
        "observedGeneration": observed.generation,
    }
    if observed.replicas is not None:
        document["replicas"] = observed.replicas
    if observed.available_replicas is not None:
        document["availableReplicas"] = observed.available_replicas
    return document


def same_status(current: JsonObject | None, wanted: JsonObject) -> bool:
    """True if writing ``wanted`` would change nothing a reader sees (transition times aside). Only the keys
    ``wanted`` has count: a merge patch leaves the others as they are, so they never call for a write."""

    def comparable(document: JsonObject | None) -> JsonObject:
        document = {key: value for key, value in (document or {}).items() if key in wanted}
        document["conditions"] = [
            {key: value for key, value in condition.items() if key != "lastTransitionTime"}
            for condition in _conditions(document)
        ]
        return document

    return comparable(current) == comparable(wanted)
