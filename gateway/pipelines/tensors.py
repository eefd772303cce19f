"""V2 (Open Inference Protocol) tensors in their JSON form, as a pipeline moves them between steps.

A tensor is ``{"name": str, "shape": [int, ...], "datatype": str, "data": [...], "parameters"?: {...}}``.
``data`` is flat or nested (row-major) and holds exactly ``product(shape)`` elements of the datatype's kind.
Tensors stay the JSON objects they arrived as (a pipeline only selects, renames and forwards them), so
checking them is the one place that walks the data.

Problems found in a client's request are :class:`TensorError` turned into 400 by the caller; the same checks
run on every step's response, where the executor turns them into 502 (the model answered nonsense).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from math import prod
from typing import Any

from gateway.inference_types import JsonObject

# Integer datatypes and the range of values each one holds.
_INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
DATATYPES = frozenset({"BOOL", "BYTES", *_INTEGER_RANGES, *_FLOATS})

MAX_DIMENSIONS = 32
MAX_TENSOR_NAME_LENGTH = 256


class TensorError(ValueError):
    """A tensor (or the list holding it) is malformed; the message names the tensor and the problem."""


@dataclass(frozen=True, slots=True)
class TensorLimits:
    """How much one message (a request, or one step's response) may carry."""

    max_tensors: int = 256
    max_elements: int = 4_000_000  # summed over all tensors of the message


def _element_checker(datatype: str) -> tuple[str, Any]:
    """(what the element must be, predicate) for ``datatype``. ``bool`` is an ``int`` in Python: excluded."""
    if datatype == "BOOL":
        return "a boolean", lambda v: type(v) is bool
    if datatype == "BYTES":
        return "a string", lambda v: type(v) is str
    if datatype in _FLOATS:
        return "a number", lambda v: type(v) is float or type(v) is int
    low, high = _INTEGER_RANGES[datatype]
    return f"an integer in [{low}, {high}]", lambda v: type(v) is int and low <= v <= high


def iter_elements(data: Sequence[Any], max_depth: int) -> Iterator[Any]:
    """The leaves of flat or nested ``data``, row-major; a list deeper than ``max_depth`` raises TensorError.

    Iterative, so hostile nesting cannot exhaust the interpreter's stack.
    """
    stack: list[tuple[Iterator[Any], int]] = [(iter(data), 1)]
    while stack:
        items, depth = stack[-1]
        for item in items:
            if isinstance(item, list):
                if depth >= max_depth:
                    raise TensorError(f"data is nested deeper than its {max_depth}-dimensional shape")
                stack.append((iter(item), depth + 1))
                break
            yield item
        else:
            stack.pop()


# The element types each datatype takes, for the check of a whole tensor at once (bool is not an int here).
_KIND_TYPES: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool}),
    "BYTES": frozenset({str}),
    **dict.fromkeys(_FLOATS, frozenset({float, int})),
    **dict.fromkeys(_INTEGER_RANGES, frozenset({int})),
}


def _evenly_nested_and_fitting(data: list[Any], max_depth: int, expected: int, datatype: str) -> bool:
    """Whether ``data`` is certainly well formed, checked a level at a time in C: nested evenly (each level all
    lists, then all elements) no deeper than ``max_depth``, ``expected`` elements, each of ``datatype``'s kind
    and range. False means "not certain": the element-by-element walk then finds and names the problem."""
    level, depth = data, 1
    while True:
        kinds = set(map(type, level))
        if list not in kinds:
            break
        if kinds != {list} or depth >= max_depth:
            return False
        # No early "more than expected" exit here: a level of lists says nothing of the elements under it (with a
        # zero dimension, [[[]]] holds none). Flattening is linear in what was already parsed, MAX_DIMENSIONS deep.
        level, depth = list(chain.from_iterable(level)), depth + 1
    if len(level) != expected or not kinds <= _KIND_TYPES[datatype]:
        return False
    limits = _INTEGER_RANGES.get(datatype)
    return limits is None or not level or (limits[0] <= min(level) and max(level) <= limits[1])


def _check_shape(shape: object, max_elements: int) -> list[int]:
    if not isinstance(shape, list):
        raise TensorError("shape must be a list of non-negative integers")
    if len(shape) > MAX_DIMENSIONS:
        raise TensorError(f"shape has {len(shape)} dimensions; the limit is {MAX_DIMENSIONS}")
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise TensorError(f"shape {shape!r} must hold non-negative integers only")
        # Checked dimension by dimension, so an absurd shape is refused before its product is computed.
        if dim > max_elements:
            raise TensorError(f"shape {shape!r} has more than {max_elements} elements")
    return shape


