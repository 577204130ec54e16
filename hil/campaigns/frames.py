"""Frame campaigns: malformed frames at a live device, line noise at the receiver.

``malformed-frames`` puts random, truncated, over-length and badly framed bytes (bad COBS,
missing delimiters, bad CRC) and mutated real frames (header fields, lengths and bytes changed,
the CRC recomputed so that they reach the header, session and tag checks; some sealed with the
live session's keys so that they reach the payload checks) into ``Device.receive_data`` of a
filled pump running its program with an open clinician session, at advancing virtual time. A
twin device, opened the same way, sees only the same clock and the same good frames: after
every batch the two must hold the same therapy state (``therapy_state``), and only SECURITY
entries may have been added to the first one's event log.

``line-noise`` flips every single bit of every golden vector frame (``protocol_spec/vectors``),
then samples multi-bit flips and bursts of up to 32 bits, and puts each corrupted frame and
the original after it through the real ``Deframer`` and ``decode_body``: the corrupted frame
must give no valid body and the original must come through. ``crc_proof`` shows by
computation (the CRC is linear) that no error burst of up to 32 bits and no error of up to
three bits goes undetected in any frame up to MAX_FRAME_BYTES.

``LivePump`` and ``therapy_state`` are shared with the coverage-guided harness
``hil.campaigns.fuzz_frames``; the drawing of malformed frames (``MalformedFrameDraws``), the line
errors (``NOISE``, ``corrupt``) and the golden frames with the same campaigns run over a link
(``hil.campaigns.link_frames``).
"""

from __future__ import annotations

import abc
import functools
import json
import random
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cobs import cobs

from firmware_model.config import PumpConfig
from firmware_model.device import Device, DeviceConfig
from firmware_model.presets import make_pump
from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG
from protocol_spec.channel import Channel, Outgoing, client_finish, client_hello
from protocol_spec.codec import HEADER_BYTES, DecodeError, Packet, decode_body, encode_payload
from protocol_spec.enums import PROTOCOL_VERSION, Direction, FrameFlags, LogEventKind, MsgType, Role
from protocol_spec.examples import EXAMPLE_REQUESTS
from protocol_spec.framing import (
    CRC_BYTES,
    DELIMITER,
    MAX_BODY_BYTES,
    MAX_ENCODED_BYTES,
    MAX_FRAME_BYTES,
    Deframer,
    FramingError,
    crc32,
)
from protocol_spec.security import TEST_KEY_SET, SessionKeys, seal_payload
from protocol_spec.vectorgen import VECTOR_DIR

from . import Budget, Outcome, campaign

__all__ = [
    "HANG_MS",
    "NOISE",
    "CrcProof",
    "GoldenFrame",
    "LivePump",
    "MalformedFrameDraws",
    "MalformedFrames",
    "bursts_detected",
    "corrupt",
    "crc_proof",
    "crc_syndromes",
    "frame_bytes",
    "golden_frames",
    "harmless",
    "min_undetected_weight",
    "new_log_entries",
    "run_line_noise",
    "run_malformed_frames",
    "seeded",
    "therapy_state",
    "with_crc",
]

HANG_MS = 1_000
"""A single ``receive_data`` taking longer than this (wall time) counts as a hang."""
BATCH_FRAMES = 250
"""Frames built at once, then fed one by one; the therapy state is compared after each batch."""
MAX_STEP_MS = 40
"""Virtual time between two frames: 0 to this (a batch spans about 5 s; the session's 300 s
timeout never fires, the bad-tag backoff of 1 to 60 s does)."""
_HEADER = struct.Struct("<BBBIQQQ")
assert _HEADER.size == HEADER_BYTES
_U64 = (1 << 64) - 1
_FLAG_BITS = int(FrameFlags.FROM_PUMP | FrameFlags.SECURED | FrameFlags.ERROR)


# ============================================================================ shared


def seeded(seed: int) -> random.Random:
    """The campaigns' random numbers: reproducible from the seed (not secrets)."""
    return random.Random(seed)  # noqa: S311


def with_crc(body: bytes) -> bytes:
    """body | CRC-32 (u32le): the codeword a frame carries, before COBS."""
    return body + crc32(body).to_bytes(CRC_BYTES, "little")


def frame_bytes(body: bytes, crc: int | None = None) -> bytes:
    """``00 | COBS(body | CRC-32) | 00`` with no length check (over-length frames too);
    ``crc`` replaces the right CRC (a bad-CRC frame)."""
    value = crc32(body) if crc is None else crc
    return DELIMITER + bytes(cobs.encode(body + value.to_bytes(CRC_BYTES, "little"))) + DELIMITER


def harmless(body: bytes, keys: SessionKeys | None, mark: int = 0) -> bool:
    """True if the device must refuse or drop ``body`` without acting on it or moving a
    counter mark (SPEC.md "Receiving a frame"), judged by the reference codec with the live
    session's ``keys`` and its counter ``mark``: anything the codec refuses; frames marked as
    from the pump (dropped); plaintext IDENTIFY (answered, no effect); plaintext frames of
    session-only types (NO_SESSION); authentic frames whose counter is at or below the mark
    (replayed). Anything else (a request the pump may carry out, or an authentic frame that
    moves the mark before it is refused) is no longer malformed, whatever made it."""
    result = decode_body(body, keys)
    if isinstance(result, DecodeError):
        return True
    h = result.header
    if h.from_pump:
        return True
    if not h.secured:
        return h.msg_type == MsgType.IDENTIFY or not CATALOG[MsgType(h.msg_type)].pre_session
    return h.counter <= mark


