"""Hostile input: nothing a sender puts on the line makes the receiver raise.

100,000 random byte strings (seeded, so a failure reproduces) go through the deframer and
the codec; every one comes out as a body, a FramingError or a DecodeError value. Random
frame bodies with a valid CRC reach the codec directly, and hypothesis mutates real frames.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from protocol_spec.codec import HEADER_BYTES, DecodeError, Packet, decode_body
from protocol_spec.enums import ErrorCode
from protocol_spec.examples import HANDSHAKE, ScriptedFrame, example_session
from protocol_spec.framing import MAX_ENCODED_BYTES, Deframer, FramingError, encode_frame

FRAMES = example_session()
RANDOM_STRINGS = 100_000


def _decode_all(deframer: Deframer, data: bytes) -> list[Packet | DecodeError | FramingError]:
    return [
        item if isinstance(item, FramingError) else decode_body(item, HANDSHAKE.keys) for item in deframer.feed(data)
    ]


def test_100000_random_byte_strings_raise_nothing_and_stay_bounded() -> None:
    """Every result is a value of the three kinds; the receive buffer never exceeds its bound."""
    rng = random.Random(0xF022)
    deframer = Deframer()
    kinds: dict[str, int] = {}
    for _ in range(RANDOM_STRINGS):
        n = rng.choice((1, 2, 8, 31, 40, 100, 300, 1100))
        data = rng.randbytes(n)
        for result in _decode_all(deframer, data):
            assert isinstance(result, Packet | DecodeError | FramingError)
            kinds[type(result).__name__] = kinds.get(type(result).__name__, 0) + 1
        assert deframer.buffered <= MAX_ENCODED_BYTES
    # random bytes essentially never carry a valid CRC: the framing layer stops them
    assert kinds.get("FramingError", 0) > RANDOM_STRINGS // 10
    assert kinds.get("Packet", 0) == 0


def test_random_bodies_with_a_valid_crc_are_refused_as_values() -> None:
    """Bodies that pass the CRC (as an attacker can make them) reach the codec and are refused."""
    rng = random.Random(31)
    deframer = Deframer()
    codes: set[ErrorCode] = set()
    for _ in range(20_000):
        body = rng.randbytes(rng.randrange(1, 200))
        (result,) = _decode_all(deframer, encode_frame(body))
        assert isinstance(result, DecodeError), result
        codes.add(result.code)
    assert ErrorCode.MALFORMED in codes


def test_random_bodies_behind_a_valid_header_prefix_are_refused_as_values() -> None:
    """Keep each real header, replace the rest with noise: tag or layout checks refuse it."""
    rng = random.Random(32)
    for frame in FRAMES:
        (body,) = Deframer().feed(frame.data)
        assert isinstance(body, bytes)
        for _ in range(50):
            noisy = body[:HEADER_BYTES] + rng.randbytes(rng.randrange(0, 120))
            result = decode_body(noisy, frame.keys)
            if isinstance(result, Packet):
                # only plaintext frames can survive noise, and then only as a valid message
                assert not result.header.secured
            else:
                assert isinstance(result, DecodeError)


@given(st.sampled_from(FRAMES), st.data())
def test_mutated_real_frames_never_raise(frame: ScriptedFrame, data: st.DataObject) -> None:
    wire = bytearray(frame.data)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    for result in _decode_all(Deframer(), bytes(wire)):
        assert isinstance(result, Packet | DecodeError | FramingError)
