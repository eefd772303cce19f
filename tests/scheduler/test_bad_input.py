"""Hypothesis: any LoadModel, ServerNotify or agent Register either works or is refused with
InvalidArgument; nothing else escapes, and the scheduler's invariants still hold afterwards."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import InvalidArgument
from scheduler.agent_service import replica_config
from tests.support.scheduler_harness import Harness

names = st.one_of(st.text(max_size=80), st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,70}\Z"))
counts = st.integers(min_value=0, max_value=2**32 - 1)

models = st.builds(
    lambda name, uri, replicas, minimum, maximum, memory, requirements, server, generation, workers: pb.Model(
        meta=pb.MetaData(name=name, kubernetesMeta=pb.KubernetesMeta(generation=generation)),
        modelSpec=pb.ModelSpec(
            uri=uri,
            memoryBytes=memory,
            requirements=requirements,
            server=server,
            modelRuntimeInfo=pb.ModelRuntimeInfo(mlserver=pb.MLServerModelSettings(parallelWorkers=workers)),
        ),
        deploymentSpec=pb.DeploymentSpec(replicas=replicas, minReplicas=minimum, maxReplicas=maximum),
    ),
    names,
    st.text(max_size=50),
    counts,
    counts,
    counts,
    st.integers(min_value=0, max_value=2**64 - 1),
    st.lists(st.text(max_size=10), max_size=5),
    names,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    counts,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(models, min_size=1, max_size=5))
def test_any_load_model_is_accepted_or_invalid(batch: list[pb.Model]) -> None:
    async def run() -> None:
        async with Harness() as h:
            h.add_replica(index=0, memory=2**40)
            for model in batch:
                try:
                    await h.core.load_model(model)
                except InvalidArgument as error:
                    assert str(error)
                else:
                    assert model.meta.name in h.core.cluster.models
            await h.settle()

    asyncio.run(run())


@given(
    st.builds(
        lambda version, server, index, memory, overcommit, capabilities, loaded: agent_pb2.Register(
            protocol_version=version,
            replica=agent_pb2.ReplicaConfig(
                server_name=server,
                replica_idx=index,
                total_memory_bytes=memory,
                over_commit_percentage=overcommit,
                capabilities=capabilities,
            ),
            loaded_models=loaded,
        ),
        st.integers(min_value=0, max_value=3),
        names,
        counts,
        st.integers(min_value=0, max_value=2**64 - 1),
        counts,
        st.lists(st.text(max_size=10), max_size=4),
        st.lists(
            st.builds(lambda n, v: agent_pb2.LoadedModel(name=n, version=v), names, counts),
            max_size=3,
        ),
    )
)
def test_any_register_is_accepted_or_invalid(register: agent_pb2.Register) -> None:
    try:
        config = replica_config(register)
    except InvalidArgument as error:
        assert str(error)
    else:
        assert config.server == register.replica.server_name
        assert 0 < config.total_memory <= 2**50


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.builds(lambda n, e, m: pb.ServerNotify(name=n, expectedReplicas=e, maxReplicas=m), names, counts, counts),
        max_size=4,
    )
)
def test_any_server_notify_is_accepted_or_invalid(servers: list[pb.ServerNotify]) -> None:
    async def run() -> None:
        async with Harness() as h:
            try:
                await h.core.notify_servers(servers, first_sync=True)
            except InvalidArgument as error:
                assert str(error)
                assert h.core.cluster.servers == {}  # all or nothing
            else:
                assert {s.name for s in servers} <= set(h.core.cluster.servers)
            await h.settle()

    asyncio.run(run())
