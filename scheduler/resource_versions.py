"""The live version of a model or pipeline in the scheduler, as the audit log records it around a mutation."""

from __future__ import annotations

from modelplane.audit import Resource
from scheduler.core import SchedulerCore


def live_version(core: SchedulerCore, resource: Resource) -> int | None:
    """The latest version number of the model or pipeline ``resource`` names; None when there is none (never
    loaded, or deleted) and for resources without versions (experiments, servers)."""
    if resource.kind == "model":
        model = core.cluster.models.get(resource.name)
        return None if model is None or model.deleted else model.latest.version
    if resource.kind == "pipeline":
        pipeline = core.pipelines.records.get(resource.name)
        return None if pipeline is None or pipeline.deleted else pipeline.latest.version
    return None
