"""What the registry shows of what the scheduler serves, without a scheduler: a state a stopped registry recorded is
never shown as current by the next one (SQLite and PostgreSQL), /openapi.json describes ``serving``, and the
scheduler's messages are reduced to a bounded record whatever they hold."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from generated.mlops.scheduler import scheduler_pb2 as pb
from registry.lifecycle import ModelState
from registry.ports import ServingState
from registry.scheduler_status_follower import report_of
from registry.store.tables import REASON_CHARS, ModelRow, ServingRow
from tests.registry.rows import add_model, open_store
from tests.support.processes import stop_process
from tests.support.registry_process import RegistryProcess, start_registry


def test_a_serving_state_recorded_before_a_restart_is_unknown_after_it(
    registry: RegistryProcess, database_url: str, tmp_path: Path
) -> None:
    assert registry.call("PUT", "/experiments/iris", {"srcpath": "iris.csv"}).status == 201
    store = open_store(database_url)
    try:
        model_id = add_model(store, "iris", ModelState.DEPLOYED)

        def served(session: Session) -> None:
            row = session.get(ModelRow, model_id)
            assert row is not None
            row.serving_name = "iris-served"
            session.add(ServingRow(name="iris-served", state="Available", reason="ModelAvailable", seen=1))

        store.write_now(served)  # what an earlier registry with a scheduler recorded
    finally:
        store.close()
    stop_process(registry.process)
    database = [f"--database={database_url}"] if database_url.startswith("postgresql") else []
    again = start_registry(tmp_path, *database, f"--datasets-root={tmp_path / 'datasets'}")
    try:
        status = again.call("GET", f"/experiments/iris/models/{model_id}/status").body
        assert status["status"] == "DEPLOYED"
        assert status["serving"]["name"] == "iris-served"
        assert status["serving"]["state"] == "Unknown", status  # not the stale Available
        assert "follows no scheduler" in status["serving"]["reason"]
        assert again.call("GET", f"/experiments/iris/models/{model_id}").body["serving"] == status["serving"]
        schemas = again.call("GET", "/openapi.json").body["components"]["schemas"]
        assert set(schemas["Serving"]["properties"]["state"]["enum"]) == {state.value for state in ServingState}
    finally:
        stop_process(again.process)


def test_scheduler_messages_become_bounded_records() -> None:
    nothing = report_of(pb.ModelStatusResponse(modelName="gone"))
    assert (nothing.name, nothing.state) == ("gone", ServingState.NOT_SERVED)
    long_reason = pb.ModelStatusResponse(modelName="m")
    long_reason.versions.add().state.CopyFrom(pb.ModelStatus(state=pb.ModelStatus.ModelFailed, reason="x" * 100_000))
    failed = report_of(long_reason)
    assert failed.state is ServingState.FAILED
    assert len(failed.reason) == REASON_CHARS
    odd = pb.ModelStatusResponse(modelName="m")
    odd.versions.add().state.state = pb.ModelStatus.ModelState.ValueType(
        99
    )  # a state number this build does not know: not claimed as served
    assert report_of(odd).state is ServingState.PROGRESSING
    unloaded = pb.ModelStatusResponse(modelName="m")
    unloaded.versions.add().state.state = pb.ModelStatus.ModelTerminated
    assert report_of(unloaded).state is ServingState.NOT_SERVED
