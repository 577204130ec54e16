"""Security campaigns over a link: replay, forgery, wrong role and eavesdropping, black-box.

The rows of ``security`` (which drives the virtual pump white-box, in virtual time), run against
any target through the protocol alone: a served pty, a dev board, rfc2217, or ``pump://``. The
campaign opens sessions of its own by hand on the port the target's programmers share (with the
keys ``pump.keys`` holds), does real clinical work in them, and plays the attacker with raw
frames. What became of each attacker frame is judged from what the target sends back and what it
reports of itself (``LinkJudge``):

- "accepted" (replay, forgery) or "executed" (wrong role): the target answered the frame with
  anything but an error, or its therapy or its log (SECURITY, sessions and alarms aside) changed
  over the batch the frame was sent in;
- every refusal of authentication or access (BAD_TAG, REPLAYED_COUNTER, WRONG_ROLE, NO_SESSION,
  UNKNOWN_KEY), frames dropped in a bad-tag backoff included, must be in the target's log: the
  SECURITY events it counts over each batch (aggregated entries count many) must equal them.

The events are counted from a little before each batch (a refusal may be counted into an entry up
to 32 entries back), never over the whole log, which a long campaign turns over. The campaign
keeps within the target's bound on proven sessions (the example pump holds 4: the target's own
clinician programmer and at most 3 of the campaign's), so that it never ends a session of the
target's programmers: their next frame would be refused, and logged, inside a batch. Nothing here
looks inside the target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hil.conformance import DeviceUnderTest
from hil.conformance.dut import SUITE_ALARM_REPEATS_MS
from hil.conformance.raw import RawSession
from programmer.errors import ProgrammerError
from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG, request_type_of
from protocol_spec.channel import client_finish, client_hello
from protocol_spec.codec import DecodeError, Header, Packet, decode_body, decode_header, encode_packet, encode_payload
from protocol_spec.enums import (
    PROTOCOL_VERSION,
    BolusKind,
    ErrorCode,
    FaultKind,
    Feature,
    FrameFlags,
    LogEventKind,
    MsgType,
    ProgramSlot,
    RefillConfirmation,
    Role,
    TherapyMode,
)
from protocol_spec.examples import EXAMPLE_REQUESTS
from protocol_spec.framing import encode_frame
from protocol_spec.security import RoleKey, SessionKeys, derive_session_keys

from . import Budget, Outcome, over_link
from .link import LinkJudge
from .security import FORGERIES, Capture, EavesdropTally, forge, readdressed, replay_figures

__all__ = ["FORGERIES"]

T = TypeVar("T")

_ACCEPTED = "accepted"
_UNANSWERED = "unanswered"
_SECURITY_CODES = frozenset(
    c.name
    for c in (
        ErrorCode.BAD_TAG,
        ErrorCode.REPLAYED_COUNTER,
        ErrorCode.WRONG_ROLE,
        ErrorCode.NO_SESSION,
        ErrorCode.UNKNOWN_KEY,
    )
)
"""The refusals the target logs as SECURITY events (SPEC.md, Access control)."""
_LOG_LOOKBACK = 64
"""Entries before a batch whose SECURITY counts are read with it: a refusal is counted into the
newest entry of its code among the last 32 (SPEC.md, Access control), which may be older than
the batch."""
_REFILL_OK = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED
_UG = 1_000
_PATIENT_SETTINGS = m.PatientBolusSettings(1, 25 * _UG, 600_000, 3_600_000, 4)
"""Patient boluses as a clinician would set them (25 ug over 10 min, 1 h lockout, 4 a day), when
the target has them disabled; the dose is capped at its library's largest bolus."""
_LOWER_PERMILLE = 50
"""A visit's program lowers the running CONTINUOUS dose by this much, every other visit or so."""


def _rng(seed: int) -> random.Random:
    # reproducible attack schedules, not secrets: a seeded PRNG is the point
    return random.Random(seed)  # noqa: S311


class _Refused(RuntimeError):
    """The target refused, or did not answer, genuine work the campaign needs to go on."""


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"code_{code}"


# ---------------------------------------------------------------------- the campaign's end of the link


