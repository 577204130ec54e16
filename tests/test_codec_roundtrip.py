"""The codec both ways: every message class round-trips, the compiled positional hot path agrees
with the interpreted named structs (and decodes any payload as the compiled named struct and
``from_container`` do), out-of-range values are refused on encode and reported precisely on
decode, and the largest message of every class fits a frame."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import construct as cs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol_spec.catalog import CATALOG
from protocol_spec.codec import (
    HEADER_BYTES,
    DecodeError,
    Header,
    Packet,
    decode_body,
    decode_header,
    decode_payload,
    encode_body,
    encode_header,
    encode_packet,
    encode_payload,
)
from protocol_spec.enums import PROTOCOL_VERSION, ErrorCode, FrameFlags, MsgType, Role, TherapyMode
from protocol_spec.examples import example_session
from protocol_spec.fields import (
    FieldInfo,
    FieldRangeError,
    TruncatedError,
    build_values,
    compiled_struct_of,
    field_infos,
    from_container,
    from_values,
    parse_values,
    struct_of,
    to_container,
    to_values,
    values_to_container,
    whole_payload_parser,
    wire_size_range,
)
from protocol_spec.framing import CRC_BYTES, MAX_ENCODED_BYTES, MAX_FRAME_BYTES, Deframer
from protocol_spec.messages import (
    CommandOutcome,
    ErrorReply,
    FlexStep,
    InterrogateReply,
    Program,
    ReadProgram,
    StageProgram,
)
from protocol_spec.security import TAG_BYTES, open_payload, seal_payload
from tests.strategies import REPLY_CLASSES, REQUEST_CLASSES, extreme_of, keys_for_session, messages_of, packets

PAYLOAD_CLASSES: tuple[type[Any], ...] = tuple(dict.fromkeys((*REQUEST_CLASSES, *REPLY_CLASSES)))
ALL_CLASSES: tuple[type[Any], ...] = (*PAYLOAD_CLASSES, Header)
FRAMES = example_session()


def _ids(cls: type[Any]) -> str:
    return cls.__name__


def _plain(value: Any) -> Any:
    """A construct container as plain dicts and lists (hidden ``_io`` keys dropped)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _assert_typed(message: Any) -> None:
    """Decoded enum fields are enum members, flag fields IntFlags, arrays tuples, texts str."""
    for info in field_infos(type(message)):
        value = getattr(message, info.name)
        if info.enum is not None:
            assert type(value) is info.enum, info.name
        elif info.flags is not None:
            assert type(value) is info.flags, info.name
        elif info.kind == "int":
            assert type(value) is int, info.name
        elif info.kind == "raw":
            assert type(value) is bytes, info.name
        elif info.kind == "text":
            assert type(value) is str, info.name
        elif info.kind == "struct":
            _assert_typed(value)
        else:
            assert type(value) is tuple, info.name
            for item in value:
                _assert_typed(item)


