"""A designed model trained in this process (the folder the trainer writes) and its oracle: the design computed
by hand with numpy straight from the estimator. Used by the designed-model and adapter tests and by bench/."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np

from generated.mlops.training.v1 import training_pb2
from servers.designed_model.served_model import PREDICT, PREDICT_PROBA
from tests.support import training_schemas as schemas
from trainer.run.jobs import DESIGN_SCHEMA_FILE, OUTPUT_DIR, DatasetSource, TrainingJob
from trainer.run.run_job import execute

RAW_COLUMNS = ("petal_length", "petal_width", "sepal_width", "sepal_length")


def train_into(root: Path, schema: training_pb2.ModelDesignSchema, frame_csv: Path) -> Path:
    """Run one training job in-process; the model's folder (the job's output/)."""
    job_dir = root / "job"
    job_dir.mkdir(parents=True)
    dataset = DatasetSource(path=str(frame_csv))
    TrainingJob(run_id="run-1", event_id="event-1", dataset=dataset, artifact_name="model.joblib").write(job_dir)
    (job_dir / DESIGN_SCHEMA_FILE).write_bytes(schema.SerializeToString())
    result = execute(job_dir)
    assert result.succeeded, result.errors
    return job_dir / OUTPUT_DIR


def raw_rows() -> dict[str, np.ndarray]:
    frame = schemas.iris_frame()
    return {name: frame[name].to_numpy(dtype=np.float64) for name in RAW_COLUMNS}


def expected_outputs(model_folder: Path, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The design computed by hand with numpy, straight from the estimator: the oracle."""
    estimator = joblib.load(model_folder / "model.joblib")
    features = np.column_stack(
        [
            columns["petal_length"] * columns["petal_width"] * 1.0,
            columns["sepal_length"],
            (columns["sepal_width"] > 3).astype(np.float64),
        ]
    )
    probabilities = estimator.predict_proba(features)
    score = np.round(probabilities[:, 1] * 100)
    return {
        PREDICT: estimator.predict(features),
        PREDICT_PROBA: probabilities,
        "score": score,
        "flag": (score >= 50).astype(np.float64),
    }
