"""The checks every Seldon resource's translation shares: the envelope (apiVersion, kind, metadata, spec), the name
and ``kubernetesMeta``, reading a mapping field by field with bounded one-line errors, and the scheduler's own field
limits. The kinds' translations (model.py, pipeline.py, experiment.py) are written with these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from generated.mlops.scheduler import scheduler_pb2 as pb
from modelplane.spec.errors import InvalidArgument
from modelplane.spec.limits import MAX_GENERATION, check_fields
from modelplane.spec.names import is_namespace

API_VERSIONS = ("mlops.seldon.io/v1alpha1", "mlops.seldon.io/v1")
MAX_COUNT = 1000  # replicas, artifact versions
MAX_UINT32 = 2**32 - 1
MAX_SHOWN = 80  # characters of a user's value quoted in a message
_MAX_LISTED = 10  # unknown fields named in a message


class ResourceSpecError(ValueError):
    """The resource cannot be translated; the message names the field, on one line of bounded length."""


M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Translation(Generic[M]):
    message: M
    unknown: tuple[str, ...] = ()  # fields the translation does not know (dotted paths), kept by the resource
    unmapped: tuple[str, ...] = ()  # known fields that are set but have no place in the Scheduler API


def shown(value: object) -> str:
    """``value`` for a message: its repr (so on one line), at most MAX_SHOWN characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[: MAX_SHOWN - 3]}..."


def _key_name(key: object) -> str:
    return key if isinstance(key, str) and key.isidentifier() and len(key) <= MAX_SHOWN else shown(key)


def listed(names: list[str]) -> str:
    """At most _MAX_LISTED names, then how many more."""
    more = len(names) - _MAX_LISTED
    return ", ".join(names[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


_KIND_NAMES = {dict: "mapping", list: "list", str: "string", int: "whole number", bool: "true or false"}


class Fields:
    """One mapping of the resource, read field by field; remembers what was read, so the rest is "unknown"."""

    def __init__(self, mapping: Mapping[Any, Any], where: str, unknown: list[str]) -> None:
        self._mapping = mapping
        self._where = where
        self._read: set[str] = set()
        self._unknown = unknown  # shared by every Fields of one resource

    @property
    def where(self) -> str:
        return self._where

    def path(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def _get(self, key: str, kind: type) -> Any:
        self._read.add(key)
        value = self._mapping.get(key)
        if value is None:
            return None
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            name = _KIND_NAMES.get(kind, kind.__name__)
            raise ResourceSpecError(f"{self.path(key)} must be a {name}, not {type(value).__name__}")
        return value

    def text(self, key: str) -> str | None:
        value = self._get(key, str)
        return None if value is None else check_text(value, self.path(key))

    def required_text(self, key: str) -> str:
        value = self.text(key)
        if value is None:
            raise ResourceSpecError(f"{self.path(key)} is missing")
        return value

    def whole(self, key: str, low: int, high: int) -> int | None:
        value = self._get(key, int)
        if value is not None and not low <= value <= high:
            raise ResourceSpecError(f"{self.path(key)} must be between {low} and {high}, not {shown(value)}")
        return value  # type: ignore[no-any-return]

    def flag(self, key: str) -> bool | None:
        return self._get(key, bool)  # type: ignore[no-any-return]

    def texts(self, key: str) -> list[str]:
        values = self._get(key, list) or []
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise ResourceSpecError(
                    f"{self.path(key)} must be a list of strings ({self.path(key)}[{index}] is not)"
                )
            check_text(value, f"{self.path(key)}[{index}]")
        return list(values)

    def text_map(self, key: str) -> dict[str, str]:
        values = self._get(key, dict) or {}
        for name, value in values.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ResourceSpecError(f"{self.path(key)} must map strings to strings ({shown(name)} does not)")
            check_text(name, f"{self.path(key)} key")
            check_text(value, f"{self.path(key)}[{shown(name)}]")
        return dict(values)

    def scalar(self, key: str) -> Any:
        """Any scalar (quantities may be written as numbers); None when absent."""
        self._read.add(key)
        return self._mapping.get(key)

    def mapping(self, key: str) -> Fields | None:
        value = self._get(key, dict)
        return None if value is None else Fields(value, self.path(key), self._unknown)

    def items(self, key: str) -> list[Fields]:
        values = self._get(key, list) or []
        fields: list[Fields] = []
        for index, value in enumerate(values):
            if not isinstance(value, dict):
                raise ResourceSpecError(f"{self.path(key)}[{index}] must be a mapping, not {type(value).__name__}")
            fields.append(Fields(value, f"{self.path(key)}[{index}]", self._unknown))
        return fields

    def done(self) -> None:
        """Note the keys nobody read as unknown (call after reading every known key)."""
        self._unknown.extend(self.path(_key_name(key)) for key in self._mapping if key not in self._read)


def check_text(value: str, field: str) -> str:
    """Protobuf strings must be valid UTF-8: JSON and YAML escapes can produce lone surrogates that are not."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ResourceSpecError(f"{field} is not valid Unicode text") from None
    return value


def checked_limits(message: M, where: str) -> M:
    """The scheduler's own field limits (lengths, counts, characters), checked here so the error names the field."""
    try:
        check_fields(message, where)
    except InvalidArgument as error:
        raise ResourceSpecError(one_line(str(error))) from None
    return message


def one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 4 * MAX_SHOWN else f"{flat[: 4 * MAX_SHOWN - 3]}..."


# ------------------------------------------------------------------------------------------ the resource around


def resource_parts(resource: object, kind: str) -> tuple[Fields, Fields, list[str]]:
    """(metadata, spec) of a resource of ``kind``, checked: apiVersion, kind, a mapping each."""
    if not isinstance(resource, Mapping):
        raise ResourceSpecError(f"a {kind} resource must be a mapping with apiVersion, kind, metadata and spec")
    if resource.get("apiVersion") not in API_VERSIONS:
        raise ResourceSpecError(
            f"apiVersion must be one of {', '.join(API_VERSIONS)}, not {shown(resource.get('apiVersion'))}"
        )
    if resource.get("kind") != kind:
        raise ResourceSpecError(f"kind must be {kind}, not {shown(resource.get('kind'))}")
    unknown: list[str] = []
    top = Fields(resource, "", unknown)
    metadata = top.mapping("metadata")
    if metadata is None:
        raise ResourceSpecError("metadata is missing")
    spec = top.mapping("spec")
    if spec is None:
        raise ResourceSpecError("spec is missing")
    return metadata, spec, unknown


def name_of(metadata: Fields) -> str:
    """The name as given: whether it makes a valid name is the scheduler's to say (INVALID_ARGUMENT)."""
    return metadata.required_text("name")


def kubernetes_meta(metadata: Fields) -> pb.KubernetesMeta | None:
    namespace = metadata.text("namespace")
    generation = metadata.whole("generation", -(2**63), 2**63 - 1)
    if namespace is None and generation is None:
        return None
    if namespace is not None and not is_namespace(namespace):
        raise ResourceSpecError(f"metadata.namespace {shown(namespace)} is not a Kubernetes namespace name")
    if generation is not None and not 0 <= generation <= MAX_GENERATION:
        raise ResourceSpecError(f"metadata.generation {shown(generation)} is out of range")
    return pb.KubernetesMeta(namespace=namespace or "", generation=generation or 0)
