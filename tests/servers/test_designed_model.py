"""A trained model served with its design: the folder the trainer writes, read back as ServedModel.

The same folder served by a real MLServer is tested in test_adapters.py; here the request semantics (the two
input layouts, outputs, every bad request and bad folder) without a server.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import servers.designed_model
from servers.designed_model.served_model import (
    PREDICT,
    PREDICT_PROBA,
    InputTensor,
    ModelFolderError,
    RequestError,
    ServedModel,
)
from tests.support import training_schemas as schemas
from tests.support.designed_models import RAW_COLUMNS, expected_outputs, raw_rows, train_into
from trainer.run.jobs import METADATA_FILE
from trainer.run.serving_bundle import ENTRY_MODULE, RUNTIME_CLASS, RUNTIME_PACKAGE, SETTINGS_FILE


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("designed")
    return train_into(root, schemas.iris_designed(), schemas.write_iris_csv(root / "iris.csv"))


@pytest.fixture(scope="module")
def served(model_folder: Path) -> ServedModel:
    return ServedModel.load(model_folder)


# ---- the folder the trainer writes ---------------------------------------------------------------------------


def test_the_trainer_writes_settings_and_the_runtime_package(model_folder: Path) -> None:
    settings = json.loads((model_folder / SETTINGS_FILE).read_text())
    assert settings == {
        "implementation": RUNTIME_CLASS,
        "parameters": {"uri": "./model.joblib"},
        "inputs": [{"name": name, "datatype": "FP64", "shape": [-1]} for name in RAW_COLUMNS],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1, 1]},  # the binary labels are 0 and 1
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
            {"name": "score", "datatype": "FP64", "shape": [-1, 1]},
            {"name": "flag", "datatype": "FP64", "shape": [-1, 1]},
        ],
    }
    source = Path(servers.designed_model.__file__).parent
    shipped = sorted(path.name for path in (model_folder / RUNTIME_PACKAGE).iterdir())
    assert shipped == sorted(path.name for path in source.glob("*.py"))
    for name in shipped:
        assert (model_folder / RUNTIME_PACKAGE / name).read_bytes() == (source / name).read_bytes()
    entry = (source.parent / "designed_model_entry.py").read_bytes()
    assert (model_folder / f"{ENTRY_MODULE}.py").read_bytes() == entry
    assert f"{ENTRY_MODULE}.DesignedModelRuntime" == RUNTIME_CLASS


# ---- predictions ------------------------------------------------------------------------------------------


def test_the_input_columns_are_the_raw_columns_the_design_reads(served: ServedModel) -> None:
    assert served.input_columns == RAW_COLUMNS
    assert served.features == ("petal_area", "sepal_length", "wide")
    assert served.output_names == (PREDICT, PREDICT_PROBA, "score", "flag")


def test_named_columns_go_through_preprocessing_the_estimator_and_postprocessing(
    served: ServedModel, model_folder: Path
) -> None:
    columns = raw_rows()
    answer = served.predict([InputTensor(name, values) for name, values in columns.items()])
    expected = expected_outputs(model_folder, columns)
    assert list(answer) == [PREDICT, "score", "flag"]  # the default: predict and the postprocessing outputs
    for name, values in answer.items():
        np.testing.assert_array_equal(values, expected[name])
    assert set(answer[PREDICT].tolist()) == {0, 1}  # both classes occur: the check above can tell them apart


def test_one_matrix_in_input_column_order_answers_the_same(served: ServedModel, model_folder: Path) -> None:
    columns = raw_rows()
    matrix = np.column_stack([columns[name] for name in RAW_COLUMNS])
    answer = served.predict([InputTensor("input-0", matrix)], wanted=[PREDICT_PROBA, PREDICT])
    expected = expected_outputs(model_folder, columns)
    assert list(answer) == [PREDICT_PROBA, PREDICT]
    np.testing.assert_allclose(answer[PREDICT_PROBA], expected[PREDICT_PROBA])
    np.testing.assert_array_equal(answer[PREDICT], expected[PREDICT])


def test_columns_shaped_n_by_1_and_nested_lists_are_accepted(served: ServedModel) -> None:
    columns = {name: values[:5] for name, values in raw_rows().items()}
    flat = served.predict([InputTensor(name, values) for name, values in columns.items()])
    tall = served.predict([InputTensor(name, values.reshape(-1, 1).tolist()) for name, values in columns.items()])
    np.testing.assert_array_equal(flat[PREDICT], tall[PREDICT])


def test_a_regression_design_without_preprocessing_takes_its_design_inputs(tmp_path: Path) -> None:
    folder = train_into(tmp_path, schemas.linear_regression(), schemas.write_regression_csv(tmp_path / "r.csv"))
    model = ServedModel.load(folder)
    frame = schemas.regression_frame()
    matrix = frame[list(model.input_columns)].to_numpy(dtype=np.float64)
    assert model.input_columns == model.features
    assert model.output_names == (PREDICT,)
    answer = model.predict([InputTensor("x", matrix)])
    np.testing.assert_allclose(answer[PREDICT], joblib.load(folder / "model.joblib").predict(matrix))


# ---- bad requests ---------------------------------------------------------------------------------------------


def _named(**changes: Any) -> list[InputTensor]:
    columns: dict[str, Any] = {name: values[:3] for name, values in raw_rows().items()}
    columns.update(changes)
    return [InputTensor(name, values) for name, values in columns.items() if values is not None]


BAD_REQUESTS = [
    ([], "no inputs"),
    (_named(sepal_length=None), "missing ['sepal_length']"),
    (_named(petal_lenght=[1.0, 2.0, 3.0]), "unknown ['petal_lenght']"),
    (_named(sepal_length=[1.0, 2.0]), "different numbers of rows"),
    (_named(sepal_length=[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), "shape [N] or [N, 1], not [3, 2]"),
    (_named(sepal_length=["a", "b", "c"]), "'sepal_length' must hold numbers"),
    (_named(sepal_length=[1.0, float("nan"), 3.0]), "not a finite number"),
    (_named(sepal_length=[1.0, float("inf"), 3.0]), "not a finite number"),
    (_named(sepal_length=5.0), "not a single value"),
    ([InputTensor("m", np.zeros((3, 3)))], "has shape [3, 3]; send [N, 4]"),
    ([InputTensor("m", np.zeros((0, 4)))], "no rows"),
    ([InputTensor("m", np.zeros(4))], "has shape [4]; send [N, 4]"),
    ([InputTensor("sepal_length", [1.0]), InputTensor("sepal_length", [1.0])], "more than once"),
]


@pytest.mark.parametrize(("tensors", "message"), BAD_REQUESTS)
def test_bad_requests_are_refused_naming_the_problem(
    served: ServedModel, tensors: list[InputTensor], message: str
) -> None:
    with pytest.raises(RequestError) as caught:
        served.predict(tensors)
    assert message in str(caught.value)


def test_an_unknown_output_is_refused_naming_the_known_ones(served: ServedModel) -> None:
    with pytest.raises(RequestError, match=r"unknown output\(s\) \['proba'\]; this model has \['predict'"):
        served.predict(_named(), wanted=["proba"])


def test_a_preprocessing_failure_on_the_request_is_a_request_error(tmp_path: Path) -> None:
    schema = schemas.iris_binary(features=("log_width", "sepal_length"))
    schemas.add_preprocessor(schema, "log(petal_width)", "log_width")
    model = ServedModel.load(train_into(tmp_path, schema, schemas.write_iris_csv(tmp_path / "iris.csv")))
    with pytest.raises(RequestError, match=r"preprocessing failed: .*log\(petal_width\)"):
        model.predict([InputTensor("m", [[0.0, 5.0]])])  # log(0) is not finite


column_values = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    st.lists(st.lists(st.floats(width=32), min_size=0, max_size=5), max_size=4),
    st.lists(st.text(max_size=3), max_size=3),
    st.floats(),
    st.none(),
    st.text(max_size=5),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from([*RAW_COLUMNS, "input-0", "x", ""]), column_values),
        max_size=6,
    ),
    st.lists(st.sampled_from([PREDICT, PREDICT_PROBA, "score", "flag", "other"]), max_size=3),
)
def test_any_request_is_answered_or_refused_with_a_request_error(
    served: ServedModel, tensors: list[tuple[str, Any]], wanted: list[str]
) -> None:
    try:
        answer = served.predict([InputTensor(name, values) for name, values in tensors], wanted)
    except RequestError:
        return
    assert list(answer) == list(dict.fromkeys(wanted or [PREDICT, "score", "flag"]))
    rows = {len(values) for values in answer.values()}
    assert len(rows) == 1
    assert rows.pop() >= 1


def test_postprocessing_runs_only_when_its_outputs_are_asked_for(folder_copy: Path) -> None:
    broken = {"expressions": {"bad": "1 / (p0 - p0)"}, "constants": {}, "topological_order": ["bad"]}
    _rewrite_metadata(folder_copy, postprocessing=broken)
    model = ServedModel.load(folder_copy)
    assert set(model.predict(_named(), wanted=[PREDICT])) == {PREDICT}  # never computed, never in the way
    assert model.predict(_named(), wanted=[PREDICT_PROBA])[PREDICT_PROBA].shape == (3, 2)
    with pytest.raises(RequestError, match=r"postprocessing failed: .*bad"):
        model.predict(_named())  # the default outputs include the postprocessing's


def test_a_one_dimensional_input_must_be_named_like_its_column(tmp_path: Path) -> None:
    schema = schemas.linear_regression(features=("x1",))
    model = ServedModel.load(train_into(tmp_path, schema, schemas.write_regression_csv(tmp_path / "r.csv")))
    assert model.input_columns == ("x1",)
    assert model.predict([InputTensor("x1", [0.5, 1.5])])[PREDICT].shape == (2,)
    assert model.predict([InputTensor("anything", [[0.5], [1.5]])])[PREDICT].shape == (2,)  # [N, 1]: any name
    with pytest.raises(RequestError, match=r"input 'x2' has shape \[2\]; send \[N, 1\]"):
        model.predict([InputTensor("x2", [0.5, 1.5])])  # a wrongly named column is not taken for x1


# ---- bad folders ----------------------------------------------------------------------------------------------


@pytest.fixture
def folder_copy(model_folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_folder, copy)
    return copy


def _rewrite_metadata(folder: Path, **changes: Any) -> None:
    metadata = json.loads((folder / METADATA_FILE).read_text())
    metadata.update(changes)
    (folder / METADATA_FILE).write_text(json.dumps(metadata))


def test_an_altered_artifact_is_refused(folder_copy: Path) -> None:
    with (folder_copy / "model.joblib").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelFolderError, match=r"model\.joblib has SHA-256 .*, metadata\.json says"):
        ServedModel.load(folder_copy)


def test_a_folder_without_metadata_is_refused(folder_copy: Path) -> None:
    (folder_copy / METADATA_FILE).unlink()
    with pytest.raises(ModelFolderError, match=r"cannot read metadata\.json"):
        ServedModel.load(folder_copy / "model.joblib")  # the artifact's path works as well as the folder's


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"artifact": {"name": "../model.joblib"}}, "must be a plain file name"),
        ({"artifact": None}, "'artifact.name' is missing"),
        ({"features": []}, "'features' must be a non-empty list"),
        ({"features": ["petal_area", "sepal_length"]}, "2 'features', the estimator takes 3"),
        ({"classes": [0, 2]}, "differ from the estimator's classes_ [0, 1]"),
        ({"task": "clustering"}, "'task' must be one of"),
        ({"classes": ["one"]}, "needs 'classes'"),
        ({"preprocessing": [{"output": "x", "expression": "__import__('os')"}]}, "preprocessing step 1"),
        ({"preprocessing": [{"output": "x", "expression": "a", "constants": {"a": "1"}}]}, "must be a number"),
        ({"postprocessing": {"expressions": {"s": "p0"}, "topological_order": []}}, "non-empty list"),
        ({"postprocessing": {"expressions": {"s": "p0"}, "topological_order": ["s", "s"]}}, "more than once"),
        (
            {"postprocessing": {"expressions": {"a": "b + 1", "b": "p0"}, "topological_order": ["a", "b"]}},
            "puts 'a' before what it depends on: ['b']",
        ),
        ({"postprocessing": {"expressions": {"a": "p7"}, "topological_order": ["a"]}}, "unknown name(s) ['p7']"),
        ({"postprocessing": {"expressions": {"s s": "p0"}, "topological_order": ["s s"]}}, "not an identifier"),
    ],
)
def test_a_malformed_metadata_file_is_refused_naming_the_field(
    folder_copy: Path, changes: dict[str, Any], message: str
) -> None:
    _rewrite_metadata(folder_copy, **changes)
    with pytest.raises(ModelFolderError, match=re.escape(message)):
        ServedModel.load(folder_copy)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["preprocessing", "postprocessing", "features", "classes", "task", "artifact"]), json_values)
def test_any_metadata_field_value_loads_or_is_refused_as_a_folder_error(
    model_folder: Path, tmp_path_factory: pytest.TempPathFactory, field: str, value: Any
) -> None:
    copy = tmp_path_factory.mktemp("fuzzed") / "model"
    shutil.copytree(model_folder, copy)
    _rewrite_metadata(copy, **{field: value})
    try:
        model = ServedModel.load(copy)
    except ModelFolderError:
        return
    if field in ("preprocessing", "features", "postprocessing"):
        # What a request must hold (or what is computed from it) changed: a good request of the old design
        # is answered, or refused as a request error, never anything else.
        with contextlib.suppress(RequestError):
            model.predict(_named())
        return
    # classes, task and artifact that load are the ones that agree with the estimator: nothing changes.
    answer = model.predict(_named())
    assert {len(values) for values in answer.values()} == {3}
