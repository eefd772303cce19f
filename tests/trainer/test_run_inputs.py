"""Algorithm selection, hyper-parameters, dataset fetching/parsing and the dataset's checks against the schema."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from generated.mlops.training.v1 import training_pb2
from tests.support import training_schemas as schemas
from trainer.run.algorithms import select_algorithm
from trainer.run.dataset_checks import check_dataset, dataset_stats, plan_columns
from trainer.run.datasets import DatasetLimits, fetch_bytes, load_dataset, parse_table
from trainer.run.design import Task, read_design
from trainer.run.errors import AlgorithmError, DatasetError, DatasetUnavailableError, DesignError, TrainingInputError
from trainer.run.fitting import split_rows, train
from trainer.run.jobs import DatasetSource
from trainer.run.preprocessing import compile_preprocessor
from trainer.run.s3_source import settings_from_env

# --- algorithms and hyper-parameters ----------------------------------------------------------------------------


def test_hyper_parameters_merge_with_the_algorithms_own_winning() -> None:
    schema = schemas.iris_multiclass_logistic(hyper={"max_iter": 300, "C": 0.5})
    schema.hyper_parameter.hyper_parameter["max_iter"].i32 = 50
    schema.hyper_parameter.hyper_parameter["tol"].flt = 0.001
    algorithm = select_algorithm(schema, Task.MULTICLASS)
    assert algorithm.hyper_parameters["max_iter"] == 300
    assert algorithm.hyper_parameters["C"] == pytest.approx(0.5)
    assert algorithm.hyper_parameters["tol"] == pytest.approx(0.001)
    estimator = algorithm.build(random_seed=9)
    assert estimator.max_iter == 300
    assert estimator.random_state == 9


def test_an_integer_is_accepted_for_a_float_and_random_state_is_kept() -> None:
    schema = schemas.iris_multiclass_logistic(algorithm="random_forest", hyper={"random_state": 4, "max_features": 2})
    schema.algorithm.classification.multiclass.random_forest.hyper_parameters.hyper_parameter["max_samples"].flt = 0.5
    estimator = select_algorithm(schema, Task.MULTICLASS).build(random_seed=9)
    assert estimator.random_state == 4
    assert estimator.max_features == 2
    assert estimator.max_samples == pytest.approx(0.5)
    schema = schemas.iris_multiclass_logistic(hyper={"C": 2})
    assert select_algorithm(schema, Task.MULTICLASS).build(0).C == 2.0


@pytest.mark.parametrize(
    ("algorithm", "hyper", "named"),
    [
        ("logistic_regression", {"max_depth": 3}, "'max_depth' is not accepted by multiclass/logistic_regression"),
        ("logistic_regression", {"n_jobs": 64}, "'n_jobs' is not accepted"),
        ("logistic_regression", {"max_iter": 1.5}, "'max_iter' of multiclass/logistic_regression got flt"),
        ("logistic_regression", {"max_iter": "100"}, "expected an integer (i32) in [1, 100000]"),
        ("logistic_regression", {"max_iter": 0}, "'max_iter' of multiclass/logistic_regression got 0"),
        ("logistic_regression", {"C": 0.0}, "'C' of multiclass/logistic_regression got 0; expected a number"),
        ("logistic_regression", {"C": -1}, "'C' of multiclass/logistic_regression got -1; expected a number"),
        ("logistic_regression", {"solver": "magic"}, "got 'magic'; expected one of ['lbfgs'"),
        ("logistic_regression", {"fit_intercept": 1}, "'fit_intercept' of multiclass/logistic_regression got i32"),
        ("logistic_regression", {"C": [1.0, 2.0]}, "'C' of multiclass/logistic_regression got a fvector"),
        ("logistic_regression", {"solver": ["a", "b"]}, "got a svector"),
        ("decision_tree", {"criterion": "squared_error"}, "'criterion'"),
        ("decision_tree", {"max_depth": 0}, "'max_depth'"),
        ("random_forest", {"n_estimators": 1_000_000}, "'n_estimators'"),
        ("random_forest", {"min_samples_split": 1.5}, "'min_samples_split'"),
        ("gbdt", {"learning_rate": 0.0}, "'learning_rate'"),
        ("gbdt", {"subsample": 1.5}, "'subsample'"),
        ("gbdt", {"max_features": "all"}, "'max_features'"),
    ],
)
def test_bad_hyper_parameters_are_named(algorithm: str, hyper: dict[str, Any], named: str) -> None:
    schema = schemas.iris_multiclass_logistic(algorithm=algorithm, hyper=hyper)
    with pytest.raises(AlgorithmError) as caught:
        select_algorithm(schema, Task.MULTICLASS)
    assert named in str(caught.value)


def test_an_empty_hyper_parameter_is_named() -> None:
    schema = schemas.iris_multiclass_logistic()
    schema.hyper_parameter.hyper_parameter["C"].SetInParent()
    with pytest.raises(AlgorithmError, match="'C' of multiclass/logistic_regression has no value"):
        select_algorithm(schema, Task.MULTICLASS)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["C", "max_iter", "tol", "solver", "fit_intercept", "l1_ratio", "bogus", ""]),
    value=st.one_of(
        st.text(max_size=20),
        st.booleans(),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
        st.floats(width=32),
        st.lists(st.floats(width=32), max_size=3),
    ),
)
def test_any_hyper_parameter_is_accepted_or_named(name: str, value: Any) -> None:
    schema = schemas.iris_multiclass_logistic(hyper={name: value} if not isinstance(value, list) or value else {})
    try:
        algorithm = select_algorithm(schema, Task.MULTICLASS)
    except AlgorithmError as exc:
        assert repr(name) in str(exc)
        return
    algorithm.build(0)  # accepted values build an estimator


def test_unsupported_output_kinds_and_mismatches() -> None:
    schema = schemas.linear_regression()
    schema.output.projection_schema.SetInParent()
    with pytest.raises(DesignError, match="projection_schema is not supported"):
        read_design(schema)
    schema = schemas.iris_binary(algorithm="gbdt")
    with pytest.raises(AlgorithmError, match=r"algorithm\.classification\.binary\.gbdt is a binary_classification"):
        select_algorithm(schema, Task.REGRESSION)


def test_gbdt_exponential_loss_on_three_classes_fails_naming_the_algorithm() -> None:
    schema = schemas.iris_multiclass_logistic(algorithm="gbdt", hyper={"loss": "exponential"})
    with pytest.raises(AlgorithmError, match="multiclass/gbdt could not fit"):
        train(schema, schemas.iris_frame())


# --- the design and the split ---------------------------------------------------------------------------------


def test_splits() -> None:
    design = read_design(schemas.linear_regression(first_rows_for_training=True, test_fraction=0.3))
    split = split_rows(10, design.split)
    assert split.train_indices.tolist() == list(range(7))
    assert split.test_indices.tolist() == [7, 8, 9]
    design = read_design(schemas.linear_regression(random_seed=1))
    first, second = split_rows(100, design.split), split_rows(100, design.split)
    assert first.test_indices.tolist() == second.test_indices.tolist()
    assert len(first.test_indices) == 20
    assert sorted({*first.train_indices, *first.test_indices}) == list(range(100))
    assert first.test_indices.tolist() != list(range(80, 100))
    with pytest.raises(DatasetError, match="1 rows: too few to split"):
        split_rows(1, design.split)


def test_the_first_rows_split_can_leave_a_single_class() -> None:
    # Iris is sorted by species: the first 30% hold setosa only.
    schema = schemas.iris_multiclass_logistic(first_rows_for_training=True, test_fraction=0.7)
    with pytest.raises(DatasetError, match="the training split holds a single class of 'species'"):
        train(schema, schemas.iris_frame())


def test_the_target_may_not_be_a_feature() -> None:
    schema = schemas.iris_multiclass_logistic(features=("sepal_length", "species"))
    with pytest.raises(DesignError, match="'species' is also a design input"):
        train(schema, schemas.iris_frame())


def test_binary_positive_label_must_be_a_class() -> None:
    with pytest.raises(DesignError, match=r"positive is 'yes', which is not a class .* \['0', '1'\]"):
        train(schemas.iris_binary(positive="yes"), schemas.iris_frame())


def test_binary_needs_two_classes_and_multiclass_its_dictionary() -> None:
    frame = schemas.iris_frame()
    with pytest.raises(DatasetError, match="exactly two classes in target column 'species'; found 3"):
        train(schemas.iris_binary(target="species"), frame)
    schema = schemas.iris_multiclass_logistic()
    del schema.output.classification_schema.multi_class.class_dictionary.element[2]
    with pytest.raises(DatasetError, match=r"classes not in .*class_dictionary: \['virginica'\]"):
        train(schema, frame)


# --- dataset checks ---------------------------------------------------------------------------------------------


def _plan(schema: training_pb2.ModelDesignSchema) -> tuple[Any, Task]:
    design = read_design(schema)
    return plan_columns(design, compile_preprocessor(schema)), design.task


def test_missing_columns_include_preprocessor_inputs_and_the_target() -> None:
    schema = schemas.iris_multiclass_logistic(features=("ratio", "sepal_length"), target="kind")
    schemas.add_preprocessor(schema, "petal_length / leaf_count", "ratio")
    plan, task = _plan(schema)
    assert plan.raw_features == ("leaf_count", "petal_length", "sepal_length")
    with pytest.raises(DatasetError) as caught:
        check_dataset(schemas.iris_frame(), plan, task, "iris.csv")
    assert "lacks the column(s) the model needs: leaf_count, kind" in str(caught.value)


def test_nulls_fail_naming_the_columns_and_counts() -> None:
    frame = schemas.iris_frame()
    frame.loc[[1, 5], "petal_width"] = np.nan
    frame.loc[7, "species"] = None
    plan, task = _plan(schemas.iris_multiclass_logistic())
    with pytest.raises(DatasetError, match=r"empty values in needed column\(s\): petal_width \(2 rows\), species \(1"):
        check_dataset(frame, plan, task, "iris.csv")
    frame = schemas.iris_frame()
    frame["unused"] = np.nan  # columns the model does not read may hold anything
    check_dataset(frame, plan, task, "iris.csv")


def test_mistyped_and_infinite_columns_are_named() -> None:
    frame = schemas.regression_frame(rows=20)
    frame["x2"] = ["n/a"] + [str(value) for value in frame["x2"][1:]]
    frame["y"] = frame["y"].astype(str)
    frame.loc[3, "y"] = "big"
    plan, task = _plan(schemas.linear_regression())
    with pytest.raises(DatasetError) as caught:
        check_dataset(frame, plan, task, "r.csv")
    assert "mistyped column(s), expected numbers: x2 (has 'n/a' at row 0), y (has 'big' at row 3)" in str(caught.value)
    frame = schemas.regression_frame(rows=20)
    frame.loc[2, "x3"] = np.inf
    with pytest.raises(DatasetError, match=r"infinite values in column\(s\): x3"):
        check_dataset(frame, plan, task, "r.csv")


def test_stats() -> None:
    frame = schemas.iris_frame()
    plan, task = _plan(schemas.iris_binary())
    stats = dataset_stats(frame, plan, task)
    assert stats["samples"] == 150
    assert stats["columns"] == 6
    assert stats["class_counts"] == {"0": 100, "1": 50}
    assert stats["nulls_by_column"] == {}
    features: Any = stats["features"]
    assert features["sepal_width"] == {
        "nulls": 0,
        "min": pytest.approx(2.0),
        "max": pytest.approx(4.4),
        "mean": pytest.approx(frame["sepal_width"].mean()),
    }


def test_stats_count_nulls_in_the_columns_the_model_does_not_read() -> None:
    frame = schemas.iris_frame()
    frame["notes"] = ["ok" if row % 3 else None for row in range(len(frame))]  # not a design column
    frame.loc[[4, 9], "species"] = None  # the multiclass target, unused by the binary design
    plan, task = _plan(schemas.iris_binary())
    check_dataset(frame, plan, task, "iris.csv")  # what the model reads is complete
    stats = dataset_stats(frame, plan, task)
    assert stats["nulls_by_column"] == {"species": 2, "notes": 50}


# --- fetching and parsing -------------------------------------------------------------------------------------

LIMITS = DatasetLimits()


def test_format_by_extension_then_magic(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    schemas.iris_frame().to_parquet(buffer, index=False)
    parquet = buffer.getvalue()
    assert parse_table(parquet, "iris.bin", "x", LIMITS)[0] == "parquet"
    assert parse_table(parquet, "iris.pq", "x", LIMITS)[0] == "parquet"
    csv = schemas.iris_frame().to_csv(index=False).encode()
    fmt, frame = parse_table(csv, "iris", "x", LIMITS)
    assert fmt == "csv"
    assert len(frame) == 150
    fmt, frame = parse_table(gzip.compress(csv), "iris.csv.gz", "x", LIMITS)
    assert fmt == "csv"
    assert list(frame.columns)[:2] == ["sepal_length", "sepal_width"]
    with pytest.raises(DatasetError, match="named as Parquet but does not start with the Parquet magic"):
        parse_table(csv, "iris.parquet", "x", LIMITS)
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        parse_table(b"PAR1 garbage", "iris.parquet", "x", LIMITS)


def test_limits(tmp_path: Path) -> None:
    path = schemas.write_iris_csv(tmp_path / "iris.csv")
    small = DatasetLimits(max_bytes=100)
    with pytest.raises(DatasetError, match="bytes; the limit is 100"):
        load_dataset(DatasetSource(path=str(path)), {}, small)
    with pytest.raises(DatasetError, match="more than 10 rows"):
        load_dataset(DatasetSource(path=str(path)), {}, DatasetLimits(max_rows=10))
    with pytest.raises(DatasetError, match="6 columns; the limit is 3"):
        load_dataset(DatasetSource(path=str(path)), {}, DatasetLimits(max_columns=3))
    loaded = load_dataset(DatasetSource(path=str(path)), {}, DatasetLimits(max_rows=150))
    assert len(loaded.frame) == 150
    assert loaded.size_bytes == path.stat().st_size


@pytest.mark.parametrize(
    ("source", "named"),
    [
        (DatasetSource(), "names neither a dataset path nor a dataset URL"),
        (DatasetSource(path="/a.csv", url="file:///a.csv"), "give exactly one"),
        (DatasetSource(path="relative.csv"), "must be absolute"),
        (DatasetSource(path="/"), "is a directory"),
        (DatasetSource(url="ftp://host/a.csv"), "unsupported scheme 'ftp'"),
        (DatasetSource(url="file://otherhost/a.csv"), "must name a local path"),
        (DatasetSource(url="s3://bucket-only"), "must name one object"),
        (DatasetSource(url="s3://bucket/key.csv"), "needs MODELPLANE_S3_ENDPOINT"),
        (DatasetSource(url="s3://key:secret@bucket/key.csv"), "s3://bucket/key.csv must not hold credentials"),
        (DatasetSource(url="http://[::1"), "malformed dataset URL"),
    ],
)
def test_bad_sources_are_named(source: DatasetSource, named: str) -> None:
    with pytest.raises(DatasetError) as caught:
        fetch_bytes(source, {}, DatasetLimits(timeout_seconds=2))
    assert named in str(caught.value)
    assert "secret" not in str(caught.value)
    assert "token=abc" not in str(caught.value)


def test_an_unreachable_source_is_unavailable_not_bad_input_and_named_without_secrets() -> None:
    source = DatasetSource(url="http://user:secret@127.0.0.1:1/a.csv?token=abc")
    with pytest.raises(DatasetUnavailableError) as caught:
        fetch_bytes(source, {}, DatasetLimits(timeout_seconds=2))
    assert not isinstance(caught.value, TrainingInputError)
    assert "fetching dataset http://127.0.0.1:1/a.csv" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert "token=abc" not in str(caught.value)


def test_s3_settings_from_the_environment() -> None:
    settings = settings_from_env(
        {"MODELPLANE_S3_ENDPOINT": "https://s3.local:9000", "MODELPLANE_S3_SECURE": "false", "AWS_REGION": "eu"}
    )
    assert settings.endpoint == "s3.local:9000"
    assert settings.secure is False
    assert settings.region == "eu"
    with pytest.raises(DatasetError, match="MODELPLANE_S3_SECURE must be true or false"):
        settings_from_env({"MODELPLANE_S3_ENDPOINT": "http://h:1", "MODELPLANE_S3_SECURE": "maybe"})
    with pytest.raises(DatasetError, match="set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        settings_from_env({"MODELPLANE_S3_ENDPOINT": "http://h:1", "AWS_ACCESS_KEY_ID": "k"})
    with pytest.raises(DatasetError, match="without a path"):
        settings_from_env({"MODELPLANE_S3_ENDPOINT": "http://h:1/some/path"})


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"a,b\n", "has no rows"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b'a,b\n1,"2\n', "not a readable CSV file"),
        (b"\x1f\x8bnot gzip", "not a readable gzip file"),
    ],
)
def test_bad_csv_is_named(data: bytes, named: str) -> None:
    with pytest.raises(DatasetError, match=named):
        parse_table(data, "d.csv", "d.csv", LIMITS)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_parse_or_fail_as_dataset_errors(data: bytes) -> None:
    for name in ("d.csv", "d.parquet", "d"):
        try:
            fmt, frame = parse_table(data, name, "fuzz", LIMITS)
        except DatasetError as exc:
            assert "fuzz" in str(exc)
            continue
        assert fmt in ("csv", "parquet")
        assert isinstance(frame, pd.DataFrame)
        assert len(frame) > 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["1.5", "x", "", "nan", "inf", "-3", "1e400"]), st.sampled_from(["a", "b", "1"])),
        min_size=1,
        max_size=12,
    )
)
def test_any_small_table_trains_or_fails_as_bad_input(rows: list[tuple[str, str]]) -> None:
    csv = "x1,x2,x3,y\n" + "".join(f"{value},1,2,{label}\n" for value, label in rows)
    _, frame = parse_table(csv.encode(), "t.csv", "t.csv", LIMITS)
    schema = schemas.iris_multiclass_logistic(features=("x1", "x2", "x3"), target="y")
    schema.output.classification_schema.multi_class.ClearField("class_dictionary")
    try:
        model = train(schema, frame, "t.csv")
    except TrainingInputError as exc:
        assert str(exc)
        return
    assert set(model.metrics) <= {"accuracy", "precision", "recall", "f1", "roc_auc"}


_BASES = {
    "multiclass": schemas.iris_multiclass_logistic().SerializeToString(),
    "binary": schemas.iris_binary(algorithm="decision_tree").SerializeToString(),
}


@settings(max_examples=150, deadline=None)
@given(base=st.sampled_from(sorted(_BASES)), tail=st.binary(min_size=1, max_size=120))
def test_any_mutated_schema_trains_or_fails_as_bad_input(base: str, tail: bytes) -> None:
    """A valid schema's bytes followed by random bytes: protobuf merges whatever parses over the valid fields."""
    schema = training_pb2.ModelDesignSchema()
    try:
        schema.ParseFromString(_BASES[base] + tail)
    except DecodeError:  # not a schema: read_schema's job (tested through run_job), nothing to train
        return
    try:
        model = train(schema, schemas.iris_frame(), "iris")
    except TrainingInputError as exc:
        assert str(exc)
        return
    assert model.features == tuple(schema.input.multivariate.design_input.element)


