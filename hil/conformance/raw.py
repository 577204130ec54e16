"""Raw frames for tests of what a programmer never sends: hand-built headers, bad CRCs and COBS,
replays, forged tags, sessions opened by hand.

    wire = RawWire(pump)                                  # on the port the programmers share
    counter, frame = wire.plain(MsgType.IDENTIFY)
    wire.send(frame)
    reply = wire.reply_to(counter)                         # matched by echo counter
    with raw_session(pump, Role.CLINICIAN) as s:           # SESSION_OPEN by hand, public functions only
        wire.send(s.frame(MsgType.STATUS, b""))

Only ``protocol_spec``'s public functions build and read the frames; this module adds none of
its own wire knowledge beyond a CRC that can be made wrong on purpose.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator

import pytest

from hil.conformance import DeviceUnderTest
from protocol_spec import messages as m
from protocol_spec.catalog import request_type_of
from protocol_spec.channel import Channel, client_finish, client_hello
from protocol_spec.codec import (
    DecodeError,
    Header,
    Packet,
    decode_body,
    decode_header,
    encode_packet,
    encode_payload,
)
from protocol_spec.enums import PROTOCOL_VERSION, Direction, ErrorCode, FrameFlags, MsgType, Role
from protocol_spec.framing import CRC_BYTES, DELIMITER, MAX_FRAME_BYTES, crc32, encode_frame
from protocol_spec.framing import Deframer as _Deframer
from protocol_spec.security import RoleKey, SessionKeys, seal_payload

__all__ = [
    "RawSession",
    "RawWire",
    "assert_refusal",
    "cobs_encode",
    "frame_limit",
    "header_bytes",
    "identify_frame",
    "open_raw_session",
    "raw_session",
    "role_key",
    "wire_frame",
]

REPLY_WAIT_MS = 2_000
"""How long a helper waits for an answer the device owes (reached only when a test fails)."""
SECURED = int(FrameFlags.SECURED)


# ---------------------------------------------------------------------- building frames


def header_bytes(
    msg_type: int,
    *,
    counter: int,
    flags: int = 0,
    session_id: int = 0,
    command_id: int = 0,
    version: int = PROTOCOL_VERSION,
    echo_counter: int = 0,
) -> bytes:
    """A 31-byte header, any values (undefined flags and types included)."""
    return struct.pack("<BBBIQQQ", version, msg_type, flags, session_id, counter, echo_counter, command_id)


def cobs_encode(data: bytes) -> bytes:
    """COBS, for frames ``encode_frame`` refuses to build (over the size bound)."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out += bytes([len(block) + 1]) + block
            block.clear()
            continue
        block.append(byte)
        if len(block) == 254:
            out += b"\xff" + block
            block.clear()
    out += bytes([len(block) + 1]) + block
    return bytes(out)


def wire_frame(body: bytes, *, crc_xor: int = 0) -> bytes:
    """``00 | COBS(body | CRC-32) | 00`` for a body of any length; ``crc_xor`` spoils the CRC."""
    crc = (crc32(body) ^ crc_xor).to_bytes(CRC_BYTES, "little")
    return DELIMITER + cobs_encode(body + crc) + DELIMITER


# ---------------------------------------------------------------------- reading frames


