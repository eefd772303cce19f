"""Drive SchedulerCore in-process with fake replicas that answer operations like agents would.

No network: the replicas read their AgentSession outbox directly and call the core's agent entry
points, so tests can script loads that succeed, fail, or never answer, and check invariants after
every step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from scheduler.agent_sessions import AgentSession
from scheduler.core import CoreSettings, SchedulerCore
from scheduler.models.cluster_state import ReplicaConfig
from scheduler.models.model_state import ModelState
from scheduler.persistence import MemoryStateStore, StateStore

MiB = 1024 * 1024
Kind = agent_pb2.ModelOperation
Event = agent_pb2.ModelEvent


@dataclass
class FakeReplica:
    core: SchedulerCore
    config: ReplicaConfig
    session: AgentSession
    # Models whose loads this replica fails, with the reason it gives.
    fail_loads: dict[str, str] = field(default_factory=dict)
    # Models whose load kills this replica's inference server, with the reason its agent gives: the agent reports
    # the server down, then the load failed with server_died_during_load (as a real agent does).
    kills_server: dict[str, str] = field(default_factory=dict)
    # When False the replica takes operations but does not answer them (a hung server).
    answering: bool = True
    loads: list[tuple[str, int]] = field(default_factory=list)
    unloads: list[tuple[str, int]] = field(default_factory=list)
    held: set[tuple[str, int]] = field(default_factory=set)
    drain_complete: list[agent_pb2.DrainComplete] = field(default_factory=list)
    rejected: list[agent_pb2.EventRejected] = field(default_factory=list)
    unanswered: list[agent_pb2.ModelOperation] = field(default_factory=list)

    def pump(self) -> int:
        """Answer every queued operation; returns how many messages were handled."""
        handled = 0
        while self.session.pending:
            message = self.session._outbox.get_nowait()
            if message is None:
                break
            handled += 1
            kind = message.WhichOneof("message")
            if kind == "drain_complete":
                self.drain_complete.append(message.drain_complete)
            elif kind == "event_rejected":
                self.rejected.append(message.event_rejected)
            elif kind == "operation":
                if self.answering:
                    self.answer(message.operation)
                else:
                    self.unanswered.append(message.operation)
        return handled

    def answer(self, operation: agent_pb2.ModelOperation) -> None:
        name, version = operation.model.meta.name, operation.version
        if operation.kind == Kind.KIND_LOAD:
            self.loads.append((name, version))
            if name in self.kills_server:
                self.server_down(self.kills_server[name])
                reason = f"the inference server is down: {self.kills_server[name]}"
                event = Event(kind=Event.KIND_LOAD_FAILED, reason=reason, server_died_during_load=True)
            elif name in self.fail_loads:
                event = Event(kind=Event.KIND_LOAD_FAILED, reason=self.fail_loads[name])
            else:
                self.held.add((name, version))
                event = Event(kind=Event.KIND_LOADED)
        else:
            self.unloads.append((name, version))
            self.held.discard((name, version))
            event = Event(kind=Event.KIND_UNLOADED)
        event.operation_id = operation.operation_id
        event.model_name, event.model_version = name, version
        rejected = self.core.agent_event(self.config, self.session, event)
        if rejected is not None:
            self.rejected.append(agent_pb2.EventRejected(model_name=name, model_version=version, reason=rejected))

    def server_down(self, reason: str) -> None:
        """Its inference server stopped serving: tell the scheduler (ServerHealth), as the agent would."""
        health = agent_pb2.ServerHealth(serving=False, reason=reason)
        self.core.agent_server_health(self.config, self.session, health)

    def server_serving(self, held: Iterable[tuple[str, int]] | None = None) -> None:
        """Its server serves again, holding ``held`` (default: everything it held before)."""
        if held is not None:
            self.held = set(held)
        loaded = [agent_pb2.LoadedModel(name=name, version=version) for name, version in sorted(self.held)]
        health = agent_pb2.ServerHealth(serving=True, loaded_models=loaded)
        self.core.agent_server_health(self.config, self.session, health)

    def disconnect(self) -> None:
        self.session.close("test disconnected the agent")
        self.core.agent_gone(self.config, self.session)

    def drain(self) -> None:
        self.core.agent_drain(self.config, self.session)


class Harness:
    def __init__(self, store: StateStore | None = None, *, sync_grace_seconds: float = 0.0) -> None:
        self.store = store or MemoryStateStore()
        self.core = SchedulerCore(self.store, CoreSettings(sync_grace_seconds=sync_grace_seconds))
        self.replicas: list[FakeReplica] = []

    async def __aenter__(self) -> Harness:
        await self.core.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.core.close()

    def add_replica(
        self,
        server: str = "mlserver",
        index: int = 0,
        *,
        memory: int = 1000 * MiB,
        capabilities: Iterable[str] = ("sklearn",),
        shared: bool = True,
        overcommit: int = 0,
        loaded: Iterable[tuple[str, int, int]] = (),
        server_down: str | None = None,
    ) -> FakeReplica:
        config = ReplicaConfig(
            server=server,
            index=index,
            shared=shared,
            capabilities=frozenset(capabilities),
            total_memory=memory,
            overcommit_percent=overcommit,
            http_url=f"http://127.0.0.1:1/{server}/{index}",
            grpc_target="127.0.0.1:1",
            agent_id=f"{server}-{index}",
        )
        session = AgentSession(config.agent_id)
        held = [agent_pb2.LoadedModel(name=n, version=v, memory_bytes=m) for n, v, m in loaded]
        replica = FakeReplica(self.core, config, session, held={(n, v) for n, v, _ in loaded})
        self.core.agent_registered(config, held, session, server_down=server_down)
        self.replicas.append(replica)
        return replica

    async def settle(self, rounds: int = 200) -> None:
        """Let reconciles run and replicas answer until nothing moves; check invariants throughout."""
        quiet = 0
        for _ in range(rounds):
            await asyncio.sleep(0)
            moved = sum(r.pump() for r in self.replicas)
            self.core.cluster.check_invariants()
            busy = moved or self.core.reconciler.busy
            quiet = 0 if busy else quiet + 1
            if quiet >= 3:
                return
        raise AssertionError("the scheduler did not settle")

    async def load(self, name: str, **spec: Any) -> pb.Model:
        """LoadModel with ``model_spec(name, **spec)``."""
        model = model_spec(name, **spec)
        await self.core.load_model(model)
        return model

    def status(self, name: str, *, all_versions: bool = False) -> pb.ModelStatusResponse:
        [status] = self.core.model_status(name, all_versions=all_versions)
        return status

    def state(self, name: str) -> ModelState:
        return ModelState(self.status(name).versions[-1].state.state)

    def placed_on(self, name: str, version: int | None = None) -> dict[int, str]:
        """replica index -> replica state name, for the latest (or given) version."""
        record = self.core.cluster.models[name]
        chosen = record.latest if version is None else record.version(version)
        assert chosen is not None
        return {index: a.state.name for (_server, index), a in chosen.replicas.items()}


def model_spec(
    name: str,
    *,
    uri: str = "gs://models/iris",
    replicas: int | None = 1,
    min_replicas: int = 0,
    max_replicas: int = 0,
    memory: int = 100 * MiB,
    requirements: Iterable[str] = ("sklearn",),
    server: str | None = None,
    generation: int = 0,
) -> pb.Model:
    spec = pb.ModelSpec(uri=uri, requirements=list(requirements), memoryBytes=memory)
    if server is not None:
        spec.server = server
    model = pb.Model(meta=pb.MetaData(name=name), modelSpec=spec)
    if generation:
        model.meta.kubernetesMeta.CopyFrom(pb.KubernetesMeta(namespace="default", generation=generation))
    if replicas is not None:
        model.deploymentSpec.CopyFrom(
            pb.DeploymentSpec(replicas=replicas, minReplicas=min_replicas, maxReplicas=max_replicas)
        )
    return model
