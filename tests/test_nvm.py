"""The non-volatile memory: two copies per record, power cut at every write point, and every
single-bit flip of the image detected.

Targets (SAFETY.md): power loss during an NVM write recovers to the old or the new state in
100 % of cuts, and counters never go back; bit flips in the image are 100 % detected.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_model.errors import PumpError
from firmware_model.nvm import (
    COPY_OVERHEAD,
    MAGIC,
    BootReport,
    NvLayout,
    NvRecord,
    NvStore,
    PowerCutError,
    boot,
    corrupt,
    encode_copy,
)

LAYOUT = NvLayout.of({"program": 24, "accounts": 16, "counters": 8})
NAMES = LAYOUT.names
FORMAT: list[tuple[str, bytes]] = [
    ("program", b"program v0"),
    ("accounts", b"acc v0"),
    ("counters", b"\0" * 8),
]
"""Factory formatting: every record written once."""
SCRIPT: list[tuple[str, bytes]] = [
    ("program", b"program v1, longer payload"[:24]),
    ("counters", (1).to_bytes(8, "little")),
    ("accounts", b"acc v1"),
    ("program", b""),
    ("counters", (2).to_bytes(8, "little")),
    ("program", b"program v3"),
    ("accounts", b"accounts v2 full 16"[:16]),
    ("counters", (3).to_bytes(8, "little")),
    ("counters", (4).to_bytes(8, "little")),
    ("program", b"program v3"),
]
"""A scripted sequence: several records, empty and full payloads, a rewrite of the same value."""
MAX_COPY = max(rec.copy_size for rec in LAYOUT.records)
TEARS = [0, 1, None, MAX_COPY - 1, MAX_COPY]
"""Bytes of the torn copy that land: nothing, one, half (default), all but one, all."""


def _run(
    store: NvStore, writes: Sequence[tuple[str, bytes]], state: dict[str, bytes | None]
) -> tuple[str, bytes] | None:
    """Apply ``writes`` to ``store`` and ``state``; on a power cut, the write it tore."""
    for name, payload in writes:
        try:
            store.write(name, payload)
        except PowerCutError:
            return name, payload
        state[name] = payload
    return None


def _formatted() -> NvStore:
    store = NvStore(LAYOUT)
    for name, payload in FORMAT:
        store.write(name, payload)
    return store


def _record_at(layout: NvLayout, byte: int) -> tuple[str, int]:
    """The record and copy (0 = A, 1 = B) that hold image byte ``byte``."""
    for rec in layout.records:
        off_a, off_b = layout.copy_offsets(rec.name)
        if off_a <= byte < off_b:
            return rec.name, 0
        if off_b <= byte < off_b + rec.copy_size:
            return rec.name, 1
    raise AssertionError(byte)


def _assert_clean_reboot(image: bytes, expected: dict[str, bytes | None]) -> None:
    """A second boot finds nothing to repair and the same values."""
    store, report = boot(LAYOUT, image)
    assert report.repaired == ()
    assert report.failed == ()
    assert store.image == image
    assert {name: store.read(name) for name in NAMES} == expected


# --- reads and writes -------------------------------------------------------------------


def test_round_trip_and_unwritten_records() -> None:
    store = NvStore(LAYOUT)
    assert all(store.read(name) is None and store.seq(name) is None for name in NAMES)
    store.write("program", b"x" * 24)
    store.write("accounts", b"")
    assert store.read("program") == b"x" * 24
    assert store.read("accounts") == b""
    assert store.read("counters") is None
    rebooted, report = boot(LAYOUT, store.image)
    assert report == BootReport(blank=("counters",))
    assert rebooted.read("program") == b"x" * 24
    assert rebooted.read("accounts") == b""


@given(payloads=st.lists(st.binary(max_size=16), min_size=1, max_size=30))
def test_newest_of_many_writes_wins(payloads: list[bytes]) -> None:
    store = NvStore(LAYOUT)
    for payload in payloads:
        store.write("accounts", payload)
    assert store.read("accounts") == payloads[-1]
    assert store.seq("accounts") == len(payloads)
    rebooted, report = boot(LAYOUT, store.image)
    assert report.repaired == report.failed == ()
    assert rebooted.read("accounts") == payloads[-1]


def _copy_bytes(layout: NvLayout, image: bytes, name: str, copy: int) -> bytes:
    """The bytes of copy ``copy`` (0 = A, 1 = B) of ``name`` in ``image``."""
    offset = layout.copy_offsets(name)[copy]
    return image[offset : offset + layout.record(name).copy_size]


def test_each_write_lands_in_both_copies_and_seq_continues_across_boots() -> None:
    """A commit writes the same new copy (next seq) twice: first over the copy that is not the
    newest valid one, then over the other; afterwards both copies hold the newest value."""
    rec = LAYOUT.record("counters")
    off_a, off_b = LAYOUT.copy_offsets("counters")
    writes: list[tuple[int, bytes]] = []
    store = NvStore(LAYOUT, on_write=lambda offset, _length, data: writes.append((offset, data)))
    for i in range(5):
        store.write("counters", bytes([i]))
        new_copy = encode_copy(rec, i + 1, bytes([i]))
        assert store.write_points == 2 * (i + 1)
        first, second = writes[-2:]
        assert {first[0], second[0]} == {off_a, off_b}
        assert first[1] == second[1] == new_copy
        assert _copy_bytes(LAYOUT, store.image, "counters", 0) == new_copy
        assert _copy_bytes(LAYOUT, store.image, "counters", 1) == new_copy
    # Factory-new: A then B. Afterwards the copies tie, A counts as the newest, so B goes first.
    assert [offset for offset, _ in writes] == [off_a, off_b] + [off_b, off_a] * 4
    assert store.seq("counters") == 5
    rebooted, report = boot(LAYOUT, store.image)
    assert report.repaired == report.failed == ()
    rebooted.write("counters", b"next")
    assert rebooted.seq("counters") == 6
    assert rebooted.read("counters") == b"next"
    assert rebooted.write_points == 2
    assert _copy_bytes(LAYOUT, rebooted.image, "counters", 0) == encode_copy(rec, 6, b"next")
    assert _copy_bytes(LAYOUT, rebooted.image, "counters", 1) == encode_copy(rec, 6, b"next")


@pytest.mark.parametrize(
    ("copy_a", "copy_b", "stale"),
    [
        pytest.param((3, b"A"), (9, b"B"), 0, id="A-older"),
        pytest.param((9, b"A"), (3, b"B"), 1, id="B-older"),
        pytest.param(None, (9, b"B"), 0, id="A-bad"),
        pytest.param((9, b"A"), None, 1, id="B-bad"),
    ],
)
def test_a_write_goes_first_to_the_copy_that_is_not_the_newest_valid_one(
    copy_a: tuple[int, bytes] | None, copy_b: tuple[int, bytes] | None, stale: int
) -> None:
    """So a cut during the first write point leaves the newest valid copy untouched."""
    rec = LAYOUT.record("counters")
    image = bytearray(LAYOUT.blank_image())
    offsets = LAYOUT.copy_offsets("counters")
    for offset, content in zip(offsets, (copy_a, copy_b), strict=True):
        bad = b"\0" * rec.copy_size  # zeroed: the magic is wrong
        image[offset : offset + rec.copy_size] = bad if content is None else encode_copy(rec, *content)
    writes: list[int] = []
    # Not booted: a bad copy stays bad until the write.
    store = NvStore(LAYOUT, image, on_write=lambda offset, _length, _data: writes.append(offset))
    store.write("counters", b"C")
    assert writes == [offsets[stale], offsets[1 - stale]]
    new_copy = encode_copy(rec, 10, b"C")
    assert _copy_bytes(LAYOUT, store.image, "counters", 0) == new_copy
    assert _copy_bytes(LAYOUT, store.image, "counters", 1) == new_copy


@pytest.mark.parametrize(("seq_a", "seq_b", "expected"), [(9, 3, b"A"), (3, 9, b"B"), (7, 7, b"A")])
def test_two_valid_copies_load_the_higher_seq(seq_a: int, seq_b: int, expected: bytes) -> None:
    rec = LAYOUT.record("counters")
    image = bytearray(LAYOUT.blank_image())
    off_a, off_b = LAYOUT.copy_offsets("counters")
    image[off_a : off_a + rec.copy_size] = encode_copy(rec, seq_a, b"A")
    image[off_b : off_b + rec.copy_size] = encode_copy(rec, seq_b, b"B")
    store, report = boot(LAYOUT, image)
    assert report.repaired == report.failed == ()
    assert store.read("counters") == expected
    assert store.seq("counters") == max(seq_a, seq_b)
    store.write("counters", b"C")  # the other copy first (B on a tie), then the loaded one
    new_copy = encode_copy(rec, max(seq_a, seq_b) + 1, b"C")
    assert (
        _copy_bytes(LAYOUT, store.image, "counters", 0) == _copy_bytes(LAYOUT, store.image, "counters", 1) == new_copy
    )
    assert store.read("counters") == b"C"
    assert store.seq("counters") == max(seq_a, seq_b) + 1
    assert boot(LAYOUT, store.image)[0].read("counters") == b"C"


def test_factory_new_image_boots_blank() -> None:
    store, report = boot(LAYOUT)
    assert report == BootReport(blank=NAMES)
    assert report.ok
    assert store.image == b"\xff" * LAYOUT.size
    assert store.write_points == 0
    assert LAYOUT.size == sum(2 * (COPY_OVERHEAD + rec.capacity) for rec in LAYOUT.records)


# --- local misuse -----------------------------------------------------------------------


def test_oversize_payload_and_unknown_name_raise_value_error_and_write_nothing() -> None:
    store = _formatted()
    image, points = store.image, store.write_points
    with pytest.raises(ValueError, match="capacity"):
        store.write("counters", b"123456789")
    with pytest.raises(ValueError, match="no record"):
        store.write("nope", b"")
    with pytest.raises(ValueError, match="no record"):
        store.read("nope")
    assert store.image == image
    assert store.write_points == points
    with pytest.raises(ValueError, match="capacity"):
        encode_copy(LAYOUT.record("counters"), 1, b"123456789")
    with pytest.raises(ValueError, match="u32"):
        encode_copy(LAYOUT.record("counters"), 1 << 32, b"")


def test_bad_layouts_and_images_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        NvLayout((NvRecord("a", 1, 4), NvRecord("a", 2, 4)))
    with pytest.raises(ValueError, match="twice"):
        NvLayout((NvRecord("a", 1, 4), NvRecord("b", 1, 4)))
    with pytest.raises(ValueError, match="u16"):
        NvRecord("a", 1 << 16, 4)
    with pytest.raises(ValueError, match="u32"):
        NvRecord("a", 1, -1)
    with pytest.raises(ValueError, match="name"):
        NvRecord("", 1, 4)
    with pytest.raises(ValueError, match="bytes"):
        NvStore(LAYOUT, b"\xff" * (LAYOUT.size - 1))
    store = _formatted()
    with pytest.raises(ValueError, match="passed"):
        store.cut_power_at(store.write_points - 1)
    with pytest.raises(ValueError, match="negative"):
        store.cut_power_at(store.write_points, tear_bytes=-1)


def test_exhausted_sequence_number_refuses_the_write() -> None:
    rec = LAYOUT.record("counters")
    image = bytearray(LAYOUT.blank_image())
    off_a, _ = LAYOUT.copy_offsets("counters")
    image[off_a : off_a + rec.copy_size] = encode_copy(rec, 0xFFFF_FFFF, b"last")
    store, _ = boot(LAYOUT, image)
    with pytest.raises(PumpError, match="exhausted"):
        store.write("counters", b"more")
    assert store.image == bytes(image)


# --- power cut at every write point -----------------------------------------------------


def _check_cut(
    store: NvStore,
    torn: tuple[str, bytes] | None,
    phase: int,
    state: dict[str, bytes | None],
    seqs_before: dict[str, int | None],
    tear: int | None,
    before: bytes,
) -> bytes:
    """Boot after a cut at write point ``phase`` of the write ``torn`` (0: the copy that was
    not the newest valid one, 1: the other), ``before`` being the image before that write.
    Every record holds its old or its new value, exactly as predicted, the seq never goes
    back, and the torn copy is repaired. Updates ``state``; returns the recovered image."""
    assert torn is not None, "the cut point was never reached"
    assert phase in {0, 1}
    assert not store.powered
    with pytest.raises(PowerCutError):
        store.write(NAMES[0], b"")
    cut_name, new = torn
    old, seq_old = state[cut_name], seqs_before[cut_name]
    rec = LAYOUT.record(cut_name)
    landed = min(rec.copy_size // 2 if tear is None else tear, rec.copy_size)
    # Until the first copy has landed whole, the newest valid copy is untouched and holds the
    # old value; once it has, the new value is in the image and survives.
    seq_new = 1 if seq_old is None else seq_old + 1
    took = phase == 1 or landed == rec.copy_size
    expected, expected_seq = (new, seq_new) if took else (old, seq_old)
    # The first copy torn with no valid copy beside it (the record's first write): nothing
    # committed, and a torn copy next to a blank one cannot be told from a corrupted record,
    # so boot reports it failed.
    first_torn = old is None and phase == 0 and 0 < landed < rec.copy_size
    image = store.image
    rebooted, report = boot(LAYOUT, image)
    for name in NAMES:
        if name != cut_name:
            assert rebooted.read(name) == state[name], name
    assert rebooted.read(cut_name) == expected
    assert rebooted.seq(cut_name) == expected_seq  # a counter never goes back nor skips
    assert report.failed == ((cut_name,) if first_torn else ())
    assert set(report.repaired) <= {cut_name}
    assert (cut_name in report.repaired) == (rebooted.image != image)
    if tear is None:  # half a copy never passes the CRC: the torn copy is always repaired
        assert report.repaired == (() if first_torn else (cut_name,))
    if not first_torn:  # repaired: each copy is blank, the new copy or a copy from before
        allowed = {b"\xff" * rec.copy_size, encode_copy(rec, seq_new, new)}
        allowed |= {_copy_bytes(LAYOUT, before, cut_name, copy) for copy in (0, 1)}
        for copy in (0, 1):
            assert _copy_bytes(LAYOUT, rebooted.image, cut_name, copy) in allowed, copy
    state[cut_name] = expected
    # Recovered: writable again, and a second boot is clean.
    for name in NAMES:
        if state[name] is None:
            rebooted.write(name, b"fresh")
            state[name] = b"fresh"
    _assert_clean_reboot(rebooted.image, state)
    return rebooted.image


def _cut_at(
    image: bytes | None,
    writes: Sequence[tuple[str, bytes]],
    point: int,
    tear: int | None,
    state: dict[str, bytes | None],
) -> bytes:
    """Run ``writes`` on a store on ``image`` (``None``: factory-new) with power cut at its
    write point ``point`` (each write is two points), then ``_check_cut``."""
    store = NvStore(LAYOUT, image)
    store.cut_power_at(point, tear)
    for name, payload in writes:
        seqs = {nm: store.seq(nm) for nm in NAMES}
        before = store.image
        first_point = store.write_points
        torn = _run(store, [(name, payload)], state)
        if torn is not None:
            break
        assert store.write_points == first_point + 2
    else:
        raise AssertionError("the cut point was never reached")
    assert store.write_points == point + 1
    return _check_cut(store, torn, point - first_point, state, seqs, tear, before)


@pytest.mark.parametrize("tear", TEARS)
def test_power_cut_at_every_write_point(tear: int | None) -> None:
    """Linear power-loss testing over formatting plus the script, cut at each write point
    (two per write: each copy of the record)."""
    writes = FORMAT + SCRIPT
    uncut = NvStore(LAYOUT)
    assert _run(uncut, writes, {}) is None
    assert uncut.write_points == 2 * len(writes)
    for point in range(uncut.write_points):
        _cut_at(None, writes, point, tear, dict.fromkeys(NAMES))


def test_a_second_power_cut_never_loses_what_the_first_left() -> None:
    """A cut that lands all of the first copy, or nothing of the second, leaves the copies
    different: the new value in one, the old in the other. The next write must go first over
    the old one, so that a cut anywhere in it or later still reads, after boot, the value
    read after the first cut or the newer one. Exhaustive over both cuts."""
    formatted = _formatted().image
    for point in range(2 * len(SCRIPT)):
        for tear in (0, MAX_COPY):
            state: dict[str, bytes | None] = dict(FORMAT)
            recovered = _cut_at(formatted, SCRIPT, point, tear, state)
            again = SCRIPT[point // 2 :]  # the torn write again first, then the rest
            for second_point in range(2 * len(again)):
                for second_tear in TEARS:
                    _cut_at(recovered, again, second_point, second_tear, dict(state))


@given(
    ops=st.lists(st.tuples(st.sampled_from(NAMES), st.binary(max_size=24)), min_size=1, max_size=25),
    data=st.data(),
    tear=st.one_of(st.none(), st.integers(0, MAX_COPY + 4)),
)
def test_power_cut_at_a_random_point_of_random_writes(
    ops: list[tuple[str, bytes]], data: st.DataObject, tear: int | None
) -> None:
    writes = [(name, payload[: LAYOUT.record(name).capacity]) for name, payload in ops]
    store = _formatted()
    state: dict[str, bytes | None] = dict(FORMAT)
    point = data.draw(st.integers(0, 2 * len(writes) - 1), label="point")
    _cut_at(store.image, writes, point, tear, state)


@pytest.mark.parametrize("tear", TEARS)
def test_power_cut_during_a_boot_repair(tear: int | None) -> None:
    store = _formatted()
    state: dict[str, bytes | None] = dict(FORMAT)
    store.cut_power_at(store.write_points)
    torn = _run(store, SCRIPT, state)
    assert torn is not None
    damaged = store.image
    repairing = NvStore(LAYOUT, damaged)
    repairing.cut_power_at(0, tear)
    with pytest.raises(PowerCutError):
        repairing.recover()
    assert not repairing.powered
    with pytest.raises(PowerCutError):
        repairing.write("program", b"")  # off until a new store is booted
    rebooted, report = boot(LAYOUT, repairing.image)
    assert report.failed == ()
    assert {name: rebooted.read(name) for name in NAMES} == state
    _assert_clean_reboot(rebooted.image, state)


def test_on_write_mirror_matches_the_image_through_writes_cuts_and_repairs() -> None:
    mirror = bytearray(LAYOUT.blank_image())
    lengths: list[int] = []

    def hook(offset: int, length: int, data: bytes) -> None:
        assert length == len(data)
        lengths.append(length)
        mirror[offset : offset + length] = data

    store = NvStore(LAYOUT, on_write=hook)
    for name, payload in FORMAT + SCRIPT[:4]:
        store.write(name, payload)
        assert bytes(mirror) == store.image
    store.cut_power_at(store.write_points)
    with pytest.raises(PowerCutError):
        store.write("program", b"torn")
    assert bytes(mirror) == store.image
    assert lengths[-1] == LAYOUT.record("program").copy_size // 2
    rebooted, report = boot(LAYOUT, bytes(mirror), on_write=hook)
    assert report.repaired == ("program",)
    assert bytes(mirror) == rebooted.image
    for name, payload in SCRIPT[4:]:
        rebooted.write(name, payload)
    assert bytes(mirror) == rebooted.image


def test_a_tear_of_zero_bytes_reports_nothing_to_the_mirror() -> None:
    calls: list[int] = []
    store = NvStore(LAYOUT, on_write=lambda offset, _length, _data: calls.append(offset))
    store.cut_power_at(0, tear_bytes=0)
    with pytest.raises(PowerCutError, match="0 of"):
        store.write("program", b"x")
    assert calls == []
    assert store.image == LAYOUT.blank_image()
    assert store.write_points == 1


# --- memory corruption ------------------------------------------------------------------

FLIP_LAYOUT = NvLayout.of({"twice": 8, "once": 4, "cut": 4, "never": 2})
"""Small enough to flip every bit: two records committed (both copies hold the newest
value), one whose first write lost power before its second copy (copy A valid, copy B
blank), one never written."""


def _flip_image() -> bytes:
    store = NvStore(FLIP_LAYOUT)
    store.write("twice", b"old")
    store.write("twice", b"newest")
    store.write("once", b"only")
    store.cut_power_at(store.write_points + 1, tear_bytes=0)
    with contextlib.suppress(PowerCutError):  # the copies it leaves are checked below
        store.write("cut", b"half")
    return store.image


FLIP_BASE = _flip_image()
FLIP_VALUES: dict[str, bytes | None] = {"twice": b"newest", "once": b"only", "cut": b"half", "never": None}
FLIP_SEQS: dict[str, int | None] = {"twice": 2, "once": 1, "cut": 1, "never": None}


def test_flip_base_holds_the_newest_value_in_both_copies_of_committed_records() -> None:
    for name in ("twice", "once"):
        rec = FLIP_LAYOUT.record(name)
        seq, value = FLIP_SEQS[name], FLIP_VALUES[name]
        assert seq is not None
        assert value is not None
        for copy in (0, 1):
            assert _copy_bytes(FLIP_LAYOUT, FLIP_BASE, name, copy) == encode_copy(rec, seq, value)
    cut = FLIP_LAYOUT.record("cut")
    assert _copy_bytes(FLIP_LAYOUT, FLIP_BASE, "cut", 0) == encode_copy(cut, 1, b"half")
    assert _copy_bytes(FLIP_LAYOUT, FLIP_BASE, "cut", 1) == b"\xff" * cut.copy_size
    store, report = boot(FLIP_LAYOUT, FLIP_BASE)
    assert report == BootReport(blank=("never",))
    assert {name: store.read(name) for name in FLIP_LAYOUT.names} == FLIP_VALUES


def _check_flipped_boot(name: str, copy: int, image: bytes, label: object) -> None:
    """Boot ``image``: FLIP_BASE with bits flipped in copy ``copy`` of ``name`` only. The flip
    is always detected. With a valid partner copy the record keeps its newest value and seq
    (no rollback) and the flipped copy is rewritten from the partner; without one the record
    fails and boot writes nothing. Every other record is untouched."""
    offsets = FLIP_LAYOUT.copy_offsets(name)
    size = FLIP_LAYOUT.record(name).copy_size
    assert image[offsets[copy] : offsets[copy] + size] != FLIP_BASE[offsets[copy] : offsets[copy] + size]
    assert image[: offsets[copy]] + image[offsets[copy] + size :] == (
        FLIP_BASE[: offsets[copy]] + FLIP_BASE[offsets[copy] + size :]
    )
    values, seqs = dict(FLIP_VALUES), dict(FLIP_SEQS)
    has_partner = name in {"twice", "once"} or (name == "cut" and copy == 1)
    if has_partner:
        expected_report = BootReport(repaired=(name,), blank=("never",))
        partner = offsets[1 - copy]
        repaired = bytearray(image)
        repaired[offsets[copy] : offsets[copy] + size] = FLIP_BASE[partner : partner + size]
        expected_image = bytes(repaired)
    else:
        expected_report = BootReport(blank=tuple(n for n in ("never",) if n != name), failed=(name,))
        expected_image = image
        values[name] = seqs[name] = None
    store, report = boot(FLIP_LAYOUT, image)
    assert report == expected_report, label
    assert report.ok == (not report.failed)
    assert {n: store.read(n) for n in FLIP_LAYOUT.names} == values, label
    assert {n: store.seq(n) for n in FLIP_LAYOUT.names} == seqs, label
    assert store.image == expected_image, label
    if name in {"twice", "once"}:  # restored bit for bit: both copies hold the newest value again
        assert store.image == FLIP_BASE, label
    again, second = boot(FLIP_LAYOUT, store.image)
    assert second.repaired == ()
    assert again.image == store.image


def test_every_single_bit_flip_is_detected() -> None:
    """Exhaustive: a flip in one copy of a committed record loads the newest value from the
    other copy and repairs the flipped one; a flip in a copy with no valid partner (the only
    written copy, or a blank copy of a never-written record) fails the record."""
    for bit in range(8 * FLIP_LAYOUT.size):
        image = bytearray(FLIP_BASE)
        corrupt(image, bit)
        name, copy = _record_at(FLIP_LAYOUT, bit // 8)
        _check_flipped_boot(name, copy, bytes(image), bit)


@given(data=st.data())
def test_two_bit_flips_in_one_copy_are_detected(data: st.DataObject) -> None:
    name, copy = data.draw(st.sampled_from([(n, c) for n in FLIP_LAYOUT.names for c in (0, 1)]), label="copy")
    start = FLIP_LAYOUT.copy_offsets(name)[copy] * 8
    size = FLIP_LAYOUT.record(name).copy_size * 8
    bits = data.draw(st.lists(st.integers(start, start + size - 1), min_size=2, max_size=2, unique=True))
    image = bytearray(FLIP_BASE)
    for bit in bits:
        corrupt(image, bit)
    _check_flipped_boot(name, copy, bytes(image), bits)


def test_a_flip_in_each_copy_fails_the_record_for_every_pair_of_bits() -> None:
    """Exhaustive over every (bit in copy A, bit in copy B) of a small record."""
    layout = NvLayout.of({"r": 1})
    base = NvStore(layout)
    base.write("r", b"a")
    base.write("r", b"b")
    off_a, off_b = layout.copy_offsets("r")
    size = layout.record("r").copy_size * 8
    for bit_a in range(off_a * 8, off_a * 8 + size):
        for bit_b in range(off_b * 8, off_b * 8 + size):
            image = bytearray(base.image)
            corrupt(image, bit_a)
            corrupt(image, bit_b)
            store, report = boot(layout, image)
            assert report == BootReport(failed=("r",)), (bit_a, bit_b)
            assert store.read("r") is None
            assert store.image == bytes(image)  # nothing to repair from


@given(data=st.data())
def test_flips_in_both_copies_fail_the_record_in_a_larger_layout(data: st.DataObject) -> None:
    store = _formatted()
    name = data.draw(st.sampled_from(NAMES), label="record")
    store.write(name, b"second")  # both copies valid
    size = LAYOUT.record(name).copy_size * 8
    image = bytearray(store.image)
    for offset in LAYOUT.copy_offsets(name):
        corrupt(image, offset * 8 + data.draw(st.integers(0, size - 1)))
    rebooted, report = boot(LAYOUT, image)
    assert report.failed == (name,)
    assert rebooted.read(name) is None
    assert all(rebooted.read(other) == dict(FORMAT)[other] for other in NAMES if other != name)


def _forged(record_id: int, seq: int, length: int, area: bytes) -> bytes:
    """A copy with a correct CRC over arbitrary fields."""
    body = struct.pack("<HHII", MAGIC, record_id, seq, length) + area
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(_forged(2, 5, 3, b"abc".ljust(16, b"\0")), id="wrong-record-id"),
        pytest.param(_forged(3, 5, 17, b"abc".ljust(16, b"\0")), id="length-over-capacity"),
        pytest.param(_forged(3, 5, 3, b"abcd".ljust(16, b"\0")), id="nonzero-padding"),
        pytest.param(b"\x00" * 32, id="zeroed"),
    ],
)
def test_copies_with_a_good_crc_but_bad_fields_are_bad(forged: bytes) -> None:
    layout = NvLayout.of({"a": 16, "b": 16, "c": 16})  # ids 1, 2, 3
    store = NvStore(layout)
    store.write("c", b"good")
    image = bytearray(store.image)
    _, off_b = layout.copy_offsets("c")
    image[off_b : off_b + len(forged)] = forged
    rebooted, report = boot(layout, image)
    assert report.repaired == ("c",)
    assert rebooted.read("c") == b"good"


def test_corrupt_numbers_bits_lsb_first_and_checks_the_range() -> None:
    image = bytearray(2)
    corrupt(image, 0)
    corrupt(image, 15)
    assert image == bytearray(b"\x01\x80")
    with pytest.raises(ValueError, match="outside"):
        corrupt(image, 16)
    with pytest.raises(ValueError, match="outside"):
        corrupt(image, -1)


def test_power_cut_is_a_pump_error() -> None:
    assert issubclass(PowerCutError, PumpError)