def therapy_state(device: Device) -> dict[str, object]:
    """What no malformed frame may change, by part: the pump's therapy (program, drug,
    accounting, boluses, alarms, thresholds: ``Pump.therapy_digest`` without the battery
    charge and frame count that every frame costs, the log's length and the next battery
    event), the drug limits, the exactly-once table, the staged change, the open sessions
    with their counter marks and last valid frame, the boot counter and the pump's clock."""
    pump = device.pump
    d = pump.therapy_digest()
    if len(d) != 17 or not isinstance(d[7], tuple) or not isinstance(d[16], tuple):
        raise TypeError("Pump.therapy_digest changed shape: update therapy_state")
    staged = device._staged
    return {
        "therapy": (*d[:7], d[7][:2], *d[8:15], d[16][:2]),
        "limits": pump.limits,
        "outcomes": tuple((cid, o.msg_type, o.digest, o.reply, o.at_ms) for cid, o in device._outcomes.items()),
        "staged": None if staged is None else (staged.session_id, staged.token, staged.kind, staged.request),
        "sessions": tuple(
            sorted((sid, s.role, s.channel.highest_received, s.last_valid_ms) for sid, s in device._sessions.items())
        ),
        "clock": (device.boot_counter, device.pump_time_ms, device.clock_held),
    }


def _clone(deframer: Deframer) -> Deframer:
    copy = Deframer()
    copy._buf = bytearray(deframer._buf)
    copy._discarding = deframer._discarding
    copy._discarded = deframer._discarded
    return copy


def new_log_entries(device: Device, first_seq: int) -> list[tuple[int, int, int, int, int]]:
    """The device's log entries from ``first_seq`` on, SECURITY entries left out, as
    (kind, code, at_ms, value_a, value_b): what a twin must have logged too."""
    return [
        (int(e.kind), e.code, e.at_ms, e.value_a, e.value_b)
        for e in device.pump.log.page(first_seq, 1 << 30)
        if e.kind is not LogEventKind.SECURITY
    ]


class LivePump:
    """A device and its twin: the default preset's pump (filled, running its program) with an
    open clinician session, opened the same way on both (seeded entropy and nonce), so the two
    are the same device until a frame changes one of them.

    ``offer`` gives bytes to the first device only; ``keepalive`` sends a good STATUS to both
    (and checks the answers agree); ``divergence`` says which part of the therapy state
    differs, or which non-SECURITY log entries one of them wrote that the other did not.
    Everything offered goes through a shadow deframer first: bytes that would deliver a
    request the codec accepts (a truncated live frame whose rest comes with the next
    delimiter, a mutation that happens to be valid) are not given to the device (``skipped``).
    """

    def __init__(self, seed: int, *, device_config: DeviceConfig | None = None, twin: bool = True) -> None:
        config = device_config if device_config is not None else DeviceConfig()
        self.device = _preset_device(seed, config)
        self.twin: Device | None = _preset_device(seed, config) if twin else None
        """None for a device alone (the fuzzing harness keeps its twins apart)."""
        self.now_ms = 0
        self.mark = 0
        """The highest counter of the live session the device has accepted (the good requests')."""
        self.skipped = 0
        self.unanswered = 0
        self._shadow = Deframer()
        role_key = TEST_KEY_SET.for_role(Role.CLINICIAN)
        assert role_key is not None
        self.plain = Channel(from_pump=False)
        hello = client_hello(role_key, seeded(seed).randbytes(16))
        reply = self.send_good(self.plain.request(hello))
        if self.twin is not None:
            self.twin.data_to_send()
        if reply is None or not isinstance(reply.message, m.SessionOpenReply):
            raise RuntimeError("the pump did not open the clinician session")
        keys = client_finish(role_key, hello, reply.header, reply.message)
        if keys is None:
            raise RuntimeError("the pump's key confirmation does not match")
        self.keys = keys
        self.session_id = keys.session_id
        self.channel = Channel(from_pump=False, keys=keys)
        self._seen = (self.device.pump.log.next_seq, self.twin.pump.log.next_seq if self.twin else 0)

    def _twin(self) -> Device:
        if self.twin is None:
            raise ValueError("this live pump has no twin")
        return self.twin

    def send_good(self, request: Outgoing) -> Packet | None:
        """A good request to the device (and the twin, if any) at the present time, after
        ending harmlessly whatever is half-received; the device's reply to it, if any."""
        if self._probe(DELIMITER) is None:
            self._spoil_pending()
        self.device.data_to_send()  # the refusals of what was offered: not looked at
        self._shadow.feed(request.data)
        self.device.receive_data(request.data, self.now_ms)
        if self.twin is not None:
            self.twin.receive_data(request.data, self.now_ms)
        if request.header.secured:
            self.mark = max(self.mark, request.header.counter)
        keys = self.keys if request.header.secured else None
        return _single_packet(self.device.data_to_send(), keys, request.header.counter)

    def _probe(self, data: bytes) -> Deframer | None:
        """The shadow deframer after ``data``, or None if ``data`` would deliver a frame the
        codec accepts as a request that may act (on its own or completing what is pending)."""
        probe = _clone(self._shadow)
        for item in probe.feed(data):
            if isinstance(item, bytes) and not harmless(item, self.keys, self.mark):
                return None
        return probe

    def _spoil_pending(self) -> None:
        """End what the device holds half-received as garbage (a byte that breaks its COBS
        or CRC, then a delimiter), so that no later delimiter can complete it into a frame."""
        for spoiler in (b"\x01\x00", b"\xff\x00", b"\x01\xff\x00", b"\x02\x01\x00"):
            probe = self._probe(spoiler)
            if probe is not None:
                self._shadow = probe
                self.device.receive_data(spoiler, self.now_ms)
                return
        raise RuntimeError("no spoiler ends the pending bytes harmlessly")

    def offer(self, data: bytes, now_ms: int, clock: Callable[[], int] = time.perf_counter_ns) -> int | None:
        """Give ``data`` to the device at host time ``now_ms`` (it may only grow); the wall
        time ``receive_data`` took, ns, or None if the bytes were held back (``harmless``)."""
        self.now_ms = max(self.now_ms, now_ms)
        probe = self._probe(data)
        if probe is None:
            self.skipped += 1
            self._spoil_pending()
            probe = self._probe(data)
            if probe is None:
                return None
        self._shadow = probe
        started = clock()
        self.device.receive_data(data, self.now_ms)
        return clock() - started

    def keepalive(self) -> bool:
        """A good STATUS request to both at the present time: True if the device answered it
        as the twin did (the session and its counters survived whatever came before)."""
        twin = self._twin()
        request = self.channel.request(m.Status())
        got = self.send_good(request)
        want = _single_packet(twin.data_to_send(), self.keys, request.header.counter)
        ok = got is not None and want is not None and not got.header.is_error and got.message == want.message
        self.unanswered += not ok
        return ok

    def divergence(self) -> str | None:
        """None if the device holds the twin's therapy state (the twin brought to the same
        time) and wrote no log entry but SECURITY ones that the twin did not; else what differs."""
        twin = self._twin()
        twin.advance(self.now_ms)
        self.device.advance(self.now_ms)
        mine, theirs = therapy_state(self.device), therapy_state(twin)
        for part, value in mine.items():
            if theirs[part] != value:
                return part
        logged = new_log_entries(self.device, self._seen[0]), new_log_entries(twin, self._seen[1])
        self._seen = (self.device.pump.log.next_seq, twin.pump.log.next_seq)
        return None if logged[0] == logged[1] else "log"

    def history_evicted(self) -> int:
        """Non-SECURITY log entries the twin still holds that the device's log no longer does
        (a ring of ``event_log_capacity`` entries: a long flood of security refusals pushes
        the oldest entries out)."""
        kept = len([e for e in self.device.pump.log.entries() if e.kind is not LogEventKind.SECURITY])
        return max(0, len(self._twin().pump.log.entries()) - kept)


