"""The pump's non-volatile memory: every record kept as two copies (A and B), each with a
sequence number and a CRC-32, so that a write can be lost to a power cut but a committed
record never is.

Pure: the image is bytes in, bytes out. A shell persists ``NvStore.image`` to a file, or
mirrors each physical write through ``on_write``; nothing here touches files or clocks.

Layout of one copy (little-endian, ``COPY_OVERHEAD`` bytes plus the record's capacity)::

    magic u16 | record id u16 | seq u32 | payload length u32 | payload (capacity, zero-padded) | CRC-32 u32

The CRC is ``zlib.crc32`` over everything before it in the copy. A copy is *valid* when the
magic, the record id, the length (at most the capacity), the zero padding and the CRC all
check; *blank* when every byte is 0xFF (erased flash, as a factory-new image is); *bad*
otherwise. A blank copy is not bad: it was never written.

A write lands in both copies with the newest valid sequence number plus one: first in the
copy that is not the newest valid one (the older copy, or an invalid one), then in the
other. A torn first write leaves the old payload in the second copy; a torn second write
the new payload in the first. After a completed write both copies hold the newest value,
so a bit flip in either loses nothing. (After a torn write, until the record is written
again, its value lives in one copy only.)

Power-loss testing (littlefs "linear" style): every physical write of a copy is one
numbered *write point* (``NvStore.write_points`` counts them from 0 since construction).
``cut_power_at(n)`` tears write point ``n``: only a prefix of the copy lands, ``PowerCutError``
is raised and the store refuses to write again; a new store booted from the image
recovers. Bit numbering for ``corrupt``: bit ``p`` is bit ``p % 8`` (LSB = 0) of byte
``p // 8``, as elsewhere in the project.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import PumpError

__all__ = [
    "COPY_OVERHEAD",
    "MAGIC",
    "BootReport",
    "NvLayout",
    "NvRecord",
    "NvStore",
    "PowerCutError",
    "WriteHook",
    "boot",
    "corrupt",
    "encode_copy",
]

MAGIC = 0x564E
"""Marks a written copy ("NV" little-endian). Neither byte is 0xFF, so a copy torn after
even one byte is never mistaken for a blank one."""

_HEADER = struct.Struct("<HHII")
"""magic, record id, sequence number, payload length."""
_CRC = struct.Struct("<I")
COPY_OVERHEAD = _HEADER.size + _CRC.size
"""Bytes in a copy besides the payload area (16)."""
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFF_FFFF
_ERASED = 0xFF

WriteHook = Callable[[int, int, bytes], None]
"""``on_write(offset, length, data)``: called after every physical write (also the prefix
that lands in a torn write), so a shell's mirror of the image stays identical to it."""


class PowerCutError(PumpError):
    """Power failed during a write to the non-volatile memory (fault injection); the store
    is off from then on and a new one must be booted from the image."""


@dataclass(frozen=True)
class NvRecord:
    """One named record: a stable id stored in every copy, and a fixed payload capacity."""

    name: str
    record_id: int
    capacity: int

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a record needs a name")
        if not 0 <= self.record_id <= _U16_MAX:
            raise ValueError(f"record {self.name!r}: id {self.record_id} is not a u16")
        if not 0 <= self.capacity <= _U32_MAX:
            raise ValueError(f"record {self.name!r}: capacity {self.capacity} is not a u32")

    @property
    def copy_size(self) -> int:
        return COPY_OVERHEAD + self.capacity


@dataclass(frozen=True)
class NvLayout:
    """The records in image order; each occupies copy A then copy B, back to back."""

    records: tuple[NvRecord, ...]
    _by_name: dict[str, tuple[NvRecord, int]] = field(init=False, repr=False, compare=False)
    size: int = field(init=False, compare=False)
    """Bytes in the whole image."""

    def __post_init__(self) -> None:
        by_name: dict[str, tuple[NvRecord, int]] = {}
        ids: set[int] = set()
        offset = 0
        for rec in self.records:
            if rec.name in by_name:
                raise ValueError(f"record name {rec.name!r} appears twice")
            if rec.record_id in ids:
                raise ValueError(f"record id {rec.record_id} appears twice")
            by_name[rec.name] = (rec, offset)
            ids.add(rec.record_id)
            offset += 2 * rec.copy_size
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "size", offset)

    @classmethod
    def of(cls, capacities: Mapping[str, int], first_id: int = 1) -> NvLayout:
        """Records in the mapping's order with ids ``first_id``, ``first_id + 1``, ...
        (ids must stay stable across firmware versions: append, never reorder)."""
        return cls(tuple(NvRecord(name, first_id + i, cap) for i, (name, cap) in enumerate(capacities.items())))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(rec.name for rec in self.records)

    def record(self, name: str) -> NvRecord:
        """The record called ``name``; ``ValueError`` if the layout has none."""
        return self._entry(name)[0]

    def copy_offsets(self, name: str) -> tuple[int, int]:
        """Image offsets of copy A and copy B of ``name``."""
        rec, offset = self._entry(name)
        return offset, offset + rec.copy_size

    def blank_image(self) -> bytes:
        """A factory-new image: every byte erased (0xFF)."""
        return bytes([_ERASED]) * self.size

    def _entry(self, name: str) -> tuple[NvRecord, int]:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"no record {name!r} in the layout") from None


