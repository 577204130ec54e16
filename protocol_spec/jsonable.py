"""Messages as JSON-ready values and back: enums by name, flags as name lists, bytes as hex.

Used by the golden vectors, ``pumprig decode --json`` and every ``--json`` output, so a
message reads the same everywhere.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, TypeVar

from .codec import Header
from .fields import field_infos

__all__ = ["from_jsonable", "header_json", "to_jsonable"]

T = TypeVar("T")


def to_jsonable(value: Any) -> Any:
    """A message (or any field value) as plain JSON types."""
    if isinstance(value, enum.IntFlag):
        return [m.name for m in type(value) if m.value & value.value]
    if isinstance(value, enum.IntEnum):
        return value.name
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple | list):
        return [to_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def from_jsonable(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild a message from ``to_jsonable`` output (ranges are checked when it is encoded)."""
    kwargs: dict[str, Any] = {}
    for info in field_infos(cls):
        v = data[info.name]
        if info.kind == "int":
            if info.enum is not None:
                kwargs[info.name] = info.enum[v] if isinstance(v, str) else info.enum(v)
            elif info.flags is not None:
                flag = info.flags(0)
                for name in v:
                    flag |= info.flags[name]
                kwargs[info.name] = flag
            else:
                kwargs[info.name] = int(v)
        elif info.kind == "raw":
            kwargs[info.name] = bytes.fromhex(v)
        elif info.kind == "text":
            kwargs[info.name] = str(v)
        elif info.kind == "struct":
            assert info.item is not None
            kwargs[info.name] = from_jsonable(info.item, v)
        else:
            assert info.item is not None
            kwargs[info.name] = tuple(from_jsonable(info.item, item) for item in v)
    return cls(**kwargs)


def header_json(h: Header) -> dict[str, Any]:
    return {
        "version": h.version,
        "msg_type": h.msg_type,
        "msg_type_name": h.known_type.name if h.known_type is not None else None,
        "flags": to_jsonable(h.flags),
        "session_id": h.session_id,
        "counter": h.counter,
        "echo_counter": h.echo_counter,
        "command_id": f"{h.command_id:016x}",
    }
