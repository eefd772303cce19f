"""The launcher interface: run one training job (see trainer/run/jobs.py) to completion somewhere."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from generated.mlops.training.v1 import training_pb2
from trainer.run.jobs import EXIT_UNAVAILABLE


class LaunchVerdict(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED_PERMANENTLY = "failed_permanently"  # exit 1-127 or bad input: retrying cannot help
    FAILED_RETRYABLE = "failed_retryable"  # exit 128-255, deadline, eviction, infrastructure


@dataclass(frozen=True)
class LaunchOutcome:
    verdict: LaunchVerdict
    exit_code: int | None
    detail: str  # a person-readable reason, e.g. "exit 137 (killed: out of memory?)" or the log tail


class Launcher(Protocol):
    async def run(self, job_dir: Path, schema: training_pb2.ModelDesignSchema) -> LaunchOutcome:
        """Run ``python -m trainer.run.run_job job_dir`` (or its container equivalent) to completion.

        ``job_dir`` already holds job.json and design_schema.pb; on return it holds result.json and output/
        when the run got that far. ``schema`` is passed for what the launcher itself needs (ModelAssembly's
        compute for resource requests, framework for the image). Cancelling the call stops the run.
        """
        ...


def verdict_for_exit_code(exit_code: int) -> LaunchVerdict:
    """Kubernetes' convention: 0 success, 1-127 permanent, 128-255 (signals, OOM kills) retryable; and the
    run's own EXIT_UNAVAILABLE (its dataset's store was unreachable) retryable.

    A negative code (Python's subprocess for "killed by signal N") counts as 128+N.
    """
    if exit_code == 0:
        return LaunchVerdict.SUCCEEDED
    if exit_code < 0 or exit_code >= 128 or exit_code == EXIT_UNAVAILABLE:
        return LaunchVerdict.FAILED_RETRYABLE
    return LaunchVerdict.FAILED_PERMANENTLY