@dataclass(frozen=True)
class BootReport:
    """What boot found. ``repaired``: one copy was bad and has been rewritten from the good
    one (which may be the older payload: the newer write was lost). ``blank``: never
    written (normal for a factory-new image). ``failed``: no valid copy and at least one bad
    one; the record reads as ``None`` and the pump must treat it as a memory error."""

    repaired: tuple[str, ...] = ()
    blank: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class _Copy:
    """One decoded copy: ``seq``/``payload`` are meaningful only when ``valid``."""

    valid: bool
    blank: bool
    seq: int = 0
    payload: bytes = b""


_BLANK = _Copy(valid=False, blank=True)
_BAD = _Copy(valid=False, blank=False)


def encode_copy(record: NvRecord, seq: int, payload: bytes) -> bytes:
    """The bytes of one valid copy of ``record`` (for writes, and for tools and tests that
    build images)."""
    if len(payload) > record.capacity:
        raise ValueError(f"record {record.name!r}: {len(payload)} bytes exceed the capacity of {record.capacity}")
    if not 0 <= seq <= _U32_MAX:
        raise ValueError(f"sequence number {seq} is not a u32")
    body = _HEADER.pack(MAGIC, record.record_id, seq, len(payload)) + payload.ljust(record.capacity, b"\0")
    return body + _CRC.pack(zlib.crc32(body))


def _decode_copy(record: NvRecord, data: bytes | bytearray) -> _Copy:
    if all(b == _ERASED for b in data):
        return _BLANK
    body = data[: -_CRC.size]
    (crc,) = _CRC.unpack_from(data, len(body))
    if zlib.crc32(body) != crc:
        return _BAD
    magic, record_id, seq, length = _HEADER.unpack_from(body)
    if magic != MAGIC or record_id != record.record_id or length > record.capacity:
        return _BAD
    payload_area = bytes(body[_HEADER.size :])
    if any(payload_area[length:]):
        return _BAD
    return _Copy(valid=True, blank=False, seq=seq, payload=payload_area[:length])


def _newest(a: _Copy, b: _Copy) -> int | None:
    """Index of the copy to load: the valid one, or the higher seq (A on a tie: after a
    completed write or a repair the copies are identical)."""
    if a.valid and b.valid:
        return 1 if b.seq > a.seq else 0
    if a.valid:
        return 0
    return 1 if b.valid else None


