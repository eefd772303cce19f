"""One V2 tensor's elements in the V2 gRPC messages: the datatypes and their typed contents fields, raw
little-endian packing both ways (BF16 by hand, BYTES with 4-byte lengths), and the checks of a JSON tensor's
datatype, shape and data. :mod:`gateway.edges.v2_grpc_codec` builds whole requests, responses and metadata
from these; a malformed tensor raises :class:`InferenceError` with the status the caller passes."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gateway.inference_types import InferenceError, JsonObject
from generated.inference.v2 import grpc_predict_v2_pb2 as pb


@dataclass(frozen=True, slots=True)
class Datatype:
    """How one V2 datatype travels: its typed contents field (None: raw only), the numpy dtype of its
    raw little-endian form (None for BYTES, BF16 is handled by hand), and its element kind in JSON."""

    name: str
    field: str | None
    dtype: str | None
    kind: str  # "bool", "int", "float" or "bytes"


DATATYPES: Final[Mapping[str, Datatype]] = {
    d.name: d
    for d in (
        Datatype("BOOL", "bool_contents", "|b1", "bool"),
        Datatype("UINT8", "uint_contents", "|u1", "int"),
        Datatype("UINT16", "uint_contents", "<u2", "int"),
        Datatype("UINT32", "uint_contents", "<u4", "int"),
        Datatype("UINT64", "uint64_contents", "<u8", "int"),
        Datatype("INT8", "int_contents", "|i1", "int"),
        Datatype("INT16", "int_contents", "<i2", "int"),
        Datatype("INT32", "int_contents", "<i4", "int"),
        Datatype("INT64", "int64_contents", "<i8", "int"),
        Datatype("FP16", None, "<f2", "float"),
        Datatype("BF16", None, None, "float"),
        Datatype("FP32", "fp32_contents", "<f4", "float"),
        Datatype("FP64", "fp64_contents", "<f8", "float"),
        Datatype("BYTES", "bytes_contents", None, "bytes"),
    )
}
CONTENTS_FIELDS: Final = tuple(field.name for field in pb.InferTensorContents.DESCRIPTOR.fields)
CONTENT_TYPE: Final = "content_type"  # the tensor parameter naming how BYTES elements are encoded
BASE64: Final = "base64"

INT64_RANGE = (-(2**63), 2**63 - 1)
UINT64_RANGE = (0, 2**64 - 1)
_BYTES_LENGTH = struct.Struct("<I")


def decode_contents(
    contents: pb.InferTensorContents, datatype: Datatype, shape: Sequence[int], where: str, status: int
) -> list[Any]:
    """The elements of typed contents, checked against the datatype (the right field, no other, values in
    range) and the shape (the element count)."""
    stray = [name for name in contents_fields_set(contents) if name != datatype.field]
    if stray:
        expected = datatype.field or "raw contents (it has no typed field)"
        raise InferenceError(
            status, f"{where} ({datatype.name}) has data in {', '.join(stray)}; {datatype.name} goes in {expected}"
        )
    if datatype.field is None and _element_count(shape):
        raise InferenceError(status, f"{where}: {datatype.name} has no typed contents field; send it in raw contents")
    values: list[Any] = list(getattr(contents, datatype.field)) if datatype.field else []
    _check_count(len(values), shape, where, status)
    if datatype.kind == "int" and values and datatype.dtype is not None:
        limits = np.iinfo(np.dtype(datatype.dtype))
        low, high = min(values), max(values)
        if low < limits.min or high > limits.max:
            bad = low if low < limits.min else high
            raise InferenceError(status, f"{where}: {bad} is out of range for {datatype.name}")
    return values


def decode_raw(data: bytes, datatype: Datatype, shape: Sequence[int], where: str, status: int) -> list[Any]:
    """The elements of one raw (little-endian, packed, row-major) tensor."""
    count = _element_count(shape)
    if datatype.kind == "bytes":
        return _split_raw_bytes(data, shape, where, status)
    width = 2 if datatype.name == "BF16" else np.dtype(datatype.dtype).itemsize
    if len(data) != count * width:
        raise InferenceError(
            status,
            f"{where}: raw contents hold {len(data)} bytes; "
            f"shape {list(shape)} of {datatype.name} needs {count * width}",
        )
    array: npt.NDArray[Any]
    if datatype.name == "BF16":
        array = (np.frombuffer(data, dtype="<u2").astype("<u4") << 16).view("<f4")
    elif datatype.name == "BOOL":
        array = np.frombuffer(data, dtype="|u1") != 0
    else:
        array = np.frombuffer(data, dtype=datatype.dtype)
    values: list[Any] = array.tolist()
    return values


def _split_raw_bytes(data: bytes, shape: Sequence[int], where: str, status: int) -> list[Any]:
    count = _element_count(shape)
    elements: list[Any] = []
    offset = 0
    while offset < len(data):
        if len(elements) == count:
            raise InferenceError(
                status, f"{where}: raw BYTES contents hold more than the {count} elements of {list(shape)}"
            )
        if offset + 4 > len(data):
            raise InferenceError(status, f"{where}: raw BYTES contents end inside an element's 4-byte length")
        (length,) = _BYTES_LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + length > len(data):
            raise InferenceError(
                status, f"{where}: raw BYTES element #{len(elements)} says {length} bytes but fewer remain"
            )
        elements.append(data[offset : offset + length])
        offset += length
    _check_count(len(elements), shape, where, status)
    return elements


def encode_raw(values: Sequence[Any], datatype: Datatype, where: str, status: int) -> bytes:
    """Elements (already checked against the datatype) packed little-endian, row-major."""
    if datatype.kind == "bytes":
        return b"".join(_BYTES_LENGTH.pack(len(item)) + item for item in (_as_bytes(v, where, status) for v in values))
    try:
        if datatype.name == "BF16":
            bits = np.asarray(values, dtype="<f4").view("<u4").astype(np.uint64)
            # Round to nearest, ties to even, on the 16 bits that are kept.
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            nan = np.isnan(np.asarray(values, dtype="<f4"))
            rounded = np.where(nan, (bits >> 16) | 0x40, rounded)
            return bytes(rounded.astype("<u2").tobytes())
        with np.errstate(over="ignore"):  # FP16 overflow becomes infinity, as a cast does
            return bytes(np.asarray(values, dtype=datatype.dtype).tobytes())
    except (OverflowError, ValueError, TypeError) as error:
        raise InferenceError(status, f"{where}: data does not fit {datatype.name} ({error})") from None


def fill_contents(
    contents: pb.InferTensorContents, values: Sequence[Any], datatype: Datatype, where: str, status: int
) -> None:
    assert datatype.field is not None  # noqa: S101 -- callers send field-less datatypes raw
    if datatype.kind == "bytes":
        contents.bytes_contents.extend(_as_bytes(v, where, status) for v in values)
        return
    if datatype.kind == "int" and values and datatype.dtype is not None:
        limits = np.iinfo(np.dtype(datatype.dtype))
        for value in (min(values), max(values)):
            if not limits.min <= value <= limits.max:
                raise InferenceError(status, f"{where}: {value} is out of range for {datatype.name}")
    try:
        getattr(contents, datatype.field).extend(values)
    except (TypeError, ValueError) as error:
        raise InferenceError(status, f"{where}: data does not fit {datatype.name} ({error})") from None


def json_tensor(
    entry: Any, role: str, index: int, status: int
) -> tuple[Mapping[str, Any], Datatype, list[int], list[Any]]:
    """A JSON tensor checked: name, datatype, shape, and flat data matching both."""
    if not isinstance(entry, Mapping):
        raise InferenceError(status, f"{role} #{index} must be an object, not {json_type(entry)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InferenceError(status, f"{role} #{index} has no name")
    where = tensor_label(role, name, index)
    raw_datatype = entry.get("datatype")
    if not isinstance(raw_datatype, str):
        raise InferenceError(status, f"{where} has no datatype")
    datatype = datatype_named(raw_datatype, where, status)
    raw_shape = entry.get("shape")
    if not isinstance(raw_shape, list) or not all(is_int(dim) for dim in raw_shape):
        raise InferenceError(status, f"{where}: shape must be a list of integers")
    shape = checked_shape(raw_shape, where, status)
    values = _flatten(entry.get("data"), where, status)
    _check_count(len(values), shape, where, status)
    _check_kinds(values, datatype, where, status)
    return entry, datatype, shape, values


# The JSON element types each kind of datatype takes (bool is not an int here, whatever Python says).
_KIND_TYPES: Final[Mapping[str, frozenset[type]]] = {
    "bool": frozenset({bool}),
    "int": frozenset({int}),
    "float": frozenset({int, float}),
    "bytes": frozenset({str, bytes}),
}


def _check_kinds(values: Sequence[Any], datatype: Datatype, where: str, status: int) -> None:
    if set(map(type, values)) <= _KIND_TYPES[datatype.kind]:
        return  # the common case, checked at C speed; the loop below finds the element to name
    for position, value in enumerate(values):
        if datatype.kind == "bool":
            ok = isinstance(value, bool)
        elif datatype.kind == "int":
            ok = is_int(value)
        elif datatype.kind == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str | bytes)
        if not ok:
            raise InferenceError(
                status, f"{where}: element #{position} is {json_type(value)}, not a {datatype.name} value"
            )


def _flatten(data: Any, where: str, status: int) -> list[Any]:
    """Row-major elements of flat or nested JSON data, without recursion (depth is the client's choice)."""
    if data is None:
        raise InferenceError(status, f"{where} has no data")
    if not isinstance(data, list):
        return [data]
    # Data nested evenly (rows of lists of numbers: every JSON tensor of more than one dimension) is flattened
    # a level at a time in C; a level that mixes lists and elements takes the general walk below.
    level: list[Any] = data
    while True:
        kinds = set(map(type, level))
        if list not in kinds:
            return level if level is not data else list(data)
        if kinds != {list}:
            break
        level = list(chain.from_iterable(level))
    flat: list[Any] = []
    stack: list[Iterable[Any]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def datatype_named(name: str, where: str, status: int) -> Datatype:
    datatype = DATATYPES.get(name)
    if datatype is None:
        known = ", ".join(DATATYPES)
        raise InferenceError(status, f"{where} has unknown datatype {name!r}; known: {known}")
    return datatype


def checked_shape(shape: Iterable[int], where: str, status: int) -> list[int]:
    dims = [int(dim) for dim in shape]
    if any(dim < 0 for dim in dims):
        raise InferenceError(status, f"{where}: shape {dims} has a negative dimension")
    if any(dim > INT64_RANGE[1] for dim in dims):
        raise InferenceError(status, f"{where}: shape {dims} has a dimension beyond the int64 range")
    return dims


def _element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _check_count(count: int, shape: Sequence[int], where: str, status: int) -> None:
    expected = _element_count(shape)
    if count != expected:
        raise InferenceError(status, f"{where}: shape {list(shape)} needs {expected} elements, the data has {count}")


def contents_fields_set(contents: pb.InferTensorContents) -> list[str]:
    return [name for name in CONTENTS_FIELDS if len(getattr(contents, name))]


def tensor_label(role: str, name: str, index: int) -> str:
    return f"{role} {name!r}" if name else f"{role} #{index}"


def _as_bytes(value: Any, where: str, status: int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise InferenceError(status, f"{where}: a BYTES element is not valid Unicode text") from None
    raise InferenceError(status, f"{where}: BYTES elements must be strings, not {json_type(value)}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def bytes_to_text(data: list[Any], parameters: JsonObject, where: str, status: int) -> list[Any]:
    """BYTES elements as JSON strings: UTF-8 text, or base64 for all of them (marking the tensor's
    content_type, so MLServer's base64 codec hands the model the original bytes) when some element is
    not UTF-8. The other direction never decodes base64: text under content_type base64 is base64 text
    in both forms, which is what MLServer's codec expects in either transport."""
    try:
        return [bytes(element).decode("utf-8") for element in data]
    except UnicodeDecodeError:
        pass
    content_type = parameters.get(CONTENT_TYPE)
    if content_type is not None:
        raise InferenceError(
            status,
            f"{where}: BYTES that are not UTF-8 cannot travel in JSON with content_type {content_type!r}; "
            "leave content_type unset (they are then sent base64-encoded with content_type 'base64')",
        )
    parameters[CONTENT_TYPE] = BASE64
    return [base64.b64encode(bytes(element)).decode("ascii") for element in data]


def tensor_list(value: Any, what: str, status: int) -> list[Any]:
    if not isinstance(value, list):
        raise InferenceError(status, f"{what} must be a list, not {json_type(value)}")
    return value