def _preset_device(seed: int, config: DeviceConfig) -> Device:
    return Device(make_pump("default", PumpConfig()), TEST_KEY_SET, config=config, entropy=seeded(seed).randbytes)


def _single_packet(wire: bytes, keys: SessionKeys | None, echo: int | None = None) -> Packet | None:
    """The (first) frame of ``wire`` that decodes with ``keys`` and answers ``echo``."""
    for item in Deframer().feed(wire):
        if isinstance(item, bytes):
            got = decode_body(item, keys)
            if isinstance(got, Packet) and (echo is None or got.header.echo_counter == echo):
                return got
    return None


# ============================================================================ golden frames


@dataclass(frozen=True)
class GoldenFrame:
    """One frame of the golden vectors, as the wire carries it."""

    name: str
    wire: bytes
    body: bytes
    keys: SessionKeys | None
    """The session's keys (from ``handshake.json``), for secured frames."""
    protocol: bool
    """The body is a protocol frame that decodes to a Packet (not one of the framing vectors'
    raw bodies)."""

    @property
    def codeword(self) -> bytes:
        """body | CRC, before COBS."""
        return with_crc(self.body)


@functools.cache
def golden_frames() -> tuple[GoldenFrame, ...]:
    """Every distinct frame the vectors hold that a receiver must accept: the framing vectors
    marked accept, the handshakes' requests and replies, every message and every error reply."""
    docs = {
        name: json.loads((VECTOR_DIR / f"{name}.json").read_text(encoding="utf-8"))
        for name in ("framing", "handshake", "messages", "errors")
    }
    keys: dict[int, SessionKeys] = {}
    candidates: list[tuple[str, str, bool]] = []
    for v in docs["handshake"]["vectors"]:
        keys[v["session_id"]] = SessionKeys(
            v["session_id"],
            Role[v["role"]],
            int(v["key_id"], 16),
            bytes.fromhex(v["key_c2p_hex"]),
            bytes.fromhex(v["key_p2c_hex"]),
            bytes.fromhex(v["confirm_hex"]),
        )
        candidates += [(f"handshake {v['id']} request", v["request_frame_hex"], True)]
        candidates += [(f"handshake {v['id']} reply", v["reply_frame_hex"], True)]
    candidates += [
        (f"framing {v['id']}", v["frame_hex"], False) for v in docs["framing"]["vectors"] if v["expect"] == "accept"
    ]
    sessions: dict[str, int | None] = {}
    for name in ("messages", "errors"):
        for v in docs[name]["vectors"]:
            candidates.append((f"{name} {v['id']} {v['name']}", v["frame_hex"], True))
            sessions[v["frame_hex"]] = v["session"]["session_id"] if v["session"] else None
    out: list[GoldenFrame] = []
    seen: set[bytes] = set()
    for name, frame_hex, protocol in candidates:
        wire = bytes.fromhex(frame_hex)
        if wire in seen:
            continue
        seen.add(wire)
        items = Deframer().feed(wire)
        bodies = [item for item in items if isinstance(item, bytes)]
        if len(items) != 1 or len(bodies) != 1:
            raise ValueError(f"golden vector {name} does not pass the deframer: {items}")
        body = bodies[0]
        sid = sessions.get(frame_hex)
        frame = GoldenFrame(name, wire, body, keys[sid] if sid is not None else None, protocol)
        if protocol and not isinstance(decode_body(body, frame.keys), Packet):
            raise ValueError(f"golden vector {name} does not decode")
        out.append(frame)
    return tuple(out)


