"""Field declarations: the one place where a wire field's width, range, unit and meaning live.

A message is a frozen dataclass whose fields are declared with the helpers below
(``u8``, ``u32``, ``raw``, ``array`` ...). From those declarations this module derives
the construct ``Struct`` (interpreted, named: the readable reference), the compiled
positional record the codec runs on, the range checks applied on both encode and decode,
and the tables of SPEC.md. Nothing else in pumprig slices bytes.

Two paths, one layout. ``struct_of`` / ``to_container`` / ``from_container`` work on named
dicts and are the reference, errors included. The hot path (``compiled_struct_of``,
``whole_payload_parser``, ``to_values``, ``from_values``) works on positional lists in field
order, with conversion plans precomputed per class; on any value it does not accept it
hands over to the reference, so the errors raised are the reference's own.
"""

from __future__ import annotations

import dataclasses
import io
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, TypeVar

import construct as cs

__all__ = [
    "FieldInfo",
    "FieldRangeError",
    "TruncatedError",
    "array",
    "build_values",
    "compiled_struct_of",
    "field_infos",
    "from_container",
    "from_values",
    "i32",
    "i64",
    "parse_values",
    "raw",
    "struct",
    "struct_of",
    "text",
    "to_container",
    "to_values",
    "truncated_field",
    "u8",
    "u16",
    "u32",
    "u64",
    "validate",
    "values_to_container",
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
_COMPILED: dict[type[Any], cs.Compiled] = {}
_WHOLE: dict[type[Any], cs.Compiled] = {}


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


class _Record(cs.Sequence):
    """A Sequence none of whose members reads the context: every length and count is fixed or
    prefixed, as with all pumprig fields. Interpreted it is a plain Sequence. Compiled, it parses
    into a list and builds from one, without the context Container that construct's compiled
    Struct and Sequence make for every record (most of their cost on arrays of small records),
    and each run of adjacent integer fields goes through one ``struct.Struct`` whose format
    joins those fields' own construct formats (``<B`` ``<L`` ``<L`` -> ``<BLL``).
    """

    def _runs(self) -> list[tuple[int, list[Any]]]:
        """(index of the first member, members): adjacent FormatFields of one byte order together."""
        runs: list[tuple[int, list[Any]]] = []
        for i, sc in enumerate(self.subcons):
            last = runs[-1][1] if runs else None
            if (
                last is not None
                and isinstance(sc, cs.FormatField)
                and isinstance(last[-1], cs.FormatField)
                and sc.fmtstr[0] == last[-1].fmtstr[0]
            ):
                last.append(sc)
            else:
                runs.append((i, [sc]))
        return runs

    @staticmethod
    def _emitformat(code: Any, run: list[Any]) -> tuple[str, int]:
        name = f"record_format_{code.allocateId()}"
        fmt = run[0].fmtstr[0] + "".join(sc.fmtstr[1:] for sc in run)
        code.append(f"{name} = struct.Struct({fmt!r})")
        return name, sum(sc.length for sc in run)

    def _emitparse(self, code: Any) -> str:
        items = []
        for _, run in self._runs():
            if len(run) == 1:
                items.append(run[0]._compileparse(code))
            else:
                name, size = self._emitformat(code, run)
                items.append(f"*{name}.unpack(io.read({size}))")
        fname = f"parse_record_{code.allocateId()}"
        code.append(f"""
            def {fname}(io, this):
                return [{", ".join(items)}]
        """)
        return f"{fname}(io, this)"

    def _emitbuild(self, code: Any) -> str:
        fname = f"build_record_{code.allocateId()}"
        block = f"""
            def {fname}(obj, io, this):
                values = obj
        """
        for first, run in self._runs():
            if len(run) == 1:
                block += f"""
                obj = values[{first}]
                {run[0]._compilebuild(code)}
                """
            else:
                name, _ = self._emitformat(code, run)
                args = ", ".join(f"values[{first + k}]" for k in range(len(run)))
                block += f"""
                io.write({name}.pack({args}))
                """
        block += """
                return values
        """
        code.append(block)
        return f"{fname}(obj, io, this)"


_RECORDS: dict[type[Any], _Record] = {}


def _record_subcon(info: FieldInfo) -> cs.Construct[Any, Any]:
    if info.kind == "struct":
        assert info.item is not None
        return _record_of(info.item)
    if info.kind == "array":
        assert info.item is not None
        return cs.PrefixedArray(cs.Int8ul, _record_of(info.item))
    return _subcon(info)


def _record_of(cls: type[Any]) -> _Record:
    """The positional twin of ``struct_of(cls)``: same subcons, same order, nested records for structs."""
    r = _RECORDS.get(cls)
    if r is None:
        r = _RECORDS[cls] = _Record(*[_record_subcon(info) for info in field_infos(cls)])
    return r


def _compiled(construct: cs.Construct[Any, Any]) -> cs.Compiled:
    compiled = construct.compile()
    assert isinstance(compiled, cs.Compiled)
    return compiled


def compiled_struct_of(cls: type[Any]) -> cs.Compiled:
    """The layout of ``struct_of(cls)``, compiled by construct into plain Python for speed.

    Positional: it builds from ``to_values(message)`` and parses into a list in field order
    (nested lists for structs and array items); ``values_to_container`` names them.
    """
    s = _COMPILED.get(cls)
    if s is None:
        s = _COMPILED[cls] = _compiled(_record_of(cls))
    return s


def whole_payload_parser(cls: type[Any]) -> cs.Compiled:
    """Compiled parser of a complete payload: the record followed by Terminated (no trailing bytes).

    Parses into the list ``compiled_struct_of(cls)`` gives, plus a final ``None`` (Terminated's).
    """
    s = _WHOLE.get(cls)
    if s is None:
        subcons = [_record_subcon(info) for info in field_infos(cls)]
        s = _WHOLE[cls] = _compiled(_Record(*subcons, cs.Terminated))
    return s


# What construct's parse() and build() make afresh on every call; no record member reads it.
_PARSING: Any = cs.Container(_parsing=True, _building=False, _sizing=False)
_PARSING["_params"] = _PARSING
_BUILDING: Any = cs.Container(_parsing=False, _building=True, _sizing=False)
_BUILDING["_params"] = _BUILDING


def build_values(cls: type[Any], values: Sequence[Any]) -> bytes:
    """``compiled_struct_of(cls).build(values)``, minus construct's per-call context (the hot path)."""
    stream = io.BytesIO()
    compiled_struct_of(cls).buildfunc(values, stream, _BUILDING)
    return stream.getvalue()


def parse_values(cls: type[Any], data: bytes, *, whole: bool = True) -> list[Any]:
    """``whole_payload_parser(cls).parse(data)`` (or, not ``whole``, ``compiled_struct_of(cls).parse``:
    a prefix of ``data``), minus construct's per-call context (the hot path).

    Raises what those raise: ConstructError or struct.error on a short or overlong payload.
    """
    compiled = whole_payload_parser(cls) if whole else compiled_struct_of(cls)
    values: list[Any] = compiled.parsefunc(io.BytesIO(data), _PARSING)
    return values


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


# --------------------------------------------------------------------------- the hot path: positional values


class _NotFast(Exception):
    """Internal: a value the fast path does not take; the reference path decides (and raises)."""


_Convert = Callable[[Any], Any]


@dataclass(frozen=True)
class _Plan:
    """How the values of one class go to and from the wire, precomputed from its field_infos."""

    encode: Callable[[Any], list[Any]]
    """Message -> wire values; raises _NotFast on anything the reference might refuse."""
    decode: Callable[[Sequence[Any]], Any]
    """Wire values -> message; raises _NotFast on anything the reference might refuse."""


_PLANS: dict[type[Any], _Plan] = {}


def _plan(cls: type[Any]) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        infos = field_infos(cls)
        plan = _PLANS[cls] = _Plan(_record_encoder(cls, infos), _record_decoder(cls, infos))
    return plan


def _record_encoder(cls: type[Any], infos: tuple[FieldInfo, ...]) -> Callable[[Any], list[Any]]:
    names = [info.name for info in infos]
    ints = tuple((i, info.lo, info.hi) for i, info in enumerate(infos) if _is_plain_int(info))
    converts = tuple((i, _field_encoder(info)) for i, info in enumerate(infos) if not _is_plain_int(info))
    get_all = _getter(names)

    def encode(obj: Any) -> list[Any]:
        values = list(get_all(obj))
        for i, lo, hi in ints:
            v = values[i]
            if type(v) is not int or not lo <= v <= hi:
                values[i] = _plain_int(v, lo, hi)
        for i, enc in converts:
            values[i] = enc(values[i])
        return values

    return encode


def _getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """obj -> the values of its attributes ``names``, as a tuple (whatever their number)."""
    if len(names) >= 2:
        return operator.attrgetter(*names)
    return lambda obj: tuple(getattr(obj, name) for name in names)


def _plain_int(v: Any, lo: int, hi: int) -> int:
    """An int subclass (an IntEnum member in a plain field, a header's msg_type) as the reference takes it."""
    if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
        return int(v)
    raise _NotFast


def _field_encoder(info: FieldInfo) -> _Convert:
    """Python value -> wire value (not for plain integers), for values the reference
    ``to_container`` certainly accepts."""
    lo, hi, n = info.lo, info.hi, info.width_bytes
    if info.kind == "int" and info.enum is not None:
        wire = {m: int(m) for m in info.enum if lo <= m <= hi}
        enum_cls = info.enum

        def enc_enum(v: Any) -> int:
            if type(v) is enum_cls:
                w = wire.get(v)
                if w is not None:
                    return w
            raise _NotFast

        return enc_enum
    if info.kind == "int" and info.flags is not None:
        flags_cls, undefined = info.flags, ~hi

        def enc_flags(v: Any) -> int:
            if type(v) is flags_cls:
                w = int(v)
                if not w & undefined:
                    return w
            raise _NotFast

        return enc_flags
    if info.kind == "raw":

        def enc_raw(v: Any) -> bytes:
            if type(v) is bytes and len(v) == n:
                return v
            raise _NotFast

        return enc_raw
    if info.kind == "text":

        def enc_text(v: Any) -> bytes:
            if type(v) is str and len(v) <= n and v.isascii() and "\x00" not in v:
                return v.encode("ascii").ljust(n, b"\x00")
            raise _NotFast

        return enc_text
    assert info.item is not None
    item_cls, max_items, item_encode = info.item, info.max_items, _plan(info.item).encode

    def enc_item(v: Any) -> list[Any]:
        if type(v) is item_cls:
            return item_encode(v)
        raise _NotFast

    if info.kind == "struct":
        return enc_item

    def enc_array(v: Any) -> list[list[Any]]:
        if type(v) is tuple and len(v) <= max_items:
            return [enc_item(item) for item in v]
        raise _NotFast

    return enc_array


def _record_decoder(cls: type[Any], infos: tuple[FieldInfo, ...]) -> Callable[[Sequence[Any]], Any]:
    n = len(infos)
    ranges = tuple(
        (i, info.lo, info.hi) for i, info in enumerate(infos) if _is_plain_int(info) and not info.any_wire_value
    )
    converts = tuple((i, _field_decoder(info)) for i, info in enumerate(infos) if not _is_plain_int(info))

    def decode(values: Sequence[Any]) -> Any:
        for i, lo, hi in ranges:
            if not lo <= values[i] <= hi:
                raise _NotFast
        args = list(values[:n])  # a whole-payload parse ends with Terminated's None
        for i, dec in converts:
            args[i] = dec(args[i])
        return cls(*args)

    return decode


def _is_plain_int(info: FieldInfo) -> bool:
    """An integer that is neither enum nor flags: the record plans check its range inline."""
    return info.kind == "int" and info.enum is None and info.flags is None


def _field_decoder(info: FieldInfo) -> _Convert:
    """Wire value -> Python value (not for plain integers), for values the reference
    ``from_container`` certainly accepts."""
    lo, hi, n = info.lo, info.hi, info.width_bytes
    if info.kind == "int" and info.enum is not None:
        members = {int(m): m for m in info.enum if lo <= m <= hi}

        def dec_enum(v: int) -> IntEnum:
            m = members.get(v)
            if m is None:
                raise _NotFast
            return m

        return dec_enum
    if info.kind == "int" and info.flags is not None:
        flags_cls, undefined = info.flags, ~hi
        seen: dict[int, IntFlag] = {}  # making an IntFlag costs more than the rest of a small record

        def dec_flags(v: int) -> IntFlag:
            f = seen.get(v)
            if f is None:
                if v & undefined:
                    raise _NotFast
                f = flags_cls(v)
                if len(seen) < 4096:
                    seen[v] = f
            return f

        return dec_flags
    if info.kind == "raw":

        def dec_raw(v: bytes) -> bytes:
            if len(v) == n:  # construct's compiled Bytes returns a short read instead of raising
                return bytes(v)
            raise _NotFast

        return dec_raw
    if info.kind == "text":

        def dec_text(v: bytes) -> str:
            if len(v) == n:
                stripped = bytes(v).rstrip(b"\x00")
                if b"\x00" not in stripped and stripped.isascii():
                    return stripped.decode("ascii")
            raise _NotFast

        return dec_text
    assert info.item is not None
    max_items, item_decode = info.max_items, _plan(info.item).decode
    if info.kind == "struct":
        return item_decode

    def dec_array(v: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
        if len(v) <= max_items:
            return tuple(map(item_decode, v))
        raise _NotFast

    return dec_array


def to_values(obj: Any) -> list[Any]:
    """Validate a message and turn it into the positional values ``compiled_struct_of`` builds from.

    Raises FieldRangeError exactly as ``to_container`` does (it is what decides any value the
    precomputed plan does not take).
    """
    try:
        return _plan(type(obj)).encode(obj)
    except _NotFast:
        return _container_to_values(type(obj), to_container(obj))


def from_values(cls: type[T], values: Sequence[Any]) -> T:
    """Build a message from the positional values a compiled parser returns, checking every range.

    Raises FieldRangeError or TruncatedError exactly as ``from_container`` does (it is what
    decides any value the precomputed plan does not take); the codec turns those into error values.
    """
    try:
        result: T = _plan(cls).decode(values)
    except _NotFast:
        return from_container(cls, values_to_container(cls, values))
    return result


def truncated_field(cls: type[Any], values: Sequence[Any], _path: str = "") -> str | None:
    """The first raw or text field that a short payload left short (construct's compiled
    ``Bytes`` returns a short read at the end of the data instead of raising), or None.

    Decoding checks ranges field by field; a payload cut short is MALFORMED whatever the values
    before the cut, so the codec asks this before reporting a value out of range."""
    for info, value in zip(field_infos(cls), values, strict=False):
        path = f"{_path}{info.name}"
        if info.kind in ("raw", "text") and len(value) != info.width_bytes:
            return path
        if info.kind == "struct":
            assert info.item is not None
            found = truncated_field(info.item, value, f"{path}.")
            if found is not None:
                return found
        elif info.kind == "array":
            assert info.item is not None
            for i, item in enumerate(value):
                found = truncated_field(info.item, item, f"{path}[{i}].")
                if found is not None:
                    return found
    return None


def values_to_container(cls: type[Any], values: Sequence[Any]) -> dict[str, Any]:
    """Positional values (as parsed by the compiled path) as the named dict ``struct_of`` uses."""
    out: dict[str, Any] = {}
    for info, value in zip(field_infos(cls), values, strict=False):
        if info.kind == "struct":
            assert info.item is not None
            out[info.name] = values_to_container(info.item, value)
        elif info.kind == "array":
            assert info.item is not None
            item_cls = info.item
            out[info.name] = [values_to_container(item_cls, item) for item in value]
        else:
            out[info.name] = value
    return out


def _container_to_values(cls: type[Any], container: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for info in field_infos(cls):
        value = container[info.name]
        if info.kind == "struct":
            assert info.item is not None
            out.append(_container_to_values(info.item, value))
        elif info.kind == "array":
            assert info.item is not None
            item_cls = info.item
            out.append([_container_to_values(item_cls, item) for item in value])
        else:
            out.append(value)
    return out