_SMALL: dict[str, dict[str, schemas.HyperParameterValue]] = {  # quick fits: many examples
    "logistic_regression": {"max_iter": 200},
    "decision_tree": {},
    "random_forest": {"n_estimators": 5},
    "gbdt": {"n_estimators": 5},
}


@settings(max_examples=80, deadline=None)
@given(
    features=st.lists(st.sampled_from([*schemas.IRIS_FEATURES, "species", "is_virginica", "", "nope"]), max_size=5),
    target=st.sampled_from(["species", "is_virginica", "sepal_length", "", "nope"]),
    test_fraction=st.floats(width=32),
    random_seed=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    first_rows=st.booleans(),
    algorithm=st.sampled_from(["logistic_regression", "decision_tree", "random_forest", "gbdt"]),
)
def test_any_design_trains_or_fails_as_bad_input(
    *, features: list[str], target: str, test_fraction: float, random_seed: int, first_rows: bool, algorithm: str
) -> None:
    schema = schemas.iris_multiclass_logistic(
        algorithm=algorithm,
        features=features,
        target=target,
        test_fraction=test_fraction,
        random_seed=random_seed,
        first_rows_for_training=first_rows,
        hyper=_SMALL[algorithm],
    )
    try:
        model = train(schema, schemas.iris_frame(), "iris")
    except TrainingInputError as exc:
        assert str(exc)
        return
    assert model.features == tuple(features)
    assert model.split.train_rows + model.split.test_rows == 150


def test_repeated_names_are_named() -> None:
    schema = schemas.iris_multiclass_logistic(features=("sepal_length", "petal_width", "sepal_length"))
    with pytest.raises(DesignError, match=r"names columns more than once: \['sepal_length'\]"):
        read_design(schema)
    with pytest.raises(DatasetError, match=r"has duplicate columns: \['a'\]"):
        parse_table(b"a, a ,b\n1,2,3\n", "d.csv", "d.csv", LIMITS)
