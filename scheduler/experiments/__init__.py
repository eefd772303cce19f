"""The experiment control plane: validation, durable records and the registry of experiments.

Pure and synchronous (no grpc): the servicers persist prepared records and publish status changes.
"""

from scheduler.experiments.experiment_records import ExperimentRecord, copy_experiment
from scheduler.experiments.experiment_registry import STOPPED, ExperimentRegistry, ReadinessCheck
from scheduler.experiments.validation import (
    MAX_MIRROR_PERCENT,
    MAX_WEIGHT,
    MIN_MIRROR_PERCENT,
    resource_kind,
    validate_experiment,
)

__all__ = [
    "MAX_MIRROR_PERCENT",
    "MAX_WEIGHT",
    "MIN_MIRROR_PERCENT",
    "STOPPED",
    "ExperimentRecord",
    "ExperimentRegistry",
    "ReadinessCheck",
    "copy_experiment",
    "resource_kind",
    "validate_experiment",
]
