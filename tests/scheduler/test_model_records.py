"""Model records in the state store: the compact protobuf form, the JSON form earlier modelplanes wrote (a state dir
of theirs must open), a damaged record, and a round trip of anything a request can make."""

from __future__ import annotations

import hashlib
import inspect
import logging
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.state.v1 import state_pb2
from modelplane.storage_secrets import REDACTED_RCLONE_CONFIG, redacted_model
from scheduler.core import CoreSettings, SchedulerCore
from scheduler.models import model_specs
from scheduler.models.model_records import SPEC_RULES, ModelRecord, ModelVersion, spec_mark
from scheduler.persistence import MemoryStateStore, Put, SqliteStateStore
from tests.support.scheduler_harness import Harness, model_spec

# Records exactly as main (before the protobuf form) wrote them: ModelRecord.to_bytes() of the models in
# _main_models(), specs in hex inside JSON. MAIN_WINE_DELETED is "wine" being unloaded when main stopped.
MAIN_IRIS = (
    b'{"deleted":false,"versions":[{"version":2,"created_at":1764806400.25,"spec":"0a170a0469726973220f0a0b73656c'
    b'646f6e2d6d657368100212230a1367733a2f2f6d6f64656c732f697269732d76312207736b6c6561726e28808080051a020801"},'
    b'{"version":3,"created_at":1764806460.5,"spec":"0a170a0469726973220f0a0b73656c646f6e2d6d657368100312230a13'
    b'67733a2f2f6d6f64656c732f697269732d76322207736b6c6561726e28808080051a020801"}]}'
)
MAIN_WINE_DELETED = (
    b'{"deleted":true,"versions":[{"version":1,"created_at":1764806500.0,"spec":"0a060a0477696e65123a0a1073333a2f'
    b"2f6d6f64656c732f77696e651a100a0e61727469666163742d73746f72652207736b6c6561726e22077867626f6f7374288080401a"
    b'06080210011803"}]}'
)
MAIN_WINE = MAIN_WINE_DELETED.replace(b'"deleted":true', b'"deleted":false')  # all main wrote differently


def _main_models() -> dict[str, list[tuple[int, float, pb.Model]]]:
    """What MAIN_IRIS and MAIN_WINE hold: (version, created_at, spec) of each model."""
    iris = pb.Model(
        meta=pb.MetaData(name="iris", kubernetesMeta=pb.KubernetesMeta(namespace="seldon-mesh", generation=2)),
        modelSpec=pb.ModelSpec(uri="gs://models/iris-v1", requirements=["sklearn"], memoryBytes=10 << 20),
        deploymentSpec=pb.DeploymentSpec(replicas=1),
    )
    iris_3 = pb.Model()
    iris_3.CopyFrom(iris)
    iris_3.modelSpec.uri, iris_3.meta.kubernetesMeta.generation = "gs://models/iris-v2", 3
    wine = pb.Model(
        meta=pb.MetaData(name="wine"),
        modelSpec=pb.ModelSpec(
            uri="s3://models/wine",
            requirements=["sklearn", "xgboost"],
            memoryBytes=1 << 20,
            storageConfig=pb.StorageConfig(storageSecretName="artifact-store"),
        ),
        deploymentSpec=pb.DeploymentSpec(replicas=2, minReplicas=1, maxReplicas=3),
    )
    return {"iris": [(2, 1764806400.25, iris), (3, 1764806460.5, iris_3)], "wine": [(1, 1764806500.0, wine)]}


def test_a_record_main_wrote_reads_back_as_it_was() -> None:
    expected = _main_models()
    for stored, name, deleted in ((MAIN_IRIS, "iris", False), (MAIN_WINE_DELETED, "wine", True)):
        record = ModelRecord.from_bytes(name, stored)
        assert (record.name, record.deleted) == (name, deleted)
        assert _held(record) == expected[name]


def _held(record: ModelRecord) -> list[tuple[int, float, pb.Model]]:
    return [(v.version, v.created_at, v.spec) for v in record.versions]


