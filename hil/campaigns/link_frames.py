"""Frame campaigns over a link: malformed frames and line noise at any target, black-box.

The in-process campaigns (``hil.campaigns.frames``) feed ``Device.receive_data`` and compare
the device's state with a twin's. Over a link there is neither: these runs put the same kinds
of bytes on the target's port and judge what became of them through the protocol alone
(``LinkJudge``):

- every frame is fenced with an IDENTIFY: a device answers in order, so the answers before
  the fence's reply are the frame's, and a target that hangs on a frame loses the fence;
- an answer other than an error is allowed only where the reference codec finds a plaintext
  IDENTIFY (a mutation can make one: it has no effect);
- every CHECK_FRAMES frames and at the end, what the target reports of its therapy and
  settings (``LinkJudge.therapy``) must be as it was, and its log may hold no new entry that
  only a request carried out writes (``LinkJudge.log_since``).

``malformed-frames`` sends random, truncated, over-length and badly framed bytes (bad COBS,
missing delimiters, bad CRC), real frames mutated (the CRC recomputed, so that they reach the
header, session and tag checks) and frames sealed in a session the run opens by hand that are
malformed inside (so that they reach the payload checks). Some of the badly framed ones are
genuine commands (refill, program, limits, clock...) with a fresh counter, broken only on the
wire: a target that reads past the damage carries them out. Bytes that would deliver a request the
reference codec accepts (a cut frame completed by the fence's delimiter, a mutation that
happens to be valid) are held back, as in-process. After the last frame the target must still
answer a genuine STATUS of the suite's clinician.

``line-noise`` corrupts good frames (single-bit flips, 2 to 8 bit flips and bursts of 2 to 32
bits on the wire, bursts of 2 to 32 bits on body | CRC before COBS) and sends each corrupted
frame, then a good one: every corrupted frame must be refused (no answer but an error, no
change) and the good frame after it accepted. The good frames are fresh plaintext IDENTIFYs
and the golden vectors' requests, followed by the fence (the next good frame on the line), and
read-only requests sealed in the run's session, followed by the same request uncorrupted: the
target must answer it OK, since a frame refused before the counter check does not move the
replay mark (SPEC.md, Counters and replay).

The same seed makes the same draws (kinds, places, lengths); the bytes of frames sealed in the
run's session change from run to run with the nonce the target brings to the handshake (and
with them, rarely, which bytes the reference codec holds back).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from hil.conformance import DeviceUnderTest
from hil.conformance.raw import RawSession, RawWire, cobs_encode, header_bytes, open_raw_session
from programmer.errors import ProgrammerError
from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG, request_type_of
from protocol_spec.codec import Header, Packet, decode_body, decode_header, encode_payload
from protocol_spec.enums import MsgType, Role
from protocol_spec.examples import EXAMPLE_REQUESTS
from protocol_spec.framing import DELIMITER, Deframer, encode_frame

from . import Budget, Outcome, over_link
from .frames import HANG_MS, NOISE, GoldenFrame, MalformedFrameDraws, corrupt, golden_frames, harmless, with_crc
from .link import LinkJudge, Therapy

__all__ = [
    "CARRIERS",
    "CHECK_FRAMES",
    "READ_ONLY",
    "LinkMalformedFrames",
    "run_line_noise_over_link",
    "run_malformed_frames_over_link",
]

CHECK_FRAMES = 250
"""Frames between two checks of the target's therapy and log (each check costs a few requests)."""
READ_ONLY: tuple[object, ...] = (m.Status(), m.Interrogate(), m.ReadLimits(), m.ReadLog(0, 2))
"""The sealed requests line noise corrupts: a clinician may send them, they change nothing, and
a target answers them OK in any state."""


class _TargetLost(Exception):
    """The target stopped answering: a fence or a check went without a reply."""


# ============================================================================ shared


def _one_draw_below(rng: random.Random, n: int) -> int:
    """A whole number in [0, n) from exactly one draw, whatever ``n``: the draws after it do
    not depend on lengths that the session's bytes decide (COBS adds a byte per 254 non-zero)."""
    return min(n - 1, int(rng.random() * n))


def _bodies(data: bytes) -> list[bytes]:
    """The frame bodies a receiver in step takes from ``data`` and the fence's leading
    delimiter (every fence ends with a delimiter, so the receiver is in step before ``data``)."""
    return [item for item in Deframer().feed(data + DELIMITER) if isinstance(item, bytes)]