class _Link:
    """The campaign's end of the link: the sessions it opened by hand (their keys open the target's
    sealed refusals), every byte it wrote, and the judge."""

    def __init__(self, pump: DeviceUnderTest, rng: random.Random) -> None:
        self.pump = pump
        self.rng = rng
        self.judge = LinkJudge(pump)
        self.wire = self.judge.wire
        self.keys: dict[int, SessionKeys] = {}
        self.written = bytearray()
        """Every byte written since ``forget_bytes`` (``wire.received``: every byte read)."""
        self.sessions: list[_Session] = []

    def write(self, data: bytes) -> None:
        self.written += data
        self.wire.send(data)

    def forget_bytes(self) -> None:
        """Drop the bytes written and read so far: a long campaign would keep them all."""
        self.written.clear()
        self.wire.received.clear()

    def identify(self) -> None:
        """IDENTIFY, as a programmer begins."""
        counter, data = self.wire.plain(MsgType.IDENTIFY)
        self.write(data)
        self._answer(counter)

    def _answer(self, counter: int) -> bytes:
        try:
            return self.wire.answer(counter)
        except AssertionError as exc:  # no answer within the wire's wait
            raise _Refused(str(exc)) from exc

    def open(self, role: Role) -> _Session:
        """A session of ``role``: the handshake by hand (SPEC.md, Handshake), then a STATUS, which
        proves the key (a session counts as open, and is logged, from its first verified frame)."""
        key = self.pump.keys.for_role(role)
        if key is None:
            raise _Refused(f"no {role.name} key is held for the target")
        hello = client_hello(key, self.rng.randbytes(m.NONCE_BYTES))
        counter = self.wire.counter()
        header = Header(PROTOCOL_VERSION, MsgType.SESSION_OPEN, FrameFlags(0), 0, counter, 0, 0)
        self.write(encode_packet(header, hello))
        packet = decode_body(self._answer(counter))
        if isinstance(packet, DecodeError) or not isinstance(packet.message, m.SessionOpenReply):
            raise _Refused(f"a {role.name} session was refused: {packet}")
        keys = client_finish(key, hello, packet.header, packet.message)
        if keys is None:
            raise _Refused(f"the target's {role.name} key confirmation does not match the key held")
        self.keys[keys.session_id] = keys
        session = _Session(self, RawSession(self.wire, keys), role)
        self.sessions = [s for s in self.sessions if not s.closed] + [session]
        session.need(m.Status(), m.StatusReply)
        return session

    def close_all(self) -> None:
        """Close every session still open (best effort: the campaign may be ending on a refusal)."""
        for session in self.sessions:
            with contextlib.suppress(_Refused):
                session.close()
        self.sessions.clear()

    def probe(self, frame: bytes) -> str:
        """Send one attacker frame, fenced with an IDENTIFY in the same write (the target answers
        in order): "accepted" if it answered the frame with anything but an error, else the name of
        the code it refused it with, or "unanswered"."""
        counter, identify = self.wire.plain(MsgType.IDENTIFY)
        self.judge.frames_sent += 1
        self.judge.bytes_sent += len(frame)
        self.write(frame + identify)
        try:
            _, before = self.wire.until(
                lambda h: h.from_pump and h.echo_counter == counter and h.msg_type == MsgType.IDENTIFY,
                what="IDENTIFY reply",
            )
        except AssertionError as exc:
            raise _Refused(f"the target stopped answering: {exc}") from exc
        answers: list[tuple[Header, bytes]] = []
        for body in before:
            h = decode_header(body)
            if h is not None and h.from_pump and h.msg_type != MsgType.ALARM_NOTIFY:
                answers.append((h, body))
        if LinkJudge.accepted([h for h, _ in answers]):
            return _ACCEPTED
        for h, body in answers:
            packet = decode_body(body, self.keys.get(h.session_id) if h.secured else None)
            if isinstance(packet, Packet) and isinstance(packet.message, m.ErrorReply):
                return _code_name(packet.message.code)
        return "unreadable_answer" if answers else _UNANSWERED