class NvStore:
    """The non-volatile memory on an image. ``NvStore(layout)`` is factory-new; use ``boot``
    to open an existing image (it checks and repairs it)."""

    def __init__(
        self,
        layout: NvLayout,
        image: bytes | bytearray | None = None,
        on_write: WriteHook | None = None,
    ) -> None:
        if image is None:
            image = layout.blank_image()
        if len(image) != layout.size:
            raise ValueError(f"image has {len(image)} bytes; the layout needs {layout.size}")
        self.layout = layout
        self._image = bytearray(image)
        self._on_write = on_write
        self._write_points = 0
        self._cut_at: int | None = None
        self._tear_bytes: int | None = None
        self._powered = True

    @property
    def image(self) -> bytes:
        """The whole image as it would be found in flash now."""
        return bytes(self._image)

    @property
    def on_write(self) -> WriteHook | None:
        """The mirror hook, for a store booted again from this one's image."""
        return self._on_write

    @property
    def write_points(self) -> int:
        """Physical copy writes so far (a torn one included); the next one has this number."""
        return self._write_points

    @property
    def powered(self) -> bool:
        """False after a ``PowerCutError``: the store refuses every further write."""
        return self._powered

    def cut_power_at(self, write_point: int, tear_bytes: int | None = None) -> None:
        """Cut power at write point ``write_point``: only the first ``tear_bytes`` of that
        copy land (``None``: half of the copy; 0: nothing; at least the copy size: all of
        it, power failing just after), then ``PowerCutError`` is raised."""
        if write_point < self._write_points:
            raise ValueError(f"write point {write_point} has passed (next is {self._write_points})")
        if tear_bytes is not None and tear_bytes < 0:
            raise ValueError("tear_bytes must not be negative")
        self._cut_at = write_point
        self._tear_bytes = tear_bytes

    def read(self, name: str) -> bytes | None:
        """The payload of the newest valid copy, or ``None`` if no copy is valid."""
        copies = self._copies(name)
        index = _newest(*copies)
        return None if index is None else copies[index].payload

    def seq(self, name: str) -> int | None:
        """The sequence number of the newest valid copy, or ``None`` if no copy is valid."""
        copies = self._copies(name)
        index = _newest(*copies)
        return None if index is None else copies[index].seq

    def write(self, name: str, payload: bytes, on_committed: Callable[[], None] | None = None) -> None:
        """Commit ``payload`` as the new value of ``name``, with the next sequence number, into
        both copies: first the one that is not the newest valid one, then the other (two write
        points). A power cut during the first leaves the old value in the second; during the
        second, the new value in the first. Afterwards both copies hold the newest value, so
        a bit flip in either loses nothing. If it raises ``PowerCutError``, the image holds
        the old or the new value.

        ``on_committed`` runs when the first copy has landed whole: the commit point, from
        which a boot loads the new value. What must happen together with the write (and never
        without it) happens there."""
        record = self.layout.record(name)
        if len(payload) > record.capacity:
            raise ValueError(f"record {name!r}: {len(payload)} bytes exceed the capacity of {record.capacity}")
        a, b = self._copies(name)
        newest = _newest(a, b)
        if newest is None:
            target, seq = 0, 1
        else:
            target, seq = 1 - newest, (a, b)[newest].seq + 1
        if seq > _U32_MAX:
            raise PumpError(f"record {name!r}: sequence number exhausted")
        offsets = self.layout.copy_offsets(name)
        data = encode_copy(record, seq, payload)
        self._physical_write(offsets[target], data)
        if on_committed is not None:
            on_committed()
        self._physical_write(offsets[1 - target], data)

    def recover(self) -> BootReport:
        """Check both copies of every record and rewrite a bad copy from a valid one (what
        ``boot`` does). A ``PowerCutError`` during a repair leaves the image recoverable."""
        repaired: list[str] = []
        blank: list[str] = []
        failed: list[str] = []
        for name in self.layout.names:
            a, b = self._copies(name)
            if a.blank and b.blank:
                blank.append(name)
            elif not (a.valid or b.valid):
                failed.append(name)
            elif not (a.valid or a.blank) or not (b.valid or b.blank):
                good = 0 if a.valid else 1
                offsets = self.layout.copy_offsets(name)
                size = self.layout.record(name).copy_size
                source = bytes(self._image[offsets[good] : offsets[good] + size])
                self._physical_write(offsets[1 - good], source)
                repaired.append(name)
        return BootReport(tuple(repaired), tuple(blank), tuple(failed))

    def _copies(self, name: str) -> tuple[_Copy, _Copy]:
        record = self.layout.record(name)
        off_a, off_b = self.layout.copy_offsets(name)
        size = record.copy_size
        return (
            _decode_copy(record, self._image[off_a : off_a + size]),
            _decode_copy(record, self._image[off_b : off_b + size]),
        )

    def _physical_write(self, offset: int, data: bytes) -> None:
        """One write point: the whole copy lands, or (at the cut point) only a prefix."""
        if not self._powered:
            raise PowerCutError("the store lost power; boot a new one from the image")
        point = self._write_points
        self._write_points += 1
        landed = data
        if point == self._cut_at:
            self._powered = False
            landed = data[: len(data) // 2 if self._tear_bytes is None else self._tear_bytes]
        self._image[offset : offset + len(landed)] = landed
        if landed and self._on_write is not None:
            self._on_write(offset, len(landed), landed)
        if not self._powered:
            raise PowerCutError(f"power cut at write point {point}: {len(landed)} of {len(data)} bytes landed")


def boot(
    layout: NvLayout,
    image: bytes | bytearray | None = None,
    on_write: WriteHook | None = None,
) -> tuple[NvStore, BootReport]:
    """Open ``image`` (``None``: factory-new): load the newest valid copy of every record and
    repair every record that has one bad copy and one valid copy."""
    store = NvStore(layout, image, on_write)
    return store, store.recover()


def corrupt(image: bytearray, bit_index: int) -> None:
    """Flip bit ``bit_index`` of ``image`` in place (bit ``p % 8`` of byte ``p // 8``):
    MEMORY_CORRUPTION fault injection."""
    if not 0 <= bit_index < 8 * len(image):
        raise ValueError(f"bit {bit_index} is outside the {len(image)}-byte image")
    image[bit_index // 8] ^= 1 << (bit_index % 8)