# --------------------------------------------------------------------------- payloads


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=_ids)
@given(data=st.data())
def test_payload_round_trip(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(messages_of(cls))
    encoded = encode_payload(message)
    lo, hi = wire_size_range(cls)
    assert lo <= len(encoded) <= hi
    decoded = decode_payload(cls, encoded)
    assert decoded == message
    _assert_typed(decoded)
    assert encode_payload(decoded) == encoded


def _assert_paths_agree(cls: type[Any], message: Any, payload: bytes) -> None:
    """The interpreted named Struct (the reference) and the compiled positional hot path build the
    same bytes from a message, and parse those bytes into the same fields and the same message."""
    container = to_container(message)
    values = to_values(message)
    assert values_to_container(cls, values) == container
    interpreted = bytes(struct_of(cls).build(container))
    compiled = bytes(compiled_struct_of(cls).build(values))
    assert interpreted == compiled == build_values(cls, values) == encode_payload(message) == payload
    parsed_i = struct_of(cls).parse(payload)
    parsed_c = compiled_struct_of(cls).parse(payload)
    assert _plain(parsed_i) == _plain(values_to_container(cls, parsed_c)) == _plain(container)
    assert whole_payload_parser(cls).parse(payload) == parse_values(cls, payload) == [*parsed_c, None]
    assert parse_values(cls, payload + b"more", whole=False) == parsed_c
    assert from_values(cls, parsed_c) == from_container(cls, parsed_i) == message


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=_ids)
@given(data=st.data())
def test_compiled_and_interpreted_structs_agree(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(messages_of(cls))
    _assert_paths_agree(cls, message, bytes(struct_of(cls).build(to_container(message))))


_NAMED_WHOLE: dict[type[Any], Any] = {}


def _compiled_named_struct(cls: type[Any]) -> Any:
    """construct's compiled named Struct of a whole payload (the codec's former hot path)."""
    if cls not in _NAMED_WHOLE:
        named: Any = struct_of(cls)
        _NAMED_WHOLE[cls] = cs.Struct(*named.subcons, cs.Terminated).compile()
    return _NAMED_WHOLE[cls]


def _cut_short(cls: type[Any], container: Any, path: str = "") -> str | None:
    """The first raw or text field a short payload left short, walking the named container."""
    for info in field_infos(cls):
        value = container[info.name]
        name = f"{path}{info.name}"
        if info.kind in ("raw", "text") and len(value) != info.width_bytes:
            return name
        if info.kind == "struct":
            assert info.item is not None
            found = _cut_short(info.item, value, f"{name}.")
            if found is not None:
                return found
        elif info.kind == "array":
            assert info.item is not None
            for i, item in enumerate(value):
                found = _cut_short(info.item, item, f"{name}[{i}].")
                if found is not None:
                    return found
    return None


def _reference_decode(cls: type[Any], payload: bytes) -> Any:
    """decode_payload as the named containers do it: compiled Struct, then from_container."""
    try:
        container = _compiled_named_struct(cls).parse(payload)
    except (cs.ConstructError, struct.error) as exc:
        return DecodeError(ErrorCode.MALFORMED, f"{cls.__name__}: {type(exc).__name__}")
    try:
        return from_container(cls, container)
    except TruncatedError as exc:
        return DecodeError(ErrorCode.MALFORMED, f"{cls.__name__}: {exc}")
    except FieldRangeError as exc:
        short = _cut_short(cls, container)
        if short is not None:  # a payload cut short is MALFORMED before any range is judged
            return DecodeError(ErrorCode.MALFORMED, f"{cls.__name__}: {short} is cut short")
        root = exc.field.split(".", 1)[0].split("[", 1)[0]
        top = [i.name for i in field_infos(cls)].index(root)
        return DecodeError(ErrorCode.OUT_OF_RANGE, str(exc), None, top, exc.lo, exc.hi)


_BYTE = st.sampled_from([0, 1, 2, 3, 7, 0x7F, 0x80, 0xFF]) | st.integers(0, 255)
"""A byte to write into a payload: edges of ranges, enums and ASCII more often than chance would."""


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=_ids)
@given(data=st.data())
def test_hot_path_decodes_any_payload_as_the_named_struct_does(cls: type[Any], data: st.DataObject) -> None:
    """Real payloads with bytes overwritten, cut short or extended: same message or same error value."""
    payload = bytearray(encode_payload(data.draw(messages_of(cls))))
    for _ in range(data.draw(st.integers(1, 3)) if payload else 0):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(_BYTE)
    if data.draw(st.booleans()):
        del payload[data.draw(st.integers(0, len(payload))) :]
        payload += data.draw(st.binary(max_size=3))
    assert decode_payload(cls, bytes(payload)) == _reference_decode(cls, bytes(payload))


@given(messages_of(Header))
def test_header_encoding(header: Header) -> None:
    encoded = encode_header(header)
    assert len(encoded) == HEADER_BYTES
    assert decode_header(encoded) == header
    assert decode_header(encoded + b"payload") == header
    assert decode_header(encoded[:-1]) is None
    assert encoded[0] == header.version
    assert encoded[1] == header.msg_type
    assert encoded[2] == header.flags
    assert encoded[3:7] == header.session_id.to_bytes(4, "little")
    assert encoded[7:15] == header.counter.to_bytes(8, "little")
    assert encoded[15:23] == header.echo_counter.to_bytes(8, "little")
    assert encoded[23:31] == header.command_id.to_bytes(8, "little")