async def test_a_model_is_stored_as_a_protobuf_record() -> None:
    tables: dict[str, dict[str, bytes]] = {}
    model = model_spec("iris")
    model.meta.kubernetesMeta.CopyFrom(pb.KubernetesMeta(namespace="seldon-mesh", generation=4))
    model.modelSpec.storageConfig.CopyFrom(pb.StorageConfig(storageRcloneConfig='{"type": "s3", "secret": "s"}'))
    async with Harness(MemoryStateStore(tables)) as h:
        await h.core.load_model(model)
        stored = tables["models"]["iris"]
        assert not stored.startswith(b"{"), stored[:80]  # not the JSON of earlier modelplanes
        record = state_pb2.ModelRecord.FromString(stored)
        [version] = record.versions
        assert (record.deleted, version.version) == (False, 4)
        assert version.created_at == h.core.cluster.models["iris"].latest.created_at
        # The spec as it may be stored: the inline storage config redacted, everything else as sent.
        assert pb.Model.FromString(version.spec) == redacted_model(model)
        assert b'"secret"' not in stored
        # What the scheduler holds is the spec as sent, credentials included, for the agent that loads it.
        assert h.core.cluster.models["iris"].latest.spec == model


async def test_a_state_dir_written_by_main_opens_and_each_record_moves_to_the_new_form_when_it_changes(
    tmp_path: Path,
) -> None:
    store = await SqliteStateStore.open(tmp_path)
    await store.apply([Put("models", "iris", MAIN_IRIS), Put("models", "wine", MAIN_WINE)])
    await store.close()
    expected = _main_models()

    store = await SqliteStateStore.open(tmp_path)
    core = SchedulerCore(store, CoreSettings(sync_grace_seconds=600))  # nothing placed or forgotten meanwhile
    try:
        await core.start()
        assert _held(core.cluster.models["iris"]) == expected["iris"]
        assert _held(core.cluster.models["wine"]) == expected["wine"]
        assert not core.cluster.models["wine"].deleted
        [status] = core.model_status("iris", all_versions=True)
        assert [v.modelDefn for v in status.versions] == [spec for _, _, spec in expected["iris"]]
        assert status.versions[-1].kubernetesMeta == pb.KubernetesMeta(namespace="seldon-mesh", generation=3)
        # A change writes the model in the new form; the other record stays as it was until it changes.
        changed = pb.Model()
        changed.CopyFrom(expected["iris"][-1][2])
        changed.deploymentSpec.replicas = 2
        await core.load_model(changed)
        rows = store.load("models")
        assert not rows["iris"].startswith(b"{")
        assert rows["wine"] == MAIN_WINE
    finally:
        await core.close()
        await store.close()

    store = await SqliteStateStore.open(tmp_path)
    core = SchedulerCore(store, CoreSettings(sync_grace_seconds=600))
    try:
        await core.start()
        iris = core.cluster.models["iris"]
        assert [(v.version, v.created_at) for v in iris.versions] == [(2, 1764806400.25), (3, 1764806460.5)]
        assert iris.latest.spec == changed
        assert _held(core.cluster.models["wine"]) == expected["wine"]
    finally:
        await core.close()
        await store.close()


