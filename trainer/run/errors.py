"""The error types of a training run.

A :class:`TrainingInputError` means the same event would fail again (a schema, dataset or hyper-parameter
that cannot train): the run exits with ``EXIT_BAD_INPUT`` and the message goes to ``result.json`` and on to
the training status topic, so it names the cause (a column, a hyper-parameter, an expression) and never
holds a secret. A :class:`DatasetUnavailableError` is the infrastructure's fault, not the event's: the run exits
with ``EXIT_UNAVAILABLE``, which the launchers report as retryable. Anything else escaping a run is a bug and
exits with ``EXIT_INTERNAL``.
"""

from __future__ import annotations

from servers.designed_model.expressions import ExpressionError

__all__ = [
    "BAD_INPUT_ERRORS",
    "AlgorithmError",
    "DatasetError",
    "DatasetUnavailableError",
    "DesignError",
    "ExpressionError",
    "TrainingInputError",
]


class TrainingInputError(Exception):
    """Bad input to a training run; the message says what is wrong and where."""


class DatasetError(TrainingInputError):
    """The dataset cannot be fetched, parsed, or does not fit the design schema."""


class DatasetUnavailableError(Exception):
    """The dataset's store could not be reached or did not answer (connection refused or reset, a timeout, a 5xx
    or throttling answer). Not bad input: the same event may train once the store is back, so it is retried."""


class AlgorithmError(TrainingInputError):
    """The algorithm or its hyper-parameters are unset, unsupported, or invalid."""


class DesignError(TrainingInputError):
    """The design schema lacks or contradicts what training needs (inputs, target, output kind, split)."""


# A pre- or postprocessing expression that is malformed, unsafe, too large, or fails to evaluate is bad input
# too. ExpressionError is defined beside the evaluator, which also runs inside inference servers and so cannot
# import the trainer.
BAD_INPUT_ERRORS: tuple[type[Exception], ...] = (TrainingInputError, ExpressionError)
