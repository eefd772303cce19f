"""The registry's models described to the trainer (modelplane/cli/registry_training.py): every algorithm the
registry offers, with or without hyper-parameters, is one the trainer's own selection accepts for the task the
experiment's outcome type gives."""

from __future__ import annotations

from typing import Any

import pytest

from modelplane.cli.registry_training import design_schema
from modelplane.spec.training_algorithms import CLASSIFIERS, REGRESSORS
from registry.ports import TrainingRequest
from trainer.run.algorithms import select_algorithm
from trainer.run.design import Task


def _request(algorithm: str, outcome_type: str, hyperparameters: dict[str, Any]) -> TrainingRequest:
    return TrainingRequest(
        run_id="run-1",
        experiment="houses",
        model_id="m1",
        model_name="first",
        algorithm=algorithm,
        hyperparameters=hyperparameters,
        features=["rooms", "area"],
        outcome="price",
        outcome_type=outcome_type,
        training_path="/nowhere/train.parquet",
        test_path="/nowhere/test.parquet",
    )


@pytest.mark.parametrize(
    ("algorithm", "outcome_type", "task"),
    [(name, "string", Task.MULTICLASS) for name in CLASSIFIERS]
    + [(name, "double", Task.REGRESSION) for name in REGRESSORS],
)
@pytest.mark.parametrize("hyperparameters", [{}, {"max_depth": 3}], ids=["defaults", "given"])
def test_every_offered_algorithm_is_selected_by_the_trainer(
    algorithm: str, outcome_type: str, task: Task, hyperparameters: dict[str, Any]
) -> None:
    if hyperparameters and algorithm in ("logistic_regression", "linear_regression"):
        hyperparameters = {"fit_intercept": True}
    selected = select_algorithm(design_schema(_request(algorithm, outcome_type, hyperparameters)), task)
    assert selected.spec.task is task
    assert selected.hyper_parameters == hyperparameters