class _Session:
    """A session opened by hand that does genuine work: every SECURED frame it sends is kept."""

    def __init__(self, link: _Link, raw: RawSession, role: Role) -> None:
        self.link = link
        self.raw = raw
        self.role = role
        self.sent: list[bytes] = []
        self.refused: list[str] = []
        """Genuine requests the target refused (a patient bolus in its lockout, a refill while a
        bolus runs): realistic, counted, not a failure of the row."""

    @property
    def session_id(self) -> int:
        return self.raw.session_id

    @property
    def keys(self) -> SessionKeys:
        return self.raw.keys

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def request(self, message: object) -> tuple[int, bytes]:
        """A genuine sealed request, built but not sent: (its counter, its wire bytes); a command
        id from the seed if it is effectful."""
        effectful = CATALOG[request_type_of(message)].effectful
        return self.raw.request(message, command_id=self.link.rng.getrandbits(63) + 1 if effectful else 0)

    def reply(self, message: object) -> Any:
        """Send a genuine request: its reply payload, or None if the target refused it."""
        counter, data = self.request(message)
        self.sent.append(data)
        self.link.write(data)
        try:
            packet = self.raw.answer(counter)
        except AssertionError as exc:  # no answer, or one that does not open
            raise _Refused(f"{self.role.name}: {type(message).__name__}: {exc}") from exc
        if packet.header.is_error:
            assert isinstance(packet.message, m.ErrorReply)
            self.refused.append(f"{type(message).__name__}: {_code_name(packet.message.code)}")
            return None
        return packet.message

    def need(self, message: object, cls: type[T]) -> T:
        """A genuine request the campaign cannot go on without."""
        reply = self.reply(message)
        if not isinstance(reply, cls):
            raise _Refused(f"{self.role.name}: {type(message).__name__} was refused: {self.refused[-1:]}")
        return reply

    def close(self) -> None:
        if not self.raw.closed:
            self.raw.closed = True
            self.reply(m.SessionClose())


# ---------------------------------------------------------------------- judging batches


class _Watch:
    """What a batch of attacker frames must leave as it was, and the SECURITY events it cost: the
    target's therapy, its log since the batch began (entries only a carried-out request writes),
    and the SECURITY events its log counts from ``_LOG_LOOKBACK`` entries before."""

    def __init__(self, judge: LinkJudge) -> None:
        self.judge = judge
        self.seq = judge.next_seq()
        self._first = max(0, self.seq - _LOG_LOOKBACK)
        self._security = self._counted()
        self._therapy = judge.therapy()

    def _counted(self) -> int:
        entries = self.judge.pump.clinician.read_all_log(self._first)
        return sum(e.count for e in entries if e.kind is LogEventKind.SECURITY)

    def close(self) -> tuple[int, bool]:
        """(SECURITY events counted since the batch began, whether anything was carried out)."""
        logged = self._counted() - self._security
        changed = self.judge.therapy() != self._therapy or bool(self.judge.log_since(self.seq))
        return logged, changed


@dataclass
class _Tally:
    """What became of the attacker frames: by outcome, logged, and batches that changed something."""

    frames: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    logged: int = 0
    batches_changed: int = 0

    def add(self, outcome: str) -> None:
        self.frames += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def count(self, name: str) -> int:
        return self.outcomes.get(name, 0)

    @property
    def accepted(self) -> int:
        return self.count(_ACCEPTED)

    def close(self, watch: _Watch) -> None:
        logged, changed = watch.close()
        self.logged += logged
        self.batches_changed += int(changed)


# ---------------------------------------------------------------------- genuine work


@dataclass(frozen=True)
class _Found:
    """The target's therapy as the campaign found it: what visits vary, within its drug library,
    and what is put back at the end."""

    limits: m.DrugLimits
    program: m.Program
    patient_bolus: m.PatientBolusSettings
    low_reservoir_threshold_nl: int
    patient_boluses: bool
    """The target announces PATIENT_BOLUS."""

    @classmethod
    def read(cls, pump: DeviceUnderTest) -> _Found:
        c = pump.clinician
        info = c.interrogate()
        return cls(
            c.read_limits(),
            c.read_program(ProgramSlot.ACTIVE),
            info.patient_bolus,
            info.low_reservoir_threshold_nl,
            pump.has(Feature.PATIENT_BOLUS),
        )

    def visit_program(self, rng: random.Random) -> m.Program | None:
        """The program a visit stages: the running one, its CONTINUOUS dose lowered by 5 % about
        every other visit (where the library lets the dose go back up without an override); None
        for a SINGLE_BOLUS, which staged again would give the bolus again."""
        p, lim = self.program, self.limits
        if p.mode is TherapyMode.SINGLE_BOLUS:
            return None
        if p.mode is TherapyMode.CONTINUOUS and p.concentration_ug_per_ml and rng.random() < 0.5:
            lower = p.dose_ng_per_day - p.dose_ng_per_day * _LOWER_PERMILLE // 1000
            rate_nl_per_day = lower * 1000 // p.concentration_ug_per_ml
            back_up_allowed = p.dose_ng_per_day * 1000 <= lower * (1000 + lim.soft_increase_permille_per_24h)
            if rate_nl_per_day >= lim.min_rate_nl_per_day and back_up_allowed:
                return dataclasses.replace(p, dose_ng_per_day=lower)
        return p

    def override(self, program: m.Program) -> int:
        """1 if the program is above the soft limit (it was running: a clinician confirmed it)."""
        top = max([program.dose_ng_per_day, *(s.dose_ng_per_day for s in program.steps)])
        return int(top > self.limits.soft_limit_ng_per_day)

    def patient_settings(self) -> m.PatientBolusSettings:
        if self.patient_bolus.enabled:
            return self.patient_bolus
        return dataclasses.replace(_PATIENT_SETTINGS, dose_ng=min(_PATIENT_SETTINGS.dose_ng, self.limits.max_bolus_ng))

    def restore(self, pump: DeviceUnderTest) -> str:
        """Put the program and patient-bolus settings back as found; what could not be, in words."""
        c = pump.clinician
        try:
            if self.program.mode is not TherapyMode.SINGLE_BOLUS and c.read_program() != self.program:
                pump.program(self.program, override_soft_limits=bool(self.override(self.program)))
            if self.patient_boluses and c.interrogate().patient_bolus != self.patient_bolus:
                c.commit(c.stage_patient_bolus(self.patient_bolus).stage_token)
        except ProgrammerError as exc:
            return f"the therapy as found could not be restored: {exc}"
        return ""


