"""Field declarations: the one place where a wire field's width, range, unit and meaning live.

A message is a frozen dataclass whose fields are declared with the helpers below
(``u8``, ``u32``, ``raw``, ``array`` ...). From those declarations this module derives
the construct ``Struct`` (interpreted and compiled), the range checks applied on both
encode and decode, and the tables of SPEC.md. Nothing else in pumprig slices bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, TypeVar

import construct as cs

__all__ = [
    "FieldInfo",
    "FieldRangeError",
    "TruncatedError",
    "array",
    "compiled_struct_of",
    "field_infos",
    "from_container",
    "i32",
    "i64",
    "raw",
    "struct",
    "struct_of",
    "text",
    "to_container",
    "u8",
    "u16",
    "u32",
    "u64",
    "validate",
    "whole_payload_parser",
    "wire_size_range",
]

T = TypeVar("T")

_META_KEY = "pumprig"


@dataclass(frozen=True)
class FieldInfo:
    """How one field travels on the wire, and what it means."""

    name: str
    kind: str  # "int", "raw", "text", "struct", "array"
    wire_type: str  # as SPEC.md prints it: "u8", "u32le", "bytes[16]", "u8 count + N x FlexStep"
    doc: str
    unit: str = ""
    lo: int = 0
    hi: int = 0
    signed: bool = False
    width_bytes: int = 0
    enum: type[IntEnum] | None = None
    flags: type[IntFlag] | None = None
    item: type[Any] | None = None
    max_items: int = 0
    members: Mapping[int, IntEnum] | None = dataclasses.field(default=None, compare=False, repr=False)
    """For an enum field: value -> member, for a check and a lookup in one step."""

    def __post_init__(self) -> None:
        if self.enum is not None and self.members is None:
            object.__setattr__(self, "members", {int(m): m for m in self.enum})

    @property
    def any_wire_value(self) -> bool:
        """A plain integer whose declared range is all its width holds: decoding needs no check."""
        if self.kind != "int" or self.enum is not None or self.flags is not None:
            return False
        bits = self.width_bytes * 8
        if self.signed:
            return self.lo == -(1 << (bits - 1)) and self.hi == (1 << (bits - 1)) - 1
        return self.lo == 0 and self.hi == (1 << bits) - 1


class FieldRangeError(ValueError):
    """A field value outside its declared range (or not a member of its enum)."""

    def __init__(self, field: str, value: object, lo: int, hi: int, reason: str = "") -> None:
        self.field = field
        self.value = value
        self.lo = lo
        self.hi = hi
        why = reason or f"must be in [{lo}, {hi}]"
        super().__init__(f"field {field!r} = {value!r}: {why}")


class TruncatedError(ValueError):
    """The payload ended inside a fixed-length field: a malformed payload, not a range error."""


def _meta(info: dict[str, Any]) -> Any:
    return dataclasses.field(metadata={_META_KEY: info})


def _int_field(
    width: int,
    signed: bool,
    doc: str,
    unit: str,
    lo: int | None,
    hi: int | None,
    enum_cls: type[IntEnum] | None,
    flags_cls: type[IntFlag] | None,
) -> Any:
    bits = width * 8
    full_lo = -(1 << (bits - 1)) if signed else 0
    full_hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if enum_cls is not None:
        values = [int(m) for m in enum_cls]
        lo = min(values) if lo is None else lo
        hi = max(values) if hi is None else hi
    if flags_cls is not None:
        mask = 0
        for m in flags_cls:
            mask |= int(m)
        lo, hi = 0, mask
    lo = full_lo if lo is None else lo
    hi = full_hi if hi is None else hi
    if not full_lo <= lo <= hi <= full_hi:
        raise ValueError(f"range [{lo}, {hi}] does not fit {'i' if signed else 'u'}{bits}")
    name = f"{'i' if signed else 'u'}{bits}" + ("le" if width > 1 else "")
    return _meta(
        {
            "kind": "int",
            "wire_type": name,
            "doc": doc,
            "unit": unit,
            "lo": lo,
            "hi": hi,
            "signed": signed,
            "width_bytes": width,
            "enum": enum_cls,
            "flags": flags_cls,
        }
    )


def u8(
    doc: str,
    *,
    unit: str = "",
    lo: int | None = None,
    hi: int | None = None,
    enum: type[IntEnum] | None = None,
    flags: type[IntFlag] | None = None,
) -> Any:
    """An unsigned 8-bit field."""
    return _int_field(1, False, doc, unit, lo, hi, enum, flags)


def u16(
    doc: str,
    *,
    unit: str = "",
    lo: int | None = None,
    hi: int | None = None,
    enum: type[IntEnum] | None = None,
    flags: type[IntFlag] | None = None,
) -> Any:
    """An unsigned 16-bit little-endian field."""
    return _int_field(2, False, doc, unit, lo, hi, enum, flags)


def u32(
    doc: str,
    *,
    unit: str = "",
    lo: int | None = None,
    hi: int | None = None,
    enum: type[IntEnum] | None = None,
    flags: type[IntFlag] | None = None,
) -> Any:
    """An unsigned 32-bit little-endian field."""
    return _int_field(4, False, doc, unit, lo, hi, enum, flags)


def u64(doc: str, *, unit: str = "", lo: int | None = None, hi: int | None = None) -> Any:
    """An unsigned 64-bit little-endian field (times and lifetime counters)."""
    return _int_field(8, False, doc, unit, lo, hi, None, None)


def i32(doc: str, *, unit: str = "", lo: int | None = None, hi: int | None = None) -> Any:
    """A signed (two's complement) 32-bit little-endian field."""
    return _int_field(4, True, doc, unit, lo, hi, None, None)


def i64(doc: str, *, unit: str = "", lo: int | None = None, hi: int | None = None) -> Any:
    """A signed (two's complement) 64-bit little-endian field."""
    return _int_field(8, True, doc, unit, lo, hi, None, None)


def raw(length: int, doc: str) -> Any:
    """A fixed-length byte string (nonces, tags, key ids)."""
    return _meta(
        {
            "kind": "raw",
            "wire_type": f"bytes[{length}]",
            "doc": doc,
            "width_bytes": length,
            "lo": length,
            "hi": length,
        }
    )


def text(length: int, doc: str) -> Any:
    """Fixed-length ASCII, right-padded with 0x00 (serial numbers, model names)."""
    return _meta(
        {
            "kind": "text",
            "wire_type": f"ascii[{length}]",
            "doc": doc,
            "width_bytes": length,
            "lo": 0,
            "hi": length,
        }
    )


def struct(item: type[Any], doc: str) -> Any:
    """A nested record, laid out inline."""
    return _meta({"kind": "struct", "wire_type": item.__name__, "doc": doc, "item": item})


def array(item: type[Any], max_items: int, doc: str) -> Any:
    """A u8 count followed by that many ``item`` records; at most ``max_items``."""
    if not 0 < max_items <= 255:
        raise ValueError("max_items must be in [1, 255]")
    return _meta(
        {
            "kind": "array",
            "wire_type": f"u8 count + count x {item.__name__}",
            "doc": doc,
            "item": item,
            "max_items": max_items,
            "lo": 0,
            "hi": max_items,
        }
    )


_INFOS: dict[type[Any], tuple[FieldInfo, ...]] = {}
_STRUCTS: dict[type[Any], cs.Construct[Any, Any]] = {}
_COMPILED: dict[type[Any], cs.Construct[Any, Any]] = {}
_WHOLE: dict[type[Any], cs.Construct[Any, Any]] = {}


def field_infos(cls: type[Any]) -> tuple[FieldInfo, ...]:
    """The wire fields of a message dataclass, in wire order."""
    cached = _INFOS.get(cls)
    if cached is not None:
        return cached
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    infos = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META_KEY)
        if meta is None:
            raise TypeError(f"{cls.__name__}.{f.name} has no wire declaration")
        infos.append(FieldInfo(name=f.name, **meta))
    _INFOS[cls] = result = tuple(infos)
    return result