def _is_identify(body: bytes) -> bool:
    """A plaintext IDENTIFY request the reference codec accepts: answered, and without effect."""
    packet = decode_body(body)
    if not isinstance(packet, Packet):
        return False
    h = packet.header
    return h.msg_type == MsgType.IDENTIFY and not h.secured and not h.from_pump


def _replies(answers: list[Header]) -> list[Header]:
    """The answers that reply to a frame (alarm notifications left out)."""
    return [h for h in answers if h.is_error or h.msg_type != MsgType.ALARM_NOTIFY]


def _answered_ok(answers: list[Header], session: RawSession, counter: int) -> bool:
    """True if the target answered the request ``counter`` of ``session`` with anything but an error."""
    return any(
        h.from_pump and not h.is_error and h.echo_counter == counter and h.session_id == session.session_id
        for h in answers
    )


def _fenced(judge: LinkJudge, pieces: Sequence[bytes]) -> tuple[list[Header], int]:
    """Send ``pieces`` one write each, then the fence: the answers before the fence's reply
    and the round trip, ns, from the first byte written to the fence's reply."""
    started = time.perf_counter_ns()
    try:
        for piece in pieces[:-1]:
            judge.wire.send(piece)
        answers = judge.send(pieces[-1])
    except (AssertionError, OSError) as exc:
        raise _TargetLost(f"the fence after the frame: {exc}") from exc
    return answers, time.perf_counter_ns() - started


def _open_session(judge: LinkJudge) -> RawSession:
    """A clinician session opened by hand on the judge's wire (its frames can be sealed at will)."""
    key = judge.pump.keys.for_role(Role.CLINICIAN)
    if key is None:
        raise _TargetLost("the target's key set holds no clinician key")
    try:
        return open_raw_session(judge.wire, key)
    except (AssertionError, OSError) as exc:
        raise _TargetLost(f"SESSION_OPEN: {exc}") from exc


def _close(session: RawSession | None) -> None:
    if session is not None:
        with contextlib.suppress(AssertionError, OSError):
            session.close()


def _genuine(judge: LinkJudge, session: RawSession, message: object) -> tuple[int, bool]:
    """A genuine request in ``session``, fenced: (its counter, True if answered OK)."""
    counter, data = session.request(message)
    answers, _ = _fenced(judge, [data])
    return counter, _answered_ok(answers, session, counter)


def _first_status(judge: LinkJudge, session: RawSession) -> int:
    """The session's first request (a STATUS, which proves its key to the target): its counter."""
    counter, good = _genuine(judge, session, m.Status())
    if not good:
        raise _TargetLost("the first STATUS of the session opened by hand was not answered OK")
    return counter


def _alive(pump: DeviceUnderTest) -> bool:
    """True if the target answers a genuine STATUS of the suite's clinician."""
    try:
        pump.clinician.status()
    except (ProgrammerError, AssertionError, OSError):
        return False
    return True


class _Watch:
    """What the target reports of its therapy and its log, and whether any of it changed.

    ``check`` compares with the previous check; a change is counted once per check, noted, and
    becomes the reference (a run goes on after a change, as a run in-process does)."""

    def __init__(self, judge: LinkJudge) -> None:
        self.judge = judge
        self.changes = 0
        self.first = ""
        try:
            self.therapy = judge.therapy()
            self.seq = judge.next_seq()
        except (ProgrammerError, AssertionError, OSError) as exc:
            raise _TargetLost(f"reading its therapy: {exc}") from exc
        self._seen: set[int] = set()

    def check(self, where: str) -> bool:
        """True if nothing changed since the last check."""
        try:
            therapy = self.judge.therapy()
            next_seq = self.judge.next_seq()
            entries = [e for e in self.judge.log_since(self.seq) if e.seq not in self._seen]
        except (ProgrammerError, AssertionError, OSError) as exc:
            raise _TargetLost(f"reading its therapy and log {where}: {exc}") from exc
        self.seq = next_seq
        self._seen.update(e.seq for e in entries)
        what = []
        if therapy != self.therapy:
            fields = [
                f.name for f in dataclasses.fields(Therapy) if getattr(therapy, f.name) != getattr(self.therapy, f.name)
            ]
            what.append(f"the therapy changed ({', '.join(fields)})")
            self.therapy = therapy
        if entries:
            what.append(f"the log gained {', '.join(e.kind.name for e in entries)}")
        if not what:
            return True
        self.changes += 1
        self.first = self.first or f"{' and '.join(what)} {where}"
        return False


# ============================================================================ malformed frames


def _command_id(rng: random.Random, t: MsgType) -> int:
    value = rng.getrandbits(64) | 1
    return value if CATALOG[t].effectful else 0