def _payload_of(frame_body: bytes, header: Header, keys: Any) -> bytes:
    rest = frame_body[HEADER_BYTES:]
    if not header.secured:
        return rest
    opened = open_payload(keys, header.direction, header.counter, frame_body[:HEADER_BYTES], rest)
    assert opened is not None
    return opened


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.name)
def test_example_frames_compiled_and_interpreted_agree(frame: Any) -> None:
    (body,) = Deframer().feed(frame.data)
    assert isinstance(body, bytes)
    payload = _payload_of(body, frame.header, frame.keys)
    cls = type(frame.message)
    _assert_paths_agree(cls, frame.message, payload)
    _assert_paths_agree(Header, frame.header, body[:HEADER_BYTES])
    assert decode_payload(cls, payload) == frame.message


# --------------------------------------------------------------------------- packets


@pytest.mark.parametrize("secured", [False, True], ids=["plaintext", "secured"])
@given(data=st.data())
def test_packet_round_trip_through_the_deframer(secured: bool, data: st.DataObject) -> None:
    header, message, keys = data.draw(packets(secured=secured))
    wire = encode_packet(header, message, keys)
    assert len(wire) - 2 <= MAX_ENCODED_BYTES
    (body,) = Deframer().feed(wire)
    assert isinstance(body, bytes)
    assert body == encode_body(header, message, keys)
    assert body[:HEADER_BYTES] == encode_header(header)
    payload = encode_payload(message)
    if secured:
        assert len(body) == HEADER_BYTES + len(payload) + TAG_BYTES
    else:
        assert body[HEADER_BYTES:] == payload
    assert decode_body(body, keys) == Packet(header, message)


def test_every_example_frame_decodes_to_its_script() -> None:
    d = Deframer()
    for f in FRAMES:
        (body,) = d.feed(f.data)
        assert isinstance(body, bytes)
        assert decode_body(body, f.keys) == Packet(f.header, f.message), f.name
        assert encode_packet(f.header, f.message, f.keys) == f.data


# --------------------------------------------------------------------------- out of range


def _int_leaves(cls: type[Any]) -> Iterator[tuple[tuple[str | int, ...], FieldInfo]]:
    """Every integer field reachable from ``cls``: top level, in structs, in an array's first item."""
    for info in field_infos(cls):
        if info.kind == "int":
            yield (info.name,), info
        elif info.kind == "struct":
            assert info.item is not None
            for sub, leaf in _int_leaves(info.item):
                yield (info.name, *sub), leaf
        elif info.kind == "array":
            assert info.item is not None
            for sub, leaf in _int_leaves(info.item):
                yield (info.name, 0, *sub), leaf


def _bad_values(info: FieldInfo) -> list[int]:
    """Values the field's width can carry but its declaration refuses."""
    bits = 8 * info.width_bytes
    full_lo = -(1 << (bits - 1)) if info.signed else 0
    full_hi = (1 << (bits - 1)) - 1 if info.signed else (1 << bits) - 1
    bad = []
    if info.lo > full_lo:
        bad.append(info.lo - 1)
    if info.hi < full_hi:
        bad.append(info.hi + 1)
    if info.enum is not None:
        members = {int(m) for m in info.enum}
        gap = next((v for v in range(info.lo, info.hi + 1) if v not in members), None)
        if gap is not None:
            bad.append(gap)
    return bad


