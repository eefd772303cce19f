"""The resource a request message names, read by the field paths of the access table (protobuf reflection)."""

from __future__ import annotations

from google.protobuf.message import Message

from modelplane.auth.access_table import Resource, ResourceFields

__all__ = ["resource_of"]


def _field(message: Message, path: str) -> str:
    if not path:
        return ""
    value: object = message
    for part in path.split("."):
        if not isinstance(value, Message) or part not in value.DESCRIPTOR.fields_by_name:
            return ""
        value = getattr(value, part)
    return value if isinstance(value, str) else ""


def resource_of(request: object, fields: ResourceFields | None) -> Resource:
    """What ``request`` acts on; empty where the request does not say or is not a message (a stream)."""
    if fields is None:
        return Resource()
    if not isinstance(request, Message):
        return Resource(fields.kind)
    return Resource(fields.kind, _field(request, fields.name), _field(request, fields.namespace))