# ============================================================================ the CRC proof

Syndromes = npt.NDArray[np.uint32]
CRC32_POLY = 0x04C11DB7
"""CRC-32 (IEEE 802.3) generator in normal notation; the x^32 term is implicit."""


def crc_syndromes(n_bytes: int) -> Syndromes:
    """The syndrome of a single-bit error at each line bit of an ``n_bytes`` codeword (body | CRC).

    Line bit ``p`` is bit ``p % 8`` (LSB first, as a UART sends it) of byte ``p // 8``.
    zlib's CRC-32 is affine: crc(a ^ b) = crc(a) ^ crc(b) ^ crc(0^n) for equal lengths, so a
    received codeword c ^ e passes exactly when the linear part S(e) = crc(e) ^ crc(0^n) is
    0 (the receiver's check crc(body) == stored is the residue check on body | stored). The
    syndrome of any error is the XOR of the syndromes of its bits.
    """
    zero = zlib.crc32(bytes(n_bytes))
    buf = bytearray(n_bytes)
    out = np.empty(8 * n_bytes, dtype=np.uint32)
    for p in range(8 * n_bytes):
        buf[p >> 3] = 1 << (p & 7)
        out[p] = zlib.crc32(buf) ^ zero
        buf[p >> 3] = 0
    return out


def min_undetected_weight(syndromes: Syndromes) -> int | None:
    """The fewest bit errors (1, 2 or 3) that go undetected, or None if every error of up to
    three bits is detected: 1 if a syndrome is 0, 2 if two are equal, 3 if one is the XOR of
    two others (then the three errors cancel)."""
    if np.any(syndromes == 0):
        return 1
    if len(np.unique(syndromes)) != len(syndromes):
        return 2
    ordered = np.sort(syndromes)
    last = len(ordered) - 1
    for i in range(len(syndromes) - 1):
        row = syndromes[i] ^ syndromes[i + 1 :]
        idx = np.minimum(np.searchsorted(ordered, row), last)
        if bool((ordered[idx] == row).any()):
            return 3
    return None


def bursts_detected(syndromes: Syndromes, width: int = 32) -> bool:
    """True if every non-zero error confined to ``width`` consecutive line bits (every burst of
    up to ``width`` bits) is detected: the ``width`` syndromes of each window are linearly
    independent over GF(2), so no non-zero combination of them is 0 (Gaussian elimination of
    every window at once, one 32-bit pivot per leading bit)."""
    windows = len(syndromes) - width + 1
    if windows <= 0:
        return False
    basis = np.zeros((32, windows), dtype=np.uint32)
    independent = np.ones(windows, dtype=bool)
    for k in range(width):
        v = syndromes[k : k + windows].copy()
        inserted = np.zeros(windows, dtype=bool)
        for b in range(31, -1, -1):
            has_bit = (v >> np.uint32(b)) & np.uint32(1) == 1
            pivot = basis[b]
            reduce = has_bit & (pivot != 0)
            v[reduce] ^= pivot[reduce]
            insert = has_bit & (pivot == 0)
            pivot[insert] = v[insert]
            v[insert] = 0
            inserted |= insert
        independent &= inserted
    return bool(independent.all())


@dataclass(frozen=True)
class CrcProof:
    """What the computation shows for every codeword (body | CRC) of 5 to ``codeword_bytes`` bytes."""

    codeword_bytes: int
    burst_bits: int
    """Every burst of up to this many bits is detected (32: the most a 32-bit CRC can; 0: not shown)."""
    min_distance: int
    """Every error of fewer bits than this is detected (4: every 1, 2 and 3-bit error)."""