class LinkMalformedFrames(MalformedFrameDraws):
    """Malformed frames (``MalformedFrameDraws``, kinds and weights as in-process) for a target,
    from a seeded ``random.Random`` and a session the run opened by hand (``session``, whose keys
    seal frames malformed inside; ``mark``, its replay mark, is the run's to keep).

    Half of the cut, bad-COBS and bad-CRC frames are genuine commands never sent (``_fresh``), the
    rest golden frames and frames of the session built at the start (their counters fall below
    the replay mark with the first good request). Places in a frame are drawn with one draw each
    (``_one_draw_below``), and so are the cuts and the bad COBS code bytes.
    """

    def __init__(self, rng: random.Random, wire: RawWire, session: RawSession) -> None:
        self.wire = wire
        self.session = session
        self.mark = 0
        """The highest counter of the session that the target answered OK (the good requests')."""
        own = [session.request(msg, command_id=_command_id(rng, t))[1] for t, msg in EXAMPLE_REQUESTS.items()]
        own.append(wire.plain(MsgType.IDENTIFY)[1])
        own.append(wire.plain(MsgType.SESSION_OPEN, encode_payload(EXAMPLE_REQUESTS[MsgType.SESSION_OPEN]))[1])
        golden_ids = sorted({f.keys.session_id for f in golden_frames() if f.keys})
        super().__init__(rng, own, [session.session_id, *golden_ids])
        self.commands = [t for t in EXAMPLE_REQUESTS if CATALOG[t].effectful and Role.CLINICIAN in CATALOG[t].roles]
        """What a fresh frame carries: the requests a clinician's session may send that act."""

    def replay_mark(self) -> int:
        return self.mark

    def seal(self, msg_type: int, payload: bytes, *, flags: int, version: int, command_id: int) -> bytes:
        _, body = self.session.body(msg_type, payload, command_id=command_id, flags=flags, version=version)
        return body

    def _below(self, n: int) -> int:
        return _one_draw_below(self.rng, n)

    def _pieces(self, data: bytes) -> list[bytes]:
        """Usually one write; sometimes the frame split at 1 to 3 random points (any chunking)."""
        split = self.rng.random() < 0.1
        n_cuts = self.rng.randint(1, 3)
        if not split or len(data) < 4:
            return [data]
        cuts = sorted({1 + self._below(len(data) - 1) for _ in range(n_cuts)})
        return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]

    def _fresh(self) -> bytes:
        """The body of a genuine request never sent: a command the session may send (one that
        acts: refill, program, limits, clock...) with a fresh counter and command id, or one
        time in five a plaintext IDENTIFY. Broken on the wire, it must be dropped unread."""
        t = self.rng.choice(self.commands)
        command_id = _command_id(self.rng, t)
        if self.rng.random() < 0.2:
            return header_bytes(MsgType.IDENTIFY, counter=self.wire.counter())
        _, body = self.session.body(int(t), encode_payload(EXAMPLE_REQUESTS[t]), command_id=command_id)
        return body

    def _some_body(self) -> bytes:
        fresh = self.rng.random() < 0.5
        known = self.rng.choice(self.bodies)
        return self._fresh() if fresh else known

    def _some_wire(self) -> bytes:
        fresh = self.rng.random() < 0.5
        return encode_frame(self._fresh()) if fresh else self.rng.choice(self.wires)

    def _bad_cobs(self) -> bytes:
        """A COBS code byte pointing past the end of the frame or into another block."""
        rng = self.rng
        encoded = bytearray(cobs_encode(with_crc(self._some_body())))
        first = rng.random() < 0.5
        at, code, past = self._below(len(encoded)), rng.randrange(1, 256), rng.randint(1, 40)
        if first:
            encoded[0] = min(255, len(encoded) + past)
        else:
            encoded[at] = code
        return DELIMITER + bytes(encoded) + DELIMITER


@dataclass
class _MalformedTally:
    frames: int = 0
    held_back: int = 0
    answered_ok: int = 0
    wrongly_accepted: int = 0
    refused: int = 0
    unanswered: int = 0
    sealed: int = 0
    slow: int = 0
    lost: int = 0
    max_ns: int = 0
    good_lost: int = 0
    first: str = ""

    def judge(self, kind: str, data: bytes, bodies: list[bytes], answers: list[Header], took_ns: int) -> None:
        """One fenced frame: what the target answered, against what the reference codec allows."""
        self.frames += 1
        self.sealed += kind == "sealed"
        self.max_ns = max(self.max_ns, took_ns)
        if took_ns > HANG_MS * 1_000_000:
            self.slow += 1
            self.first = self.first or f"a {kind} frame took {took_ns // 1_000_000} ms: {data[:48].hex()}"
        replies = _replies(answers)
        ok = sum(1 for h in replies if h.from_pump and not h.is_error)
        allowed = sum(1 for b in bodies if _is_identify(b))
        self.answered_ok += min(ok, allowed)
        self.refused += any(h.is_error for h in replies)
        self.unanswered += not replies
        if ok > allowed:
            self.wrongly_accepted += 1
            self.first = self.first or f"a {kind} frame was answered OK: {data[:48].hex()}"


