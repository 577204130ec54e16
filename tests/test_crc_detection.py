"""CRC-32 against line errors: exhaustive single-bit flips, a proof for 2/3-bit errors and
bursts up to 32 bits at every frame length, and a large sample of heavier corruption.

Bit numbering: bit ``p`` of a byte string is bit ``p % 8`` (LSB = 0) of byte ``p // 8``,
the order a UART sends them (LSB first). In that order the reflected CRC-32 of zlib is the
textbook polynomial CRC: line bit ``p`` is the coefficient of the highest remaining power
of x, so a "burst" below means consecutive bits in line order.
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import numpy.typing as npt
import pytest
from cobs import cobs

from hil.campaigns.frames import bursts_detected
from protocol_spec.codec import DecodeError, Header, Packet, decode_body, encode_packet
from protocol_spec.enums import PROTOCOL_VERSION, FrameFlags, MsgType, TherapyMode
from protocol_spec.examples import ScriptedFrame, example_session
from protocol_spec.framing import (
    CRC_BYTES,
    DELIMITER,
    MAX_BODY_BYTES,
    MAX_FRAME_BYTES,
    Deframer,
    FramingError,
    FramingProblem,
    crc32,
    encode_frame,
)
from protocol_spec.messages import FlexStep, Program, StageProgram
from protocol_spec.security import SessionKeys
from tests.strategies import keys_for_session

FRAMES = example_session()
CRC32_POLY = 0x04C11DB7
"""CRC-32 (IEEE 802.3) generator in normal notation; the x^32 term is implicit."""
CRC32_POLY_REFLECTED = 0xEDB88320
CRC32_RESIDUE = 0x2144DF1C
"""zlib.crc32(m | crc32(m) as u32le) for every message m: the 'magic' check value."""

Syndromes = npt.NDArray[np.uint32]


def _framed(frame: bytes) -> bytes:
    """The pre-COBS bytes (body | CRC) of a wire frame."""
    return bytes(cobs.decode(frame[1:-1]))


def _wire(framed: bytes) -> bytes:
    return DELIMITER + bytes(cobs.encode(framed)) + DELIMITER


def _flip(data: bytes, pattern: int, at_bit: int) -> bytes:
    """XOR ``pattern`` (bit 0 first on the line) into ``data`` starting at line bit ``at_bit``."""
    value = int.from_bytes(data, "little") ^ (pattern << at_bit)
    return value.to_bytes(len(data), "little")


def _accepted(deframer: Deframer, data: bytes, keys: SessionKeys | None) -> list[Packet]:
    """Every packet the real receive path (Deframer, then decode_body) accepts from ``data``."""
    packets: list[Packet] = []
    for r in deframer.feed(data):
        if isinstance(r, bytes):
            p = decode_body(r, keys)
            if isinstance(p, Packet):
                packets.append(p)
    return packets


def _max_frame() -> tuple[bytes, SessionKeys]:
    """The longest frame the codec can produce: a secured StageProgram with 91 flex steps."""
    keys = keys_for_session(0x1A2B3C4D)
    steps = tuple(FlexStep(d, 3_600_000 * h + 1, 250_000 + h) for d in range(7) for h in range(13))
    program = Program(TherapyMode.FLEX, 500, 0, 0, 0, 7, steps)
    header = Header(PROTOCOL_VERSION, MsgType.STAGE_PROGRAM, FrameFlags.SECURED, keys.session_id, 9, 0, 77)
    return encode_packet(header, StageProgram(0, program), keys), keys


# --------------------------------------------------------------------------- (a) every single-bit flip


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.name)
def test_every_single_bit_flip_of_the_framed_bytes_is_a_bad_crc(frame: ScriptedFrame) -> None:
    """Line errors on body|CRC (before COBS): each single flip is a BAD_CRC, never a packet."""
    framed = _framed(frame.data)
    body = framed[:-CRC_BYTES]
    d = Deframer()
    for bit in range(8 * len(framed)):
        corrupted = _wire(_flip(framed, 1, bit))
        out = d.feed(corrupted)
        assert out == [FramingError(FramingProblem.BAD_CRC, len(corrupted) - 2)], f"bit {bit}"
        assert d.feed(frame.data) == [body], f"good frame after bit {bit}"
    assert d.frames_bad_crc == d.frames_ok == 8 * len(framed)
    good = decode_body(body, frame.keys)
    assert isinstance(good, Packet)
    assert good.header == frame.header
    assert good.message == frame.message


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.name)
def test_every_single_bit_flip_of_the_cobs_bytes_is_rejected(frame: ScriptedFrame) -> None:
    """Flips of the encoded bytes between the delimiters: a framing error of some kind
    (or a split into several bad frames when a byte becomes 0x00), never a packet."""
    body = _framed(frame.data)[:-CRC_BYTES]
    d = Deframer()
    problems: set[FramingProblem] = set()
    for bit in range(8, 8 * (len(frame.data) - 1)):
        corrupted = _flip(frame.data, 1, bit)
        out = d.feed(corrupted)
        assert out, f"bit {bit}: the corrupted frame vanished without a trace"
        for r in out:
            assert isinstance(r, FramingError), f"bit {bit}: a body came out of a corrupted frame"
            problems.add(r.problem)
        assert d.feed(frame.data) == [body], f"good frame after bit {bit}"
    assert FramingProblem.BAD_CRC in problems


@pytest.mark.parametrize("frame", FRAMES[::7], ids=lambda f: f.name)
def test_corrupted_delimiters_cost_no_following_frame(frame: ScriptedFrame) -> None:
    body = _framed(frame.data)[:-CRC_BYTES]
    for bit in (*range(8), *range(8 * (len(frame.data) - 1), 8 * len(frame.data))):
        d = Deframer()
        corrupted = _flip(frame.data, 1, bit)
        assert _accepted(d, corrupted, frame.keys) == []
        out = d.feed(frame.data)
        assert out[-1] == body
        assert all(isinstance(r, FramingError) for r in out[:-1])


# --------------------------------------------------------------------------- (b) the proof


def _single_bit_syndromes(n_bytes: int) -> Syndromes:
    """Syndrome of a single-bit error at each line bit of an ``n_bytes`` codeword (body | CRC).

    zlib.crc32 is affine: crc32(a ^ b) = crc32(a) ^ crc32(b) ^ crc32(0^n) for equal lengths.
    A received codeword c ^ e passes iff crc32(c ^ e) == RESIDUE == crc32(c), i.e. iff the
    *linear* part S(e) = crc32(e) ^ crc32(0^n) is 0. S is the syndrome, linear over GF(2).
    """
    zero = zlib.crc32(bytes(n_bytes))
    buf = bytearray(n_bytes)
    out = np.empty(8 * n_bytes, dtype=np.uint32)
    for p in range(8 * n_bytes):
        buf[p >> 3] = 1 << (p & 7)
        out[p] = zlib.crc32(buf) ^ zero
        buf[p >> 3] = 0
    return out


SYNDROMES = _single_bit_syndromes(MAX_FRAME_BYTES)


def test_codeword_check_is_the_residue_check() -> None:
    """The Deframer's test crc32(body) == stored equals crc32(body | stored) == RESIDUE, and
    the CRC is affine, so an error pattern is undetected iff its syndrome is 0."""
    rng = random.Random(1)
    for n in (1, 2, 3, 31, 254, 255, 1000, MAX_BODY_BYTES):
        body = rng.randbytes(n)
        stored = crc32(body).to_bytes(4, "little")
        assert zlib.crc32(body + stored) == CRC32_RESIDUE
        for _ in range(50):  # a wrong stored CRC never gives the residue (appending 4 bytes is a bijection)
            other = rng.randbytes(4)
            assert (zlib.crc32(body + other) == CRC32_RESIDUE) == (other == stored)
        a, b = rng.randbytes(n + 4), rng.randbytes(n + 4)
        xor = bytes(x ^ y for x, y in zip(a, b, strict=True))
        assert zlib.crc32(xor) == zlib.crc32(a) ^ zlib.crc32(b) ^ zlib.crc32(bytes(n + 4))


def test_shorter_codewords_have_the_trailing_syndromes_of_the_longest() -> None:
    """Why checking the longest length covers every shorter one.

    The syndrome is the CRC with init 0 and no xorout (the affine constants cancel), and
    that CRC is blind to leading zero bits. So an error pattern in an n-byte codeword has
    the same syndrome as the same pattern, right-aligned, in the 1024-byte codeword: the
    syndromes of length n are exactly the last 8n syndromes of length 1024. An undetected
    pattern of weight w at any length would be an undetected pattern of weight w at 1024.
    """
    for n in (5, 6, 37, 255, 256, 700, MAX_FRAME_BYTES - 1):
        assert np.array_equal(_single_bit_syndromes(n), SYNDROMES[-8 * n :]), n


def test_all_one_bit_and_two_bit_errors_are_detected_at_every_length() -> None:
    """HD >= 3: every syndrome is non-zero (1-bit) and no two are equal (2-bit: s_i ^ s_j = 0)."""
    assert len(SYNDROMES) == 8 * MAX_FRAME_BYTES
    assert np.all(SYNDROMES != 0)
    assert len(np.unique(SYNDROMES)) == len(SYNDROMES)


def test_all_three_bit_errors_are_detected_at_every_length() -> None:
    """HD >= 4: for no i < j is s_i ^ s_j itself a syndrome s_k (then e_i + e_j + e_k would pass).

    k can be neither i nor j: s_i ^ s_j == s_i would need s_j == 0, excluded above.
    """
    ordered = np.sort(SYNDROMES)
    last = len(ordered) - 1
    for i in range(len(SYNDROMES) - 1):
        row = SYNDROMES[i] ^ SYNDROMES[i + 1 :]
        idx = np.minimum(np.searchsorted(ordered, row), last)
        hits = ordered[idx] == row
        assert not hits.any(), f"3-bit error at bits {i}, {i + 1 + int(np.argmax(hits))} and one more passes"


def test_the_generator_has_degree_32_and_constant_term_1() -> None:
    """Algebra: a burst of length L <= 32 at line bit i is e(x) = x^j b(x), deg b = L - 1 < 32,
    b(0) = 1. With deg g = 32 and g(0) = 1, g is coprime to x, so g | e iff g | b, impossible
    for a non-zero b of degree < 32. So every burst of up to 32 bits is detected."""
    generator = (1 << 32) | CRC32_POLY
    assert generator.bit_length() - 1 == 32
    assert generator & 1 == 1
    # zlib uses exactly this polynomial: its reflected constant, and a bitwise CRC agrees.
    assert int(f"{CRC32_POLY:032b}"[::-1], 2) == CRC32_POLY_REFLECTED

    def bitwise_crc32(data: bytes) -> int:
        reg = 0xFFFFFFFF
        for byte in data:
            reg ^= byte
            for _ in range(8):
                reg = (reg >> 1) ^ (CRC32_POLY_REFLECTED if reg & 1 else 0)
        return reg ^ 0xFFFFFFFF

    rng = random.Random(3)
    for n in (0, 1, 9, 100):
        data = rng.randbytes(n)
        assert bitwise_crc32(data) == zlib.crc32(data)
    # The bound is tight: the 33-bit burst g(x) itself (x^32 first on the line) goes undetected.
    burst = sum(1 << k for k in range(33) if generator >> (32 - k) & 1)
    for start in (0, 1234, 8 * MAX_FRAME_BYTES - 33):
        assert np.bitwise_xor.reduce(SYNDROMES[[start + k for k in range(33) if burst >> k & 1]]) == 0


def test_every_error_within_32_consecutive_bits_is_detected_by_computation() -> None:
    """Computation, not just algebra: the 32 syndromes of every window of 32 consecutive line
    bits of a maximal codeword are linearly independent over GF(2), so no non-zero error
    confined to any 32-bit window (every burst of length <= 32 included) has syndrome 0.
    By the leading-zeros argument this holds at every shorter length too."""
    assert bursts_detected(SYNDROMES, 32), "some window of 32 consecutive line bits is dependent"


def test_10000_random_bursts_through_the_real_decoder() -> None:
    rng = random.Random(32)
    max_frame, max_keys = _max_frame()
    assert len(_framed(max_frame)) > 0.85 * MAX_FRAME_BYTES
    corpus = [f.data for f in FRAMES] + [max_frame] * 20
    corpus += [encode_frame(rng.randbytes(rng.randrange(1, MAX_BODY_BYTES + 1))) for _ in range(20)]
    d = Deframer()
    for _ in range(10_000):
        frame = rng.choice(corpus)
        framed = _framed(frame)
        length = rng.randint(1, 32)
        pattern = rng.getrandbits(length) | 1 | 1 << (length - 1)  # first and last bit of the burst set
        at = rng.randrange(0, 8 * len(framed) - length + 1)
        corrupted = _wire(_flip(framed, pattern, at))
        out = d.feed(corrupted + frame)
        assert out == [FramingError(FramingProblem.BAD_CRC, len(corrupted) - 2), framed[:-CRC_BYTES]], (length, at)
    assert isinstance(decode_body(_framed(max_frame)[:-CRC_BYTES], max_keys), Packet)
    assert d.frames_bad_crc == 10_000
    assert d.frames_ok == 10_000


# --------------------------------------------------------------------------- (c) heavier corruption, sampled


def _corruption(rng: random.Random, n_bits: int) -> tuple[int, int]:
    """(pattern, first bit): 2 to 8 distinct random bit flips, or a burst of 2 to 32 bits."""
    if rng.random() < 0.5:
        k = rng.randint(2, 8)
        return sum(1 << q for q in rng.sample(range(n_bits), k)), 0
    length = rng.randint(2, 32)
    pattern = rng.getrandbits(length) | 1 | 1 << (length - 1)
    return pattern, rng.randrange(0, n_bits - length + 1)


def test_100000_multi_bit_corruptions_are_all_rejected() -> None:
    """Half on body|CRC (re-encoded with COBS), half on the encoded bytes themselves;
    each corrupted frame is followed by the original, which must still come through."""
    rng = random.Random(100_000)
    corpus = [(f.data, _framed(f.data), f.keys) for f in FRAMES]
    d = Deframer()
    rejected = bodies_out = 0
    total = 100_000
    for i in range(total):
        frame, framed, keys = corpus[i % len(corpus)]
        good_body = framed[:-CRC_BYTES]
        if i % 2 == 0:
            pattern, at = _corruption(rng, 8 * len(framed))
            corrupted = _wire(_flip(framed, pattern, at))
        else:
            inner = frame[1:-1]
            pattern, at = _corruption(rng, 8 * len(inner))
            corrupted = DELIMITER + _flip(inner, pattern, at) + DELIMITER
        out = d.feed(corrupted + frame)
        assert out[-1] == good_body, f"corruption {i}: the next good frame was lost"
        accepted = []
        for r in out[:-1]:
            if isinstance(r, bytes):
                bodies_out += 1
                result = decode_body(r, keys)
                assert isinstance(result, DecodeError | Packet)
                if isinstance(result, Packet):
                    accepted.append(result)
        assert accepted == [], f"corruption {i} of {frame.hex()} accepted"
        rejected += 1
    assert rejected == total
    assert bodies_out == 0, "not one corrupted frame even passed the CRC"
    assert d.frames_ok == total