@functools.cache
def crc_proof(codeword_bytes: int = MAX_FRAME_BYTES) -> CrcProof:
    """Run the proof for the longest codeword; shorter ones follow.

    The syndrome is the CRC with init 0 and no xorout, blind to leading zero bits: an error
    in an n-byte codeword has the syndrome of the same error right-aligned in the longest
    codeword, so the syndromes of length n are the last 8n of the longest (checked here for
    a spread of n) and an undetected error at any length would be one at the longest.
    """
    longest = crc_syndromes(codeword_bytes)
    spread = sorted({CRC_BYTES + 1, 37, 255, 256, codeword_bytes // 2, codeword_bytes - 1})
    shorter_follow = all(np.array_equal(crc_syndromes(n), longest[-8 * n :]) for n in spread if n < codeword_bytes)
    weight = min_undetected_weight(longest)
    return CrcProof(
        codeword_bytes,
        32 if shorter_follow and bursts_detected(longest, 32) else 0,
        (4 if weight is None else weight) if shorter_follow else 0,
    )


# ============================================================================ line noise


NOISE = ("single_bit_flips", "multi_bit_flips", "wire_bursts", "codeword_bursts")
"""Kinds of line error (``corrupt``): a single bit flipped on the wire, 2 to 8 bits flipped on
the wire, a burst of 2 to 32 bits on the wire, a burst of 2 to 32 bits on body | CRC before COBS."""


def _flip(data: bytes, pattern: int, at_bit: int) -> bytes:
    """XOR ``pattern`` (bit 0 first on the line) into ``data`` from line bit ``at_bit`` on."""
    value = int.from_bytes(data, "little") ^ (pattern << at_bit)
    return value.to_bytes(len(data), "little")


def corrupt(rng: random.Random, noise: str, body: bytes, wire: bytes, below: Callable[[int], int]) -> tuple[bytes, str]:
    """``wire`` (the frame of ``body``) with line errors of kind ``noise`` (``NOISE``) drawn from
    ``rng``, the places in it from ``below`` (a whole number in [0, n)): the corrupted frame and
    the errors in words. A burst flips its first and last bit."""
    n_bits = 8 * len(wire)
    if noise == "single_bit_flips":
        at = below(n_bits)
        return _flip(wire, 1, at), f"bit {at}"
    if noise == "multi_bit_flips":
        bits = rng.sample(range(n_bits), rng.randint(2, 8))
        return _flip(wire, sum(1 << b for b in bits), 0), f"bits {sorted(bits)}"
    length = rng.randint(2, 32)
    pattern = rng.getrandbits(length) | 1 | 1 << (length - 1)
    if noise == "wire_bursts":
        at = below(n_bits - length + 1)
        return _flip(wire, pattern, at), f"burst {pattern:#x} at wire bit {at}"
    codeword = with_crc(body)
    at = below(8 * len(codeword) - length + 1)
    corrupted = DELIMITER + bytes(cobs.encode(_flip(codeword, pattern, at))) + DELIMITER
    return corrupted, f"burst {pattern:#x} at codeword bit {at}"


@dataclass
class _Noise:
    deframer: Deframer
    detected: int = 0
    passed_crc: int = 0
    next_good: int = 0
    first_miss: str = ""

    def unit(self, corrupted: bytes, frame: GoldenFrame, what: str) -> None:
        """One corrupted frame, then the frame itself."""
        bodies = [r for r in self.deframer.feed(corrupted) if isinstance(r, bytes)]
        self.passed_crc += len(bodies)
        valid = [b for b in bodies if not frame.protocol or isinstance(decode_body(b, frame.keys), Packet)]
        self.detected += not valid
        after = self.deframer.feed(frame.wire)
        good = bool(after) and after[-1] == frame.body and all(isinstance(r, FramingError) for r in after[:-1])
        self.next_good += good
        if (valid or not good) and not self.first_miss:
            self.first_miss = f"{what} of {frame.name}: {'accepted' if valid else 'the next good frame was lost'}"


def _single_flips(frames: tuple[GoldenFrame, ...]) -> Iterator[tuple[bytes, GoldenFrame, str]]:
    for frame in frames:
        wire = bytearray(frame.wire)
        for bit in range(8 * len(wire)):
            wire[bit >> 3] ^= 1 << (bit & 7)
            yield bytes(wire), frame, f"bit {bit}"
            wire[bit >> 3] ^= 1 << (bit & 7)


def run_line_noise(size: int, budget: Budget, seed: int) -> Outcome:
    """Exhaustive single-bit flips of the golden frames' wire bytes (delimiters included),
    then, seeded, a third each of 2 to 8 random bit flips on the wire, bursts of 2 to 32 bits
    on the wire and bursts of 2 to 32 bits on body | CRC before COBS."""
    rng = seeded(seed)
    frames = golden_frames()
    proof = crc_proof()
    noise = _Noise(Deframer())
    by_kind = dict.fromkeys(NOISE, 0)
    done = 0
    flips = _single_flips(frames)
    while done < size and not budget.expired():
        for _ in range(min(1_000, size - done)):
            single = next(flips, None)
            if single is not None:
                noise.unit(*single)
                kind = "single_bit_flips"
            else:
                frame = rng.choice(frames)
                kind = NOISE[1 + rng.randrange(len(NOISE) - 1)]  # every single flip is made above
                corrupted, what = corrupt(rng, kind, frame.body, frame.wire, rng.randrange)
                noise.unit(corrupted, frame, what)
            by_kind[kind] += 1
            done += 1
    ok = noise.detected == done and noise.next_good == done and proof.burst_bits >= 32
    figures: dict[str, int | float] = {
        "golden_frames": len(frames),
        **by_kind,
        "detected": noise.detected,
        "passed_crc": noise.passed_crc,
        "next_good_accepted": noise.next_good,
        "proven_burst_bits": proof.burst_bits,
        "proven_min_distance": proof.min_distance,
        "proven_up_to_bytes": proof.codeword_bytes,
    }
    note = noise.first_miss or (
        f"every single-bit flip of the {len(frames)} golden frames; CRC-32 proven to catch every burst "
        f"<= {proof.burst_bits} bits and every error of < {proof.min_distance} bits up to {proof.codeword_bytes} bytes"
    )
    return Outcome(done, figures, ok, note)


# ============================================================================ malformed frames


class MalformedFrameDraws(abc.ABC):
    """Draws malformed frames from a seeded ``random.Random``, whatever receives them: the
    in-process device (``MalformedFrames``) or a target over a link
    (``hil.campaigns.link_frames.LinkMalformedFrames``).

    Kinds (``KINDS``): random bytes; real frames cut short on the wire; over-length frames;
    bad COBS; missing delimiters; bad CRC; real frames mutated (header fields, lengths, bytes,
    splices) with the CRC recomputed; and payloads cut, stretched, corrupted or put under
    another type or header, sealed in the live session with a fresh counter, so that they
    pass the tag and reach the payload checks.

    The real frames are the golden vectors' and ``own``: frames of the live session and
    plaintext ones, built for this and never sent as they are. A subclass says what only its
    receiver knows: the live session's replay mark (``replay_mark``, which mutated counters
    straddle) and how a frame is sealed in that session (``seal``); it may also draw its own
    way where its receiver needs it (``_below``, ``_some_body``, ``_some_wire``, ``_pieces``,
    ``_bad_cobs``).
    """

    KINDS = ("random", "truncated", "over_length", "bad_cobs", "no_delimiters", "bad_crc", "mutated", "sealed")
    WEIGHTS = (8, 10, 5, 8, 8, 8, 35, 18)

    def __init__(self, rng: random.Random, own: list[bytes], session_ids: list[int]) -> None:
        self.rng = rng
        golden = golden_frames()
        self.bodies = [f.body for f in golden if f.protocol] + [_body(w) for w in own]
        self.wires = [f.wire for f in golden] + own
        self.payloads = [(t, encode_payload(msg)) for t, msg in EXAMPLE_REQUESTS.items()]
        self.session_ids = session_ids
        """The session ids a mutated header may name: the live session's and the golden vectors'."""

    @abc.abstractmethod
    def replay_mark(self) -> int:
        """The highest counter of the live session that the receiver has accepted."""

    @abc.abstractmethod
    def seal(self, msg_type: int, payload: bytes, *, flags: int, version: int, command_id: int) -> bytes:
        """The body of a frame of the live session with a fresh counter, sealed with its keys."""

    def batch(self, n: int) -> list[tuple[str, list[bytes]]]:
        """``n`` frames: (kind, the pieces that the receiver gets one by one)."""
        kinds = self.rng.choices(self.KINDS, self.WEIGHTS, k=n)
        return [(kind, self._pieces(getattr(self, f"_{kind}")())) for kind in kinds]

    def _pieces(self, data: bytes) -> list[bytes]:
        """Usually one piece; sometimes the frame split at random points (any chunking)."""
        if len(data) < 4 or self.rng.random() >= 0.1:
            return [data]
        cuts = sorted(self.rng.sample(range(1, len(data)), min(len(data) - 1, self.rng.randint(1, 3))))
        return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]

    def _below(self, n: int) -> int:
        """A place in [0, n) in a frame."""
        return self.rng.randrange(n)

    def _some_body(self) -> bytes:
        """A real frame's body, to be broken on the wire."""
        return self.rng.choice(self.bodies)

    def _some_wire(self) -> bytes:
        """A real frame as the wire carries it, to be cut short."""
        return self.rng.choice(self.wires)

    # ------------------------------------------------------------------ on the wire

    def _random(self) -> bytes:
        rng = self.rng
        data = rng.randbytes(rng.choice((1, 2, 5, 31, 40, 64, 200, 1100)))
        return DELIMITER + data + DELIMITER if rng.random() < 0.5 else data

    def _truncated(self) -> bytes:
        """A real frame cut on the wire before its end (what remains comes with the next
        delimiter, so at least one byte of the encoding is missing)."""
        wire = self._some_wire()
        return wire[: 1 + self._below(len(wire) - 2)]

    def _over_length(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(3)
        if kind == 0:  # a body past the largest, correct CRC: OVERSIZE after COBS decoding
            return frame_bytes(rng.randbytes(rng.randint(MAX_BODY_BYTES + 1, MAX_BODY_BYTES + 200)))
        if kind == 1:  # no delimiter for longer than the largest encoding
            run = rng.randbytes(MAX_ENCODED_BYTES + rng.randint(1, 600)).replace(DELIMITER, b"\x01")
            return DELIMITER + run + (DELIMITER if rng.random() < 0.5 else b"")
        body = rng.choice(self.bodies)  # a real frame padded to near the largest: reaches the decoder
        return frame_bytes(body + rng.randbytes(max(0, rng.randint(MAX_BODY_BYTES - 64, MAX_BODY_BYTES) - len(body))))

    def _bad_cobs(self) -> bytes:
        """A COBS code byte pointing past the end of the frame or into another block."""
        rng = self.rng
        encoded = bytearray(cobs.encode(with_crc(self._some_body())))
        if rng.random() < 0.5:
            encoded[0] = min(255, len(encoded) + rng.randint(1, 40))
        else:
            i = self._below(len(encoded))
            encoded[i] = rng.randrange(1, 256)
        return DELIMITER + bytes(encoded) + DELIMITER

    def _no_delimiters(self) -> bytes:
        rng = self.rng
        a, b = rng.choice(self.wires), rng.choice(self.wires)
        kind = rng.randrange(3)
        if kind == 0:  # two frames run together: the delimiter between them lost
            return a[:-1] + b[1:]
        if kind == 1:  # neither delimiter: merges with whatever comes before and after
            return a[1:-1]
        return a[1:]  # no leading delimiter

    def _bad_crc(self) -> bytes:
        body = self._some_body()
        return frame_bytes(body, crc32(body) ^ self.rng.randrange(1, 1 << 32))

    # ------------------------------------------------------------------ past the CRC

    def _header_field(self, body: bytes) -> bytes:
        rng = self.rng
        fields = list(_HEADER.unpack_from(body)) if len(body) >= HEADER_BYTES else [PROTOCOL_VERSION, 1, 0, 0, 1, 0, 0]
        i = rng.randrange(7)
        mark = self.replay_mark()
        choices: tuple[int, ...] = (
            (0, 2, 255, rng.randrange(256)),
            (0, 0xFF, rng.randrange(256), int(rng.choice(list(MsgType)))),
            (rng.randrange(256), rng.randrange(_FLAG_BITS + 1), fields[2] ^ (1 << rng.randrange(8))),
            (0, rng.getrandbits(32), *self.session_ids),
            (0, 1, _U64, rng.getrandbits(64), max(0, mark - 1), mark, mark + 1),
            (0, rng.getrandbits(64), mark),
            (0, rng.getrandbits(64)),
        )[i]
        fields[i] = rng.choice(choices)
        head = _HEADER.pack(*fields)
        return head + body[HEADER_BYTES:] if len(body) >= HEADER_BYTES else head[: len(body)]

    def _mutate(self, body: bytes) -> bytes:
        rng = self.rng
        op = rng.randrange(8)
        if op == 0 and body:  # bytes changed
            out = bytearray(body)
            for _ in range(rng.randint(1, 4)):
                out[self._below(len(out))] ^= rng.randrange(1, 256)
            return bytes(out)
        if op in (1, 2):
            return self._header_field(body)
        if op == 3 and body:  # cut short
            return body[: self._below(len(body))]
        if op == 4:  # stretched
            return body + rng.randbytes(rng.randint(1, 64))
        if op == 5 and body:  # bytes inserted or removed inside
            i = self._below(len(body))
            if rng.random() < 0.5:
                return body[:i] + rng.randbytes(rng.randint(1, 16)) + body[i:]
            return body[:i] + body[i + rng.randint(1, 16) :]
        if op == 6:  # one frame's header, another's rest
            other = rng.choice(self.bodies)
            return body[:HEADER_BYTES] + other[HEADER_BYTES:]
        return rng.randbytes(rng.randint(0, 80)) if rng.random() < 0.2 else body[:HEADER_BYTES]

    def _mutated(self) -> bytes:
        """A real frame's body (golden or of the live session), changed 1 to 3 times, with the
        CRC recomputed: framing passes, the header, session and tag checks must refuse it."""
        original = self.rng.choice(self.bodies)
        body = original
        for _ in range(self.rng.randint(1, 3)):
            body = self._mutate(body)
        if body == original:
            body = original + b"\x00"
        return frame_bytes(body)

    def _sealed(self) -> bytes:
        """An authentic frame of the live session (fresh counter, the session's keys) that is
        malformed inside: its payload cut, stretched or corrupted, another type's payload,
        an effectful request without a command id, or a header the codec refuses (undefined
        flags, ERROR from the programmer, another version) under a tag that verifies."""
        rng = self.rng
        t, payload = rng.choice(self.payloads)
        msg_type, flags, version, command_id = int(t), int(FrameFlags.SECURED), PROTOCOL_VERSION, rng.getrandbits(64)
        op = rng.randrange(7)
        if op == 0 and payload:
            payload = payload[: self._below(len(payload))]
        elif op == 1:
            payload += rng.randbytes(rng.randint(1, 32))
        elif op == 2 and payload:
            out = bytearray(payload)
            for _ in range(rng.randint(1, 4)):
                out[self._below(len(out))] ^= rng.randrange(1, 256)
            payload = bytes(out)
        elif op == 3:
            msg_type = rng.choice([int(x) for x in MsgType if x != t] + [rng.randrange(256)])
        elif op == 4 and CATALOG[t].effectful:
            command_id = 0
        elif op == 5:
            flags |= rng.choice((int(FrameFlags.ERROR), 1 << rng.randrange(3, 8)))
        else:
            version = rng.choice((0, 2, 255))
        return frame_bytes(self.seal(msg_type, payload, flags=flags, version=version, command_id=command_id))


class MalformedFrames(MalformedFrameDraws):
    """Malformed frames (``MalformedFrameDraws``) for one live pump: its clinician session's
    frames among the real ones, its replay mark, and its keys to seal frames malformed inside."""

    def __init__(self, rng: random.Random, live: LivePump) -> None:
        self.live = live
        # frames of the live session (and its plaintext channel), never sent as they are
        own = [live.channel.request(msg, _command_id(rng, t)).data for t, msg in EXAMPLE_REQUESTS.items()]
        own += [live.plain.request(EXAMPLE_REQUESTS[t]).data for t in (MsgType.IDENTIFY, MsgType.SESSION_OPEN)]
        session_ids = sorted({live.session_id} | {f.keys.session_id for f in golden_frames() if f.keys})
        super().__init__(rng, own, session_ids)

    def replay_mark(self) -> int:
        return self.live.mark

    def seal(self, msg_type: int, payload: bytes, *, flags: int, version: int, command_id: int) -> bytes:
        counter = self.live.channel.request(m.Status()).header.counter  # burn one: fresh and unused
        head = _HEADER.pack(version, msg_type, flags, self.live.session_id, counter, 0, command_id)
        direction = Direction.PUMP_TO_PROGRAMMER if flags & int(FrameFlags.FROM_PUMP) else Direction.PROGRAMMER_TO_PUMP
        return head + seal_payload(self.live.keys, direction, counter, head, payload)


def _command_id(rng: random.Random, t: MsgType) -> int:
    return rng.getrandbits(64) | 1 if CATALOG[t].effectful else 0


def _body(wire: bytes) -> bytes:
    (body,) = Deframer().feed(wire)
    assert isinstance(body, bytes)
    return body


@dataclass
class _Tally:
    frames: int = 0
    exceptions: int = 0
    hangs: int = 0
    max_ns: int = 0
    state_changes: int = 0
    batches: int = 0
    sealed: int = 0
    first: str = ""
    stats: dict[str, int] = field(default_factory=dict)

    def add_stats(self, live: LivePump) -> None:
        s = live.device.stats
        for name, value in (
            ("passed_crc", s.frames_ok),
            ("refused", sum(s.refused.values())),
            ("dropped", s.dropped),
            ("skipped", live.skipped),
            ("unanswered", live.unanswered),
            ("security_entries", len(live.device.pump.log.entries(LogEventKind.SECURITY))),
            ("history_evicted", live.history_evicted()),
        ):
            self.stats[name] = self.stats.get(name, 0) + value


def run_malformed_frames(
    size: int, budget: Budget, seed: int, *, clock: Callable[[], int] = time.perf_counter_ns
) -> Outcome:
    """Batches of malformed frames into a live pump; after each batch a good STATUS (to the
    device and its twin) and the therapy state compared. An exception or a changed state
    is counted, noted, and the pair is built anew (the campaign goes on)."""
    rng = seeded(seed)
    started = time.monotonic()
    tally = _Tally()
    live = LivePump(rng.getrandbits(32))
    maker = MalformedFrames(rng, live)
    now_ms = 0
    while tally.frames < size and not budget.expired():
        tally.batches += 1
        broken = ""
        for kind, pieces in maker.batch(min(BATCH_FRAMES, size - tally.frames)):
            fed = False
            for piece in pieces:
                now_ms += rng.randrange(MAX_STEP_MS + 1)
                try:
                    took = live.offer(piece, now_ms, clock)
                except Exception as exc:
                    tally.exceptions += 1
                    broken = f"{type(exc).__name__}: {exc} on {kind} bytes {piece[:48].hex()}"
                    fed = True
                    break
                if took is not None:
                    fed = True
                    tally.max_ns = max(tally.max_ns, took)
                    tally.hangs += took > HANG_MS * 1_000_000
            tally.frames += fed
            tally.sealed += fed and kind == "sealed"
            if broken:
                break
        if not broken:
            try:
                live.keepalive()
                part = live.divergence()
            except Exception as exc:
                tally.exceptions += 1
                broken = f"{type(exc).__name__}: {exc} after batch {tally.batches}"
            else:
                if part is not None:
                    tally.state_changes += 1
                    broken = f"the {part} changed in batch {tally.batches}"
        if broken:
            tally.first = tally.first or f"seed {seed}: {broken}"
            tally.add_stats(live)
            live = LivePump(rng.getrandbits(32))
            maker = MalformedFrames(rng, live)
            now_ms = 0
    tally.add_stats(live)
    wall_s = max(time.monotonic() - started, 1e-9)
    figures: dict[str, int | float] = {
        "exceptions": tally.exceptions,
        "hangs": tally.hangs,
        "state_changes": tally.state_changes,
        "unanswered_good_frames": tally.stats["unanswered"],
        "max_receive_ms": round(tally.max_ns / 1e6, 3),
        "frames_per_s": round(tally.frames / wall_s),
        "passed_crc": tally.stats["passed_crc"],
        "authentic_malformed": tally.sealed,
        "refused": tally.stats["refused"],
        "dropped": tally.stats["dropped"],
        "security_log_entries": tally.stats["security_entries"],
        "history_evicted": tally.stats["history_evicted"],
        "valid_requests_held_back": tally.stats["skipped"],
    }
    ok = (
        tally.exceptions == 0
        and tally.hangs == 0
        and tally.state_changes == 0
        and tally.stats["unanswered"] == 0
        and tally.stats["history_evicted"] == 0
    )
    note = tally.first or f"{tally.batches} batches at advancing virtual time, each followed by a good request"
    return Outcome(tally.frames, figures, ok, note)


# ============================================================================ registration


@campaign(
    "malformed-frames",
    row="malformed frames",
    target="0 exceptions, 0 hangs, 0 changes to the therapy state",
    unit="frames",
    sizes=(100_000, 10_000_000),
)
def malformed_frames(size: int, budget: Budget, seed: int) -> Outcome:
    return run_malformed_frames(size, budget, seed)


@campaign(
    "line-noise",
    row="line noise",
    target="100 % detected, the next good frame accepted",
    unit="corrupted frames",
    sizes=(100_000, 10_000_000),
)
def line_noise(size: int, budget: Budget, seed: int) -> Outcome:
    return run_line_noise(size, budget, seed)