def _subcon(info: FieldInfo) -> cs.Construct[Any, Any]:
    if info.kind == "int":
        return _INTS[(info.width_bytes, info.signed)]
    if info.kind in ("raw", "text"):
        return cs.Bytes(info.width_bytes)
    if info.kind == "struct":
        assert info.item is not None
        return struct_of(info.item)
    if info.kind == "array":
        assert info.item is not None
        return cs.PrefixedArray(cs.Int8ul, struct_of(info.item))
    raise AssertionError(info.kind)


_INTS: dict[tuple[int, bool], cs.Construct[int, int]] = {
    (1, False): cs.Int8ul,
    (2, False): cs.Int16ul,
    (4, False): cs.Int32ul,
    (8, False): cs.Int64ul,
    (4, True): cs.Int32sl,
    (8, True): cs.Int64sl,
}


def struct_of(cls: type[Any]) -> cs.Construct[Any, Any]:
    """The construct Struct for a message dataclass (interpreted)."""
    s = _STRUCTS.get(cls)
    if s is None:
        s = _STRUCTS[cls] = cs.Struct(*[info.name / _subcon(info) for info in field_infos(cls)])
    return s


def compiled_struct_of(cls: type[Any]) -> cs.Construct[Any, Any]:
    """The same Struct, compiled by construct into plain Python for speed."""
    s = _COMPILED.get(cls)
    if s is None:
        s = _COMPILED[cls] = struct_of(cls).compile()
    return s


