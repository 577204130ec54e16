"""Framing: COBS with a 0x00 delimiter, CRC-32 for line errors, a bounded resyncing splitter.

On the wire a frame is ``00 | COBS(body | CRC-32(body) as u32le) | 00``. COBS removes every
0x00 from the encoded bytes, so a 0x00 always means "frame boundary": after any noise a
receiver is back in step at the next delimiter, at most one frame later. The leading
delimiter flushes whatever noise preceded the frame, so noise costs no good frame.

The splitter never raises on received bytes: every problem comes out as a value.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass

from cobs import cobs

__all__ = [
    "CRC_BYTES",
    "DELIMITER",
    "MAX_BODY_BYTES",
    "MAX_ENCODED_BYTES",
    "MAX_FRAME_BYTES",
    "Deframer",
    "FramingError",
    "FramingProblem",
    "crc32",
    "encode_frame",
]

DELIMITER = b"\x00"
CRC_BYTES = 4
MAX_FRAME_BYTES = 1024
"""Largest frame before COBS: body (header, payload, tag) plus the CRC."""
MAX_BODY_BYTES = MAX_FRAME_BYTES - CRC_BYTES
MAX_ENCODED_BYTES = MAX_FRAME_BYTES + (MAX_FRAME_BYTES + 253) // 254
"""Largest COBS encoding of a maximal frame, without delimiters (one overhead byte per 254)."""


def crc32(data: bytes) -> int:
    """CRC-32 (IEEE 802.3, reflected, init and xorout 0xFFFFFFFF): the zlib/Ethernet CRC."""
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(body: bytes) -> bytes:
    """Wrap a frame body for the wire. Raises ValueError if the body is too long."""
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"frame body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    framed = body + crc32(body).to_bytes(CRC_BYTES, "little")
    return DELIMITER + bytes(cobs.encode(framed)) + DELIMITER


class FramingProblem(enum.Enum):
    OVERSIZE = "oversize"
    """More than MAX_ENCODED_BYTES without a delimiter (discarded up to the next one), or a
    frame that decodes to more than MAX_FRAME_BYTES."""
    BAD_COBS = "bad_cobs"
    """The bytes between two delimiters are not valid COBS."""
    TOO_SHORT = "too_short"
    """Fewer bytes than a CRC."""
    BAD_CRC = "bad_crc"
    """CRC-32 mismatch: a line error (or an attack); dropped, never answered."""


@dataclass(frozen=True)
class FramingError:
    problem: FramingProblem
    length: int
    """Bytes discarded."""


class Deframer:
    """Split a byte stream into frame bodies (CRC checked and removed).

    ``feed`` takes chunks of any size (one byte, half a frame, several frames) and
    returns, in order, each complete frame's body as ``bytes`` or a ``FramingError``.
    Memory is bounded by MAX_ENCODED_BYTES; counters tell what was dropped.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False
        self._discarded = 0
        self.frames_ok = 0
        self.frames_bad_crc = 0
        self.frames_bad = 0
        """Oversize, bad COBS or too short."""

    def feed(self, data: bytes) -> list[bytes | FramingError]:
        out: list[bytes | FramingError] = []
        start = 0
        n = len(data)
        while start < n:
            end = data.find(0, start)
            chunk_end = n if end < 0 else end
            if self._discarding:
                self._discarded += chunk_end - start
            elif len(self._buf) + (chunk_end - start) > MAX_ENCODED_BYTES:
                self._discarding = True
                self._discarded = len(self._buf) + (chunk_end - start)
                self._buf.clear()
            else:
                self._buf += data[start:chunk_end]
            if end < 0:
                break
            result = self._end_of_frame()
            if result is not None:
                out.append(result)
            start = end + 1
        return out

    def _end_of_frame(self) -> bytes | FramingError | None:
        if self._discarding:
            self._discarding = False
            self.frames_bad += 1
            err = FramingError(FramingProblem.OVERSIZE, self._discarded)
            self._discarded = 0
            return err
        if not self._buf:
            return None  # idle delimiters between frames
        encoded = bytes(self._buf)
        self._buf.clear()
        try:
            framed = bytes(cobs.decode(encoded))
        except cobs.DecodeError:
            self.frames_bad += 1
            return FramingError(FramingProblem.BAD_COBS, len(encoded))
        if len(framed) > MAX_FRAME_BYTES:
            self.frames_bad += 1
            return FramingError(FramingProblem.OVERSIZE, len(encoded))
        if len(framed) <= CRC_BYTES:
            self.frames_bad += 1
            return FramingError(FramingProblem.TOO_SHORT, len(encoded))
        body = framed[:-CRC_BYTES]
        if crc32(body) != int.from_bytes(framed[-CRC_BYTES:], "little"):
            self.frames_bad_crc += 1
            return FramingError(FramingProblem.BAD_CRC, len(encoded))
        self.frames_ok += 1
        return body

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame (bounded by MAX_ENCODED_BYTES)."""
        return len(self._buf)
