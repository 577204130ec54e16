"""Framing: ``00 | COBS(body | CRC-32 u32le) | 00`` and the bounded, resyncing Deframer."""

from __future__ import annotations

import itertools
import zlib

import pytest
from cobs import cobs
from hypothesis import given
from hypothesis import strategies as st

from protocol_spec.examples import example_session
from protocol_spec.framing import (
    CRC_BYTES,
    DELIMITER,
    MAX_BODY_BYTES,
    MAX_ENCODED_BYTES,
    MAX_FRAME_BYTES,
    Deframer,
    FramingError,
    FramingProblem,
    crc32,
    encode_frame,
)

bodies = st.binary(min_size=1, max_size=MAX_BODY_BYTES)
small_bodies = st.binary(min_size=1, max_size=64)


def _feed_all(deframer: Deframer, chunks: list[bytes]) -> list[bytes | FramingError]:
    out: list[bytes | FramingError] = []
    for chunk in chunks:
        out.extend(deframer.feed(chunk))
        assert deframer.buffered <= MAX_ENCODED_BYTES
    return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _cobs_frame(framed: bytes) -> bytes:
    """A frame built by hand: delimiter, COBS of exactly these bytes, delimiter."""
    return DELIMITER + bytes(cobs.encode(framed)) + DELIMITER


# --------------------------------------------------------------------------- the encoding


def test_constants_are_consistent() -> None:
    assert MAX_BODY_BYTES == MAX_FRAME_BYTES - CRC_BYTES
    # COBS adds one byte per started block of 254; a maximal frame of non-zero bytes is worst.
    assert len(cobs.encode(b"\x01" * MAX_FRAME_BYTES)) == MAX_ENCODED_BYTES


def test_crc32_is_the_ieee_crc() -> None:
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
    assert crc32(b"") == 0
    assert crc32(b"\xff" * 7) == zlib.crc32(b"\xff" * 7)


@given(bodies)
def test_encode_frame_layout(body: bytes) -> None:
    frame = encode_frame(body)
    assert frame[:1] == DELIMITER
    assert frame[-1:] == DELIMITER
    inner = frame[1:-1]
    assert 0 not in inner, "COBS leaves no 0x00 between the delimiters"
    assert len(inner) <= MAX_ENCODED_BYTES
    framed = bytes(cobs.decode(inner))
    assert framed == body + crc32(body).to_bytes(4, "little")


def test_body_too_long_raises_at_encode() -> None:
    encode_frame(bytes(MAX_BODY_BYTES))  # the largest body is fine
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(bytes(MAX_BODY_BYTES + 1))


# --------------------------------------------------------------------------- splitting


@given(bodies)
def test_whole_frame(body: bytes) -> None:
    d = Deframer()
    assert d.feed(encode_frame(body)) == [body]
    assert (d.frames_ok, d.frames_bad_crc, d.frames_bad) == (1, 0, 0)
    assert d.buffered == 0


@given(small_bodies)
def test_byte_at_a_time(body: bytes) -> None:
    d = Deframer()
    frame = encode_frame(body)
    out: list[bytes | FramingError] = []
    for i in range(len(frame)):
        got = d.feed(frame[i : i + 1])
        if i < len(frame) - 1:
            assert got == [], "nothing comes out before the closing delimiter"
        out.extend(got)
    assert out == [body]


def test_every_example_frame_byte_at_a_time() -> None:
    d = Deframer()
    for f in example_session():
        out = _feed_all(d, [f.data[i : i + 1] for i in range(len(f.data))])
        assert len(out) == 1
        assert isinstance(out[0], bytes)
        assert encode_frame(out[0]) == f.data
    assert d.frames_ok == len(example_session())


@given(st.lists(bodies, min_size=1, max_size=4), st.lists(st.integers(min_value=0), max_size=40))
def test_arbitrary_chunk_splits(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(b) for b in frames)
    d = Deframer()
    assert _feed_all(d, _split(stream, cuts)) == frames
    assert d.frames_ok == len(frames)
    assert d.buffered == 0