def run_malformed_frames_over_link(size: int, budget: Budget, seed: int, pump: DeviceUnderTest) -> Outcome:
    """Batches of CHECK_FRAMES malformed frames, each fenced; after each batch a genuine STATUS
    in the run's session and a check of the target's therapy and log. A target that stops
    answering ends the run (noted); the run then checks whether it answers a STATUS still."""
    rng = random.Random(seed)  # noqa: S311
    started = time.monotonic()
    judge = LinkJudge(pump)
    tally = _MalformedTally()
    watch: _Watch | None = None
    session: RawSession | None = None
    security_before = 0
    try:
        watch = _Watch(judge)
        security_before = judge.security_total()
        session = _open_session(judge)
        maker = LinkMalformedFrames(rng, judge.wire, session)
        maker.mark = _first_status(judge, session)
        batches = 0
        while tally.frames < size and not budget.expired():
            batches += 1
            for kind, pieces in maker.batch(min(CHECK_FRAMES, size - tally.frames)):
                data = b"".join(pieces)
                bodies = _bodies(data)
                if not all(harmless(b, session.keys, maker.mark) for b in bodies):
                    tally.held_back += 1
                    continue
                answers, took_ns = _fenced(judge, pieces)
                tally.judge(kind, data, bodies, answers, took_ns)
            counter, good = _genuine(judge, session, m.Status())
            if good:
                maker.mark = counter
            else:
                tally.good_lost += 1
                tally.first = tally.first or f"the genuine STATUS after batch {batches} was not answered OK"
            watch.check(f"in batch {batches}")
    except _TargetLost as exc:
        tally.lost += 1
        tally.first = tally.first or f"the target stopped answering after {tally.frames} frames: {exc}"
    finally:
        _close(session)
    alive = _alive(pump)
    security = 0
    if alive and watch is not None and not tally.lost:
        with contextlib.suppress(_TargetLost):
            watch.check("at the end")
        with contextlib.suppress(ProgrammerError, AssertionError, OSError):
            security = judge.security_total() - security_before
    changes = watch.changes if watch is not None else 0
    wall_s = max(time.monotonic() - started, 1e-9)
    figures: dict[str, int | float] = {
        "frames": tally.frames,
        "hangs": tally.lost + tally.slow,
        "max_round_trip_ms": round(tally.max_ns / 1e6, 3),
        "state_changes": changes,
        "wrongly_accepted": tally.wrongly_accepted,
        "answered_ok": tally.answered_ok,
        "refused": tally.refused,
        "unanswered": tally.unanswered,
        "good_requests_lost": tally.good_lost,
        "authentic_malformed": tally.sealed,
        "valid_requests_held_back": tally.held_back,
        "security_log_events": security,
        "bad_frames_from_target": judge.wire.bad_frames,
        "frames_per_s": round(tally.frames / wall_s),
        "alive_at_end": int(alive),
    }
    ok = not tally.lost and not tally.slow and not changes and not tally.wrongly_accepted and not tally.good_lost
    problems = [tally.first, watch.first if watch is not None else ""]
    problems.append("" if alive else "the target did not answer the clinician's STATUS at the end")
    problem = next((p for p in problems if p), "")
    summary = f"every frame fenced; a genuine STATUS, the therapy and the log checked every {CHECK_FRAMES} frames"
    return Outcome(tally.frames, figures, ok and alive, f"seed {seed}: {problem}" if problem else summary)


# ============================================================================ line noise


CARRIERS = ("identify_frames", "golden_frames", "sealed_frames")
"""Kinds of good frame that are corrupted, drawn with equal weight."""


@dataclass
class _Noise:
    done: int = 0
    rejected: int = 0
    next_good: int = 0
    passed_crc: int = 0
    max_ns: int = 0
    first_miss: str = ""
    by_kind: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(NOISE + CARRIERS, 0))

    def miss(self, what: str) -> None:
        self.first_miss = self.first_miss or what