def _path_name(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _replace_in(obj: Any, path: tuple[str | int, ...], value: Any) -> Any:
    head, *rest = path
    if isinstance(head, int):
        items = list(obj)
        items[head] = _replace_in(items[head], tuple(rest), value) if rest else value
        return tuple(items)
    inner = _replace_in(getattr(obj, head), tuple(rest), value) if rest else value
    return dataclasses.replace(obj, **{head: inner})


def _set_in(container: Any, path: tuple[str | int, ...], value: Any) -> None:
    for part in path[:-1]:
        container = container[part]
    container[path[-1]] = value


OUT_OF_RANGE_CASES = [
    pytest.param(cls, path, info, bad, id=f"{cls.__name__}.{_path_name(path)}={bad}")
    for cls in ALL_CLASSES
    for path, info in _int_leaves(cls)
    for bad in _bad_values(info)
]


def test_out_of_range_cases_cover_the_examples_asked_for() -> None:
    ids = {p.id for p in OUT_OF_RANGE_CASES}
    assert "StageProgram.program.steps[0].day=7" in ids
    assert "InterrogateReply.outcomes[0].msg_type=4" in ids  # a gap in MsgType
    assert len(OUT_OF_RANGE_CASES) > 100


@pytest.mark.parametrize(("cls", "path", "info", "bad"), OUT_OF_RANGE_CASES)
def test_out_of_range_value_is_refused_both_ways(
    cls: type[Any], path: tuple[str | int, ...], info: FieldInfo, bad: int
) -> None:
    base = extreme_of(cls, largest=False, items=1)
    encode_payload(base)  # the base message itself is valid
    with pytest.raises(FieldRangeError) as excinfo:
        encode_payload(_replace_in(base, path, bad))
    assert excinfo.value.field == _path_name(path)
    assert (excinfo.value.value, excinfo.value.lo, excinfo.value.hi) == (bad, info.lo, info.hi)

    container = to_container(base)
    _set_in(container, path, bad)
    crafted = bytes(struct_of(cls).build(container))
    result = decode_payload(cls, crafted)
    assert isinstance(result, DecodeError)
    top = [i.name for i in field_infos(cls)].index(str(path[0]))
    assert (result.code, result.field, result.lo, result.hi) == (ErrorCode.OUT_OF_RANGE, top, info.lo, info.hi)


FLAG_CASES = [
    pytest.param(cls, path, info, id=f"{cls.__name__}.{_path_name(path)}")
    for cls in ALL_CLASSES
    for path, info in _int_leaves(cls)
    if info.flags is not None and info.hi < (1 << (8 * info.width_bytes)) - 1
]


@pytest.mark.parametrize(("cls", "path", "info"), FLAG_CASES)
def test_flag_member_with_an_undefined_bit_is_refused(
    cls: type[Any], path: tuple[str | int, ...], info: FieldInfo
) -> None:
    """An IntFlag value of the right class can still carry bits its declaration does not define."""
    assert info.flags is not None
    bad = info.flags(info.hi + 1)  # sets the lowest bit outside the declared mask
    with pytest.raises(FieldRangeError) as excinfo:
        encode_payload(_replace_in(extreme_of(cls, largest=False, items=1), path, bad))
    assert excinfo.value.field == _path_name(path)
    assert (excinfo.value.lo, excinfo.value.hi) == (info.lo, info.hi)


def _secured_body(header: Header, payload: bytes) -> bytes:
    """A secured frame body around hand-made payload bytes (bypassing the encoder's checks)."""
    keys = keys_for_session(header.session_id)
    header_bytes = encode_header(header)
    return header_bytes + seal_payload(keys, header.direction, header.counter, header_bytes, payload)


def test_flex_step_day_7_through_decode_body() -> None:
    program = Program(TherapyMode.FLEX, 500, 0, 0, 0, 7, (FlexStep(0, 0, 1000), FlexStep(7, 0, 2000)))
    container = to_container(StageProgram(0, dataclasses.replace(program, steps=(FlexStep(0, 0, 1000),) * 2)))
    container["program"]["steps"][1]["day"] = 7
    payload = bytes(struct_of(StageProgram).build(container))
    header = Header(PROTOCOL_VERSION, MsgType.STAGE_PROGRAM, FrameFlags.SECURED, 0x1234, 5, 0, 99)
    keys = keys_for_session(0x1234)
    result = decode_body(_secured_body(header, payload), keys)
    assert isinstance(result, DecodeError)
    assert (result.code, result.header, result.field, result.lo, result.hi) == (ErrorCode.OUT_OF_RANGE, header, 1, 0, 6)
    assert "program.steps[1].day" in result.detail
    with pytest.raises(FieldRangeError, match=r"program\.steps\[1\]\.day"):
        encode_body(header, StageProgram(0, program), keys)


def test_enum_value_not_in_the_enum() -> None:
    base = extreme_of(InterrogateReply, largest=False, items=2)
    container = to_container(base)
    container["outcomes"][1]["msg_type"] = 0x04  # between SESSION_CLOSE (3) and INTERROGATE (0x10)
    result = decode_payload(InterrogateReply, bytes(struct_of(InterrogateReply).build(container)))
    assert isinstance(result, DecodeError)
    outcomes = [i.name for i in field_infos(InterrogateReply)].index("outcomes")
    assert (result.code, result.field, result.lo, result.hi) == (
        ErrorCode.OUT_OF_RANGE,
        outcomes,
        min(MsgType),
        max(MsgType),
    )
    assert "not one of" in result.detail
    bad = _replace_in(base, ("outcomes", 1, "msg_type"), 4)
    with pytest.raises(FieldRangeError, match="not one of"):
        encode_payload(bad)
    with pytest.raises(FieldRangeError):
        encode_payload(ReadProgram(2))  # type: ignore[arg-type]


def _arrays(cls: type[Any]) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    for info in field_infos(cls):
        if info.kind == "array":
            yield (info.name,), info
        elif info.kind == "struct":
            assert info.item is not None
            for sub, leaf in _arrays(info.item):
                yield (info.name, *sub), leaf


ARRAY_CASES = [
    pytest.param(cls, path, info, id=f"{cls.__name__}.{'.'.join(path)}")
    for cls in ALL_CLASSES
    for path, info in _arrays(cls)
]


@pytest.mark.parametrize(("cls", "path", "info"), ARRAY_CASES)
def test_too_many_items_is_refused_both_ways(cls: type[Any], path: tuple[str, ...], info: FieldInfo) -> None:
    assert info.item is not None
    one = extreme_of(info.item, largest=False)
    too_many = (one,) * (info.max_items + 1)
    with pytest.raises(FieldRangeError) as excinfo:
        encode_payload(_replace_in(extreme_of(cls, largest=False), path, too_many))
    assert (excinfo.value.lo, excinfo.value.hi) == (0, info.max_items)
    container = to_container(extreme_of(cls, largest=False))
    _set_in(container, path, [to_container(one)] * (info.max_items + 1))
    result = decode_payload(cls, bytes(struct_of(cls).build(container)))
    assert isinstance(result, DecodeError)
    top = [i.name for i in field_infos(cls)].index(path[0])
    assert (result.code, result.field, result.lo, result.hi) == (ErrorCode.OUT_OF_RANGE, top, 0, info.max_items)


@pytest.mark.parametrize("raw_text", [b"\x80", b"AB\x00C", b"\xff" * 16, b"\x00abc"])
def test_bad_text_on_the_wire_is_out_of_range(raw_text: bytes) -> None:
    container = to_container(extreme_of(InterrogateReply, largest=False))
    container["model"] = raw_text.ljust(16, b"\x00")
    result = decode_payload(InterrogateReply, bytes(struct_of(InterrogateReply).build(container)))
    assert isinstance(result, DecodeError)
    assert (result.code, result.field, result.lo, result.hi) == (ErrorCode.OUT_OF_RANGE, 1, 0, 16)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("serial_number", "A" * 17),
        ("serial_number", "caf\u00e9"),
        ("serial_number", "a\x00b"),
        ("serial_number", b"bytes"),
        ("firmware_major", True),
        ("firmware_major", "1"),
        ("firmware_major", 1.0),
        ("patient_bolus", None),
        ("outcomes", (None,)),
    ],
)
def test_wrong_python_values_raise_field_range_error(field: str, value: object) -> None:
    bad = _replace_in(extreme_of(InterrogateReply, largest=False), (field,), value)
    with pytest.raises(FieldRangeError) as excinfo:
        encode_payload(bad)
    assert excinfo.value.field.startswith(field)