@given(st.lists(small_bodies, min_size=2, max_size=10))
def test_back_to_back_frames_in_one_chunk(frames: list[bytes]) -> None:
    d = Deframer()
    assert d.feed(b"".join(encode_frame(b) for b in frames)) == frames
    # Shared delimiters (one 0x00 between frames) work too.
    shared = DELIMITER + b"".join(encode_frame(b)[1:] for b in frames)
    assert Deframer().feed(shared) == frames


def test_idle_delimiters_produce_nothing() -> None:
    d = Deframer()
    assert d.feed(b"\x00" * 100) == []
    assert (d.frames_ok, d.frames_bad_crc, d.frames_bad) == (0, 0, 0)
    assert d.feed(b"\x00" * 5 + encode_frame(b"abc") + b"\x00" * 5) == [b"abc"]


@given(
    st.binary(max_size=3 * MAX_ENCODED_BYTES),
    bodies,
    st.binary(max_size=300),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_frame_wrapped_in_garbage(before: bytes, body: bytes, after: bytes, cuts: list[int]) -> None:
    """Noise before and after a frame costs no good frame: its leading 0x00 flushes the noise."""
    d = Deframer()
    out = _feed_all(d, _split(before + encode_frame(body) + after, cuts))
    assert [r for r in out if isinstance(r, bytes)] == [body]
    assert sum(isinstance(r, FramingError) for r in out) == len(out) - 1
    # Whatever the trailing noise left behind, the next frame is still accepted.
    assert [r for r in d.feed(encode_frame(body)) if isinstance(r, bytes)] == [body]


# --------------------------------------------------------------------------- bad input


@given(st.integers(MAX_ENCODED_BYTES + 1, 5 * MAX_ENCODED_BYTES), st.integers(1, 700), small_bodies)
def test_oversize_is_bounded_reported_and_followed_by_a_good_frame(n: int, chunk: int, body: bytes) -> None:
    d = Deframer()
    junk = b"\x55" * n
    out: list[bytes | FramingError] = []
    for i in range(0, n, chunk):
        out.extend(d.feed(junk[i : i + chunk]))
        assert d.buffered <= MAX_ENCODED_BYTES
    assert out == []
    out = d.feed(encode_frame(body))
    assert out == [FramingError(FramingProblem.OVERSIZE, n), body]
    assert (d.frames_ok, d.frames_bad_crc, d.frames_bad) == (1, 0, 1)


def test_longest_valid_encoding_is_accepted_one_more_byte_is_oversize() -> None:
    body = b"\x01" * MAX_BODY_BYTES
    framed = body + crc32(body).to_bytes(4, "little")
    assert 0 not in framed, "choose a body whose CRC has no zero byte: worst-case COBS overhead"
    frame = encode_frame(body)
    assert len(frame) == MAX_ENCODED_BYTES + 2
    d = Deframer()
    assert d.feed(frame[:-1]) == []
    assert d.buffered == MAX_ENCODED_BYTES
    assert d.feed(frame[-1:]) == [body]
    assert d.feed(b"\x00" + b"\x01" * (MAX_ENCODED_BYTES + 1) + b"\x00") == [
        FramingError(FramingProblem.OVERSIZE, MAX_ENCODED_BYTES + 1)
    ]


def test_decoded_frame_longer_than_max_frame_bytes_is_refused() -> None:
    """A frame over MAX_FRAME_BYTES before COBS is refused even when its encoding is short enough.

    COBS adds no byte when a zero occurs at least every 254 bytes, so a 1028-byte frame
    (1024-byte body + CRC) encodes to 1029 bytes = MAX_ENCODED_BYTES. ``encode_frame``
    refuses to send such a body; the receiver must refuse it as well.
    """
    for body_len in (MAX_BODY_BYTES + 1, MAX_BODY_BYTES + 4):
        body = (b"\x00" + b"\x07" * 99) * 11
        body = body[:body_len]
        framed = body + crc32(body).to_bytes(4, "little")
        frame = _cobs_frame(framed)
        assert len(frame) - 2 <= MAX_ENCODED_BYTES, "fits the encoded bound: only the decoded length is too long"
        d = Deframer()
        out = d.feed(frame)
        assert not any(isinstance(r, bytes) for r in out), f"a {len(framed)}-byte frame was accepted"
        assert out == [FramingError(FramingProblem.OVERSIZE, len(frame) - 2)]
        assert d.frames_bad == 1
        assert d.feed(encode_frame(b"ok")) == [b"ok"]


@pytest.mark.parametrize(
    "encoded",
    [
        b"\x05\x01",  # code byte promises 4 bytes, 1 present
        b"\x03\x11",
        b"\xff" + b"\x01" * 10,
    ],
)
def test_bad_cobs(encoded: bytes) -> None:
    d = Deframer()
    out = d.feed(b"\x00" + encoded + b"\x00")
    assert out == [FramingError(FramingProblem.BAD_COBS, len(encoded))]
    assert (d.frames_ok, d.frames_bad_crc, d.frames_bad) == (0, 0, 1)
    assert d.feed(encode_frame(b"next")) == [b"next"]


@pytest.mark.parametrize("framed", [b"\x01", b"\x01\x02", b"\x01\x02\x03", b"\x00\x00\x00", b"\x00\x00\x00\x00"])
def test_too_short(framed: bytes) -> None:
    """Fewer bytes than a CRC (and an empty body with a valid CRC) are TOO_SHORT."""
    d = Deframer()
    encoded = bytes(cobs.encode(framed))
    out = d.feed(b"\x00" + encoded + b"\x00")
    assert out == [FramingError(FramingProblem.TOO_SHORT, len(encoded))]
    assert (d.frames_ok, d.frames_bad_crc, d.frames_bad) == (0, 0, 1)


def test_one_byte_body_is_accepted() -> None:
    assert Deframer().feed(encode_frame(b"\x42")) == [b"\x42"]


@given(bodies, st.integers(min_value=0), st.integers(0, 7))
def test_bad_crc(body: bytes, where: int, bit: int) -> None:
    framed = bytearray(body + crc32(body).to_bytes(4, "little"))
    framed[where % len(framed)] ^= 1 << bit
    d = Deframer()
    out = d.feed(_cobs_frame(bytes(framed)))
    assert len(out) == 1
    assert isinstance(out[0], FramingError)
    assert out[0].problem is FramingProblem.BAD_CRC
    assert (d.frames_ok, d.frames_bad_crc, d.frames_bad) == (0, 1, 0)


def test_counters_add_up_over_a_mixed_stream() -> None:
    good = [encode_frame(bytes([i]) * (i + 1)) for i in range(1, 6)]
    bad_crc = _cobs_frame(b"hello" + b"\x00\x00\x00\x00")
    bad_cobs = b"\x00\x07\x01\x00"
    too_short = b"\x00\x02\x01\x00"
    oversize = b"\x00" + b"\x09" * (MAX_ENCODED_BYTES + 50) + b"\x00"
    stream = good[0] + bad_crc + good[1] + bad_cobs + good[2] + too_short + oversize + good[3] + bad_crc + good[4]
    d = Deframer()
    out = d.feed(stream)
    assert [r for r in out if isinstance(r, bytes)] == [bytes([i]) * (i + 1) for i in range(1, 6)]
    problems = [r.problem for r in out if isinstance(r, FramingError)]
    assert problems == [
        FramingProblem.BAD_CRC,
        FramingProblem.BAD_COBS,
        FramingProblem.TOO_SHORT,
        FramingProblem.OVERSIZE,
        FramingProblem.BAD_CRC,
    ]
    assert (d.frames_ok, d.frames_bad_crc, d.frames_bad) == (5, 2, 3)


@given(st.binary(max_size=4 * MAX_ENCODED_BYTES), st.lists(st.integers(min_value=0), max_size=20))
def test_random_bytes_never_raise_and_stay_bounded(noise: bytes, cuts: list[int]) -> None:
    d = Deframer()
    out = _feed_all(d, _split(noise, cuts))
    assert all(isinstance(r, bytes | FramingError) for r in out)
    assert d.frames_ok + d.frames_bad_crc + d.frames_bad == len(out)
    after = d.feed(encode_frame(b"after noise"))
    assert after[-1] == b"after noise"
    assert all(isinstance(r, FramingError) for r in after[:-1]), "only the unfinished noise comes out before it"