class RawWire:
    """Raw frames to and from the target, on the port its programmers share."""

    def __init__(self, pump: DeviceUnderTest) -> None:
        self.pump = pump
        self._deframer = _Deframer()
        self._bodies: deque[bytes] = deque()
        self._counters = itertools.count((1 << 40) + secrets.randbelow(1 << 32))
        self.received = bytearray()
        """Every byte read, for checks of the delimiters."""
        self.bad_frames = 0
        """Frames from the device that failed framing (a conforming device sends none)."""
        pump.raw.drain()

    def counter(self) -> int:
        """A fresh counter for a plaintext frame (not checked by the device, but echoed)."""
        return next(self._counters)

    def send(self, data: bytes) -> None:
        self.pump.raw.send(data)

    def plain(self, msg_type: int, payload: bytes = b"", **header: int) -> tuple[int, bytes]:
        """A plaintext frame of any type, flags and payload: (its counter, its wire bytes)."""
        counter = header.pop("counter", None) or self.counter()
        return counter, encode_frame(header_bytes(msg_type, counter=counter, **header) + payload)

    def _read(self) -> None:
        port = self.pump.port
        chunk = port.read(port.in_waiting or 1)
        self.received += chunk
        for item in self._deframer.feed(chunk):
            if isinstance(item, bytes):
                self._bodies.append(item)
            else:
                self.bad_frames += 1

    def until(self, done: Callable[[Header], bool], *, what: str) -> tuple[bytes, list[bytes]]:
        """The first frame body whose header satisfies ``done``, and the bodies received before it."""
        before: list[bytes] = []
        deadline = time.monotonic() + REPLY_WAIT_MS / 1000
        while True:
            while self._bodies:
                body = self._bodies.popleft()
                header = decode_header(body)
                if header is not None and done(header):
                    return body, before
                before.append(body)
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {REPLY_WAIT_MS} ms")
            self._read()

    def answer(self, counter: int) -> bytes:
        """The body of the device's answer to the frame with ``counter``."""
        body, _ = self.until(lambda h: h.from_pump and h.echo_counter == counter, what=f"answer to counter {counter}")
        return body

    def ask_plain(self, data: bytes, counter: int) -> Packet:
        """Send a frame and decode the device's plaintext answer to it."""
        self.send(data)
        body = self.answer(counter)
        result = decode_body(body)
        assert not isinstance(result, DecodeError), f"the answer does not decode as plaintext: {result}"
        return result

    def fence(self) -> list[Header]:
        """IDENTIFY, then every frame received before its reply (in order: the device answers in order)."""
        counter, data = self.plain(MsgType.IDENTIFY)
        self.send(data)
        body, before = self.until(lambda h: h.from_pump and h.echo_counter == counter, what="IDENTIFY reply")
        reply = decode_body(body)
        assert isinstance(reply, Packet), f"IDENTIFY's reply does not decode: {reply}"
        assert not reply.header.is_error, f"IDENTIFY was refused: {reply.message}"
        return [h for h in map(decode_header, before) if h is not None]

    def assert_unanswered(self, what: str) -> None:
        """Nothing answered what was sent since the last answer (notifications aside)."""
        replies = [h for h in self.fence() if h.echo_counter != 0]
        assert not replies, f"{what} was answered: {replies}"


def assert_refusal(
    packet: Packet,
    code: ErrorCode,
    *,
    msg_type: int,
    counter: int,
    command_id: int = 0,
    secured: bool,
) -> m.ErrorReply:
    """An error reply as SPEC.md's Errors says: FROM_PUMP | ERROR, the request's type, counter and command id."""
    h = packet.header
    assert h.from_pump, "the answer does not have FROM_PUMP set"
    assert h.is_error, f"expected an error reply ({code.name}), got {packet}"
    error = packet.message
    assert isinstance(error, m.ErrorReply)
    got = ErrorCode(error.code)
    assert got is code, f"expected {code.name}, got {got.name} ({error})"
    assert h.msg_type == msg_type, f"the error reply names type 0x{h.msg_type:02x}, not 0x{msg_type:02x}"
    assert h.echo_counter == counter
    assert h.command_id == command_id
    assert h.secured is secured, f"the error reply is {'sealed' if h.secured else 'plaintext'}"
    return error


# ---------------------------------------------------------------------- a session by hand


