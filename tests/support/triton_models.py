"""A tiny Triton python-backend model for tests: OUTPUT0 = INPUT0 * 2."""

from __future__ import annotations

from pathlib import Path

DOUBLER_CONFIG = """\
# Doubles its input.
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

DOUBLER_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            doubled = pb_utils.Tensor("OUTPUT0", (values * 2).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[doubled]))
        return responses
"""


def write_doubler(folder: Path, model_py: str = DOUBLER_MODEL) -> Path:
    """Write the model (config.pbtxt and version 1) into ``folder``; returns ``folder``."""
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(DOUBLER_CONFIG)
    (folder / "1" / "model.py").write_text(model_py)
    return folder