def _clinical_work(s: _Session, found: _Found, rng: random.Random) -> None:
    """A clinician's visit that does real work within the target's limits: read everything, set
    the alarms, refill with the drug and concentration the pump holds (the estimate aspirated,
    90 to 100 % of the reservoir added), stage and commit the program, and the patient-bolus
    settings if the target offers patient boluses."""
    info = s.need(m.Interrogate(), m.InterrogateReply)
    status = s.need(m.Status(), m.StatusReply)
    limits = s.need(m.ReadLimits(), m.DrugLimits)
    s.reply(m.ConfigureAlarms(found.low_reservoir_threshold_nl, *SUITE_ALARM_REPEATS_MS))
    bolus = status.bolus_active
    if bolus is BolusKind.PATIENT:  # a refill waits for no bolus (BUSY): the clinician stops the patient's
        bolus = BolusKind.NONE if s.reply(m.CancelBolus()) is not None else bolus
    held = {c.ug_per_ml for c in limits.concentrations}
    if bolus is BolusKind.NONE and info.drug is limits.drug and info.concentration_ug_per_ml in held:
        capacity = info.reservoir_capacity_nl
        added = capacity - rng.randrange(capacity // 10 + 1)
        refill = m.Refill(
            info.reservoir_estimate_nl,
            added,
            info.drug,
            info.concentration_ug_per_ml,
            info.catheter_volume_nl,
            _REFILL_OK,
        )
        s.reply(refill)
    program = found.visit_program(rng)
    if program is not None:
        staged = s.reply(m.StageProgram(found.override(program), program))
        if isinstance(staged, m.StageReply):
            s.reply(m.Commit(staged.stage_token))
    if found.patient_boluses:
        staged = s.reply(m.StagePatientBolus(0, found.patient_settings()))
        if isinstance(staged, m.StageReply):
            s.reply(m.Commit(staged.stage_token))
    s.reply(m.ReadProgram(ProgramSlot.ACTIVE))
    s.reply(m.ReadLog(0, 8))


def _patient_work(s: _Session, found: _Found) -> bool:
    """A patient's programmer: status, limits, and a bolus if the target offers them (granted, or
    refused in its lockout); True if a bolus was granted."""
    s.need(m.Status(), m.StatusReply)
    s.need(m.ReadLimits(), m.DrugLimits)
    return found.patient_boluses and isinstance(s.reply(m.PatientBolusRequest()), m.PatientBolusGrant)


# ====================================================================== 1. replay


@dataclass
class _Replays:
    """A replay run: the frames replayed so far, by context, and the genuine work done."""

    link: _Link
    found: _Found
    size: int
    budget: Budget
    resets: bool
    """Replay after a reset too (the target has the test role and fault injection)."""
    patient: bool
    """A PATIENT key is held: a patient's work is recorded too."""
    tally: _Tally = field(default_factory=_Tally)
    contexts: dict[str, int] = field(default_factory=dict)
    rounds: int = 0
    granted: int = 0
    genuine_refused: int = 0

    def batch(self, context: str, frames: list[bytes]) -> bool:
        """Replay ``frames`` (one batch, judged as one); False once the size or budget is reached."""
        watch = _Watch(self.link.judge)
        try:
            for frame in frames:
                if self.tally.frames >= self.size or self.budget.expired():
                    return False
                self.tally.add(self.link.probe(frame))
                self.contexts[context] = self.contexts.get(context, 0) + 1
        finally:
            self.tally.close(watch)
        return self.tally.frames < self.size

    @property
    def roles(self) -> tuple[Role, ...]:
        return (Role.CLINICIAN, Role.PATIENT) if self.patient else (Role.CLINICIAN,)

    def round(self, rng: random.Random) -> bool:
        """Record one clinician's and one patient's work, replay it in every context; False once
        the size or budget is reached."""
        link = self.link
        self.rounds += 1
        link.forget_bytes()
        clin = link.open(Role.CLINICIAN)
        _clinical_work(clin, self.found, rng)
        recorded = [(Role.CLINICIAN, f) for f in clin.sent]
        self.genuine_refused += len(clin.refused)
        pat = link.open(Role.PATIENT) if self.patient else None
        if pat is not None:
            self.granted += int(_patient_work(pat, self.found))
            self.genuine_refused += len(pat.refused)
            recorded += [(Role.PATIENT, f) for f in pat.sent]
        rng.shuffle(recorded)
        as_sent = [f for _, f in recorded]
        by_role = {role: [f for r, f in recorded if r is role] for role in self.roles}
        # 1. in the same session, still open
        if not self.batch("same_session", as_sent):
            return False
        # 2. a programmer restarted: a new session while the old ones are still open (one new
        #    session at a time: at most 3 of the campaign's are open)
        for role in self.roles:
            fresh = link.open(role)
            more = role is not Role.CLINICIAN or self.batch("new_session", as_sent)
            more = more and self.batch("new_session", [readdressed(f, fresh.session_id) for f in by_role[role]])
            fresh.close()
            if not more:
                return False
        # 3. every session closed
        link.close_all()
        if not self._gone("after_close", as_sent, by_role):
            return False
        # 4. the target reset by the test role: every session is gone
        if self.resets:
            tester = link.open(Role.TEST)
            tester.reply(m.InjectFault(FaultKind.RESET, 0))
            tester.raw.closed = True  # gone with the reset
            link.pump.refresh_sessions()  # the target's own programmers open theirs again
            if not self._gone("after_reset", as_sent, by_role):
                return False
        return True

    def _gone(self, context: str, as_sent: list[bytes], by_role: dict[Role, list[bytes]]) -> bool:
        """Replay the frames of sessions the target no longer holds: as sent, then re-addressed to
        fresh sessions of their roles."""
        if not self.batch(context, as_sent):
            return False
        fresh = {role: self.link.open(role) for role in by_role}
        to_fresh = [readdressed(f, fresh[role].session_id) for role, frames in by_role.items() for f in frames]
        more = self.batch(context, to_fresh)
        for session in fresh.values():
            session.close()
        return more


@over_link("replay", sizes=(2_000, 200_000))
def replay_over_link(size: int, budget: Budget, seed: int, pump: DeviceUnderTest) -> Outcome:
    """Record every SECURED frame of a clinician's and a patient's real work in sessions opened by
    hand, then replay each: in its own session; in new sessions while the old are still open (as
    sent, and re-addressed to the new session with the CRC recomputed); after the sessions are
    closed (as sent, and re-addressed to fresh ones); and, if the target has the test role and
    fault injection, after a TEST INJECT_FAULT RESET, as sent and re-addressed (the target's own
    programmers open their sessions again first, as the conformance suite's reset has them do)."""
    rng = _rng(seed)
    link = _Link(pump, rng)
    resets = pump.has(Feature.TEST_ROLE, Feature.FAULT_INJECTION) and pump.keys.for_role(Role.TEST) is not None
    patient = pump.keys.for_role(Role.PATIENT) is not None
    run = _Replays(link, _Found.read(pump), size, budget, resets, patient)
    t = run.tally
    stopped = ""
    try:
        while t.frames < size and not budget.expired():
            try:
                if not run.round(rng):
                    break
            finally:
                link.close_all()
    except (_Refused, ProgrammerError) as exc:
        stopped = f"stopped: {exc}"
    restored = run.found.restore(pump)
    ok = t.accepted == 0 and t.batches_changed == 0 and t.logged == t.frames and not stopped and not restored
    notes = [
        "pre-session frames (IDENTIFY, SESSION_OPEN) are plaintext by design and not replayed",
        *([] if patient else ["no PATIENT key is held: a clinician's frames only"]),
        *([] if resets else ["no replays after a reset: the target lacks the test role or fault injection"]),
        *(n for n in (stopped, restored) if n),
    ]
    known = (_ACCEPTED, ErrorCode.REPLAYED_COUNTER.name, ErrorCode.NO_SESSION.name, ErrorCode.BAD_TAG.name, _UNANSWERED)
    return Outcome(
        done=t.frames,
        figures={
            **replay_figures(t, _UNANSWERED),
            "refused_otherwise": t.frames - sum(t.count(k) for k in known),
            "logged": t.logged,
            "batches_changed": t.batches_changed,
            "sessions_recorded": run.rounds * len(run.roles),
            "patient_boluses_granted": run.granted,
            "genuine_requests_refused": run.genuine_refused,
            **{f"in_{k}": v for k, v in run.contexts.items()},
        },
        ok=ok,
        note="; ".join(notes),
    )


# ====================================================================== 2. forgery


_KEEPALIVE_EVERY = 8
"""The genuine programmer sends a STATUS after 1 to this many forgeries: it must be answered
(frames that verify are always processed) and it ends the backoff, so that the next forgery is
answered with BAD_TAG and the ones after it fall in the backoff: both paths are exercised, and no
real time is spent waiting a backoff out."""
_FORGERY_BATCH = 500
"""Forgeries judged together (the target's therapy and log read once)."""


def _forged_requests(found: _Found, info: m.InterrogateReply) -> list[object]:
    """What the forger sends: requests that would act, with the values of the target itself (its
    drug, concentration, limits, catheter): a forgery that got through would be plausible."""
    requests: list[object] = [
        m.Status(),
        m.SetClock(info.wall_clock_ms),
        m.ConfigureAlarms(found.low_reservoir_threshold_nl, *SUITE_ALARM_REPEATS_MS),
        m.Refill(
            info.reservoir_estimate_nl,
            info.reservoir_capacity_nl,
            info.drug,
            info.concentration_ug_per_ml,
            info.catheter_volume_nl,
            _REFILL_OK,
        ),
        m.StageBolus(BolusKind.BRIDGE, 0, max(1, info.catheter_volume_nl), 7_200_000),
        m.SetLimits(found.limits),
    ]
    if found.program.mode is not TherapyMode.SINGLE_BOLUS:
        requests.append(m.StageProgram(0, found.program))
    return requests


@over_link("forgery", sizes=(5_000, 500_000))
def forgery_over_link(size: int, budget: Budget, seed: int, pump: DeviceUnderTest) -> Outcome:
    """Forged frames on an open clinician session opened by hand: random tags, frames sealed with
    another key set's key, and valid frames with one bit of the tag, the ciphertext or the
    authenticated header flipped (CRC recomputed), each fenced; the genuine programmer's STATUS
    after every 1 to 8 of them must be answered. Frames dropped in the bad-tag backoff count as not
    accepted, and must be logged like the ones answered with BAD_TAG."""
    rng = _rng(seed)
    link = _Link(pump, rng)
    found = _Found.read(pump)
    t = _Tally()
    kinds: dict[str, int] = {}
    genuine = genuine_answered = 0
    note = ""
    try:
        clin = link.open(Role.CLINICIAN)
        info = clin.need(m.Interrogate(), m.InterrogateReply)
        requests = _forged_requests(found, info)
        sealed_payloads = [r for r in requests if encode_payload(r)]
        keys = clin.keys
        another_key = RoleKey(Role.CLINICIAN, keys.key_id, rng.randbytes(32))  # another device's key set
        other = derive_session_keys(another_key, keys.session_id, rng.randbytes(16), rng.randbytes(16))
        counter = 1 << 40  # above the genuine counters
        next_check = _FORGERY_BATCH
        watch = _Watch(link.judge)
        while t.frames < size and not budget.expired():
            for _ in range(min(rng.randint(1, _KEEPALIVE_EVERY), size - t.frames)):
                kind = FORGERIES[rng.randrange(len(FORGERIES))]
                pool = sealed_payloads if kind == "flipped_ciphertext" else requests
                message = pool[rng.randrange(len(pool))]
                counter += 1
                effectful = CATALOG[request_type_of(message)].effectful
                command_id = rng.getrandbits(63) + 1 if effectful else 0
                t.add(link.probe(forge(kind, keys, other, message, counter, command_id, rng)))
                kinds[kind] = kinds.get(kind, 0) + 1
            genuine += 1
            genuine_answered += int(link.probe(clin.request(m.Status())[1]) == _ACCEPTED)
            if t.frames >= next_check:
                t.close(watch)
                watch = _Watch(link.judge)
                next_check += _FORGERY_BATCH
        t.close(watch)
    except (_Refused, ProgrammerError) as exc:
        note = f"stopped: {exc}"
    finally:
        link.close_all()
    bad_tag = t.count(ErrorCode.BAD_TAG.name)
    dropped = t.count(_UNANSWERED)
    ok = (
        t.accepted == 0 and t.batches_changed == 0 and t.logged == t.frames and genuine_answered == genuine and not note
    )
    return Outcome(
        done=t.frames,
        figures={
            "forged": t.frames,
            "accepted": t.accepted,
            "bad_tag_answered": bad_tag,
            "dropped_in_backoff": dropped,
            "other_refusals": t.frames - t.accepted - bad_tag - dropped,
            "logged": t.logged,
            "batches_changed": t.batches_changed,
            "genuine_frames": genuine,
            "genuine_answered": genuine_answered,
            **{f"kind_{k}": v for k, v in sorted(kinds.items())},
        },
        ok=ok,
        note=note,
    )


# ====================================================================== 3. wrong role / no session


_NOT_THERE = frozenset({ErrorCode.NOT_SUPPORTED.name, ErrorCode.UNKNOWN_MESSAGE.name})
"""How a target without the test role may refuse a TEST type: it has none (not logged)."""


@dataclass(frozen=True)
class _Attempt:
    msg_type: MsgType
    role: Role | None
    """The session's role; None: in plaintext, without a session."""


def _attempts(roles: list[Role]) -> list[_Attempt]:
    """Every (type, role) the access matrix refuses: a session type by a role not marked for it,
    the pre-session types inside a session, and every session type in plaintext."""
    out: list[_Attempt] = []
    for t, d in CATALOG.items():
        if d.request is None:
            continue
        out += [_Attempt(t, r) for r in roles if d.pre_session or r not in d.roles]
        if not d.pre_session:
            out.append(_Attempt(t, None))
    return out


@over_link("wrong-role", sizes=(2_000, 100_000))
def wrong_role_over_link(size: int, budget: Budget, seed: int, pump: DeviceUnderTest) -> Outcome:
    """Every message type a role may not send, in a session of that role opened by hand (for the
    roles whose keys are held: PATIENT sending clinician types, CLINICIAN sending TEST types, TEST
    sending clinical changes, any role sending pre-session types), and every session type in
    plaintext without a session, with the catalogue's example payloads; a clinician has a program
    staged, so that a COMMIT (quoting its token) carried out would show.

    Each must be refused for access (WRONG_ROLE, NO_SESSION) and logged. A target without the test
    role holds no TEST session: the TEST key's SESSION_OPEN is the attempt, refused with
    UNKNOWN_KEY (logged); its TEST types may also be refused as not supported there (NOT_SUPPORTED,
    UNKNOWN_MESSAGE: not an access refusal, not logged), which counts as refused."""
    rng = _rng(seed)
    link = _Link(pump, rng)
    found = _Found.read(pump)
    test_role = pump.has(Feature.TEST_ROLE)
    announced = Feature.TEST_ROLE in Feature(pump.identity.features)
    held = [r for r in (Role.CLINICIAN, Role.PATIENT, Role.TEST) if pump.keys.for_role(r) is not None]
    in_session = [r for r in held if r is not Role.TEST or test_role]
    attempts = _attempts(in_session)
    test_key = pump.keys.for_role(Role.TEST)
    keyless_test = test_key is not None and not announced  # (a target listed without it may still have it)
    t = _Tally()
    by_role: dict[str, int] = {}
    expected_logged = refused_otherwise = not_supported = 0
    note = ""
    try:
        while t.frames < size and not budget.expired():
            sessions = {r: link.open(r) for r in in_session}
            clin = sessions.get(Role.CLINICIAN)
            token = 0
            program = found.visit_program(rng)
            if clin is not None and program is not None:
                staged = clin.reply(m.StageProgram(found.override(program), program))
                token = staged.stage_token if isinstance(staged, m.StageReply) else 0
            order = list(attempts) + ([_Attempt(MsgType.SESSION_OPEN, Role.TEST)] if keyless_test else [])
            rng.shuffle(order)
            watch = _Watch(link.judge)
            for a in order:
                if t.frames >= size or budget.expired():
                    break
                d = CATALOG[a.msg_type]
                message = m.Commit(token) if a.msg_type is MsgType.COMMIT and token else EXAMPLE_REQUESTS[a.msg_type]
                command_id = rng.getrandbits(63) + 1 if d.effectful else 0
                keyless = a.role is Role.TEST and keyless_test
                if a.msg_type is MsgType.SESSION_OPEN and a.role is not None:  # a fresh hello with a genuine key id
                    key = test_key if keyless else sessions[a.role].keys
                    assert key is not None
                    message = m.SessionOpen(a.role, key.key_id, rng.randbytes(m.NONCE_BYTES))
                if a.role is None or keyless:
                    _, frame = link.wire.plain(a.msg_type, encode_payload(message), command_id=command_id)
                    expected = ErrorCode.UNKNOWN_KEY.name if keyless else ErrorCode.NO_SESSION.name
                else:
                    _, body = sessions[a.role].raw.body(a.msg_type, encode_payload(message), command_id=command_id)
                    frame = encode_frame(body)
                    expected = ErrorCode.WRONG_ROLE.name
                outcome = link.probe(frame)
                t.add(outcome)
                name = "no_session" if a.role is None else a.role.name.lower()
                by_role[name] = by_role.get(name, 0) + 1
                if outcome in _SECURITY_CODES:
                    expected_logged += 1
                if outcome in (_ACCEPTED, expected):
                    continue
                if d.test_only and not announced and outcome in _NOT_THERE:
                    not_supported += 1
                else:
                    refused_otherwise += 1  # past the access check, or unanswered
            t.close(watch)
            if clin is not None and token:
                clin.reply(m.Abort())
            link.close_all()
    except (_Refused, ProgrammerError) as exc:
        note = f"stopped: {exc}"
    finally:
        link.close_all()
    restored = found.restore(pump)
    executed = t.accepted
    ok = (
        executed == 0
        and t.batches_changed == 0
        and refused_otherwise == 0
        and t.logged == expected_logged
        and not note
        and not restored
    )
    return Outcome(
        done=t.frames,
        figures={
            "sent": t.frames,
            "executed": executed,
            "batches_changed": t.batches_changed,
            "refused_wrong_role": t.count(ErrorCode.WRONG_ROLE.name),
            "refused_no_session": t.count(ErrorCode.NO_SESSION.name),
            "refused_unknown_key": t.count(ErrorCode.UNKNOWN_KEY.name),
            "refused_not_supported": not_supported,
            "refused_otherwise": refused_otherwise,
            "logged": t.logged,
            "logged_permille": t.logged * 1000 // max(1, expected_logged),
            **{f"as_{k}": v for k, v in sorted(by_role.items())},
        },
        ok=ok,
        note="; ".join(n for n in (note, restored) if n),
    )


# ====================================================================== 4. eavesdropping


@over_link("eavesdropping", sizes=(100, 20_000))
def eavesdropping_over_link(size: int, budget: Budget, seed: int, pump: DeviceUnderTest) -> Outcome:
    """Capture every byte both ways of clinical visits over the link (IDENTIFY, the handshake, a
    clinician's reads, alarms, refill, program and patient-bolus settings, or a patient's status,
    limits and bolus request, then SESSION_CLOSE), and scan the sealed part of every SECURED frame
    for each known plaintext of at least 4 bytes: the serial number and model from interrogation,
    and every dose, concentration and volume sent or received (u32 and u64). The plaintext frames
    (IDENTIFY and SESSION_OPEN, plaintext by design) are read field by field and scanned for the
    text patterns. The decrypted payloads must hold every pattern (a positive control: the scan
    would find them if they leaked)."""
    rng = _rng(seed)
    link = _Link(pump, rng)
    found = _Found.read(pump)
    identity = pump.interrogate_at_start
    known: list[object] = [identity.serial_number, identity.model]
    patient = pump.keys.for_role(Role.PATIENT) is not None
    tally = EavesdropTally()
    note = ""
    try:
        while tally.sessions < size and not budget.expired():
            link.forget_bytes()
            link.identify()
            role = Role.PATIENT if tally.sessions % 3 == 2 and patient else Role.CLINICIAN
            s = link.open(role)
            if role is Role.CLINICIAN:
                _clinical_work(s, found, rng)
                s.need(m.Interrogate(), m.InterrogateReply)
            else:
                _patient_work(s, found)
            s.need(m.Status(), m.StatusReply)
            s.close()
            capture = Capture()
            capture.add(bytes(link.written), link.keys)
            capture.add(bytes(link.wire.received), link.keys)
            tally.add(capture, known)
    except (_Refused, ProgrammerError) as exc:
        note = f"stopped: {exc}"
    finally:
        link.close_all()
    restored = found.restore(pump)
    ok = tally.ok and not note and not restored
    notes = [
        "patterns of 4 to 16 bytes; the sealed part of each frame (ciphertext and tag) is scanned; "
        "IDENTIFY and SESSION_OPEN are plaintext by design",
        *(n for n in (note, restored) if n),
    ]
    return Outcome(
        done=tally.sessions,
        figures={**tally.figures(), "sealed_frames_not_opened": tally.unopened},
        ok=ok,
        note="; ".join(notes),
    )
