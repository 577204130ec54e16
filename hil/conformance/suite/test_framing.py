"""Framing: COBS, CRC-32, the size bounds and resynchronisation (SPEC.md, Framing, Receiving a frame).

This module also holds the raw-frame helpers the error and security tests share:

- ``RawWire``: frames built byte by byte on the target's port, and a reader with one deframer for
  the whole test (so a reply is never cut in two between reads), matching replies by
  ``echo_counter``. ``assert_unanswered`` proves a frame got no answer without waiting for a
  timeout: it sends IDENTIFY behind it and checks that nothing but IDENTIFY's reply came back
  (the device answers in order).
- ``RawSession``: a session opened by hand with the protocol's public handshake functions
  (``channel.client_hello``/``client_finish``), which seals whatever header, counter and payload
  a test needs (the programmer only ever sends well-formed frames).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.conformance import DeviceUnderTest
from hil.conformance.raw import (
    RawWire,
    assert_refusal,
    cobs_encode,
    frame_limit,
    header_bytes,
    identify_frame,
    raw_session,
    wire_frame,
)
from protocol_spec import messages as m
from protocol_spec.codec import (
    HEADER_BYTES,
    Packet,
    decode_body,
    decode_header,
)
from protocol_spec.enums import ErrorCode, MsgType, Role
from protocol_spec.framing import CRC_BYTES, DELIMITER, MAX_ENCODED_BYTES, crc32


@pytest.mark.requirement("PRT-FRM-001")
def test_request_and_reply_are_delimited_cobs_frames_with_crc(pump: DeviceUnderTest) -> None:
    wire = RawWire(pump)
    counter, data = identify_frame(wire)
    assert data[0] == 0
    assert data[-1] == 0
    assert 0 not in data[1:-1]
    packet = wire.ask_plain(data, counter)
    assert wire.bad_frames == 0, "a frame from the device failed COBS or its CRC-32"
    assert wire.received[:1] == DELIMITER, "the reply does not start with a 0x00 delimiter"
    assert wire.received.endswith(DELIMITER), "the reply does not end with a 0x00 delimiter"
    h = packet.header
    assert h.from_pump
    assert not h.secured
    assert not h.is_error
    assert (h.msg_type, h.echo_counter, h.command_id, h.session_id) == (MsgType.IDENTIFY, counter, 0, 0)
    assert packet.message == pump.identity


def _body_bit_flipped(body: bytes) -> bytes:
    """The frame of ``body`` with one bit of the body flipped after its CRC-32 was computed."""
    framed = bytearray(body + crc32(body).to_bytes(CRC_BYTES, "little"))
    framed[len(body) - 1] ^= 0x10
    return DELIMITER + cobs_encode(bytes(framed)) + DELIMITER


@pytest.mark.requirement("PRT-FRM-002")
@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda body: wire_frame(body, crc_xor=0x00000001), id="crc-bit-0"),
        pytest.param(lambda body: wire_frame(body, crc_xor=0x80000000), id="crc-bit-31"),
        pytest.param(_body_bit_flipped, id="body-bit"),
    ],
)
def test_frame_with_bad_crc_is_dropped_and_the_next_is_answered(
    pump: DeviceUnderTest, corrupt: Callable[[bytes], bytes]
) -> None:
    wire = RawWire(pump)
    wire.send(corrupt(header_bytes(MsgType.IDENTIFY, counter=wire.counter(), command_id=0x0101)))
    wire.assert_unanswered("a frame with a bad CRC-32")
    counter, data = identify_frame(wire)
    assert wire.ask_plain(data, counter).message == pump.identity


@pytest.mark.requirement("PRT-FRM-002")
@pytest.mark.parametrize(
    "noise",
    [
        pytest.param(b"\x00\x05\x01\x02\x00", id="code-byte-past-the-end"),
        pytest.param(b"\x00\xff\x01\x00", id="255-block-cut-short"),
    ],
)
def test_bad_cobs_is_dropped_and_the_next_frame_is_answered(pump: DeviceUnderTest, noise: bytes) -> None:
    wire = RawWire(pump)
    wire.send(noise)
    wire.assert_unanswered("bytes that are not valid COBS")
    counter, data = identify_frame(wire)
    assert not wire.ask_plain(data, counter).header.is_error


@pytest.mark.requirement("PRT-FRM-003")
@pytest.mark.parametrize(
    ("filler", "extra"),
    [
        pytest.param(0x00, 1, id="one-byte-over-short-encoding"),
        pytest.param(0xA5, 1, id="one-byte-over"),
        pytest.param(0xA5, MAX_ENCODED_BYTES, id="no-delimiter-past-the-encoded-bound"),
    ],
)
def test_oversize_frame_is_dropped(pump: DeviceUnderTest, filler: int, extra: int) -> None:
    """A frame one byte over max_frame_bytes (body | CRC, before COBS) is dropped, never answered,
    whether its encoding is short (zeros) or runs past the encoded bound without a delimiter."""
    wire = RawWire(pump)
    counter = wire.counter()
    payload = bytes([filler]) * (frame_limit(pump) - HEADER_BYTES - CRC_BYTES + extra)
    wire.send(wire_frame(header_bytes(MsgType.IDENTIFY, counter=counter) + payload))
    wire.assert_unanswered("an oversize frame")


@pytest.mark.requirement("PRT-FRM-003")
def test_frame_of_max_frame_bytes_is_read(pump: DeviceUnderTest) -> None:
    """The largest frame the device announces is read: IDENTIFY padded to it is MALFORMED (answered)."""
    wire = RawWire(pump)
    payload = bytes(frame_limit(pump) - HEADER_BYTES - CRC_BYTES)
    counter, data = wire.plain(MsgType.IDENTIFY, payload)
    packet = wire.ask_plain(data, counter)
    assert_refusal(packet, ErrorCode.MALFORMED, msg_type=MsgType.IDENTIFY, counter=counter, secured=False)


@pytest.mark.requirement("PRT-FRM-005")
@pytest.mark.parametrize(
    "short",
    [
        pytest.param(b"\x00\x00\x00\x00", id="empty-frames"),
        pytest.param(DELIMITER + cobs_encode(b"\x11\x22\x33\x44") + DELIMITER, id="four-bytes"),
        pytest.param(b"\x00\x01\x00", id="one-zero-byte"),
        pytest.param(wire_frame(header_bytes(MsgType.IDENTIFY, counter=7)[:-1]), id="body-shorter-than-a-header"),
    ],
)
def test_short_frames_are_dropped_unanswered(pump: DeviceUnderTest, short: bytes) -> None:
    wire = RawWire(pump)
    wire.send(short)
    wire.assert_unanswered("a frame too short to answer")
    counter, data = identify_frame(wire)
    assert not wire.ask_plain(data, counter).header.is_error


def _noise() -> st.SearchStrategy[bytes]:
    identify = wire_frame(header_bytes(MsgType.IDENTIFY, counter=3))
    # the start of a frame, never all of it (its encoding ends at len - 1, before the delimiter)
    cut = st.integers(min_value=1, max_value=len(identify) - 3).map(lambda n: identify[1 : n + 1])
    # the cut comes last: bytes after it could complete the frame (noise that is a frame is a frame)
    return st.tuples(st.binary(max_size=64), st.one_of(st.just(b""), cut)).map(lambda t: t[0] + t[1])


@pytest.mark.requirement("PRT-FRM-004")
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=_noise())
def test_noise_between_frames_costs_no_good_frame(pump: DeviceUnderTest, noise: bytes) -> None:
    """Any bytes (delimiters, random bytes, a cut-off frame) before a good frame: only it is answered."""
    wire = RawWire(pump)
    counter, data = identify_frame(wire)
    wire.send(noise + data)
    body, before = wire.until(lambda h: h.from_pump and h.echo_counter == counter, what="IDENTIFY reply")
    assert not [h for h in map(decode_header, before) if h is not None and h.echo_counter != 0]
    reply = decode_body(body)
    assert isinstance(reply, Packet)
    assert reply.message == pump.identity


@pytest.mark.requirement("PRT-FRM-006")
def test_request_written_one_byte_at_a_time_is_answered(pump: DeviceUnderTest) -> None:
    wire = RawWire(pump)
    counter, data = identify_frame(wire)
    for byte in data:
        wire.send(bytes([byte]))
    packet = wire.ask_plain(b"", counter)
    assert packet.message == pump.identity


@pytest.mark.requirement("PRT-FRM-006")
def test_sealed_request_written_one_byte_at_a_time_is_answered(pump: DeviceUnderTest) -> None:
    with raw_session(pump, Role.CLINICIAN) as session:
        counter, data = session.request(m.Status())
        for byte in data:
            session.wire.send(bytes([byte]))
        packet = session.answer(counter)
        assert not packet.header.is_error
        assert isinstance(packet.message, m.StatusReply)


@pytest.mark.requirement("PRT-FRM-006")
def test_requests_written_back_to_back_are_each_answered(pump: DeviceUnderTest) -> None:
    """Three frames in one write, the ones after the first without their own leading delimiter
    (one 0x00 ends a frame and starts the next), are three requests, answered in order."""
    wire = RawWire(pump)
    frames = [identify_frame(wire) for _ in range(3)]
    wire.send(frames[0][1] + b"".join(data[1:] for _, data in frames[1:]))
    for counter, _ in frames:
        packet = decode_body(wire.answer(counter))
        assert isinstance(packet, Packet)
        assert packet.message == pump.identity
