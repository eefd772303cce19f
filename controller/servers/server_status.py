"""A Server's status (what ``kubectl get servers`` shows), from its StatefulSet and the scheduler: pure.

``replicas`` and ``availableReplicas`` are the StatefulSet's; ``loadedModels`` is the scheduler's count of model
replicas on the server; ``selector`` serves the scale subresource; the ``Ready`` condition says whether every wanted
replica is available, and if not why (its reason is one word, its message a sentence); ``observedGeneration`` is the
Server generation the status describes. A condition keeps its ``lastTransitionTime`` while its status stays.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

JsonObject = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(previous: JsonObject, ready: bool, reason: str, message: str) -> JsonObject:
    """The Ready condition, keeping the previous transition time when its status did not change."""
    status = "True" if ready else "False"
    conditions = previous.get("conditions") if isinstance(previous.get("conditions"), list) else []
    old = next((c for c in conditions or [] if isinstance(c, dict) and c.get("type") == "Ready"), None)
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == status else None
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now(),
    }


def server_status(
    server: JsonObject,
    *,
    stateful_set: JsonObject | None,
    wanted: int,
    loaded_models: int | None,
    selector: dict[str, str] | None,
    problem: tuple[str, str] | None = None,
    draining: list[int] | None = None,
) -> JsonObject:
    """The status to write for ``server``. ``problem`` (reason, message) makes it not Ready whatever else holds."""
    previous = server.get("status") if isinstance(server.get("status"), dict) else {}
    sts_status = (stateful_set or {}).get("status") or {}
    replicas = int(sts_status.get("replicas") or 0)
    available = int(sts_status.get("availableReplicas") or 0)
    status: JsonObject = {
        "observedGeneration": int((server.get("metadata") or {}).get("generation") or 0),
        "replicas": replicas,
        "availableReplicas": available,
    }
    if loaded_models is not None:
        status["loadedModels"] = loaded_models
    if selector is not None:
        status["selector"] = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
    sts_generation = int(((stateful_set or {}).get("metadata") or {}).get("generation") or 0)
    rolled_out = int(sts_status.get("observedGeneration") or 0) >= sts_generation
    if problem is not None:
        reason, message = problem
        condition = ready_condition(previous or {}, False, reason, message)
    elif stateful_set is None:
        condition = ready_condition(previous or {}, False, "StatefulSetMissing", "the StatefulSet is not made yet")
    elif draining:
        shown = ", ".join(str(i) for i in draining)
        condition = ready_condition(
            previous or {},
            False,
            "Draining",
            f"scaling down to {wanted}: waiting for replica(s) {shown} to hand their models to the others",
        )
    elif available >= wanted and rolled_out:
        condition = ready_condition(previous or {}, True, "ReplicasAvailable", f"{available} of {wanted} available")
    else:
        condition = ready_condition(
            previous or {}, False, "ReplicasNotAvailable", f"{available} of {wanted} replicas available"
        )
    status["conditions"] = [condition]
    return status


def same_status(old: object, new: JsonObject) -> bool:
    """True when writing ``new`` would change nothing a reader sees (transition times aside)."""
    if not isinstance(old, dict):
        return False

    def plain(status: JsonObject) -> JsonObject:
        conditions = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"}
            for c in status.get("conditions") or []
            if isinstance(c, dict)
        ]
        return {**status, "conditions": conditions}

    return plain(old) == plain(new)