def whole_payload_parser(cls: type[Any]) -> cs.Construct[Any, Any]:
    """Compiled parser of a complete payload: the struct followed by Terminated (no trailing bytes)."""
    s = _WHOLE.get(cls)
    if s is None:
        subcons = [info.name / _subcon(info) for info in field_infos(cls)]
        s = _WHOLE[cls] = cs.Struct(*subcons, cs.Terminated).compile()
    return s


def wire_size_range(cls: type[Any]) -> tuple[int, int]:
    """Smallest and largest encoded size of a message, in bytes."""
    lo = hi = 0
    for info in field_infos(cls):
        if info.kind == "array":
            assert info.item is not None
            ilo, ihi = wire_size_range(info.item)
            lo += 1
            hi += 1 + info.max_items * ihi
        elif info.kind == "struct":
            assert info.item is not None
            ilo, ihi = wire_size_range(info.item)
            lo += ilo
            hi += ihi
        else:
            lo += info.width_bytes
            hi += info.width_bytes
    return lo, hi


def _check_int(info: FieldInfo, value: object, prefix: str) -> int:
    """The value as a plain int, or FieldRangeError naming ``prefix + info.name``."""
    if type(value) is int and info.members is None and info.flags is None:
        if info.lo <= value <= info.hi:
            return value
        raise FieldRangeError(prefix + info.name, value, info.lo, info.hi)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldRangeError(prefix + info.name, value, info.lo, info.hi, "must be an integer")
    if not info.lo <= value <= info.hi:
        raise FieldRangeError(prefix + info.name, value, info.lo, info.hi)
    if info.members is not None and value not in info.members:
        assert info.enum is not None
        names = ", ".join(f"{m.name}={int(m)}" for m in info.enum)
        raise FieldRangeError(prefix + info.name, value, info.lo, info.hi, f"not one of {names}")
    if info.flags is not None and value & ~info.hi:
        raise FieldRangeError(prefix + info.name, value, info.lo, info.hi, "has undefined flag bits")
    return int(value)