def test_wrong_raw_length_raises() -> None:
    from protocol_spec.messages import SessionOpen

    for n in (0, 15, 17):
        with pytest.raises(FieldRangeError, match="16 bytes"):
            encode_payload(SessionOpen(1, 7, bytes(n)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=_ids)
@given(data=st.data())
def test_trailing_and_missing_bytes_are_malformed(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(messages_of(cls))
    encoded = encode_payload(message)
    extra = data.draw(st.binary(min_size=1, max_size=40))
    trailing = decode_payload(cls, encoded + extra)
    assert isinstance(trailing, DecodeError)
    assert trailing.code is ErrorCode.MALFORMED
    if encoded:
        cut = data.draw(st.integers(0, len(encoded) - 1))
        truncated = decode_payload(cls, encoded[:cut])
        assert isinstance(truncated, DecodeError)
        assert truncated.code is ErrorCode.MALFORMED


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=_ids)
def test_every_proper_prefix_of_the_largest_message_is_malformed(cls: type[Any]) -> None:
    encoded = encode_payload(extreme_of(cls, largest=True))
    for cut in range(len(encoded)):
        result = decode_payload(cls, encoded[:cut])
        assert isinstance(result, DecodeError), cut
        assert result.code is ErrorCode.MALFORMED, cut


def test_truncated_fixed_fields_never_raise() -> None:
    """decode_payload returns a value for every prefix: integers cut short included."""
    from protocol_spec.messages import Commit

    for cls, payload in ((Commit, b"\x01\x02"), (ReadProgram, b""), (CommandOutcome, bytes(10))):
        result = decode_payload(cls, payload)
        assert isinstance(result, DecodeError)
        assert result.code is ErrorCode.MALFORMED


def test_truncated_raw_field_is_not_accepted() -> None:
    """A SESSION_OPEN whose 16-byte client nonce is cut short is MALFORMED, never a packet."""
    from protocol_spec.messages import SessionOpen

    payload = encode_payload(SessionOpen(Role.CLINICIAN, 7, bytes(range(16))))
    header = Header(PROTOCOL_VERSION, MsgType.SESSION_OPEN, FrameFlags(0), 0, 1, 0, 0)
    for cut in (5, 10, 20):
        result = decode_body(encode_header(header) + payload[:cut])
        assert isinstance(result, DecodeError), f"cut at {cut}: {result}"
        assert result.code is ErrorCode.MALFORMED


def test_a_payload_cut_short_is_malformed_before_any_value_is_judged() -> None:
    """SPEC.md "Receiving a frame": the length check (MALFORMED) comes before the ranges
    (OUT_OF_RANGE). A cut SESSION_OPEN whose role is also out of range is MALFORMED; found by
    the conformance suite (test_errors.py)."""
    from protocol_spec.messages import SessionOpen

    payload = bytes([0]) + encode_payload(SessionOpen(Role.CLINICIAN, 7, bytes(range(16))))[1:]
    for cut in range(6, len(payload)):
        result = decode_payload(SessionOpen, payload[:cut])
        assert isinstance(result, DecodeError)
        assert result.code is ErrorCode.MALFORMED, f"cut at {cut}: {result}"
    whole = decode_payload(SessionOpen, payload)
    assert isinstance(whole, DecodeError)
    assert (whole.code, whole.field) == (ErrorCode.OUT_OF_RANGE, 0), "whole, the bad role is what is wrong"


@pytest.mark.parametrize("secured", [False, True], ids=["plaintext", "secured"])
def test_trailing_byte_in_a_frame_is_malformed(secured: bool) -> None:
    flags = FrameFlags.FROM_PUMP | (FrameFlags.SECURED if secured else FrameFlags(0))
    header = Header(PROTOCOL_VERSION, MsgType.STATUS, flags, 0x77, 3, 2, 0)
    payload = encode_payload(extreme_of(CATALOG[MsgType.STATUS].reply, largest=True)) + b"\x00"
    body = _secured_body(header, payload) if secured else encode_header(header) + payload
    result = decode_body(body, keys_for_session(0x77))
    assert isinstance(result, DecodeError)
    assert (result.code, result.header) == (ErrorCode.MALFORMED, header)


# --------------------------------------------------------------------------- header-level refusals


def _status_body(**changes: Any) -> bytes:
    header = dataclasses.replace(Header(PROTOCOL_VERSION, MsgType.STATUS, FrameFlags(0), 0, 1, 0, 0), **changes)
    return encode_header(header)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", ErrorCode.MALFORMED),
        (_status_body()[:-1], ErrorCode.MALFORMED),
        (_status_body()[:2] + b"\x08" + _status_body()[3:], ErrorCode.MALFORMED),  # undefined flag bit
        (_status_body(flags=FrameFlags.ERROR), ErrorCode.MALFORMED),  # ERROR not from the pump
        (_status_body(version=2), ErrorCode.VERSION_MISMATCH),
        (_status_body(version=0), ErrorCode.VERSION_MISMATCH),
        (_status_body(msg_type=0x7E), ErrorCode.UNKNOWN_MESSAGE),
        (_status_body(msg_type=MsgType.ALARM_NOTIFY), ErrorCode.UNKNOWN_MESSAGE),  # pump-only type
        (_status_body(flags=FrameFlags.SECURED, session_id=0x77) + bytes(16), ErrorCode.BAD_TAG),
        (_status_body(flags=FrameFlags.SECURED, session_id=0x77) + bytes(15), ErrorCode.BAD_TAG),
        (_status_body(flags=FrameFlags.SECURED, session_id=0x78) + bytes(16), ErrorCode.NO_SESSION),
        (_status_body(flags=FrameFlags.SECURED, session_id=0) + bytes(16), ErrorCode.NO_SESSION),
        (_status_body(msg_type=MsgType.COMMIT) + bytes(4), ErrorCode.MISSING_COMMAND_ID),
    ],
)
def test_header_level_refusals(body: bytes, code: ErrorCode) -> None:
    result = decode_body(body, keys_for_session(0x77))
    assert isinstance(result, DecodeError)
    assert result.code is code, result