def check_tensor(tensor: object, index: int, limits: TensorLimits, budget: int) -> tuple[str, int]:
    """Check one tensor; return (its name, its element count). ``budget``: elements the message may still hold."""
    if not isinstance(tensor, dict):
        raise TensorError(f"tensor #{index} must be an object")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise TensorError(f"tensor #{index} needs a non-empty string 'name'")
    if len(name) > MAX_TENSOR_NAME_LENGTH:
        raise TensorError(f"tensor #{index}: name is longer than {MAX_TENSOR_NAME_LENGTH} characters")
    try:
        shape = _check_shape(tensor.get("shape"), limits.max_elements)
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise TensorError(f"datatype {datatype!r} is not a V2 datatype (one of {', '.join(sorted(DATATYPES))})")
        parameters = tensor.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise TensorError("parameters must be an object")
        data = tensor.get("data")
        if not isinstance(data, list):
            raise TensorError("data must be a list (binary tensor data is not supported in pipelines)")
        expected = prod(shape)
        if expected > budget:
            raise TensorError(f"the message would hold more than {limits.max_elements} elements")
        if not _evenly_nested_and_fitting(data, max(len(shape), 1), expected, datatype):
            _check_elements(data, shape, expected, datatype)
    except TensorError as error:
        raise TensorError(f"tensor {name!r}: {error}") from None
    return name, expected


def _check_elements(data: list[Any], shape: list[int], expected: int, datatype: str) -> None:
    """The element-by-element walk: raises TensorError naming the first element or count that does not fit."""
    what, accepts = _element_checker(datatype)
    count = 0
    for element in iter_elements(data, max(len(shape), 1)):
        count += 1
        if count > expected:
            break
        if not accepts(element):
            raise TensorError(f"element #{count - 1} ({element!r:.40}) is not {what}, as {datatype} requires")
    if count != expected:
        shown = f"more than {expected}" if count > expected else str(count)
        raise TensorError(f"data holds {shown} elements but shape {shape} needs {expected}")


def check_tensors(tensors: object, field: str, limits: TensorLimits) -> list[JsonObject]:
    """Check a message's ``inputs`` or ``outputs`` list: its size, every tensor, and that names are unique."""
    if not isinstance(tensors, list):
        raise TensorError(f"'{field}' must be a list of tensors")
    if len(tensors) > limits.max_tensors:
        raise TensorError(f"'{field}' holds {len(tensors)} tensors; the limit is {limits.max_tensors}")
    seen: set[str] = set()
    budget = limits.max_elements
    for index, tensor in enumerate(tensors):
        name, count = check_tensor(tensor, index, limits, budget)
        if name in seen:
            raise TensorError(f"'{field}' holds two tensors named {name!r}")
        seen.add(name)
        budget -= count
    return tensors


def check_request(request: object, limits: TensorLimits) -> list[JsonObject]:
    """Check a V2 inference request; return its input tensors (at least one)."""
    if not isinstance(request, dict):
        raise TensorError("the request must be a JSON object")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError("'id' must be a string")
    parameters = request.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise TensorError("'parameters' must be an object")
    inputs = check_tensors(request.get("inputs"), "inputs", limits)
    if not inputs:
        raise TensorError("'inputs' is empty; a pipeline needs at least one input tensor")
    return inputs


def check_response(response: object, limits: TensorLimits) -> list[JsonObject]:
    """Check a model's V2 inference response; return its output tensors."""
    if not isinstance(response, dict):
        raise TensorError("the response is not a JSON object")
    return check_tensors(response.get("outputs"), "outputs", limits)


def renamed(tensor: JsonObject, name: str) -> JsonObject:
    """``tensor`` under another name; a shallow copy, so the (possibly large) data is shared, not copied."""
    return tensor if tensor["name"] == name else {**tensor, "name": name}


def has_truthy_element(tensor: JsonObject) -> bool:
    """True when some element is true, non-zero, or a non-empty string (tensors were checked already)."""
    depth = max(len(tensor["shape"]), 1)
    return any(bool(element) for element in iter_elements(tensor["data"], depth))