def to_container(obj: Any, _path: str = "") -> dict[str, Any]:
    """Validate a message and turn it into the plain dict construct builds from.

    Raises FieldRangeError (local misuse) for any value outside its declared range.
    """
    out: dict[str, Any] = {}
    for info in field_infos(type(obj)):
        value = getattr(obj, info.name)
        if info.kind == "int":
            out[info.name] = _check_int(info, value, _path)
            continue
        path = f"{_path}{info.name}"
        if info.kind == "raw":
            if not isinstance(value, bytes) or len(value) != info.width_bytes:
                raise FieldRangeError(path, value, info.lo, info.hi, f"must be {info.width_bytes} bytes")
            out[info.name] = value
        elif info.kind == "text":
            if not isinstance(value, str) or len(value) > info.width_bytes or not value.isascii() or "\x00" in value:
                raise FieldRangeError(
                    path, value, 0, info.width_bytes, f"must be ASCII of at most {info.width_bytes} characters"
                )
            out[info.name] = value.encode("ascii").ljust(info.width_bytes, b"\x00")
        elif info.kind == "struct":
            if type(value) is not info.item:
                raise FieldRangeError(path, value, 0, 0, f"must be a {info.item!r}")
            out[info.name] = to_container(value, f"{path}.")
        else:
            if not isinstance(value, Sequence) or len(value) > info.max_items:
                raise FieldRangeError(path, value, 0, info.max_items, f"at most {info.max_items} items")
            item_cls = info.item
            items = []
            for i, item in enumerate(value):
                if type(item) is not item_cls:
                    raise FieldRangeError(f"{path}[{i}]", item, 0, 0, f"must be a {item_cls!r}")
                items.append(to_container(item, f"{path}[{i}]."))
            out[info.name] = items
    return out


def validate(obj: Any) -> None:
    """Raise FieldRangeError if any field of ``obj`` is outside its declared range."""
    to_container(obj)


_UNCHECKED: dict[type[Any], frozenset[str]] = {}


def _unchecked_fields(cls: type[Any]) -> frozenset[str]:
    """Fields every wire value of which is valid: decoding passes them through."""
    names = _UNCHECKED.get(cls)
    if names is None:
        names = _UNCHECKED[cls] = frozenset(i.name for i in field_infos(cls) if i.any_wire_value)
    return names


def from_container(cls: type[T], container: Mapping[str, Any], _path: str = "") -> T:
    """Build a message from a parsed construct container, checking every range.

    Raises FieldRangeError; the codec turns that into an error value.
    """
    kwargs: dict[str, Any] = {}
    unchecked = _unchecked_fields(cls)
    for info in field_infos(cls):
        value = container[info.name]
        if info.name in unchecked:
            kwargs[info.name] = value
            continue
        if info.kind == "int":
            v = _check_int(info, value, _path)
            if info.members is not None:
                kwargs[info.name] = info.members[v]
            elif info.flags is not None:
                kwargs[info.name] = info.flags(v)
            else:
                kwargs[info.name] = v
            continue
        path = f"{_path}{info.name}"
        if info.kind in ("raw", "text") and len(value) != info.width_bytes:
            # construct's compiled Bytes returns a short read instead of raising
            raise TruncatedError(f"{path}: {len(value)} of {info.width_bytes} bytes")
        if info.kind == "raw":
            kwargs[info.name] = bytes(value)
        elif info.kind == "text":
            data = bytes(value)
            stripped = data.rstrip(b"\x00")
            if b"\x00" in stripped or not stripped.isascii():
                raise FieldRangeError(path, data, 0, info.width_bytes, "must be NUL-padded ASCII")
            kwargs[info.name] = stripped.decode("ascii")
        elif info.kind == "struct":
            assert info.item is not None
            kwargs[info.name] = from_container(info.item, value, f"{path}.")
        else:
            if len(value) > info.max_items:
                raise FieldRangeError(path, len(value), 0, info.max_items, f"at most {info.max_items} items")
            assert info.item is not None
            kwargs[info.name] = tuple(from_container(info.item, item, f"{path}[{i}].") for i, item in enumerate(value))
    return cls(**kwargs)