def test_error_reply_to_an_unknown_type_decodes() -> None:
    header = Header(PROTOCOL_VERSION, 0x7E, FrameFlags.FROM_PUMP | FrameFlags.ERROR, 0, 9, 8, 0)
    error = ErrorReply(ErrorCode.UNKNOWN_MESSAGE, 255, 0, 0, 0)
    (body,) = Deframer().feed(encode_packet(header, error))
    assert isinstance(body, bytes)
    packet = decode_body(body)
    assert packet == Packet(header, error)
    assert isinstance(packet, Packet)
    assert packet.msg_type is None


# --------------------------------------------------------------------------- sizes


SIDES = [
    pytest.param(t, from_pump, id=f"{t.name}-{'reply' if from_pump else 'request'}")
    for t, d in CATALOG.items()
    for from_pump in (False, True)
    if from_pump or d.request is not None
]


@pytest.mark.parametrize(("msg_type", "from_pump"), SIDES)
def test_largest_message_fits_a_frame(msg_type: MsgType, from_pump: bool) -> None:
    d = CATALOG[msg_type]
    cls = d.reply if from_pump else d.request
    assert cls is not None
    lo, hi = wire_size_range(cls)
    assert HEADER_BYTES + hi + TAG_BYTES + CRC_BYTES <= MAX_FRAME_BYTES
    largest, smallest = extreme_of(cls, largest=True), extreme_of(cls, largest=False)
    assert len(encode_payload(largest)) == hi
    assert len(encode_payload(smallest)) == lo
    flags = FrameFlags.SECURED | (FrameFlags.FROM_PUMP if from_pump else FrameFlags(0))
    header = Header(PROTOCOL_VERSION, msg_type, flags, 0xABCD, 1 << 40, 0, 0xFEED)
    keys = keys_for_session(0xABCD)
    wire = encode_packet(header, largest, keys)
    assert len(wire) - 2 <= MAX_ENCODED_BYTES
    (body,) = Deframer().feed(wire)
    assert isinstance(body, bytes)
    assert len(body) == HEADER_BYTES + hi + TAG_BYTES
    assert decode_body(body, keys) == Packet(header, largest)


def test_error_reply_fits_a_frame() -> None:
    assert HEADER_BYTES + wire_size_range(ErrorReply)[1] + TAG_BYTES + CRC_BYTES <= MAX_FRAME_BYTES


def test_command_outcome_is_fixed_size() -> None:
    lo, hi = wire_size_range(CommandOutcome)
    assert lo == hi == 8 + 1 + 2 + 8
