"""MLServer's adapter for a trained model: decodes V2 tensors, calls ServedModel, encodes the outputs.

Imported by MLServer through the model folder's entry module (servers/designed_model_entry.py); never imported
by modelplane itself, whose environment has no mlserver. Everything a request means is decided in served_model.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput
from mlserver.utils import get_model_uri

from .served_model import InputTensor, RequestError, ServedModel


class DesignedModelRuntime(MLModel):  # type: ignore[misc]  # mlserver is untyped here (not installed)
    _served: ServedModel  # set by load(), which MLServer awaits before any predict()

    async def load(self) -> bool:
        # parameters.uri names the artifact (or the folder): either way, the model's folder is what is read.
        self._served = await asyncio.to_thread(ServedModel.load, Path(await get_model_uri(self._settings)))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        served = self._served
        try:
            tensors = [InputTensor(item.name, _decode(item)) for item in payload.inputs]
            wanted = [output.name for output in payload.outputs or ()]
            results = served.predict(tensors, wanted)
        except RequestError as error:
            raise InferenceError(f"model {self.name}: {error}") from None
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[_encode(name, values) for name, values in results.items()],
        )


def _decode(item: RequestInput) -> Any:
    try:
        return NumpyCodec.decode_input(item)
    except (ValueError, TypeError) as error:  # data that does not fill the declared shape, say
        raise RequestError(f"input {item.name!r} cannot be decoded: {error}") from None


def _encode(name: str, values: Any) -> ResponseOutput:
    array = np.asarray(values)
    if array.dtype.kind in "OUS":  # text class labels
        return StringCodec.encode_output(name, [str(value) for value in array.tolist()])
    return NumpyCodec.encode_output(name, array)