class RawSession:
    """A session opened by hand: frames sealed with any header, counter and payload."""

    def __init__(self, wire: RawWire, keys: SessionKeys) -> None:
        self.wire = wire
        self.keys = keys
        self._receiving = Channel(from_pump=False, keys=keys)
        self._highest_sent = 0
        self.closed = False

    @property
    def session_id(self) -> int:
        return self.keys.session_id

    @property
    def highest_sent(self) -> int:
        """The highest counter used so far (0 before the first frame)."""
        return self._highest_sent

    def body(
        self,
        msg_type: int,
        payload: bytes,
        *,
        counter: int | None = None,
        command_id: int = 0,
        flags: int = SECURED,
        version: int = PROTOCOL_VERSION,
    ) -> tuple[int, bytes]:
        """A sealed frame body (no CRC) of any type and payload: (its counter, the body).
        Without ``counter``: the next above every counter used so far."""
        c = self._highest_sent + 1 if counter is None else counter
        self._highest_sent = max(self._highest_sent, c)
        header = header_bytes(
            msg_type, counter=c, flags=flags, session_id=self.session_id, command_id=command_id, version=version
        )
        return c, header + seal_payload(self.keys, Direction.PROGRAMMER_TO_PUMP, c, header, payload)

    def request(self, message: object, *, command_id: int = 0, counter: int | None = None) -> tuple[int, bytes]:
        """A sealed request: (its counter, its wire bytes)."""
        c, body = self.body(request_type_of(message), encode_payload(message), counter=counter, command_id=command_id)
        return c, encode_frame(body)

    def answer(self, counter: int) -> Packet:
        """The device's answer to ``counter``, opened with the session's keys if sealed."""
        body, _ = self.wire.until(
            lambda h: h.from_pump and h.echo_counter == counter and h.session_id in (0, self.session_id),
            what=f"answer to counter {counter} of session 0x{self.session_id:08x}",
        )
        return self.open(body)

    def open(self, body: bytes, *, in_order: bool = True) -> Packet:
        """A received body decoded: opened with the session's keys if sealed, its counter checked
        to be above the pump's previous one unless ``in_order`` is False (a body read earlier)."""
        header = decode_header(body)
        assert header is not None
        if not header.secured:
            result = decode_body(body)
        else:
            result = self._receiving.accept(body) if in_order else decode_body(body, self.keys)
        assert not isinstance(result, DecodeError), f"the answer cannot be accepted: {result}"
        return result

    def fence(self, *, counter: int | None = None) -> tuple[list[bytes], Packet]:
        """A sealed STATUS: (the bodies received before its answer, its answer)."""
        c, data = self.request(m.Status(), counter=counter)
        self.wire.send(data)
        body, before = self.wire.until(
            lambda h: h.from_pump and h.echo_counter == c and h.session_id in (0, self.session_id),
            what=f"answer to STATUS (counter {c})",
        )
        return before, self.open(body)

    def send(self, data: bytes, counter: int) -> Packet:
        self.wire.send(data)
        return self.answer(counter)

    def call(self, message: object, *, command_id: int = 0, counter: int | None = None) -> Packet:
        c, data = self.request(message, command_id=command_id, counter=counter)
        return self.send(data, c)

    def reply(self, message: object, *, command_id: int = 0) -> object:
        """A request that must succeed: its reply payload."""
        packet = self.call(message, command_id=command_id)
        assert not packet.header.is_error, f"{type(message).__name__} was refused: {packet.message}"
        assert packet.header.secured, "a reply inside a session must be SECURED"
        return packet.message

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            packet = self.call(m.SessionClose())
            assert not packet.header.is_error, f"SESSION_CLOSE was refused: {packet.message}"


def open_raw_session(wire: RawWire, role_key: RoleKey) -> RawSession:
    """The handshake by hand (SPEC.md, Handshake); AssertionError if refused or not confirmed."""
    hello = client_hello(role_key, secrets.token_bytes(m.NONCE_BYTES))
    counter = wire.counter()
    header = Header(PROTOCOL_VERSION, MsgType.SESSION_OPEN, FrameFlags(0), 0, counter, 0, 0)
    packet = wire.ask_plain(encode_packet(header, hello), counter)
    assert not packet.header.is_error, f"SESSION_OPEN was refused: {packet.message}"
    reply = packet.message
    assert isinstance(reply, m.SessionOpenReply)
    keys = client_finish(role_key, hello, packet.header, reply)
    assert keys is not None, "the key confirmation of SESSION_OPEN's reply does not match the role key"
    return RawSession(wire, keys)


def role_key(pump: DeviceUnderTest, role: Role) -> RoleKey:
    key = pump.keys.for_role(role)
    if key is None:
        pytest.skip(f"the suite holds no {role.name} key for target {pump.target.name}")
    return key


@contextlib.contextmanager
def raw_session(pump: DeviceUnderTest, role: Role, wire: RawWire | None = None) -> Iterator[RawSession]:
    """A raw session of ``role``, closed after (so it never takes the place of the suite's sessions)."""
    session = open_raw_session(wire if wire is not None else RawWire(pump), role_key(pump, role))
    try:
        yield session
    finally:
        with contextlib.suppress(AssertionError):
            session.close()


# ---------------------------------------------------------------------- the tests


def identify_frame(wire: RawWire, counter: int | None = None) -> tuple[int, bytes]:
    return wire.plain(MsgType.IDENTIFY, counter=counter or wire.counter())


def frame_limit(pump: DeviceUnderTest) -> int:
    """The largest frame (body and CRC, before COBS) the device must read."""
    return min(pump.identity.max_frame_bytes, MAX_FRAME_BYTES)