async def test_a_damaged_record_is_skipped_and_kept_and_the_others_restored(caplog: pytest.LogCaptureFixture) -> None:
    good = ModelRecord("good", [ModelVersion(1, model_spec("good"), created_at=1.0)]).to_bytes()
    damaged = good[: len(good) // 2]  # cut short: the spec's length runs past the end
    not_a_spec = ModelRecord("odd", [ModelVersion(1, pb.Model(), created_at=1.0)]).to_bytes().replace(b"\x1a", b"\x1f")
    tables = {"models": {"good": good, "cut": damaged, "odd": not_a_spec, "junk": b"\xff\xfe\x00junk"}}
    with caplog.at_level(logging.ERROR):
        async with Harness(MemoryStateStore(tables)) as h:
            assert set(h.core.cluster.models) == {"good"}
            assert h.core.cluster.models["good"].latest.spec == model_spec("good")
    assert {"cut", "odd", "junk"} <= set(tables["models"])  # kept in the store for a fixed version to read
    for name in ("cut", "odd", "junk"):
        assert any(f"'{name}'" in record.getMessage() for record in caplog.records), name


_names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
_text = st.text(st.characters(codec="utf-8"), max_size=30)


@st.composite
def _models(draw: st.DrawFn, name: str) -> pb.Model:
    model = model_spec(
        name,
        uri=draw(st.sampled_from(["gs://models/a", "s3://b/c", "file:///x"])),
        replicas=draw(st.none() | st.integers(0, 5)),
        memory=draw(st.integers(0, 2**40)),
        requirements=draw(st.lists(st.sampled_from(["sklearn", "xgboost", "mlflow"]), unique=True)),
        server=draw(st.none() | st.just("mlserver")),
        generation=draw(st.integers(0, 2**32 - 1)),
    )
    for index, value in enumerate(draw(st.lists(_text, max_size=3))):
        model.modelSpec.parameters.append(pb.ParameterSpec(name=f"p{index}", value=value))
    config = draw(st.none() | st.just(REDACTED_RCLONE_CONFIG) | _text)
    if config is not None:
        model.modelSpec.storageConfig.storageRcloneConfig = config
    model.dataflowSpec.cleanTopicsOnDelete = draw(st.booleans())
    return model


@settings(max_examples=60, deadline=None)
@given(data=st.data(), name=_names, deleted=st.booleans(), count=st.integers(1, 3))
def test_any_record_reads_back_as_it_was_stored(data: st.DataObject, name: str, deleted: bool, count: int) -> None:
    versions = [
        ModelVersion(number, data.draw(_models(name)), created_at=data.draw(st.floats(0, 2e9)))
        for number in range(1, count + 1)
    ]
    record = ModelRecord(name, versions, deleted=deleted)
    stored = record.to_bytes()
    back = ModelRecord.from_bytes(name, stored)
    assert back.deleted == deleted
    assert [(v.version, v.created_at) for v in back.versions] == [(v.version, v.created_at) for v in versions]
    # What is stored is what may be shown: inline credentials redacted, nothing else changed.
    assert [v.spec for v in back.versions] == [redacted_model(v.spec) for v in versions]
    assert [v.spec_facts for v in back.versions] == [type(v.spec_facts).of(redacted_model(v.spec)) for v in versions]
    assert back.to_bytes() == stored


def test_stored_records_stay_small() -> None:
    """The form the store holds is the spec's own bytes and a few fields: no hex, no JSON around it."""
    model = model_spec("iris")
    record = ModelRecord("iris", [ModelVersion(1, model, created_at=1.0)])
    assert len(record.to_bytes()) <= model.ByteSize() + 20


def test_versions_made_alike_share_their_facts() -> None:
    one, two = (ModelVersion(1, model_spec(name), created_at=1.0) for name in ("a", "b"))
    assert one.spec_facts is two.spec_facts


def _count_spec_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the specs ``model_specs.validate_spec`` checks from now on."""
    checked: list[str] = []
    check = model_specs.validate_spec

    def counting(model: pb.Model) -> None:
        checked.append(model.meta.name)
        check(model)

    monkeypatch.setattr(model_specs, "validate_spec", counting)
    return checked


async def test_a_restart_does_not_check_again_the_specs_it_wrote_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every spec the scheduler holds passed the checks of a request; the records it wrote are restored without
    checking those specs again (100,000 of them cost ~1.5 s of a restart's CPU), and restored whole."""
    tables: dict[str, dict[str, bytes]] = {}
    async with Harness(MemoryStateStore(tables)) as h:
        for name in ("iris", "wine", "digits"):
            await h.core.load_model(model_spec(name))
        changed = model_spec("iris", uri="gs://models/iris-v2")
        await h.core.load_model(changed)  # a second version
    checked = _count_spec_checks(monkeypatch)
    async with Harness(MemoryStateStore(tables)) as h:
        assert checked == [], f"the restart checked again the specs it wrote: {checked}"
        assert set(h.core.cluster.models) == {"iris", "wine", "digits"}
        assert [v.spec for v in h.core.cluster.models["iris"].versions] == [model_spec("iris"), changed]
        h.core.check_invariants()


def _marked_record(name: str, spec: bytes, mark: int) -> bytes:
    version = state_pb2.ModelVersionRecord(version=1, created_at=1.0, spec=spec, checked=mark)
    return state_pb2.ModelRecord(versions=[version]).SerializeToString()


async def test_a_spec_not_marked_as_checked_under_today_s_rules_is_checked_in_full(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The mark spares a spec the checks only when it is the mark of those very bytes under today's rules: a spec
    damaged since it was marked, marked under other rules, or not marked is checked, and refused if it fails."""
    good = model_spec("good").SerializeToString()

    def bad(name: str) -> bytes:
        return model_spec(name, requirements=(" sklearn",)).SerializeToString()  # no request may name it so

    tables = {
        "models": {
            "good": _marked_record("good", good, spec_mark(good)),
            "damaged": _marked_record("damaged", bad("damaged"), spec_mark(model_spec("damaged").SerializeToString())),
            "older": _marked_record("older", bad("older"), zlib.crc32(bad("older"), SPEC_RULES + 1)),
            "unmarked": _marked_record("unmarked", bad("unmarked"), 0),
            "unmarked-good": _marked_record("unmarked-good", model_spec("unmarked-good").SerializeToString(), 0),
        }
    }
    checked = _count_spec_checks(monkeypatch)
    with caplog.at_level(logging.ERROR):
        async with Harness(MemoryStateStore(tables)) as h:
            assert sorted(checked) == ["damaged", "older", "unmarked", "unmarked-good"]
            assert set(h.core.cluster.models) == {"good", "unmarked-good"}
            h.core.check_invariants()
    assert set(tables["models"]) >= {"damaged", "older", "unmarked"}  # kept in the store, as every refused record
    for name in ("damaged", "older", "unmarked"):
        assert any(f"'{name}'" in record.getMessage() for record in caplog.records), name


async def test_a_record_written_before_the_mark_is_checked_once_then_written_again_marked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first restart after an upgrade checks the records an earlier scheduler wrote (no mark) in full and, when
    one passes whole, writes it again with the mark: the next restart does not check it. A record with a version
    left out stays in the store as it was, for a fixed version to read."""

    def unmarked(name: str, *specs: pb.Model) -> bytes:
        versions = [
            state_pb2.ModelVersionRecord(version=number, created_at=1.0, spec=spec.SerializeToString())
            for number, spec in enumerate(specs, start=1)
        ]
        return state_pb2.ModelRecord(versions=versions).SerializeToString()

    partly_bad = unmarked("partly", model_spec("partly", requirements=(" sklearn",)), model_spec("partly"))
    tables = {"models": {"iris": unmarked("iris", model_spec("iris")), "partly": partly_bad}}
    checked = _count_spec_checks(monkeypatch)
    async with Harness(MemoryStateStore(tables)) as h:
        assert sorted(checked) == ["iris", "partly", "partly"]
        assert [v.version for v in h.core.cluster.models["partly"].versions] == [2]
    # Closed: the write-behind is flushed.
    [iris] = state_pb2.ModelRecord.FromString(tables["models"]["iris"]).versions
    assert iris.checked == spec_mark(iris.spec)
    assert pb.Model.FromString(iris.spec) == model_spec("iris")
    assert tables["models"]["partly"] == partly_bad
    checked.clear()
    async with Harness(MemoryStateStore(tables)) as h:
        assert checked == ["partly", "partly"]
        assert h.core.cluster.models["iris"].latest.spec == model_spec("iris")


# What SPEC_RULES numbers: the code of the checks a stored spec passes. When this fingerprint changes, the rules may
# have changed: if they now refuse a spec they accepted before, add one to model_records.SPEC_RULES (the specs marked
# under the old number are then checked in full at the next restart); either way, set both values below anew.
RULES_FINGERPRINT = (1, "cbc08d47530e3b596356a8ad6a954c858653369d9ba13e0ad9eb0a50f893cd40")


def _rules_fingerprint() -> str:
    from modelplane.spec import limits, model_resources, names  # noqa: PLC0415 - what the fingerprint covers

    sources = [inspect.getsource(module) for module in (limits, names, model_resources)]
    sources += [
        inspect.getsource(function) for function in (model_specs.validate_spec, model_specs._validate_deployment)
    ]
    return hashlib.sha256("\n".join(sources).encode()).hexdigest()


def test_the_number_of_the_rules_follows_their_code() -> None:
    assert (SPEC_RULES, _rules_fingerprint()) == RULES_FINGERPRINT, (
        "the checks of a stored spec changed: if they refuse a spec they accepted before, add one to "
        "scheduler/models/model_records.py's SPEC_RULES; then set RULES_FINGERPRINT to the new values"
    )
