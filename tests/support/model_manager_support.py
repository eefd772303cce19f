"""An agent's ModelManager driven directly by tests: the manager over a server, and the operations the scheduler
would send. tests/support/mlserver_fixtures.py has a real MLServer per test module to drive."""

from __future__ import annotations

import itertools
from pathlib import Path

from agent.artifacts import ArtifactStore, ExtractLimits
from agent.model_manager import ModelManager
from generated.mlops.agent.v1 import agent_pb2
from servers.adapter import InferenceServer
from tests.support.cluster_fixtures import MIB, model

Operation = agent_pb2.ModelOperation
_operation_ids = itertools.count(1)


def manager_for(
    server: InferenceServer,
    cache: Path,
    *,
    limits: ExtractLimits | None = None,
    cache_limit_bytes: int | None = None,
    memory_bytes: int = 200 * MIB,
    overcommit_percent: int = 10,
    retry_delay_seconds: float = 1.0,
) -> ModelManager:
    options: dict[str, object] = {}
    if limits is not None:
        options["limits"] = limits
    if cache_limit_bytes is not None:
        options["cache_limit_bytes"] = cache_limit_bytes
    store = ArtifactStore(cache, environ={}, timeout_seconds=30, **options)  # type: ignore[arg-type]
    return ModelManager(
        server,
        store,
        memory_bytes=memory_bytes,
        overcommit_percent=overcommit_percent,
        retry_delay_seconds=retry_delay_seconds,
    )


def operation(
    kind: Operation.Kind.ValueType, name: str, uri: str | Path, *, version: int = 1, memory: int = 10 * MIB
) -> Operation:
    """An operation as the scheduler sends it, with the next operation id."""
    return Operation(
        operation_id=next(_operation_ids), kind=kind, model=model(name, str(uri), memory=memory), version=version
    )
