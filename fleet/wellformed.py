"""Is a decoded protobuf message what its schema says? (betterproto2 does not guarantee it.)

betterproto2 decodes a field sent with the wrong wire type into a value of the wrong Python
type rather than failing: a ``string`` field can come out as an ``int``, an ``int32`` as a
``list``, a ``uint64`` can be absent (``None``), and two members of one ``oneof`` can both be
set (``which_one_of`` then raises ``RuntimeError``). Code that then calls ``.encode()`` or
stores the value fails far from the wire (an ``AttributeError`` in the credentials check, an
``OverflowError`` in the store). Both ends of the agent stream therefore
check every decoded message with :func:`problem` before using it.

Used by ``fleet.server.rpc`` (through ``fleet.server.reports``) and ``fleet.agent.link``; pure,
no I/O, depends only on betterproto2.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import betterproto2

__all__ = ["problem"]

_INT_RANGES = {
    betterproto2.TYPE_INT32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_SINT32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_UINT32: (0, 2**32 - 1),
    betterproto2.TYPE_FIXED32: (0, 2**32 - 1),
    betterproto2.TYPE_INT64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_SINT64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_UINT64: (0, 2**64 - 1),
    betterproto2.TYPE_FIXED64: (0, 2**64 - 1),
    # Enums are int32 on the wire; a value this peer does not know is kept as a number.
    betterproto2.TYPE_ENUM: (-(2**31), 2**31 - 1),
}
_PLAIN = {
    betterproto2.TYPE_STRING: str,
    betterproto2.TYPE_BYTES: bytes,
    betterproto2.TYPE_BOOL: bool,
    betterproto2.TYPE_FLOAT: float,
    betterproto2.TYPE_DOUBLE: float,
}


def problem(message: betterproto2.Message, *, path: str = "") -> str | None:
    """The first field of ``message`` (recursively) whose value its schema does not allow, as
    ``"field.path: why"``, or ``None`` when the whole message is well formed.

    Text in the answer comes from the schema only, never from the message, so it is safe to log.
    """
    groups: set[str] = set()
    for field_name, meta in _schema(type(message)):
        value = getattr(message, field_name)
        if value is None and (meta.optional or meta.group is not None):
            continue  # unset optional field or oneof member
        if meta.group is not None:
            if meta.group in groups:  # two members of a oneof came on the wire: both are kept
                return f"{path}{meta.group}: more than one member of the oneof is set"
            groups.add(meta.group)
        if meta.repeated or meta.map_meta is not None:
            found = _repeated(meta, value, path + field_name)
        else:
            found = _value(meta.proto_type, value, path + field_name)
        if found is not None:
            return found
    return None


@functools.cache
def _schema(cls: type[betterproto2.Message]) -> tuple[tuple[str, betterproto2.FieldMetadata], ...]:
    """Each field's name and metadata (cached: this runs for every message on the wire)."""
    fields: Any = dataclasses.fields  # betterproto2 messages are dataclasses at run time
    return tuple((field.name, betterproto2.FieldMetadata.get(field)) for field in fields(cls))


def _repeated(meta: betterproto2.FieldMetadata, value: object, name: str) -> str | None:
    if meta.map_meta is not None:
        if not isinstance(value, dict):
            return f"{name}: not a map"
        key_type, value_type = meta.map_meta[0].proto_type, meta.map_meta[1].proto_type
        for key, item in value.items():
            found = _value(key_type, key, f"{name}[key]") or _value(
                value_type, item, f"{name}[value]"
            )
            if found is not None:
                return found
        return None
    if not isinstance(value, list):
        return f"{name}: not a list"
    for index, item in enumerate(value):
        found = _value(meta.proto_type, item, f"{name}[{index}]")
        if found is not None:
            return found
    return None


def _value(proto_type: str, value: object, name: str) -> str | None:
    if proto_type == betterproto2.TYPE_MESSAGE:
        if not isinstance(value, betterproto2.Message):
            return f"{name}: not a message"
        return problem(value, path=f"{name}.")
    plain = _PLAIN.get(proto_type)
    if plain is not None:
        return None if type(value) is plain else f"{name}: not a {proto_type}"
    bounds = _INT_RANGES.get(proto_type)
    if bounds is None:  # pragma: no cover - a type this schema does not use
        return f"{name}: unsupported type {proto_type}"
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{name}: not an integer"
    if not bounds[0] <= value <= bounds[1]:
        return f"{name}: out of the {proto_type} range"
    return None
