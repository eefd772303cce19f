"""Seldon's Experiment resource to the Scheduler API's Experiment (the field map is in the package's docstring)."""

from __future__ import annotations

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.seldon_resources.fields import (
    MAX_UINT32,
    ResourceSpecError,
    Translation,
    checked_limits,
    kubernetes_meta,
    name_of,
    resource_parts,
    shown,
)

_RESOURCE_TYPES = {"model": pb.MODEL, "pipeline": pb.PIPELINE}


def experiment_from_resource(resource: object) -> Translation[pb.Experiment]:
    """The StartExperiment message of an Experiment resource; raises ResourceSpecError naming the first bad field."""
    metadata, spec, unknown = resource_parts(resource, "Experiment")
    experiment = pb.Experiment(name=name_of(metadata))
    kubernetes = kubernetes_meta(metadata)
    if kubernetes is not None:
        experiment.kubernetesMeta.CopyFrom(kubernetes)
    default = spec.text("default")
    if default is not None:
        experiment.default = default
    for candidate in spec.items("candidates"):
        experiment.candidates.add(
            name=candidate.required_text("name"), weight=candidate.whole("weight", 0, MAX_UINT32) or 0
        )
        candidate.done()
    mirror = spec.mapping("mirror")
    if mirror is not None:
        experiment.mirror.CopyFrom(
            pb.ExperimentMirror(name=mirror.required_text("name"), percent=mirror.whole("percent", 0, 100) or 0)
        )
        mirror.done()
    resource_type = spec.text("resourceType")
    if resource_type is not None:
        if resource_type.lower() not in _RESOURCE_TYPES:
            raise ResourceSpecError(f"spec.resourceType must be model or pipeline, not {shown(resource_type)}")
        experiment.resourceType = _RESOURCE_TYPES[resource_type.lower()]
    config = spec.mapping("config")
    if config is not None:
        experiment.config.CopyFrom(pb.ExperimentConfig(stickySessions=bool(config.flag("stickySessions"))))
        config.done()
    spec.done()
    spec_unknown = [field for field in unknown if field.startswith("spec.")]
    return Translation(checked_limits(experiment, "experiment"), tuple(spec_unknown))
