"""A trained model as it is served: raw columns in, preprocessing, the estimator, postprocessing, outputs out.

The trainer writes a model folder holding the estimator (joblib), ``metadata.json`` (features, classes, the
preprocessing steps, the postprocessing program, the artifact's SHA-256) and this package. The inference
server's adapter (mlserver_runtime.py) only translates its own request and response types; everything a
request means is decided here, so it is tested without an inference server.

A request names its columns one of two ways:

- one tensor per input column, named like the column, shaped ``[N]`` or ``[N, 1]``;
- a single tensor of any name shaped ``[N, K]``, its K columns being the input columns in
  :attr:`ServedModel.input_columns` order.

The input columns are the raw columns the design reads: those the preprocessing expressions read, then the
design inputs no expression produces. Every value must be a finite number. Outputs: ``predict`` (class labels
or regression values), ``predict_proba`` (classifiers; rows x classes in ``classes`` order) and each
postprocessing output; a request that names no outputs gets ``predict`` and the postprocessing outputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt

from .expressions import ExpressionError, FloatArray
from .postprocessing import PostprocessProgram, program_from_record, run_postprocessor
from .preprocessing import PreprocessStep, apply_preprocessor, raw_columns, steps_from_record

METADATA_FILE = "metadata.json"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
MAX_ROWS = 1_000_000
_TASKS = ("binary_classification", "multiclass_classification", "regression")


class ModelFolderError(Exception):
    """The model folder cannot be served: metadata.json or the artifact is missing, malformed or altered."""


class RequestError(ValueError):
    """A request does not fit the model; the message names the tensor or column and what was expected."""


@dataclass(frozen=True)
class InputTensor:
    """One request tensor, decoded by the server's adapter (any array-like; checked here)."""

    name: str
    values: Any


