"""Seed 002's REST table, call by call, against a live `modelplane registry` on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.lifecycle import MODEL_TRANSITIONS, ModelAction, ModelState, SplitState
from registry.store.database import Store
from tests.registry import rows
from tests.support.processes import stop_process
from tests.support.registry_process import RegistryProcess, start_registry, wait_for_status

HOUSES = {"description": "house prices", "srcpath": "/houses.csv", "outcome": "price", "outcomeType": "double"}


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = rows.open_store(database_url)
    try:
        yield opened
    finally:
        opened.close()


def test_experiments_put_get_list_delete(registry: RegistryProcess) -> None:
    created = registry.call("PUT", "/experiments/houses", {**HOUSES, "directives": ["drop id"]})
    assert created.status == 201, created.body
    assert created.body["name"] == "houses"
    assert created.body["outcomeType"] == "double"
    again = registry.call("PUT", "/experiments/houses", HOUSES)  # the same values: no conflict
    assert again.status == 200
    assert again.body["directives"] == ["drop id"]
    described = registry.call("PUT", "/experiments/houses", {"description": "now with lots", "directives": []})
    assert described.status == 200
    assert described.body["description"] == "now with lots"

    got = registry.call("GET", "/experiments/houses")
    assert got.status == 200
    assert {key: got.body[key] for key in HOUSES} == {**HOUSES, "description": "now with lots"}
    assert got.body["directives"] == []
    assert isinstance(got.body["createtime"], int)

    # 409: srcpath, outcome or outcomeType already defined as another value; nothing changes.
    for field, other in (("srcpath", "/other.csv"), ("outcome", "rooms"), ("outcomeType", "string")):
        refused = registry.call("PUT", "/experiments/houses", {field: other})
        assert refused.status == 409, refused.body
        assert field in refused.error
        assert other in refused.error
    assert registry.call("GET", "/experiments/houses").body["srcpath"] == "/houses.csv"

    # Defined later is defining, not redefining.
    assert registry.call("PUT", "/experiments/bare", {}).status == 201
    assert registry.call("PUT", "/experiments/bare", {"outcome": "y"}).body["outcome"] == "y"
    assert registry.call("PUT", "/experiments/bare", {"outcome": "z"}).status == 409

    assert registry.call("DELETE", "/experiments/bare").status == 204
    assert registry.call("GET", "/experiments/bare").status == 404
    assert registry.call("DELETE", "/experiments/bare").status == 404
    assert "no experiment bare" in registry.call("GET", "/experiments/bare/models").error


def test_list_with_srcpath_offset_limit_and_the_total_header(registry: RegistryProcess) -> None:
    for index in range(7):
        srcpath = "/a.csv" if index % 2 == 0 else "/b.csv"
        assert registry.call("PUT", f"/experiments/e{index}", {"srcpath": srcpath}).status == 201

    everything = registry.call("GET", "/experiments")
    assert [doc["name"] for doc in everything.body] == [f"e{i}" for i in range(7)]
    assert everything.headers["x-total-count"] == "7"

    page = registry.call("GET", "/experiments?offset=2&limit=3")
    assert [doc["name"] for doc in page.body] == ["e2", "e3", "e4"]
    assert page.headers["x-total-count"] == "7"  # all of them, whatever the page
    past_the_end = registry.call("GET", "/experiments?offset=7&limit=3")
    assert past_the_end.body == []
    assert past_the_end.headers["x-total-count"] == "7"

    only_a = registry.call("GET", "/experiments?srcpath=/a.csv&offset=1&limit=2")
    assert [doc["name"] for doc in only_a.body] == ["e2", "e4"]
    assert only_a.headers["x-total-count"] == "4"
    assert all(doc["srcpath"] == "/a.csv" for doc in only_a.body)

    for bad in ("limit=0", "limit=1001", "offset=-1", "limit=ten", "offset=1.5"):
        answer = registry.call("GET", f"/experiments?{bad}")
        assert answer.status == 400, (bad, answer.body)
        assert "offset" in answer.error or "limit" in answer.error


def test_models_create_list_get_status_delete(registry: RegistryProcess, store: Store) -> None:
    assert registry.call("PUT", "/experiments/houses", HOUSES).status == 201
    first = registry.call("POST", "/experiments/houses/models", {"name": "tree", "directives": ["drop id"]})
    assert first.status == 201
    assert len(first.body["id"]) == 16
    second = registry.call("POST", "/experiments/houses/models", {"name": "forest", "description": "more trees"})
    assert second.status == 201

    listed = registry.call("GET", "/experiments/houses/models")
    assert listed.headers["x-total-count"] == "2"
    assert sorted(doc["name"] for doc in listed.body) == ["forest", "tree"]  # oldest first; ties by id
    tree = next(doc for doc in listed.body if doc["name"] == "tree")
    assert tree["status"] == "PREPARING"
    assert tree["directives"] == ["drop id"]
    assert tree["split"] is None
    assert "traintime" not in tree
    assert "deploytime" not in tree
    assert set(tree) >= {"id", "name", "description", "split", "algorithm", "hyperparameters"}
    assert set(tree) >= {"evaluationMetrics", "directives", "features", "createtime"}
    pages = [registry.call("GET", f"/experiments/houses/models?limit=1&offset={i}").body for i in range(2)]
    assert [page[0]["id"] for page in pages] == [doc["id"] for doc in listed.body]  # a stable order

    got = registry.call("GET", f"/experiments/houses/models/{first.body['id']}")
    assert got.status == 200
    assert got.body == tree
    status = registry.call("GET", f"/experiments/houses/models/{first.body['id']}/status")
    assert status.body == {"id": first.body["id"], "status": "PREPARING"}

    # A model made from an existing split starts where the split is (seed: "determined by split state").
    for split_state, model_state in (
        (SplitState.COMPLETE, "DATA_READY"),
        (SplitState.FAILED, "SPLIT_FAILED"),
        (SplitState.SPLITTING, "SPLITTING"),
    ):
        split_id = rows.add_split(store, "houses", split_state)
        made = registry.call("POST", "/experiments/houses/models", {"name": "from-split", "split": split_id})
        assert made.status == 201, made.body
        model = registry.call("GET", f"/experiments/houses/models/{made.body['id']}").body
        assert model["status"] == model_state
        assert model["split"] == split_id
        assert model["directives"] == ["drop id"]  # the split's

    both = registry.call("POST", "/experiments/houses/models", {"directives": [], "split": split_id})
    assert both.status == 400
    assert "not both" in both.error
    unknown_split = registry.call("POST", "/experiments/houses/models", {"split": "0123456789abcdef"})
    assert unknown_split.status == 400
    assert "no split" in unknown_split.error
    assert registry.call("POST", "/experiments/nowhere/models", {}).status == 404

    assert registry.call("DELETE", f"/experiments/houses/models/{first.body['id']}").status == 204
    assert registry.call("GET", f"/experiments/houses/models/{first.body['id']}").status == 404
    assert registry.call("GET", f"/experiments/houses/models/{first.body['id']}/status").status == 404
    assert registry.call("GET", "/experiments/houses/models/not-an-id").status == 404
    # A model of another experiment is not found through this one.
    assert registry.call("PUT", "/experiments/other", {}).status == 201
    assert registry.call("GET", f"/experiments/other/models/{second.body['id']}").status == 404


# What each model call answers when the lifecycle table allows it, in a registry with its split computation and
# trainer but no scheduler: the state check comes first, then the missing port (503).
CALLS: dict[ModelAction, tuple[str, str, object, int]] = {
    ModelAction.EDIT_DIRECTIVES: ("PUT", "directives", {"directives": ["drop size"]}, 200),
    ModelAction.UNASSIGN_SPLIT: ("DELETE", "split", None, 200),
    ModelAction.TRAIN: ("POST", "train", {"algorithm": "decision tree", "hyperparameters": {"max_depth": "3"}}, 202),
    ModelAction.DEPLOY: ("POST", "deploy", None, 503),
    ModelAction.SPLIT: ("POST", "split", {"type": "random", "parameters": {"percent": "80"}}, 201),
}
# Calls accepted and finished in the background: the states the model may be in once answered (there is no
# /houses.csv in the datasets root, nor the split files these rows name, so the split and the training fail).
IN_BACKGROUND: dict[ModelAction, set[str]] = {
    ModelAction.SPLIT: {"SPLITTING", "SPLIT_FAILED"},
    ModelAction.TRAIN: {"TRAINING", "TRAINING_FAILED"},
}


@pytest.mark.parametrize("action", list(CALLS))
def test_every_model_call_in_every_state_answers_by_the_lifecycle_table(
    registry: RegistryProcess, store: Store, action: ModelAction
) -> None:
    assert registry.call("PUT", "/experiments/houses", HOUSES).status == 201
    method, tail, body, allowed_status = CALLS[action]
    for state in ModelState:
        has_split = state not in (ModelState.PREPARING,)
        split_state = {ModelState.SPLIT_FAILED: SplitState.FAILED, ModelState.SPLITTING: SplitState.SPLITTING}.get(
            state, SplitState.COMPLETE
        )
        split_id = rows.add_split(store, "houses", split_state) if has_split else None
        model_id = rows.add_model(store, "houses", state, split_id)
        answer = registry.call(method, f"/experiments/houses/models/{model_id}/{tail}", body)
        after = rows.model_state(store, model_id)
        if (state, action) in MODEL_TRANSITIONS:
            assert answer.status == allowed_status, (state, answer.body)
            if allowed_status == 200:  # moved as the table says, and its split is gone with it
                assert after == MODEL_TRANSITIONS[(state, action)]
                assert answer.body["split"] is None
                assert split_id is None or not rows.split_exists(store, split_id)  # no other model used it
            elif action in IN_BACKGROUND:
                assert after in IN_BACKGROUND[action], (state, after)
            else:
                assert after == state.value, "a call refused for a missing port changed nothing"
        else:
            assert answer.status == 409, (state, action, answer.body)
            assert state.value in answer.error
            assert "allowed only in" in answer.error
            assert after == state.value


def test_split_calls(registry: RegistryProcess, store: Store) -> None:
    assert registry.call("PUT", "/experiments/bare", {}).status == 201
    no_srcpath = registry.call("POST", "/experiments/bare/splits", {"type": "first", "parameters": {"percent": 70}})
    assert no_srcpath.status == 409
    assert "srcpath" in no_srcpath.error
    assert registry.call("PUT", "/experiments/houses", HOUSES).status == 201
    # The split is computed in the background; /houses.csv is not in the datasets root, and its failure says so.
    made = registry.call("POST", "/experiments/houses/splits", {"type": "random", "parameters": {"percent": 80}})
    assert made.status == 201
    failed = wait_for_status(registry, f"/experiments/houses/splits/{made.body['id']}/status", {"COMPLETE", "FAILED"})
    assert failed["status"] == "FAILED"
    assert "houses.csv" in failed["reason"]
    assert registry.call("DELETE", f"/experiments/houses/splits/{made.body['id']}").status == 204
    listed = registry.call("GET", "/experiments/houses/splits")
    assert listed.body == []
    assert listed.headers["x-total-count"] == "0"

    complete = rows.add_split(store, "houses", SplitState.COMPLETE)
    computing = rows.add_split(store, "houses", SplitState.SPLITTING)
    ready = rows.add_model(store, "houses", ModelState.DATA_READY, complete)
    also_ready = rows.add_model(store, "houses", ModelState.DATA_READY, complete)

    listed = registry.call("GET", "/experiments/houses/splits")
    assert listed.headers["x-total-count"] == "2"
    by_id = {doc["id"]: doc for doc in listed.body}
    assert sorted(by_id[complete]["models"]) == sorted([ready, also_ready])
    assert by_id[complete]["trainingPath"] == "/splits/train.parquet"
    assert by_id[complete]["type"] == "random"
    assert "stats" not in by_id[complete]

    got = registry.call("GET", f"/experiments/houses/splits/{complete}")
    assert got.body["stats"] == [{"field": "size"}]
    assert got.body["parameters"] == {"percent": 80.0, "seed": 7}
    status = registry.call("GET", f"/experiments/houses/splits/{computing}/status")
    assert status.body == {"id": computing, "status": "SPLITTING"}
    assert registry.call("GET", "/experiments/houses/splits/0123456789abcdef").status == 404
    assert registry.call("GET", "/experiments/bare/splits/" + complete).status == 404

    # A split being computed is not deleted; one whose model may not lose it is not either.
    assert registry.call("DELETE", f"/experiments/houses/splits/{computing}").status == 409
    training = rows.add_model(store, "houses", ModelState.TRAINING, complete)
    refused = registry.call("DELETE", f"/experiments/houses/splits/{complete}")
    assert refused.status == 409
    assert "TRAINING" in refused.error
    assert rows.split_exists(store, complete)
    assert registry.call("DELETE", f"/experiments/houses/models/{training}").status == 204
    # Now every model using it may: they go back to PREPARING.
    assert registry.call("DELETE", f"/experiments/houses/splits/{complete}").status == 204
    assert rows.model_state(store, ready) == rows.model_state(store, also_ready) == "PREPARING"
    assert registry.call("GET", f"/experiments/houses/splits/{complete}").status == 404

    # Unassigning keeps a split another model still uses.
    shared = rows.add_split(store, "houses", SplitState.COMPLETE)
    one, two = (rows.add_model(store, "houses", ModelState.DATA_READY, shared) for _ in range(2))
    assert registry.call("DELETE", f"/experiments/houses/models/{one}/split").status == 200
    assert rows.split_exists(store, shared)
    assert registry.call("DELETE", f"/experiments/houses/models/{two}/split").status == 200
    assert not rows.split_exists(store, shared)

    # Deleting the experiment takes its splits and models with it.
    kept = rows.add_split(store, "houses", SplitState.COMPLETE)
    rows.add_model(store, "houses", ModelState.DATA_READY, kept)
    assert registry.call("DELETE", "/experiments/houses").status == 204
    assert not rows.split_exists(store, kept)


def test_openapi_describes_every_path_served(registry: RegistryProcess) -> None:
    document = registry.call("GET", "/openapi.json").body
    assert document["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, operations in document["paths"].items() for method in operations}
    seed_table = {
        ("/experiments", "GET"),
        ("/experiments/{name}", "GET"),
        ("/experiments/{name}", "PUT"),
        ("/experiments/{name}", "DELETE"),
        ("/experiments/{name}/splits", "GET"),
        ("/experiments/{name}/splits", "POST"),
        ("/experiments/{name}/splits/{split}", "GET"),
        ("/experiments/{name}/splits/{split}/status", "GET"),
        ("/experiments/{name}/splits/{split}", "DELETE"),
        ("/experiments/{name}/models", "POST"),
        ("/experiments/{name}/models", "GET"),
        ("/experiments/{name}/models/{model}/split", "POST"),
        ("/experiments/{name}/models/{model}/split", "DELETE"),
        ("/experiments/{name}/models/{model}/directives", "PUT"),
        ("/experiments/{name}/models/{model}/train", "POST"),
        ("/experiments/{name}/models/{model}", "DELETE"),
        ("/experiments/{name}/models/{model}/status", "GET"),
        ("/experiments/{name}/models/{model}/deploy", "POST"),
    }
    assert seed_table <= described
    put = document["paths"]["/experiments/{name}"]["put"]
    assert "409" in put["responses"]
    schema = document["components"]["schemas"]["ExperimentBody"]
    assert "outcomeType" in schema["properties"]
    assert schema["additionalProperties"] is False
    train = document["paths"]["/experiments/{name}/models/{model}/train"]["post"]
    assert train["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TrainBody")
    # Every path template with a method the table lists answers as the document says (no 405 for any).
    for path, method in described - {("/openapi.json", "GET")}:
        concrete = path.replace("{name}", "nowhere").replace("{split}", "0" * 16).replace("{model}", "0" * 16)
        answer = registry.call(method, concrete, {} if method in ("PUT", "POST") else None)
        assert answer.status != 405, (path, method)
        assert str(answer.status) in document["paths"][path][method.lower()]["responses"], (path, method, answer)


def test_a_restart_loses_nothing(tmp_path: Path) -> None:
    first = start_registry(tmp_path / "one", state_dir=tmp_path / "state")
    assert first.call("PUT", "/experiments/houses", HOUSES).status == 201
    model = first.call("POST", "/experiments/houses/models", {"name": "tree", "directives": ["drop id"]}).body["id"]
    assert stop_process(first.process) == 0
    second = start_registry(tmp_path / "two", state_dir=tmp_path / "state")
    try:
        assert second.call("GET", "/experiments/houses").body["srcpath"] == "/houses.csv"
        assert second.call("GET", f"/experiments/houses/models/{model}").body["directives"] == ["drop id"]
        assert (tmp_path / "state" / "registry.db").exists()  # the default store: SQLite in the state directory
    finally:
        stop_process(second.process)
