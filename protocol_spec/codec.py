"""The codec: typed packets to frame bodies and back.

A frame body is ``header (31 bytes) | payload`` for plaintext frames and
``header | ChaCha20-Poly1305(payload) | tag (16 bytes)`` for secured ones; the header is
the AEAD's associated data. ``encode_packet`` raises on local misuse; ``decode_body`` never
raises on received bytes and returns a ``DecodeError`` value instead.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Any

import construct as cs

from .catalog import CATALOG, MessageDef
from .enums import PROTOCOL_VERSION, Direction, ErrorCode, FrameFlags, MsgType
from .fields import (
    FieldRangeError,
    TruncatedError,
    build_values,
    field_infos,
    from_values,
    parse_values,
    struct_of,
    to_values,
    truncated_field,
    u8,
    u32,
    u64,
)
from .framing import MAX_BODY_BYTES, encode_frame
from .messages import ErrorReply
from .security import TAG_BYTES, SessionKeys, open_payload, seal_payload

__all__ = [
    "HEADER_BYTES",
    "DecodeError",
    "Header",
    "Packet",
    "decode_body",
    "decode_header",
    "decode_payload",
    "encode_body",
    "encode_header",
    "encode_packet",
    "encode_payload",
    "payload_class",
    "replace_header",
]


_FROM_PUMP, _SECURED, _ERROR = int(FrameFlags.FROM_PUMP), int(FrameFlags.SECURED), int(FrameFlags.ERROR)
_ALL_FLAGS = _FROM_PUMP | _SECURED | _ERROR
_FRAME_FLAGS = {v: FrameFlags(v) for v in range(_ALL_FLAGS + 1)}
"""Every defined combination of header flags, looked up rather than made per frame."""
_MSG_TYPES: dict[int, MsgType] = {int(t): t for t in MsgType}


@dataclass(frozen=True)
class Header:
    """The 31-byte frame header, sent in the clear and authenticated as AEAD associated data."""

    version: int = u8("protocol version; a receiver reads this byte first", lo=0, hi=255)
    msg_type: int = u8("message type (MsgType); unknown values are answered with UNKNOWN_MESSAGE")
    flags: FrameFlags = u8("FROM_PUMP, SECURED, ERROR", flags=FrameFlags)
    session_id: int = u32("session id given by the pump in SESSION_OPEN's reply; 0 before")
    counter: int = u64("sender's frame counter: strictly increasing within a session, per direction")
    echo_counter: int = u64("in a reply: the counter of the request it answers; 0 otherwise")
    command_id: int = u64("effectful requests: random, non-zero, repeated by retries; replies echo it")

    @property
    def from_pump(self) -> bool:
        return bool(int(self.flags) & _FROM_PUMP)

    @property
    def secured(self) -> bool:
        return bool(int(self.flags) & _SECURED)

    @property
    def is_error(self) -> bool:
        return bool(int(self.flags) & _ERROR)

    @property
    def direction(self) -> Direction:
        return Direction.PUMP_TO_PROGRAMMER if self.from_pump else Direction.PROGRAMMER_TO_PUMP

    @property
    def known_type(self) -> MsgType | None:
        try:
            return _MSG_TYPES.get(self.msg_type)
        except TypeError:  # unhashable: no message type either
            return None


HEADER_BYTES = 31
assert struct_of(Header).sizeof() == HEADER_BYTES


@dataclass(frozen=True)
class Packet:
    """A decoded frame: header plus typed payload."""

    header: Header
    message: Any

    @property
    def msg_type(self) -> MsgType | None:
        """The message type, or None for an ERROR reply to a type this side does not know."""
        return self.header.known_type


@dataclass(frozen=True)
class DecodeError:
    """Why a frame body could not be decoded. Returned, never raised."""

    code: ErrorCode
    detail: str
    header: Header | None = None
    field: int = 255
    """0-based index of the offending top-level payload field; 255 if none."""
    lo: int = 0
    hi: int = 0


def payload_class(msg_type: MsgType, flags: int) -> type[Any] | None:
    """Which payload class a frame of this type and direction carries."""
    flags = int(flags)
    if flags & _ERROR:
        return ErrorReply if flags & _FROM_PUMP else None
    d: MessageDef = CATALOG[msg_type]
    return d.reply if flags & _FROM_PUMP else d.request


def encode_payload(message: object) -> bytes:
    """Validate and encode a payload object. Raises FieldRangeError on a bad value."""
    return build_values(type(message), to_values(message))


def _top_field_index(cls: type[Any], path: str) -> int:
    root = path.split(".", 1)[0].split("[", 1)[0]
    for i, info in enumerate(field_infos(cls)):
        if info.name == root:
            return i
    return 255


def decode_payload(cls: type[Any], payload: bytes, header: Header | None = None) -> Any:
    """Decode a payload of a known class; a DecodeError value on any problem."""
    try:
        values = parse_values(cls, payload)
    except (cs.ConstructError, struct.error) as exc:  # compiled parsers raise struct.error when short
        return DecodeError(ErrorCode.MALFORMED, f"{cls.__name__}: {type(exc).__name__}", header)
    try:
        return from_values(cls, values)
    except TruncatedError as exc:
        return DecodeError(ErrorCode.MALFORMED, f"{cls.__name__}: {exc}", header)
    except FieldRangeError as exc:
        short = truncated_field(cls, values)
        if short is not None:  # a payload cut short is MALFORMED (step 9) before any range (step 10)
            return DecodeError(ErrorCode.MALFORMED, f"{cls.__name__}: {short} is cut short", header)
        return DecodeError(ErrorCode.OUT_OF_RANGE, str(exc), header, _top_field_index(cls, exc.field), exc.lo, exc.hi)


def encode_header(header: Header) -> bytes:
    return build_values(Header, to_values(header))


def decode_header(body: bytes) -> Header | None:
    """The header of a frame body, or None if the body is shorter than a header."""
    if len(body) < HEADER_BYTES:
        return None
    version, msg_type, flags, session_id, counter, echo_counter, command_id = parse_values(Header, body, whole=False)
    return Header(version, msg_type, FrameFlags(flags), session_id, counter, echo_counter, command_id)


def encode_body(header: Header, message: object, keys: SessionKeys | None = None) -> bytes:
    """Encode header and payload into a frame body (no CRC, no COBS).

    Raises ValueError/FieldRangeError on local misuse: a message that does not belong to
    the header's type and direction, a value out of range, SECURED without keys, a missing
    command id on an effectful request.
    """
    if header.is_error:
        expected: type[Any] | None = ErrorReply if header.from_pump else None
        name = f"ERROR reply to type 0x{header.msg_type:02x}"
    else:
        msg_type = header.known_type or MsgType(header.msg_type)  # no member is 0; ValueError if unknown
        expected = payload_class(msg_type, header.flags)
        name = msg_type.name
        if CATALOG[msg_type].effectful and not header.from_pump and header.command_id == 0:
            raise ValueError(f"{msg_type.name} has an effect and needs a non-zero command id")
    if expected is None or type(message) is not expected:
        raise ValueError(f"{type(message).__name__} is not the payload of {name} with flags {header.flags!r}")
    header_bytes = encode_header(header)
    payload = encode_payload(message)
    if header.secured:
        if keys is None:
            raise ValueError("a SECURED frame needs session keys")
        if keys.session_id != header.session_id:
            raise ValueError("session keys belong to another session")
        body = header_bytes + seal_payload(keys, header.direction, header.counter, header_bytes, payload)
    else:
        body = header_bytes + payload
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"{name} body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    return body


def encode_packet(header: Header, message: object, keys: SessionKeys | None = None) -> bytes:
    """Encode a packet into wire bytes: delimiter, COBS(body | CRC-32), delimiter."""
    return encode_frame(encode_body(header, message, keys))


def decode_body(body: bytes, keys: SessionKeys | None = None) -> Packet | DecodeError:
    """Decode a frame body (as the Deframer returns it) into a Packet, or say why not.

    Checks, in order: length, header flags, version, message type, session and tag
    (SECURED frames need ``keys`` of the header's session), payload layout and ranges,
    command id on effectful requests. Counter freshness is the endpoint's job.
    """
    if len(body) < HEADER_BYTES:
        return DecodeError(ErrorCode.MALFORMED, f"{len(body)} bytes is shorter than a header")
    version, msg_type_byte, flags, session_id, counter, echo_counter, command_id = parse_values(
        Header, body, whole=False
    )
    if flags & ~_ALL_FLAGS:
        return DecodeError(ErrorCode.MALFORMED, f"undefined header flags 0x{flags:02x}")
    header = Header(version, msg_type_byte, _FRAME_FLAGS[flags], session_id, counter, echo_counter, command_id)
    if header.is_error and not header.from_pump:
        return DecodeError(ErrorCode.MALFORMED, "ERROR flag on a frame not from the pump", header)
    if header.version != PROTOCOL_VERSION and not header.is_error:
        # every version keeps the error reply readable, so a VERSION_MISMATCH always is
        return DecodeError(
            ErrorCode.VERSION_MISMATCH,
            f"protocol version {header.version}, this side speaks {PROTOCOL_VERSION}",
            header,
            lo=PROTOCOL_VERSION,
            hi=PROTOCOL_VERSION,
        )
    msg_type = header.known_type
    cls: type[Any] | None
    if header.is_error:
        cls = ErrorReply  # an error may answer any type, even one this side does not know
    elif msg_type is None:
        return DecodeError(ErrorCode.UNKNOWN_MESSAGE, f"message type 0x{header.msg_type:02x}", header)
    else:
        cls = payload_class(msg_type, header.flags)
        if cls is None:
            return DecodeError(ErrorCode.UNKNOWN_MESSAGE, f"{msg_type.name} is sent by the pump only", header)
    rest = body[HEADER_BYTES:]
    if header.secured:
        if keys is None or keys.session_id != header.session_id or header.session_id == 0:
            return DecodeError(ErrorCode.NO_SESSION, f"no session 0x{header.session_id:08x}", header)
        if len(rest) < TAG_BYTES:
            return DecodeError(ErrorCode.BAD_TAG, "shorter than a tag", header)
        opened = open_payload(keys, header.direction, header.counter, body[:HEADER_BYTES], rest)
        if opened is None:
            return DecodeError(ErrorCode.BAD_TAG, "authentication tag does not verify", header)
        rest = opened
    message = decode_payload(cls, rest, header)
    if isinstance(message, DecodeError):
        return message
    if msg_type is not None and not header.from_pump and CATALOG[msg_type].effectful and header.command_id == 0:
        return DecodeError(
            ErrorCode.MISSING_COMMAND_ID,
            f"{msg_type.name} needs a non-zero command id",
            header,
        )
    return Packet(header, message)


def replace_header(header: Header, **changes: Any) -> Header:
    """A copy of a header with some fields changed (a convenience for endpoints and tests)."""
    return dataclasses.replace(header, **changes)