@dataclass(frozen=True)
class ServedModel:
    estimator: Any
    task: str
    features: tuple[str, ...]  # the estimator's columns, after preprocessing
    input_columns: tuple[str, ...]  # what a caller sends
    steps: tuple[PreprocessStep, ...]
    classes: tuple[Any, ...]  # predict_proba's column order; () for regression
    postprocessor: PostprocessProgram | None

    @property
    def is_classifier(self) -> bool:
        return self.task != "regression"

    @property
    def output_names(self) -> tuple[str, ...]:
        names = [PREDICT]
        if self.is_classifier:
            names.append(PREDICT_PROBA)
        if self.postprocessor is not None:
            names.extend(self.postprocessor.order)
        return tuple(names)

    def tensor_metadata(self) -> dict[str, list[dict[str, object]]]:
        """The V2 model metadata of ``inputs`` and ``outputs`` (the one-input-per-column layout), for
        model-settings.json, so a server's ``/v2/models/{name}`` tells callers what to send."""
        kind = np.asarray(self.classes).dtype.kind if self.is_classifier else "f"
        predict_type = {"U": "BYTES", "O": "BYTES", "S": "BYTES", "b": "BOOL", "i": "INT64", "u": "INT64"}.get(
            kind, "FP64"
        )
        # One value per row is encoded [N, 1], as MLServer's NumpyCodec (and its stock runtimes) do.
        outputs: list[dict[str, object]] = [{"name": PREDICT, "datatype": predict_type, "shape": [-1, 1]}]
        if self.is_classifier:
            outputs.append({"name": PREDICT_PROBA, "datatype": "FP64", "shape": [-1, len(self.classes)]})
        if self.postprocessor is not None:
            outputs += [{"name": name, "datatype": "FP64", "shape": [-1, 1]} for name in self.postprocessor.order]
        return {
            "inputs": [{"name": name, "datatype": "FP64", "shape": [-1]} for name in self.input_columns],
            "outputs": outputs,
        }

    @classmethod
    def load(cls, path: Path) -> ServedModel:
        """Read ``metadata.json`` and the artifact it names from the model's folder (``path``, or the folder of
        the file ``path``), checking the artifact's SHA-256."""
        folder = path if path.is_dir() else path.parent
        metadata = _read_metadata(folder / METADATA_FILE)
        artifact = metadata.get("artifact")
        if not isinstance(artifact, dict) or not isinstance(artifact.get("name"), str):
            raise ModelFolderError(f"{METADATA_FILE}: 'artifact.name' is missing")
        name = artifact["name"]
        if Path(name).name != name or name.startswith("."):
            raise ModelFolderError(f"{METADATA_FILE}: artifact name {name!r} must be a plain file name")
        path = folder / name
        try:
            actual = file_sha256(path)
        except OSError as error:
            raise ModelFolderError(f"cannot read the artifact {name}: {error}") from error
        if actual != artifact.get("sha256"):
            raise ModelFolderError(
                f"the artifact {name} has SHA-256 {actual}, metadata.json says {artifact.get('sha256')}"
            )
        features = _names(metadata.get("features"), "features")
        task = metadata.get("task")
        if task not in _TASKS:
            raise ModelFolderError(f"{METADATA_FILE}: 'task' must be one of {', '.join(_TASKS)}, not {task!r}")
        classes = metadata.get("classes") or []
        if not isinstance(classes, list) or (task != "regression" and len(classes) < 2):
            raise ModelFolderError(f"{METADATA_FILE}: a classifier needs 'classes' (two or more)")
        estimator = joblib.load(path)
        width = getattr(estimator, "n_features_in_", len(features))
        if width != len(features):
            raise ModelFolderError(f"{METADATA_FILE}: {len(features)} 'features', the estimator takes {width}")
        if task != "regression":
            fitted = np.asarray(getattr(estimator, "classes_", [])).tolist()
            if [str(label) for label in fitted] != [str(label) for label in classes]:
                raise ModelFolderError(
                    f"{METADATA_FILE}: 'classes' {classes} differ from the estimator's classes_ {fitted}"
                )
        try:
            steps = steps_from_record(metadata.get("preprocessing") or [])
            record = metadata.get("postprocessing")
            labels = [str(label) for label in classes]
            postprocessor = None if record is None else program_from_record(record, labels)
        except ExpressionError as error:
            raise ModelFolderError(f"{METADATA_FILE}: {error}") from error
        return cls(
            estimator=estimator,
            task=task,
            features=features,
            input_columns=tuple(raw_columns(steps, features)),
            steps=tuple(steps),
            classes=tuple(classes),
            postprocessor=postprocessor,
        )

    def columns_from(self, tensors: Sequence[InputTensor]) -> tuple[dict[str, FloatArray], int]:
        """The request's input columns and its row count (see the module docstring for the two layouts)."""
        if not tensors:
            raise RequestError(f"the request has no inputs; expected the columns {list(self.input_columns)}")
        by_name = {tensor.name: tensor for tensor in tensors}
        if len(by_name) != len(tensors):
            raise RequestError("the request names an input more than once")
        if len(tensors) == 1 and tensors[0].name not in self.input_columns:
            return self._columns_of_matrix(tensors[0])  # the one layout where the name is free
        unknown = sorted(set(by_name) - set(self.input_columns))
        missing = [name for name in self.input_columns if name not in by_name]
        if unknown or missing:
            raise RequestError(
                f"inputs do not match the model's columns {list(self.input_columns)}: "
                + "; ".join(part for part in (_listed("missing", missing), _listed("unknown", unknown)) if part)
            )
        columns: dict[str, FloatArray] = {}
        for name in self.input_columns:
            values = _numbers(by_name[name].values, name)
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim != 1:
                raise RequestError(f"input {name!r} must have shape [N] or [N, 1], not {list(values.shape)}")
            columns[name] = np.ascontiguousarray(values)
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise RequestError(f"inputs have different numbers of rows: {lengths}")
        return columns, _checked_rows(next(iter(lengths.values())))

    def _columns_of_matrix(self, tensor: InputTensor) -> tuple[dict[str, FloatArray], int]:
        values = _numbers(tensor.values, tensor.name)
        width = len(self.input_columns)
        # Strictly [N, K]: a one-dimensional tensor must be named like its column, so a wrongly named one is
        # never taken for the model's only column.
        if values.ndim != 2 or values.shape[1] != width:
            raise RequestError(
                f"input {tensor.name!r} has shape {list(values.shape)}; send [N, {width}] with the columns "
                f"{list(self.input_columns)} in that order, or one input per column named like it"
            )
        rows = _checked_rows(int(values.shape[0]))
        return {name: np.ascontiguousarray(values[:, index]) for index, name in enumerate(self.input_columns)}, rows

    def predict(self, tensors: Sequence[InputTensor], wanted: Sequence[str] = ()) -> dict[str, npt.NDArray[Any]]:
        """The outputs ``wanted`` (default: predict and the postprocessing outputs) for the request's rows."""
        unknown = sorted(set(wanted) - set(self.output_names))
        if unknown:
            raise RequestError(f"unknown output(s) {unknown}; this model has {list(self.output_names)}")
        names = list(wanted) or [PREDICT, *(self.postprocessor.order if self.postprocessor else ())]
        columns, rows = self.columns_from(tensors)
        try:
            processed = apply_preprocessor(self.steps, columns, rows)
        except ExpressionError as error:
            raise RequestError(f"preprocessing failed: {error}") from error
        features = np.column_stack([processed[name] for name in self.features]).astype(np.float64, copy=False)
        results: dict[str, npt.NDArray[Any]] = {}
        if PREDICT in names:
            results[PREDICT] = np.asarray(self.estimator.predict(features))
        post_wanted = self.postprocessor is not None and any(name in self.postprocessor.order for name in names)
        if self.is_classifier and (PREDICT_PROBA in names or post_wanted):
            probabilities = np.asarray(self.estimator.predict_proba(features), dtype=np.float64)
            results[PREDICT_PROBA] = probabilities
            if self.postprocessor is not None and post_wanted:
                try:
                    results.update(
                        run_postprocessor(self.postprocessor, probabilities, [str(label) for label in self.classes])
                    )
                except ExpressionError as error:
                    raise RequestError(f"postprocessing failed: {error}") from error
        return {name: results[name] for name in names}


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in chunks (hashlib.file_digest needs Python 3.11; servers may run 3.10)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelFolderError(f"cannot read {path.name}: {error}") from error
    if not isinstance(metadata, dict):
        raise ModelFolderError(f"{path.name} must hold a JSON object")
    return metadata


def _names(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise ModelFolderError(f"{METADATA_FILE}: '{key}' must be a non-empty list of names")
    return tuple(value)


def _numbers(values: object, name: str) -> FloatArray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"input {name!r} must hold numbers") from None
    if array.ndim == 0:
        raise RequestError(f"input {name!r} must be a tensor of rows, not a single value")
    if not np.isfinite(array).all():
        raise RequestError(f"input {name!r} holds a value that is not a finite number")
    return array


def _checked_rows(rows: int) -> int:
    if rows < 1:
        raise RequestError("the request has no rows")
    if rows > MAX_ROWS:
        raise RequestError(f"the request has {rows} rows; the limit is {MAX_ROWS}")
    return rows


def _listed(what: str, names: list[str]) -> str:
    return f"{what} {names}" if names else ""