def run_line_noise_over_link(size: int, budget: Budget, seed: int, pump: DeviceUnderTest) -> Outcome:
    """Corrupted good frames, each followed by a good frame; the target's therapy and log
    checked every CHECK_FRAMES corruptions and at the end."""
    rng = random.Random(seed)  # noqa: S311
    judge = LinkJudge(pump)
    noise = _Noise()
    golden = [f for f in golden_frames() if f.protocol and not _from_pump(f.body)]
    watch: _Watch | None = None
    session: RawSession | None = None
    lost = False
    try:
        watch = _Watch(judge)
        session = _open_session(judge)
        _first_status(judge, session)
        while noise.done < size and not budget.expired():
            for _ in range(min(CHECK_FRAMES, size - noise.done)):
                _noise_unit(rng, judge, session, golden, noise)
            watch.check(f"after {noise.done} corruptions")
    except _TargetLost as exc:
        lost = True
        noise.miss(f"the target stopped answering after {noise.done} corruptions: {exc}")
    finally:
        _close(session)
    if watch is not None and not lost:
        with contextlib.suppress(_TargetLost):
            watch.check("at the end")
    changes = watch.changes if watch is not None else 0
    figures: dict[str, int | float] = {
        "corruptions": noise.done,
        "rejected": noise.rejected,
        "next_good_accepted": noise.next_good,
        "passed_crc": noise.passed_crc,
        "state_changes": changes,
        **noise.by_kind,
        "max_round_trip_ms": round(noise.max_ns / 1e6, 3),
    }
    ok = not lost and noise.rejected == noise.done and noise.next_good == noise.done and not changes
    miss = noise.first_miss or (watch.first if watch is not None else "")
    summary = (
        f"corrupted fresh IDENTIFYs, {len(golden)} golden requests and sealed read-only requests, each followed "
        f"by a good frame; the therapy and the log checked every {CHECK_FRAMES} corruptions"
    )
    return Outcome(noise.done, figures, ok, f"seed {seed}: {miss}" if miss else summary)


def _from_pump(body: bytes) -> bool:
    header = decode_header(body)
    return header is not None and header.from_pump


def _noise_unit(
    rng: random.Random, judge: LinkJudge, session: RawSession, golden: list[GoldenFrame], noise: _Noise
) -> None:
    """One good frame corrupted and sent (fenced), then the good frame: the fence for an
    IDENTIFY or a golden frame, the same request uncorrupted for a sealed one."""
    carrier = CARRIERS[rng.randrange(len(CARRIERS))]
    kind = NOISE[rng.randrange(len(NOISE))]  # every kind of line error with equal weight
    frame, message = rng.choice(golden), rng.choice(READ_ONLY)  # both drawn: the draws after are the seed's
    counter = 0
    if carrier == "identify_frames":
        body = header_bytes(MsgType.IDENTIFY, counter=judge.wire.counter())
        what = "a fresh IDENTIFY"
    elif carrier == "golden_frames":
        body = frame.body
        what = f"golden {frame.name}"
    else:
        counter, body = session.body(int(request_type_of(message)), encode_payload(message))
        what = f"a sealed {type(message).__name__}"
    wire = encode_frame(body)
    corrupted, _ = corrupt(rng, kind, body, wire, lambda n: _one_draw_below(rng, n))
    noise.by_kind[carrier] += 1
    noise.by_kind[kind] += 1
    noise.done += 1
    answers, took_ns = _fenced(judge, [corrupted])
    noise.max_ns = max(noise.max_ns, took_ns)
    noise.passed_crc += bool(_replies(answers))
    if judge.accepted(answers):
        noise.miss(f"{kind} of {what} was accepted: {corrupted.hex()}")
    else:
        noise.rejected += 1
    if carrier != "sealed_frames":
        noise.next_good += 1  # the fence, an IDENTIFY, was answered
        return
    answers, took_ns = _fenced(judge, [wire])
    noise.max_ns = max(noise.max_ns, took_ns)
    if _answered_ok(answers, session, counter):
        noise.next_good += 1
    else:
        refusals = [h for h in answers if h.is_error]
        noise.miss(f"{what} after its {kind} was not answered OK ({len(refusals)} refusals): {corrupted.hex()}")


# ============================================================================ registration


@over_link("malformed-frames", sizes=(2_000, 200_000))
def malformed_frames_over_link(size: int, budget: Budget, seed: int, pump: DeviceUnderTest) -> Outcome:
    return run_malformed_frames_over_link(size, budget, seed, pump)


@over_link("line-noise", sizes=(1_000, 100_000))
def line_noise_over_link(size: int, budget: Budget, seed: int, pump: DeviceUnderTest) -> Outcome:
    return run_line_noise_over_link(size, budget, seed, pump)
