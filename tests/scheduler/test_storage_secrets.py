"""Storage credentials in model specs, in the scheduler (in process): the agent that loads gets them, nothing else.

The end-to-end search for a secret through every process's output is tests/e2e/test_secret_leaks.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from agent.artifacts.errors import ArtifactError
from agent.artifacts.storage_config import resolve_s3_settings
from generated.mlops.agent.v1 import agent_pb2
from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import InvalidArgument
from modelplane.storage_secrets import REDACTED_RCLONE_CONFIG
from scheduler.models.model_state import ModelState
from scheduler.persistence import MemoryStateStore
from tests.support.scheduler_harness import Harness, model_spec


def secret_config(secret: str) -> str:
    return (
        f'{{"secret_access_key": "{secret}", "access_key_id": "AKIDEXAMPLE", '
        '"type": "s3", "provider": "minio", "endpoint": "http://127.0.0.1:9"}'
    )


def with_inline_config(model: pb.Model, config: str) -> pb.Model:
    model.modelSpec.storageConfig.CopyFrom(pb.StorageConfig(storageRcloneConfig=config))
    return model


def stores(tables: dict[str, dict[str, bytes]], secret: str) -> bool:
    """True if any stored row holds ``secret``, raw or hex-encoded (model specs are stored as hex)."""
    rows = b"\n".join(key.encode() + b"=" + value for table in tables.values() for key, value in table.items())
    return secret.encode() in rows or secret.encode().hex().encode() in rows


async def test_status_redacts_the_inline_config_and_the_agent_still_gets_it() -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    tables: dict[str, dict[str, bytes]] = {}
    loads: list[agent_pb2.ModelOperation] = []
    async with Harness(MemoryStateStore(tables)) as h:
        replica = h.add_replica()
        replica.answering = False
        await h.core.load_model(with_inline_config(model_spec("iris"), secret_config(secret)))
        wine = model_spec("wine")
        wine.modelSpec.storageConfig.CopyFrom(pb.StorageConfig(storageSecretName="wine-store"))
        await h.core.load_model(wine)
        await h.settle()
        loads = list(replica.unanswered)
        statuses = [*h.core.model_status(None, all_versions=True)]
        async with h.core.subscribe_models("test") as stream:
            streamed = [await asyncio.wait_for(anext(stream), 5) for _ in range(2)]
    config = {s.modelName: s.versions[-1].modelDefn.modelSpec.storageConfig for s in statuses + streamed}
    assert config["iris"].WhichOneof("config") == "storageRcloneConfig"
    assert config["iris"].storageRcloneConfig == REDACTED_RCLONE_CONFIG
    assert config["wine"].storageSecretName == "wine-store"
    for message in statuses + streamed:
        assert secret.encode() not in message.SerializeToString()
    assert not stores(tables, secret)
    # The one place the config goes in clear: the operation that makes an agent load the model.
    [load] = [op for op in loads if op.model.meta.name == "iris"]
    assert secret in load.model.modelSpec.storageConfig.storageRcloneConfig


async def test_after_a_restart_the_config_is_withheld_until_a_load_gives_it_again() -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    tables: dict[str, dict[str, bytes]] = {}
    model = with_inline_config(model_spec("iris"), secret_config(secret))
    async with Harness(MemoryStateStore(tables)) as h:
        h.add_replica()
        await h.core.load_model(model)
        await h.settle()
    assert not stores(tables, secret)
    async with Harness(MemoryStateStore(tables)) as again:
        # A fresh replica: the model must load again, and the scheduler has no credentials to send.
        replica = again.add_replica()
        replica.answering = False
        await again.settle()
        [withheld] = replica.unanswered
        assert withheld.model.modelSpec.storageConfig.storageRcloneConfig == REDACTED_RCLONE_CONFIG
        replica.answering = True
        replica.fail_loads["iris"] = "the scheduler no longer holds the inline storageRcloneConfig"
        replica.answer(withheld)
        await again.settle()
        assert again.state("iris") == ModelState.FAILED
        # The client (a controller answering SEND_MODELS) sends the same LoadModel: same version, credentials back.
        del replica.fail_loads["iris"]
        await again.core.load_model(model)
        await again.settle()
        assert [v.version for v in again.core.cluster.models["iris"].versions] == [1]
        assert again.state("iris") == ModelState.AVAILABLE
        assert replica.loads[-1] == ("iris", 1)
    assert not stores(tables, secret)


async def test_a_changed_inline_config_is_still_a_new_version() -> None:
    async with Harness() as h:
        h.add_replica()
        await h.core.load_model(with_inline_config(model_spec("iris"), secret_config("one")))
        await h.core.load_model(with_inline_config(model_spec("iris"), secret_config("two")))
        await h.settle()
        assert [v.version for v in h.core.cluster.models["iris"].versions] == [2]


@pytest.mark.parametrize("bad", ["\x00", "\x1b", "\u2028"])
async def test_a_refused_inline_config_is_not_quoted(bad: str) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    async with Harness() as h:
        with pytest.raises(InvalidArgument) as refused:
            await h.core.load_model(with_inline_config(model_spec("iris"), secret_config(secret) + bad))
    assert "storageRcloneConfig" in str(refused.value)
    assert secret not in str(refused.value)
    assert "AKIDEXAMPLE" not in str(refused.value)


def test_an_agent_handed_the_marker_says_the_credentials_must_be_sent_again() -> None:
    with pytest.raises(ArtifactError, match="send the model's LoadModel again"):
        resolve_s3_settings(rclone_config=REDACTED_RCLONE_CONFIG, secret_name=None, secrets_dir=None, environ={})


async def test_a_load_that_quotes_the_marker_is_refused() -> None:
    async with Harness() as h:
        with pytest.raises(InvalidArgument, match="redaction marker"):
            await h.core.load_model(with_inline_config(model_spec("iris"), REDACTED_RCLONE_CONFIG))


async def test_only_a_load_operation_carries_the_config() -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    async with Harness() as h:
        replica = h.add_replica()
        await h.core.load_model(with_inline_config(model_spec("iris"), secret_config(secret)))
        await h.settle()
        replica.answering = False
        await h.core.unload_model("iris")
        await h.settle()
        [unload] = replica.unanswered
    assert unload.kind == agent_pb2.ModelOperation.KIND_UNLOAD
    assert unload.model.modelSpec.storageConfig.storageRcloneConfig == REDACTED_RCLONE_CONFIG


async def test_a_record_stored_with_credentials_in_clear_is_rewritten_redacted_at_start() -> None:
    """State written before credentials were redacted: the restart keeps them for loads, and stores them no more."""
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    model = with_inline_config(model_spec("iris"), secret_config(secret))
    version = {"version": 1, "created_at": 1.0, "spec": model.SerializeToString().hex()}
    stored = {"deleted": False, "versions": [version]}
    tables = {"models": {"iris": json.dumps(stored).encode()}}
    assert stores(tables, secret)  # the search finds it where it is
    async with Harness(MemoryStateStore(tables)) as h:
        replica = h.add_replica()
        replica.answering = False
        await h.settle()
        [load] = replica.unanswered
        assert secret in load.model.modelSpec.storageConfig.storageRcloneConfig
    assert not stores(tables, secret)
