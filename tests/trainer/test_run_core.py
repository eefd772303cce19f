"""The training run end to end: ``python -m trainer.run.run_job JOB_DIR`` and its in-process twin ``execute``.

Datasets come from a mounted path, file://, a real S3 server (SeaweedFS, the session fixture) and a local
HTTP server; every failure must exit with the right code and name its cause in result.json.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from generated.mlops.training.v1 import training_pb2
from servers.launch.local import free_ports
from tests.support import training_schemas as schemas
from tests.support.real_components import ACCESS_KEY, SECRET_KEY, S3Server
from trainer.launchers.base import LaunchVerdict, verdict_for_exit_code
from trainer.launchers.image_build import SOURCE_PATHS
from trainer.launchers.kubernetes_manifest import PERMANENT_EXIT_CODES
from trainer.run.jobs import (
    DESIGN_SCHEMA_FILE,
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_SUCCESS,
    EXIT_UNAVAILABLE,
    METADATA_FILE,
    OUTPUT_DIR,
    RESULT_FILE,
    DatasetSource,
    RunResult,
    TrainingJob,
)
from trainer.run.run_job import execute, execute_with_exit_code

# The session's SeaweedFS (the s3_server fixture), shared with the other modules that use it.
pytest_plugins = ["tests.support.real_components"]

REPO = Path(__file__).resolve().parents[2]


def make_job(
    root: Path,
    schema: training_pb2.ModelDesignSchema,
    dataset: DatasetSource,
    artifact_name: str = "model.joblib",
) -> Path:
    job_dir = root / "job"
    job_dir.mkdir(parents=True, exist_ok=True)
    TrainingJob(run_id="run-1", event_id="event-1", dataset=dataset, artifact_name=artifact_name).write(job_dir)
    (job_dir / DESIGN_SCHEMA_FILE).write_bytes(schema.SerializeToString())
    return job_dir


def run_subprocess(job_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer.run.run_job", str(job_dir)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def metadata_of(job_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((job_dir / OUTPUT_DIR / METADATA_FILE).read_text())
    return loaded


def iris_csv(tmp_path: Path) -> Path:
    return schemas.write_iris_csv(tmp_path / "iris.csv")


# --- success, end to end -----------------------------------------------------------------------------------


def test_multiclass_iris_through_the_subprocess(tmp_path: Path) -> None:
    dataset = iris_csv(tmp_path)
    job_dir = make_job(tmp_path, schemas.iris_multiclass_logistic(), DatasetSource(path=str(dataset)))
    completed = run_subprocess(job_dir)
    assert completed.returncode == EXIT_SUCCESS, completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr

    result = RunResult.read(job_dir)
    assert result.succeeded
    assert result.errors == []
    assert result.metrics["accuracy"] > 0.9
    assert set(result.metrics) == {"accuracy", "precision", "recall", "f1", "roc_auc"}

    artifact = job_dir / OUTPUT_DIR / "model.joblib"
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert result.artifact_sha256 == digest
    metadata = metadata_of(job_dir)
    assert metadata["artifact"]["sha256"] == digest
    assert metadata["artifact"]["size_bytes"] == artifact.stat().st_size
    assert metadata["features"] == list(schemas.IRIS_FEATURES)
    assert metadata["artifact"]["input"] == {"dtype": "float64", "columns": list(schemas.IRIS_FEATURES)}
    assert metadata["classes"] == list(schemas.IRIS_CLASSES)
    assert metadata["metrics"] == result.metrics
    assert metadata["design_schema"]["design_token"]["value"] == "iris-lr"
    assert metadata["framework_versions"]["scikit-learn"] == "1.9.1"
    assert set(metadata["framework_versions"]) == {"python", "scikit-learn", "numpy", "pandas", "joblib"}
    assert metadata["split"] == {
        "method": "random",
        "test_fraction": pytest.approx(0.2),
        "random_seed": 7,
        "train_rows": 120,
        "test_rows": 30,
    }
    stats = metadata["dataset"]["stats"]
    assert stats["samples"] == 150
    assert stats["class_counts"] == {"setosa": 50, "versicolor": 50, "virginica": 50}
    assert stats["features"]["petal_length"]["min"] == pytest.approx(1.0)
    assert stats["features"]["petal_length"]["max"] == pytest.approx(6.9)
    assert stats["features"]["sepal_length"]["nulls"] == 0
    assert metadata["dataset"]["sha256"] == hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert metadata["started_at"] <= metadata["finished_at"]

    logistic = metadata["fitted_parameters"]["logistic_regression"]
    assert logistic["classes_"] == list(schemas.IRIS_CLASSES)
    assert len(logistic["coef_"]) == 3 * 4
    assert len(logistic["intercept_"]) == 3
    assert int(logistic["n_features_in_"]) == 4

    # The artifact is the plain estimator: it loads without modelplane's code and predicts from the features.
    estimator = joblib.load(artifact)
    frame = schemas.iris_frame()
    features = frame[list(schemas.IRIS_FEATURES)].to_numpy(dtype=np.float64)
    predictions = estimator.predict(features)
    assert (predictions == frame[schemas.IRIS_TARGET].to_numpy()).mean() > 0.95
    coef = np.asarray(logistic["coef_"]).reshape(3, 4)
    np.testing.assert_allclose(coef, estimator.coef_)


def test_the_in_process_run_matches_a_direct_fit(tmp_path: Path) -> None:
    dataset = schemas.write_regression_csv(tmp_path / "reg.csv")
    schema = schemas.linear_regression(first_rows_for_training=True, test_fraction=0.25)
    job_dir = make_job(tmp_path, schema, DatasetSource(url=dataset.as_uri()))
    result = execute(job_dir)
    assert result.succeeded, result.errors
    assert RunResult.read(job_dir) == result

    frame = schemas.regression_frame()
    direct = LinearRegression().fit(frame[list(schemas.REGRESSION_FEATURES)].to_numpy()[:150], frame["y"][:150])
    trained = joblib.load(job_dir / OUTPUT_DIR / "model.joblib")
    np.testing.assert_allclose(trained.coef_, direct.coef_)
    np.testing.assert_allclose(trained.coef_, schemas.REGRESSION_COEFFICIENTS, atol=0.05)
    metadata = metadata_of(job_dir)
    assert metadata["split"]["method"] == "first_rows"
    assert metadata["split"]["train_row_range"] == [0, 150]
    assert metadata["split"]["test_rows"] == 50
    assert set(result.metrics) == {"rmse", "mae", "r2"}
    assert result.metrics["r2"] > 0.99
    assert metadata["dataset"]["stats"]["target_stats"]["min"] < metadata["dataset"]["stats"]["target_stats"]["max"]


def test_a_split_made_before_the_run_is_used_as_given(tmp_path: Path) -> None:
    """The registry's split: the training rows in one file, the test rows in another; the schema's criteria (here
    a random 0.2) are not used, and the metrics are those of exactly the given test rows."""
    frame = schemas.regression_frame()
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    train_rows, test_rows = shuffled.iloc[:130], shuffled.iloc[130:]
    train_path, test_path = tmp_path / "train.parquet", tmp_path / "test.parquet"
    train_rows.to_parquet(train_path, index=False)
    test_rows.to_parquet(test_path, index=False)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    TrainingJob(
        run_id="run-1",
        event_id="event-1",
        dataset=DatasetSource(path=str(train_path)),
        artifact_name="model.joblib",
        test_dataset=DatasetSource(path=str(test_path)),
    ).write(job_dir)
    (job_dir / DESIGN_SCHEMA_FILE).write_bytes(schemas.linear_regression(test_fraction=0.2).SerializeToString())
    result = execute(job_dir)
    assert result.succeeded, result.errors

    features = list(schemas.REGRESSION_FEATURES)
    direct = LinearRegression().fit(train_rows[features].to_numpy(), train_rows["y"])
    trained = joblib.load(job_dir / OUTPUT_DIR / "model.joblib")
    np.testing.assert_allclose(trained.coef_, direct.coef_)
    errors = direct.predict(test_rows[features].to_numpy()) - test_rows["y"].to_numpy()
    assert result.metrics["mae"] == pytest.approx(float(np.mean(np.abs(errors))))
    metadata = metadata_of(job_dir)
    assert (metadata["split"]["method"], metadata["split"]["train_rows"], metadata["split"]["test_rows"]) == (
        "given",
        130,
        70,
    )
    assert metadata["test_dataset"]["sha256"] == hashlib.sha256(test_path.read_bytes()).hexdigest()
    assert metadata["dataset"]["sha256"] == hashlib.sha256(train_path.read_bytes()).hexdigest()

    # Halves whose columns differ are refused by name, as bad input.
    test_rows.drop(columns=["x1"]).to_parquet(test_path, index=False)
    refused, code = execute_with_exit_code(job_dir)
    assert (refused.succeeded, code) == (False, EXIT_BAD_INPUT)
    assert "other columns than the training dataset" in refused.errors[0]


def test_binary_uses_the_positive_label(tmp_path: Path) -> None:
    dataset = iris_csv(tmp_path)
    job_dir = make_job(tmp_path, schemas.iris_binary(), DatasetSource(path=str(dataset)))
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_SUCCESS, result.errors
    metadata = metadata_of(job_dir)
    assert metadata["fitted_parameters"]["positive_class"] == 1
    assert metadata["task"] == "binary_classification"
    assert metadata["dataset"]["stats"]["class_counts"] == {"0": 100, "1": 50}
    assert result.metrics["roc_auc"] > 0.9


@pytest.mark.parametrize("algorithm", ["logistic_regression", "decision_tree", "random_forest", "gbdt"])
@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_each_classifier_trains(tmp_path: Path, algorithm: str, kind: str) -> None:
    build = schemas.iris_binary if kind == "binary" else schemas.iris_multiclass_logistic
    job_dir = make_job(tmp_path, build(algorithm=algorithm), DatasetSource(path=str(iris_csv(tmp_path))))
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_SUCCESS, result.errors
    assert result.metrics["accuracy"] > 0.85
    metadata = metadata_of(job_dir)
    assert metadata["algorithm"] == f"{kind}/{algorithm}"
    if algorithm != "logistic_regression":
        assert set(metadata["fitted_parameters"]["feature_importances_"]) == set(schemas.IRIS_FEATURES)
        assert metadata["hyper_parameters"] == {"random_state": 0}


@pytest.mark.parametrize("algorithm", ["linear_regression", "decision_tree", "random_forest", "gbdt"])
def test_each_regressor_trains(tmp_path: Path, algorithm: str) -> None:
    dataset = schemas.write_regression_parquet(tmp_path / "reg.parquet")
    job_dir = make_job(tmp_path, schemas.linear_regression(algorithm=algorithm), DatasetSource(path=str(dataset)))
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_SUCCESS, result.errors
    assert result.metrics["r2"] > 0.9
    assert metadata_of(job_dir)["dataset"]["format"] == "parquet"


def test_parquet_and_csv_train_the_same_model(tmp_path: Path) -> None:
    csv_dir, parquet_dir = tmp_path / "csv", tmp_path / "parquet"
    csv_dir.mkdir()
    parquet_dir.mkdir()
    # No extension on the Parquet file: the format is found by its magic bytes.
    parquet = schemas.write_iris_parquet(parquet_dir / "iris.data")
    results = [
        execute(make_job(csv_dir, schemas.iris_multiclass_logistic(), DatasetSource(path=str(iris_csv(csv_dir))))),
        execute(make_job(parquet_dir, schemas.iris_multiclass_logistic(), DatasetSource(path=str(parquet)))),
    ]
    assert results[0].succeeded
    assert results[1].succeeded
    assert results[0].metrics == pytest.approx(results[1].metrics)
    assert metadata_of(csv_dir / "job")["dataset"]["format"] == "csv"
    assert metadata_of(parquet_dir / "job")["dataset"]["format"] == "parquet"


def test_preprocessing_and_postprocessing_are_recorded(tmp_path: Path) -> None:
    job_dir = make_job(tmp_path, schemas.iris_designed(), DatasetSource(path=str(iris_csv(tmp_path))))
    result = execute(job_dir)
    assert result.succeeded, result.errors
    metadata = metadata_of(job_dir)
    assert [step["output"] for step in metadata["preprocessing"]] == ["petal_area", "wide"]
    assert metadata["preprocessing"][0]["constants"] == {"scale": 1.0}
    # Only the raw columns the expressions and the remaining design inputs read are dataset features.
    assert set(metadata["dataset"]["stats"]["features"]) == {
        "petal_length",
        "petal_width",
        "sepal_width",
        "sepal_length",
    }
    post = metadata["postprocessing"]
    assert post["topological_order"] == ["score", "flag"]
    assert "p_0" in post["variables"]
    assert "p1" in post["variables"]
    assert 0.0 <= post["test_outputs"]["score"]["min"] <= post["test_outputs"]["score"]["max"] <= 100.0
    assert post["test_outputs"]["flag"]["max"] in (0.0, 1.0)
    estimator = joblib.load(job_dir / OUTPUT_DIR / "model.joblib")
    assert estimator.n_features_in_ == 3


# --- datasets from S3 and HTTP -------------------------------------------------------------------------------


def s3_env(s3_server: S3Server, secret_key: str = SECRET_KEY) -> dict[str, str]:
    return {
        "MODELPLANE_S3_ENDPOINT": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "MODELPLANE_S3_SECURE": "false",
    }


def test_dataset_from_s3_through_the_subprocess(s3_server: S3Server, tmp_path: Path) -> None:
    data = iris_csv(tmp_path).read_bytes()
    bucket = s3_server.new_bucket({"datasets/iris.csv": data})
    job_dir = make_job(
        tmp_path, schemas.iris_multiclass_logistic(), DatasetSource(url=f"s3://{bucket}/datasets/iris.csv")
    )
    completed = run_subprocess(job_dir, s3_env(s3_server))
    assert completed.returncode == EXIT_SUCCESS, completed.stderr
    metadata = metadata_of(job_dir)
    assert metadata["dataset"]["origin"] == f"s3://{bucket}/datasets/iris.csv"
    assert metadata["dataset"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_s3_failures_name_the_cause(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket({"iris.csv": iris_csv(tmp_path).read_bytes()})
    schema = schemas.iris_multiclass_logistic()

    job_dir = make_job(tmp_path / "missing", schema, DatasetSource(url=f"s3://{bucket}/nope.csv"))
    result, code = execute_with_exit_code(job_dir, s3_env(s3_server))
    assert code == EXIT_BAD_INPUT
    assert f"s3://{bucket}/nope.csv" in result.errors[0]
    assert "does not exist" in result.errors[0]

    job_dir = make_job(tmp_path / "secret", schema, DatasetSource(url=f"s3://{bucket}/iris.csv"))
    result, code = execute_with_exit_code(job_dir, s3_env(s3_server, secret_key="wrong-secret-key-000"))  # noqa: S106
    assert code == EXIT_BAD_INPUT
    assert "refused" in result.errors[0]
    assert "wrong-secret" not in result.errors[0]

    result, code = execute_with_exit_code(job_dir, {})
    assert code == EXIT_BAD_INPUT
    assert "MODELPLANE_S3_ENDPOINT" in result.errors[0]


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}  # each server gets its own subclass with its own dict

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self.files.get(path)
        if path == "/overloaded":
            self.send_response(503)
            self.end_headers()
            return
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def http_files() -> Iterator[tuple[str, dict[str, bytes]]]:
    files: dict[str, bytes] = {}
    handler = type("Handler", (_Handler,), {"files": files})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", files
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_dataset_over_http(tmp_path: Path, http_files: tuple[str, dict[str, bytes]]) -> None:
    base, files = http_files
    files["/data/iris.csv"] = iris_csv(tmp_path).read_bytes()
    job_dir = make_job(tmp_path, schemas.iris_multiclass_logistic(), DatasetSource(url=f"{base}/data/iris.csv?x=1"))
    result = execute(job_dir)
    assert result.succeeded, result.errors
    assert metadata_of(job_dir)["dataset"]["origin"] == f"{base}/data/iris.csv"  # no query string recorded

    job_dir = make_job(tmp_path / "404", schemas.iris_multiclass_logistic(), DatasetSource(url=f"{base}/gone.csv"))
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_BAD_INPUT
    assert "HTTP 404" in result.errors[0]
    assert "/gone.csv" in result.errors[0]


def test_an_unreachable_dataset_store_is_retryable_not_bad_input(
    tmp_path: Path, http_files: tuple[str, dict[str, bytes]]
) -> None:
    """S3 or an http server that is down, or answers 5xx, is the infrastructure's fault: the run exits with
    EXIT_UNAVAILABLE, which launchers retry, and says what it could not reach. The same event trains later."""
    schema = schemas.iris_multiclass_logistic()
    [closed] = free_ports(1)
    down = {
        "MODELPLANE_S3_ENDPOINT": f"http://127.0.0.1:{closed}",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    base, _ = http_files
    cases = [
        (DatasetSource(url="s3://datasets/iris.csv"), down, f"from http://127.0.0.1:{closed} failed: cannot connect"),
        (DatasetSource(url=f"http://127.0.0.1:{closed}/iris.csv"), {}, f"http://127.0.0.1:{closed}/iris.csv failed"),
        (DatasetSource(url=f"{base}/overloaded"), {}, "HTTP 503"),
    ]
    for number, (source, environ, named) in enumerate(cases):
        job_dir = make_job(tmp_path / str(number), schema, source)
        result, code = execute_with_exit_code(job_dir, environ)
        assert (code, verdict_for_exit_code(code)) == (EXIT_UNAVAILABLE, LaunchVerdict.FAILED_RETRYABLE), result
        assert named in result.errors[0]
        assert SECRET_KEY not in result.errors[0]
    assert verdict_for_exit_code(EXIT_BAD_INPUT) is LaunchVerdict.FAILED_PERMANENTLY
    assert EXIT_UNAVAILABLE not in PERMANENT_EXIT_CODES  # a Kubernetes Job retries it too


# --- failures: exit codes and causes -------------------------------------------------------------------------


def test_missing_columns_are_all_named_by_the_subprocess(tmp_path: Path) -> None:
    schema = schemas.iris_multiclass_logistic(features=("sepal_length", "colour", "weight"))
    job_dir = make_job(tmp_path, schema, DatasetSource(path=str(iris_csv(tmp_path))))
    completed = run_subprocess(job_dir)
    assert completed.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in completed.stdout + completed.stderr
    result = RunResult.read(job_dir)
    assert not result.succeeded
    assert "colour" in result.errors[0]
    assert "weight" in result.errors[0]
    assert not (job_dir / OUTPUT_DIR / "model.joblib").exists()


def test_mistyped_column_is_named(tmp_path: Path) -> None:
    frame = schemas.iris_frame()
    frame["sepal_width"] = frame["sepal_width"].astype(str)
    frame.loc[3, "sepal_width"] = "wide"
    dataset = tmp_path / "iris.csv"
    frame.to_csv(dataset, index=False)
    job_dir = make_job(tmp_path, schemas.iris_multiclass_logistic(), DatasetSource(path=str(dataset)))
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_BAD_INPUT
    assert "mistyped" in result.errors[0]
    assert "sepal_width" in result.errors[0]
    assert "'wide'" in result.errors[0]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s.algorithm.ClearField("cortex_model_algorithm_is"), "no algorithm set"),
        (
            lambda s: s.algorithm.classification.multiclass.ClearField("multiclass_classification_model_sub_type_is"),
            "no model set",
        ),
        (
            lambda s: s.algorithm.regression.linear_regression.SetInParent(),
            "linear_regression is a regression algorithm",
        ),
        (lambda s: s.algorithm.classification.binary.logistic_regression.SetInParent(), "binary_classification"),
        (
            lambda s: (
                s.algorithm.classification.multiclass.logistic_regression.hyper_parameters.hyper_parameter[
                    "max_depth"
                ].i32
                + 3
            ),
            "'max_depth' is not accepted",
        ),
        (
            lambda s: s.algorithm.classification.multiclass.logistic_regression.hyper_parameters.hyper_parameter[
                "max_iter"
            ].CopyFrom(schemas.hyper_parameter("many")),
            "'max_iter'",
        ),
        (
            lambda s: s.algorithm.classification.multiclass.logistic_regression.hyper_parameters.hyper_parameter[
                "solver"
            ].CopyFrom(schemas.hyper_parameter("magic")),
            "'solver'",
        ),
        (lambda s: schemas.add_preprocessor(s, "__import__('os').system('true')", "x"), "not allowed"),
        (lambda s: schemas.add_preprocessor(s, "sepal_length +", "x"), "not a valid expression"),
        (lambda s: s.output.ClearField("output_is_one_of"), "no output schema"),
        (lambda s: s.output.classification_schema.multi_class.target_variable.Clear(), "target_variable"),
        (lambda s: s.criteria.__setattr__("test_fraction", 1.5), "test_fraction"),
        (lambda s: s.eval_criteria.metrics.append("rmse"), "unknown metric"),
    ],
)
def test_bad_schemas_fail_as_bad_input_naming_the_cause(tmp_path: Path, mutate: Any, expected: str) -> None:
    schema = schemas.iris_multiclass_logistic()
    mutate(schema)
    job_dir = make_job(tmp_path, schema, DatasetSource(path=str(iris_csv(tmp_path))))
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_BAD_INPUT
    assert not result.succeeded
    assert expected in result.errors[0], result.errors
    assert RunResult.read(job_dir) == result


def test_bad_job_directories_fail_as_bad_input(tmp_path: Path) -> None:
    job_dir = tmp_path / "empty"
    job_dir.mkdir()
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_BAD_INPUT
    assert "job.json" in result.errors[0]

    job_dir = make_job(tmp_path / "schema", schemas.iris_multiclass_logistic(), DatasetSource(path="/nowhere.csv"))
    (job_dir / DESIGN_SCHEMA_FILE).write_bytes(b"\xff\xff\xff not a proto")
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_BAD_INPUT
    assert DESIGN_SCHEMA_FILE in result.errors[0]

    job_dir = make_job(tmp_path / "nodata", schemas.iris_multiclass_logistic(), DatasetSource(path="/nowhere.csv"))
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_BAD_INPUT
    assert "/nowhere.csv does not exist" in result.errors[0]

    job_dir = make_job(tmp_path / "escape", schemas.iris_multiclass_logistic(), DatasetSource(path="/x.csv"), "../x")
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_BAD_INPUT
    assert "artifact_name" in result.errors[0]

    job_dir = make_job(tmp_path / "json", schemas.iris_multiclass_logistic(), DatasetSource(path="/x.csv"))
    (job_dir / "job.json").write_text('{"run_id": "r"}')
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_BAD_INPUT
    assert "event_id" in result.errors[0]


def test_an_unexpected_error_exits_internal_without_a_traceback(tmp_path: Path) -> None:
    job_dir = make_job(tmp_path, schemas.iris_multiclass_logistic(), DatasetSource(path=str(iris_csv(tmp_path))))
    # output/ as a file makes writing the artifact fail: not the event's fault, so not EXIT_BAD_INPUT.
    (job_dir / OUTPUT_DIR).write_text("in the way")
    completed = run_subprocess(job_dir)
    assert completed.returncode == EXIT_INTERNAL
    assert "Traceback" not in completed.stdout + completed.stderr
    result = RunResult.read(job_dir)
    assert result.errors[0].startswith("internal error: FileExistsError")


def test_a_failed_retry_leaves_nothing_of_the_earlier_success(tmp_path: Path) -> None:
    job_dir = make_job(tmp_path, schemas.iris_multiclass_logistic(), DatasetSource(path=str(iris_csv(tmp_path))))
    assert execute(job_dir).succeeded
    assert (job_dir / OUTPUT_DIR / "model.joblib").is_file()
    bad = schemas.iris_multiclass_logistic(hyper={"max_iter": -1})
    (job_dir / DESIGN_SCHEMA_FILE).write_bytes(bad.SerializeToString())
    result, code = execute_with_exit_code(job_dir)
    assert code == EXIT_BAD_INPUT
    assert "'max_iter'" in RunResult.read(job_dir).errors[0]
    assert result == RunResult.read(job_dir)
    assert not (job_dir / OUTPUT_DIR / "model.joblib").exists()
    assert not (job_dir / OUTPUT_DIR / METADATA_FILE).exists()


def test_usage_errors(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "trainer.run.run_job"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == EXIT_BAD_INPUT
    assert "usage" in completed.stderr
    completed = run_subprocess(tmp_path / "absent")
    assert completed.returncode == EXIT_BAD_INPUT
    assert "does not exist" in completed.stderr
    assert not (tmp_path / "absent" / RESULT_FILE).exists()


def test_the_run_imports_only_what_the_training_image_carries() -> None:
    # trainer/launchers/image_build.py copies only SOURCE_PATHS into the image (trainer/, servers/ and modelplane/
    # in part: of trainer/ only trainer/run, never the service that schedules runs).
    probe = (
        "import sys, trainer.run.run_job, trainer.run.s3_source\n"
        "own = {'agent', 'scheduler', 'gateway', 'trainer', 'servers', 'modelplane', 'tests', 'bench'}\n"
        "print('\\n'.join(sorted(name for name in sys.modules if name.split('.')[0] in own)))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    modules = {
        path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for path in SOURCE_PATHS
        if path.endswith(".py")
    }
    packages = [path.replace("/", ".") for path in SOURCE_PATHS if not path.endswith(".py")]
    imported = completed.stdout.split()
    assert "servers.designed_model.expressions" in imported  # the probe sees what it should
    assert "modelplane.s3" in imported
    assert "trainer.run.fitting" in imported
    outside = [
        name
        for name in imported
        if name != "servers"
        and name not in modules
        and not any(name == package or name.startswith(f"{package}.") for package in packages)
    ]
    assert outside == []
