"""The three-model pipeline of the gateway pipeline tests: ``pa -> pb, pa -> pc, join pb + pc -> output``, with
b a linear regression of the iris class (2 * class + 1) and c a decision tree mapping class k to (k + 1) % 3. Used by
the e2e pipeline test and bench/gateway_inference.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.linear_model import LinearRegression
from sklearn.tree import DecisionTreeClassifier

from generated.mlops.scheduler import scheduler_pb2 as pb


def fitted(folder: Path, estimator: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, folder / "model.joblib")
    return folder


def class_models(root: Path) -> tuple[Path, Path]:
    classes = np.array([[0], [1], [2]] * 10)
    b = LinearRegression().fit(classes, 2 * classes.ravel() + 1)
    c = DecisionTreeClassifier(random_state=0).fit(classes, (classes.ravel() + 1) % 3)
    return fitted(root / "b", b), fitted(root / "c", c)


def three_step_pipeline(name: str = "abc") -> pb.Pipeline:
    return pb.Pipeline(
        name=name,
        steps=[
            pb.PipelineStep(name="pa"),
            pb.PipelineStep(name="pb", inputs=["pa"]),
            pb.PipelineStep(name="pc", inputs=["pa.outputs.predict"]),
        ],
        output=pb.PipelineOutput(
            steps=["pb", "pc"],
            stepsJoin=pb.PipelineOutput.INNER,
            tensorMap={"pb.outputs.predict": "b_predict", "pc.outputs.predict": "c_predict"},
        ),
    )
