"""The device endpoint end to end, through ``Device.receive_data`` on host time (SPEC.md):
every message of the catalogue and its access control, security (replay, forgery, backoff,
logging), exactly-once, two-step programming, alarm notifications, the test role, the event
log, and robustness against garbage."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_model.config import PumpConfig
from firmware_model.device import DeviceConfig
from firmware_model.pump import Pump
from firmware_model.units import MS_PER_DAY, MS_PER_HOUR
from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG
from protocol_spec.codec import HEADER_BYTES, Header, encode_payload
from protocol_spec.enums import (
    PROTOCOL_VERSION,
    AlarmCode,
    AlarmEvent,
    AlarmPriority,
    AlarmSet,
    BolusKind,
    ErrorCode,
    FaultKind,
    Feature,
    FrameFlags,
    LogEventKind,
    MsgType,
    ProgramSlot,
    Role,
    StageKind,
    TherapyMode,
    TonePattern,
)
from protocol_spec.examples import EXAMPLE_REPLIES, EXAMPLE_REQUESTS
from protocol_spec.framing import crc32, encode_frame
from protocol_spec.security import TAG_BYTES, TEST_KEY_SET, generate_key_set

from .device_harness import (
    REFILL_FULL,
    Exchange,
    Rig,
    Session,
    body_of,
    boot_device,
    flip_bit,
    log_since,
    make_device,
    plain_frame,
    security_counts,
    therapy_state,
)

ROLES = (Role.CLINICIAN, Role.PATIENT, Role.TEST)
REQUEST_TYPES = [t for t, d in CATALOG.items() if d.request is not None]
SESSION_TYPES = [t for t in REQUEST_TYPES if not CATALOG[t].pre_session]
PRE_SESSION_TYPES = [t for t in REQUEST_TYPES if CATALOG[t].pre_session]
TEST_TYPES = [t for t in REQUEST_TYPES if CATALOG[t].test_only]

CONC = 500
P0 = m.Program(TherapyMode.CONTINUOUS, CONC, 300_000, 0, 0, 0, ())
"""The running program: 300 ug/day at 500 ug/mL = 600,000 nL/day, one 250 nL step every 36 s."""
RATE0 = 600_000
P1 = m.Program(TherapyMode.CONTINUOUS, CONC, 350_000, 0, 0, 0, ())
"""A change within the +30 %/24 h soft limit: 350 ug/day."""
P2 = m.Program(TherapyMode.CONTINUOUS, CONC, 320_000, 0, 0, 0, ())
Q = 250 * MS_PER_DAY
"""The integral of one 250 nL motor step, nL*ms/day."""
PATIENT_SETTINGS = EXAMPLE_REQUESTS[MsgType.STAGE_PATIENT_BOLUS].settings
"""25 ug over 10 min, 1 h lockout, 4 per 24 h."""
SESSION_TIMEOUT_MS = DeviceConfig().session_timeout_ms
MAX_SESSIONS = DeviceConfig().max_sessions


def _pump(*, volume_nl: int = 20_000_000, program: m.Program | None = P0, config: PumpConfig | None = None) -> Pump:
    """A pump filled at 500 ug/mL, running ``program`` from uptime 0, patient boluses enabled."""
    pump = Pump(config if config is not None else PumpConfig())
    pump.refill(0, volume_nl, CONC)
    if program is not None:
        pump.commit_program(program)
    pump.set_patient_bolus(PATIENT_SETTINGS)
    return pump


def _rig(
    *,
    test_role: bool = True,
    volume_nl: int = 20_000_000,
    program: m.Program | None = P0,
    config: PumpConfig | None = None,
) -> Rig:
    return Rig(make_device(test_role=test_role, pump=_pump(volume_nl=volume_nl, program=program, config=config)))


def _sessions(rig: Rig, roles: tuple[Role, ...] = ROLES) -> dict[Role, Session]:
    return {role: rig.open(role) for role in roles}


def _steps_at(t_ms: int, rate: int = RATE0) -> int:
    """Motor steps taken by uptime ``t_ms`` at a constant rate from uptime 0."""
    return rate * t_ms // Q


@contextmanager
def _no_therapy_change(rig: Rig, *, logged: ErrorCode | None = None, untouched: bool = False) -> Iterator[None]:
    """The block must leave the therapy as it was. The log may only gain SECURITY entries, and
    when ``logged`` is given the SECURITY count of that code must have grown by exactly one.

    Host time must not move in the block, unless ``untouched``: then the rig must be a default
    ``_rig()`` that nothing has acted on, and its therapy must end where an untouched pump is."""
    before = therapy_state(rig.pump)
    seq = rig.pump.log.next_seq
    counts = security_counts(rig.pump)
    yield
    if untouched:
        twin = _pump()
        twin.advance(rig.pump.now_ms)
        before = therapy_state(twin)
    assert therapy_state(rig.pump) == before
    new = [e for e in log_since(rig.pump, seq) if e.kind is not LogEventKind.SECURITY]
    assert new == [], f"a refusal wrote to the log: {new}"
    if logged is not None:
        assert security_counts(rig.pump).get(logged, 0) == counts.get(logged, 0) + 1, f"{logged.name} not logged"


def _assert_error_header(ex: Exchange, *, secured: bool) -> None:
    """An error reply echoes the request's type, counter and command id (SPEC.md "Errors")."""
    assert ex.reply is not None
    assert ex.request is not None
    h = ex.reply.header
    assert h.is_error
    assert h.from_pump
    assert h.secured is secured
    assert h.msg_type == ex.request.msg_type
    assert h.echo_counter == ex.request.counter
    assert h.command_id == ex.request.command_id


# ====================================================================== 1. the catalogue


def _catalogue_rig(*, test_role: bool = True) -> tuple[Rig, dict[Role, Session]]:
    """A stopped pump holding 1.5 mL (LOW_RESERVOIR active, so it can be silenced and
    acknowledged), patient boluses enabled, and a session of every role it offers."""
    rig = _rig(test_role=test_role, volume_nl=1_500_000, program=None)
    assert rig.pump.alarms.is_active(AlarmCode.LOW_RESERVOIR)
    return rig, _sessions(rig, ROLES if test_role else (Role.CLINICIAN, Role.PATIENT))


def _example_for(t: MsgType, rig: Rig, sessions: dict[Role, Session]) -> object:
    """The example request of ``t``, with the pump set up so that it would succeed (and so
    that a wrongly accepted one would show in the therapy state)."""
    if t is MsgType.COMMIT:
        stage = rig.send(EXAMPLE_REQUESTS[MsgType.STAGE_PROGRAM], sessions[Role.CLINICIAN]).ok
        return m.Commit(stage.stage_token)
    if t is MsgType.CANCEL_BOLUS:
        rig.pump.start_bolus(BolusKind.BRIDGE, 100_000, MS_PER_HOUR)
    return EXAMPLE_REQUESTS[t]


def _allowed_cases() -> list[tuple[MsgType, Role | None]]:
    cases: list[tuple[MsgType, Role | None]] = []
    for t in REQUEST_TYPES:
        d = CATALOG[t]
        cases += [(t, None)] if d.pre_session else [(t, r) for r in ROLES if r in d.roles]
    return cases


@pytest.mark.parametrize(("t", "role"), _allowed_cases(), ids=lambda x: getattr(x, "name", "plain"))
def test_every_request_type_gets_its_reply_in_an_allowed_role(t: MsgType, role: Role | None) -> None:
    rig, sessions = _catalogue_rig()
    session = sessions[role] if role is not None else None
    message = _example_for(t, rig, sessions)
    ex = rig.send(message, session)
    assert type(ex.ok) is CATALOG[t].reply
    assert ex.reply is not None
    assert ex.request is not None
    h = ex.reply.header
    assert h.from_pump
    assert not h.is_error
    assert h.msg_type == t
    assert h.echo_counter == ex.request.counter
    assert h.command_id == ex.request.command_id
    assert h.command_id != 0 if CATALOG[t].effectful else h.command_id == 0
    if t is MsgType.SESSION_OPEN:
        assert not h.secured
        assert h.session_id != 0
    else:
        assert h.secured is (session is not None)


def _refused_role_cases() -> list[tuple[MsgType, Role]]:
    return [(t, r) for t in SESSION_TYPES for r in ROLES if r not in CATALOG[t].roles]


@pytest.mark.parametrize(("t", "role"), _refused_role_cases(), ids=lambda x: x.name)
def test_a_role_not_allowed_gets_wrong_role_and_nothing_changes(t: MsgType, role: Role) -> None:
    rig, sessions = _catalogue_rig()
    message = _example_for(t, rig, sessions)
    with _no_therapy_change(rig, logged=ErrorCode.WRONG_ROLE):
        ex = rig.send(message, sessions[role])
    assert ex.code is ErrorCode.WRONG_ROLE
    _assert_error_header(ex, secured=True)


@pytest.mark.parametrize("t", PRE_SESSION_TYPES, ids=lambda x: x.name)
@pytest.mark.parametrize("role", ROLES, ids=lambda x: x.name)
def test_pre_session_types_inside_a_session_get_wrong_role(t: MsgType, role: Role) -> None:
    rig, sessions = _catalogue_rig()
    opened = rig.device.open_sessions
    with _no_therapy_change(rig, logged=ErrorCode.WRONG_ROLE):
        ex = rig.send(rig.hello(Role.CLINICIAN) if t is MsgType.SESSION_OPEN else EXAMPLE_REQUESTS[t], sessions[role])
    assert ex.code is ErrorCode.WRONG_ROLE
    _assert_error_header(ex, secured=True)
    assert rig.device.open_sessions == opened


@pytest.mark.parametrize("t", SESSION_TYPES, ids=lambda x: x.name)
def test_session_only_types_in_plaintext_get_no_session(t: MsgType) -> None:
    rig, sessions = _catalogue_rig()
    message = _example_for(t, rig, sessions)
    with _no_therapy_change(rig, logged=ErrorCode.NO_SESSION):
        ex = rig.send(message, None)
    assert ex.code is ErrorCode.NO_SESSION
    _assert_error_header(ex, secured=False)


@pytest.mark.parametrize("t", TEST_TYPES, ids=lambda x: x.name)
def test_a_device_without_the_test_role_refuses_test_types(t: MsgType) -> None:
    rig, sessions = _catalogue_rig(test_role=False)
    for role, session in sessions.items():
        with _no_therapy_change(rig, logged=ErrorCode.WRONG_ROLE):
            ex = rig.send(EXAMPLE_REQUESTS[t], session)
        assert ex.code is ErrorCode.WRONG_ROLE, role
    with _no_therapy_change(rig, logged=ErrorCode.NO_SESSION):
        ex = rig.send(EXAMPLE_REQUESTS[t], None)
    assert ex.code is ErrorCode.NO_SESSION


@pytest.mark.parametrize("with_test_key", [True, False], ids=["published-test-keys", "no-test-key"])
def test_no_test_session_opens_on_a_device_without_the_test_role(with_test_key: bool) -> None:
    key_set = TEST_KEY_SET if with_test_key else generate_key_set((Role.CLINICIAN, Role.PATIENT))
    rig = Rig(make_device(test_role=False, keys=key_set, pump=_pump()))
    features = Feature(rig.send(m.Identify()).ok.features)
    assert not features & (Feature.TEST_ROLE | Feature.VIRTUAL_TIME | Feature.FAULT_INJECTION | Feature.STEP_LOG)
    with _no_therapy_change(rig):
        ex, session = rig.try_open(Role.TEST, keys=TEST_KEY_SET)
    assert security_counts(rig.pump).get(ErrorCode.UNKNOWN_KEY, 0) >= 1  # exactly 1: see the test below
    assert session is None
    assert ex.code is ErrorCode.UNKNOWN_KEY
    assert ex.error.field == 1
    assert rig.device.open_sessions == 0


UNKNOWN_TYPES = [0x00, 0x04, 0x13, 0x7E, 0xE5, 0xFF]


@pytest.mark.parametrize("msg_type", [*UNKNOWN_TYPES, int(MsgType.ALARM_NOTIFY)], ids=hex)
def test_unknown_message_types_get_unknown_message(msg_type: int) -> None:
    rig, sessions = _catalogue_rig()
    payload = encode_payload(EXAMPLE_REPLIES[MsgType.ALARM_NOTIFY]) if msg_type == MsgType.ALARM_NOTIFY else b""
    with _no_therapy_change(rig):
        ex = rig.deliver(plain_frame(Header(PROTOCOL_VERSION, msg_type, FrameFlags(0), 0, 1, 0, 0), payload))
    assert ex.code is ErrorCode.UNKNOWN_MESSAGE
    _assert_error_header(ex, secured=False)
    for session in sessions.values():
        with _no_therapy_change(rig):
            ex = rig.deliver(session.sealed(session.header(msg_type, command_id=rig.command_id()), payload))
        assert ex.code is ErrorCode.UNKNOWN_MESSAGE
        _assert_error_header(ex, secured=True)  # the pump holds the session: the refusal is sealed


# ====================================================================== 2. security


def test_a_replayed_frame_is_refused_and_acts_once() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    frame = rig.frame(REFILL_FULL, clin).data
    assert rig.deliver(frame).code is ErrorCode.OK
    filled = rig.pump.acc.filled_total_nl
    rig.wait(5_000)
    with _no_therapy_change(rig, logged=ErrorCode.REPLAYED_COUNTER):
        ex = rig.deliver(frame)
    assert ex.code is ErrorCode.REPLAYED_COUNTER
    _assert_error_header(ex, secured=True)
    assert rig.pump.acc.filled_total_nl == filled
    assert len(rig.pump.log.entries(LogEventKind.REFILL)) == 2  # the setup's and this one


def test_an_old_frame_after_newer_ones_is_refused() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    f1, f2, f3 = (rig.frame(m.Status(), clin).data for _ in range(3))
    assert rig.deliver(f2).code is ErrorCode.OK  # gaps are allowed
    assert rig.deliver(f3).code is ErrorCode.OK
    for old in (f1, f2, f3):
        with _no_therapy_change(rig, logged=ErrorCode.REPLAYED_COUNTER):
            assert rig.deliver(old).code is ErrorCode.REPLAYED_COUNTER
    assert rig.send(m.Status(), clin).code is ErrorCode.OK


@pytest.mark.parametrize(
    ("payload", "code"),
    [(bytes([7]), ErrorCode.OUT_OF_RANGE), (bytes([0, 0]), ErrorCode.MALFORMED)],
    ids=["out-of-range", "malformed"],
)
def test_a_frame_refused_before_the_counter_check_does_not_move_the_mark(payload: bytes, code: ErrorCode) -> None:
    """SPEC.md "Counters and replay": the mark moves only for a frame that passes every check
    before step 14; one refused at steps 9-11 does not use up its counter."""
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    lower = rig.frame(m.Status(), clin).data
    bad = clin.sealed(clin.header(MsgType.READ_PROGRAM), payload)
    assert rig.deliver(bad).code is code
    ex = rig.deliver(lower)
    assert ex.code is ErrorCode.OK, f"{code.name} frame moved the counter mark: {ex.reply}"


def test_an_effectful_request_without_a_command_id_is_refused() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    with _no_therapy_change(rig):
        ex = rig.deliver(clin.sealed(clin.header(MsgType.REFILL, command_id=0), encode_payload(REFILL_FULL)))
    assert ex.code is ErrorCode.MISSING_COMMAND_ID


_REFILL_BODY_BITS = (HEADER_BYTES + len(encode_payload(REFILL_FULL)) + TAG_BYTES) * 8


def test_the_bad_tag_backoff_runs_on_real_time_not_on_the_pump_s_clock() -> None:
    """SPEC.md, Errors: a backoff ends by real time, whatever the pump's clock does (held here)."""
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    test = rig.open(Role.TEST)
    rig.ok(m.HoldClock(1), test)
    held_at = rig.pump.now_ms

    def forged() -> bytes:
        return flip_bit(rig.frame(m.Status(), clin).data, 7 * 8)

    ex = rig.deliver(forged())
    assert ex.code is ErrorCode.BAD_TAG
    backoff_ms = ex.error.retry_after_ms
    rig.wait(backoff_ms - 1)
    assert rig.deliver(forged()).wire == b"", "still in the backoff"
    rig.wait(2)
    assert rig.deliver(forged()).code is ErrorCode.BAD_TAG, "the backoff ended by real time"
    assert rig.pump.now_ms == held_at, "while the pump's clock stood still"


@given(bit=st.integers(7 * 8, _REFILL_BODY_BITS - 1))
@settings(max_examples=40)
def test_a_flipped_bit_gets_bad_tag_then_a_backoff(bit: int) -> None:
    """Bits of the counter, echo counter, command id (associated data), ciphertext and tag."""
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    rig.wait(1_000)
    with _no_therapy_change(rig, logged=ErrorCode.BAD_TAG):
        ex = rig.deliver(flip_bit(rig.frame(REFILL_FULL, clin).data, bit))
    assert ex.code is ErrorCode.BAD_TAG
    assert ex.error.retry_after_ms == 1_000
    _assert_error_header(ex, secured=True)
    dropped = rig.device.stats.dropped
    rig.wait(500)
    with _no_therapy_change(rig, logged=ErrorCode.BAD_TAG):
        ex = rig.deliver(flip_bit(rig.frame(REFILL_FULL, clin).data, bit))
    assert ex.wire == b"", "a bad tag during the backoff is answered"
    assert rig.device.stats.dropped == dropped + 1
    # a good frame is processed during the backoff, and resets it
    assert rig.send(m.Status(), clin, at=1_600).code is ErrorCode.OK
    ex = rig.deliver(flip_bit(rig.frame(m.Status(), clin).data, 7 * 8 + bit % (40 * 8)), at=1_700)
    assert ex.code is ErrorCode.BAD_TAG
    assert ex.error.retry_after_ms == 1_000


def test_the_backoff_doubles_up_to_60_s() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    t = 0
    backoffs = []
    for _ in range(8):
        ex = rig.deliver(flip_bit(rig.frame(m.Status(), clin).data, 8 * 40), at=t)
        backoffs.append(ex.error.retry_after_ms)
        t += ex.error.retry_after_ms
        assert rig.deliver(flip_bit(rig.frame(m.Status(), clin).data, 8 * 40), at=t - 1).wire == b""
    assert backoffs == [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
    assert rig.send(m.Status(), clin, at=t - 1).code is ErrorCode.OK  # never a lockout


def test_a_flood_of_bad_frames_is_logged_in_a_few_entries() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    seq = rig.pump.log.next_seq
    before = security_counts(rig.pump).get(ErrorCode.BAD_TAG, 0)
    answered = 0
    with _no_therapy_change(rig, untouched=True):
        for i in range(1_000):
            ex = rig.deliver(flip_bit(rig.frame(m.Status(), clin).data, 8 * 35 + i % 8), at=i * 10)
            answered += ex.answered
    new = log_since(rig.pump, seq)
    assert 1 <= len(new) <= 3
    assert all(e.kind is LogEventKind.SECURITY and e.code == ErrorCode.BAD_TAG for e in new)
    assert security_counts(rig.pump)[ErrorCode.BAD_TAG] - before == 1_000
    assert answered == 4  # at 0, 1 s, 3 s and 7 s; the rest fell in backoffs
    assert rig.device.stats.refused["BAD_TAG"] == answered
    assert rig.send(m.Status(), clin).code is ErrorCode.OK


def test_a_mixed_flood_of_refusals_is_logged_in_a_few_entries() -> None:
    """Forgeries, replays, wrong-role and no-session frames interleaved: each burst of each code
    is one entry, so a flood cannot push the clinical history out of the log."""
    rig = _rig()
    sessions = _sessions(rig, (Role.CLINICIAN, Role.PATIENT))
    clin, patient = sessions[Role.CLINICIAN], sessions[Role.PATIENT]
    old = rig.frame(m.Status(), clin).data
    rig.deliver(old)
    seq = rig.pump.log.next_seq
    with _no_therapy_change(rig, untouched=True):
        for i in range(1_000):
            kind = i % 4
            if kind == 0:
                rig.deliver(flip_bit(rig.frame(m.Status(), clin).data, 8 * 35), at=i * 10)
            elif kind == 1:
                rig.deliver(old, at=i * 10)
            elif kind == 2:
                rig.send(EXAMPLE_REQUESTS[MsgType.STAGE_PROGRAM], patient, at=i * 10)
            else:
                rig.send(m.Status(), None, at=i * 10)
    new = log_since(rig.pump, seq)
    assert all(e.kind is LogEventKind.SECURITY for e in new)
    assert sum(e.count for e in new) == 1_000
    assert len(new) <= 8, f"1,000 refusals of 4 codes in 10 s wrote {len(new)} log entries"


def test_a_security_entry_names_the_session_and_the_last_refused_type() -> None:
    """SPEC.md "Event log": SECURITY: code = ErrorCode, value_a = session id, value_b = msg_type of
    the last refused frame."""
    rig = _rig()
    patient = rig.open(Role.PATIENT)
    rig.send(EXAMPLE_REQUESTS[MsgType.STAGE_PROGRAM], patient, at=1_000)
    (entry,) = rig.pump.log.entries(LogEventKind.SECURITY)
    assert (entry.code, entry.count, entry.value_a, entry.value_b) == (
        ErrorCode.WRONG_ROLE,
        1,
        patient.session_id,
        MsgType.STAGE_PROGRAM,
    )
    rig.send(REFILL_FULL, patient, at=2_000)
    (entry,) = rig.pump.log.entries(LogEventKind.SECURITY)
    assert (entry.count, entry.value_a, entry.value_b) == (2, patient.session_id, MsgType.REFILL)


def test_one_unknown_key_refusal_is_logged_once() -> None:
    rig = _rig()
    with _no_therapy_change(rig):
        ex, session = rig.try_open(Role.CLINICIAN, key_id=0x12345678)
    assert session is None
    assert ex.code is ErrorCode.UNKNOWN_KEY
    assert security_counts(rig.pump) == {ErrorCode.UNKNOWN_KEY: 1}


@pytest.mark.parametrize("how", ["close", "timeout"])
def test_a_frame_of_an_ended_session_gets_no_session(how: str) -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    other = rig.open(Role.PATIENT)
    if how == "close":
        assert type(rig.send(m.SessionClose(), clin).ok) is m.Ack
    else:
        rig.send(m.Status(), other, at=SESSION_TIMEOUT_MS // 2)
        rig.wait(SESSION_TIMEOUT_MS // 2 + 1)
    assert rig.device.open_sessions == 1
    for message in (m.Status(), REFILL_FULL):
        with _no_therapy_change(rig, logged=ErrorCode.NO_SESSION):
            ex = rig.send(message, clin)
        assert ex.code is ErrorCode.NO_SESSION
        _assert_error_header(ex, secured=False)  # the pump holds no keys to seal it with
    assert rig.send(m.Status(), other).code is ErrorCode.OK


def test_frames_of_one_session_never_verify_in_another() -> None:
    rig = _rig()
    a, b = rig.open(Role.CLINICIAN), rig.open(Role.CLINICIAN)
    assert a.session_id != b.session_id
    # a's frame relabelled as b's
    body = bytearray(body_of(rig.frame(REFILL_FULL, a).data))
    body[3:7] = b.session_id.to_bytes(4, "little")
    with _no_therapy_change(rig, logged=ErrorCode.BAD_TAG):
        ex = rig.deliver(encode_frame(bytes(body)))
    assert ex.code is ErrorCode.BAD_TAG
    # sealed with a's keys under b's header
    header = b.header(MsgType.REFILL, command_id=rig.command_id())
    rig.wait(2_000)
    with _no_therapy_change(rig, logged=ErrorCode.BAD_TAG):
        ex = rig.deliver(a.sealed(header, encode_payload(REFILL_FULL)))
    assert ex.code is ErrorCode.BAD_TAG
    # a session opened later with the same role has new keys: a's old frames are forgeries there
    old = rig.frame(m.Status(), a).data
    rig.send(m.SessionClose(), a, at=4_000)
    c = rig.open(Role.CLINICIAN, at=4_000)
    body = bytearray(body_of(old))
    body[3:7] = c.session_id.to_bytes(4, "little")
    ex = rig.deliver(encode_frame(bytes(body)), at=8_000)
    assert ex.code is ErrorCode.BAD_TAG


def test_a_flood_of_session_opens_displaces_no_proven_session_and_logs_nothing() -> None:
    """Key ids are public: SESSION_OPENs that never prove the key are pending sessions, which
    displace only each other and are never logged."""
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    patient = rig.open(Role.PATIENT)
    first_seq = rig.pump.log.next_seq
    for _ in range(10 * MAX_SESSIONS):
        rig.try_open(Role.CLINICIAN)  # the keys are derived, never used: nothing proven
    assert rig.device.open_sessions == 2 + MAX_SESSIONS
    assert rig.pump.log.next_seq == first_seq, "nothing logged, nothing evicted"
    assert rig.ok(m.Status(), clin).rate_nl_per_day == rig.ok(m.Status(), patient).rate_nl_per_day


def test_a_proven_session_past_the_bound_displaces_the_proven_one_idle_longest() -> None:
    rig = _rig()
    sessions = [rig.open(Role.CLINICIAN, at=rig.now_ms + 1) for _ in range(MAX_SESSIONS)]
    newest = rig.open(Role.PATIENT, at=rig.now_ms + 1, prove=False)
    for session in sessions[1:]:
        rig.ok(m.Status(), session)  # a pending session displaces no proven one
    rig.ok(m.Status(), newest)  # proven now: the idle-longest proven session ends
    assert rig.send(m.Status(), sessions[0]).code is ErrorCode.NO_SESSION
    opened = [e.value_a for e in rig.pump.log.entries(LogEventKind.SESSION_OPENED)]
    closed = [e.value_a for e in rig.pump.log.entries(LogEventKind.SESSION_CLOSED)]
    assert opened[-1] == newest.session_id
    assert closed[-1] == sessions[0].session_id


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_session_open_with_an_unknown_key_id_gets_unknown_key(role: Role) -> None:
    rig = _rig()
    wrong_ids = [0, 0xFFFFFFFF] + [k.key_id for k in TEST_KEY_SET.keys if k.role is not role]
    for key_id in wrong_ids:
        with _no_therapy_change(rig):
            ex, session = rig.try_open(role, key_id=key_id)
        assert session is None
        assert ex.code is ErrorCode.UNKNOWN_KEY
        assert ex.error.field == 1
        _assert_error_header(ex, secured=False)
    assert rig.device.open_sessions == 0


# ====================================================================== 3. exactly-once


def test_a_retried_refill_returns_the_stored_reply_and_fills_once() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    refill = dataclasses.replace(REFILL_FULL, aspirated_volume_nl=123_000)
    cid = rig.command_id()
    first = rig.send(refill, clin, command_id=cid, at=1_000)
    filled = rig.pump.acc.filled_total_nl
    for t in (2_000, 60_000, 120_000):
        retry = rig.send(refill, clin, command_id=cid, at=t)
        assert retry.ok == first.ok
        assert retry.reply is not None
        assert retry.request is not None
        assert retry.reply.header.echo_counter == retry.request.counter
        assert retry.reply.header.command_id == cid
    assert rig.pump.acc.filled_total_nl == filled
    assert len(rig.pump.log.entries(LogEventKind.REFILL)) == 2  # the setup's and this one


def test_a_retry_in_a_new_session_returns_the_stored_reply() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    cid = rig.command_id()
    first = rig.send(REFILL_FULL, clin, command_id=cid).ok
    rig.send(m.SessionClose(), clin)
    filled = rig.pump.acc.filled_total_nl
    again = rig.open(Role.CLINICIAN, at=10_000)
    assert rig.send(REFILL_FULL, again, command_id=cid).ok == first
    assert rig.pump.acc.filled_total_nl == filled


def test_retried_stage_and_commit_act_once() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    stage_id, commit_id = rig.command_id(), rig.command_id()
    staged = rig.send(m.StageProgram(0, P1), clin, command_id=stage_id, at=1_000).ok
    assert rig.send(m.StageProgram(0, P1), clin, command_id=stage_id, at=2_000).ok == staged
    committed = rig.send(m.Commit(staged.stage_token), clin, command_id=commit_id, at=3_000).ok
    assert committed.applied_at_ms == 3_000
    assert rig.pump.program == P1
    commits = len(rig.pump.log.entries(LogEventKind.PROGRAM_COMMITTED))
    for t in (4_000, 5_000):
        assert rig.send(m.Commit(staged.stage_token), clin, command_id=commit_id, at=t).ok == committed
        # the retried STAGE is answered from the record and does not stage again
        assert rig.send(m.StageProgram(0, P1), clin, command_id=stage_id, at=t).ok == staged
        assert rig.send(m.Status(), clin).ok.staged == 0
    assert len(rig.pump.log.entries(LogEventKind.PROGRAM_COMMITTED)) == commits


def test_a_retried_patient_bolus_request_starts_one_bolus() -> None:
    rig = _rig()
    patient = rig.open(Role.PATIENT)
    cid = rig.command_id()
    grant = rig.send(m.PatientBolusRequest(), patient, command_id=cid, at=1_000).ok
    assert grant == m.PatientBolusGrant(25_000, 600_000, 1_000 + MS_PER_HOUR, 3)
    for t in (2_000, 250_000, 500_000, 700_000):  # during the bolus and after it
        assert rig.send(m.PatientBolusRequest(), patient, command_id=cid, at=t).ok == grant
    starts = rig.pump.log.entries(LogEventKind.BOLUS_STARTED)
    assert [e.code for e in starts] == [BolusKind.PATIENT]
    # delivered: the basal program plus exactly one 50,000 nL bolus
    assert rig.pump.acc.steps_total == _steps_at(700_000) + 50_000 // 250


def test_the_same_command_id_with_another_payload_or_type_is_refused() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    cid = rig.command_id()
    rig.send(REFILL_FULL, clin, command_id=cid)
    other = dataclasses.replace(REFILL_FULL, added_volume_nl=10_000_000)
    for message in (other, m.SetClock(1_795_000_000_000), m.StageProgram(0, P1)):
        with _no_therapy_change(rig):
            ex = rig.send(message, clin, command_id=cid)
        assert ex.code is ErrorCode.COMMAND_ID_REUSED
        _assert_error_header(ex, secured=True)
    assert rig.send(m.Status(), clin).ok.staged == 0
    # the record still holds the original
    assert rig.send(REFILL_FULL, clin, command_id=cid).code is ErrorCode.OK


def test_interrogate_lists_the_outcomes_newest_first_refusals_included() -> None:
    rig = _rig()
    sessions = _sessions(rig, (Role.CLINICIAN, Role.PATIENT))
    clin, patient = sessions[Role.CLINICIAN], sessions[Role.PATIENT]
    ids = [rig.command_id() for _ in range(5)]
    token = rig.send(m.StageProgram(0, P1), clin, command_id=ids[0], at=1_000).ok.stage_token
    assert rig.send(m.Commit(token ^ 1), clin, command_id=ids[1], at=2_000).code is ErrorCode.STAGE_MISMATCH
    assert rig.send(m.Commit(token), clin, command_id=ids[2], at=3_000).code is ErrorCode.OK
    assert rig.send(m.Commit(token), clin, command_id=ids[3], at=4_000).code is ErrorCode.NOTHING_STAGED
    assert rig.send(REFILL_FULL, patient, command_id=ids[4], at=5_000).code is ErrorCode.WRONG_ROLE  # step 15
    assert rig.send(m.Commit(token), clin, command_id=ids[2], at=6_000).code is ErrorCode.OK  # a retry
    outcomes = rig.send(m.Interrogate(), clin).ok.outcomes
    assert [(o.command_id, o.msg_type, o.result, o.at_ms) for o in outcomes[:4]] == [
        (ids[3], MsgType.COMMIT, ErrorCode.NOTHING_STAGED, 4_000),
        (ids[2], MsgType.COMMIT, ErrorCode.OK, 3_000),
        (ids[1], MsgType.COMMIT, ErrorCode.STAGE_MISMATCH, 2_000),
        (ids[0], MsgType.STAGE_PROGRAM, ErrorCode.OK, 1_000),
    ]
    assert ids[4] not in {o.command_id for o in outcomes}
    later = [rig.command_id() for _ in range(10)]
    for i, cid in enumerate(later):
        rig.send(m.SetClock(1_795_000_000_000 + i), clin, command_id=cid, at=7_000 + i)
    outcomes = rig.send(m.Interrogate(), clin).ok.outcomes
    assert [o.command_id for o in outcomes] == later[::-1][: m.MAX_OUTCOMES]


def test_a_stored_refusal_is_returned_on_retry() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    cid = rig.command_id()
    staged_first = m.StageProgram(0, P1)
    token = crc32(encode_payload(staged_first))
    assert rig.send(m.Commit(token), clin, command_id=cid).code is ErrorCode.NOTHING_STAGED
    assert rig.send(staged_first, clin).ok.stage_token == token
    rig.wait(1_000)
    with _no_therapy_change(rig):
        assert rig.send(m.Commit(token), clin, command_id=cid).code is ErrorCode.NOTHING_STAGED
    assert rig.send(m.Status(), clin).ok.staged == 1
    assert rig.pump.program == P0


def test_a_refusal_before_step_17_is_not_stored() -> None:
    rig = _rig()
    sessions = _sessions(rig, (Role.CLINICIAN, Role.PATIENT))
    cid = rig.command_id()
    assert rig.send(REFILL_FULL, sessions[Role.PATIENT], command_id=cid).code is ErrorCode.WRONG_ROLE
    assert rig.send(REFILL_FULL, None, command_id=cid).code is ErrorCode.NO_SESSION
    filled = rig.pump.acc.filled_total_nl
    assert rig.send(REFILL_FULL, sessions[Role.CLINICIAN], command_id=cid).code is ErrorCode.OK
    assert rig.pump.acc.filled_total_nl == filled + REFILL_FULL.added_volume_nl


def test_busy_is_not_stored_and_a_retry_is_evaluated_afresh() -> None:
    """SPEC.md "Command ids and exactly-once": BUSY happens before anything is recorded."""
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    token = rig.send(m.StageBolus(BolusKind.BRIDGE, 0, 260_000, 2 * MS_PER_HOUR), clin).ok.stage_token
    rig.ok(m.Commit(token), clin)
    cid = rig.command_id()
    rig.wait(1_000)
    with _no_therapy_change(rig):
        assert rig.send(REFILL_FULL, clin, command_id=cid).code is ErrorCode.BUSY
    rig.ok(m.CancelBolus(), clin, at=2_000)
    outcomes = rig.send(m.Interrogate(), clin).ok.outcomes
    assert cid not in {o.command_id for o in outcomes}, "BUSY was recorded as the command's outcome"
    filled = rig.pump.acc.filled_total_nl
    ex = rig.send(REFILL_FULL, clin, command_id=cid, at=3_000)
    assert ex.code is ErrorCode.OK, f"retry after BUSY: {ex.reply}"
    assert rig.pump.acc.filled_total_nl == filled + REFILL_FULL.added_volume_nl


# ====================================================================== 4. two-step programming


def test_commit_with_nothing_staged() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    with _no_therapy_change(rig):
        ex = rig.send(m.Commit(crc32(encode_payload(m.StageProgram(0, P1)))), clin)
    assert ex.code is ErrorCode.NOTHING_STAGED
    with _no_therapy_change(rig):
        assert rig.send(m.ReadProgram(ProgramSlot.STAGED), clin).code is ErrorCode.NOTHING_STAGED


def test_commit_with_a_wrong_token_changes_nothing() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    token = rig.send(m.StageProgram(0, P1), clin).ok.stage_token
    with _no_therapy_change(rig):
        ex = rig.send(m.Commit(token + 1 & 0xFFFFFFFF), clin)
    assert ex.code is ErrorCode.STAGE_MISMATCH
    assert ex.error.field == 0
    assert rig.send(m.Status(), clin).ok.staged == 1
    assert rig.send(m.Commit(token), clin).code is ErrorCode.OK
    assert rig.pump.program == P1


DROPS = ["abort", "close", "timeout", "reset"]


def _stage_and_drop(how: str) -> tuple[Rig, Session, int]:
    """Stage P1 in a clinician session at 10 s, drop it ``how``; return the rig, a live
    clinician session and the dropped token."""
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    test = rig.open(Role.TEST)
    token = rig.send(m.StageProgram(0, P1), clin, at=10_000).ok.stage_token
    assert rig.send(m.Status(), clin).ok.staged == 1
    if how == "abort":
        assert type(rig.send(m.Abort(), clin, at=20_000).ok) is m.Ack
        return rig, clin, token
    if how == "close":
        assert type(rig.send(m.SessionClose(), clin, at=20_000).ok) is m.Ack
    elif how == "timeout":
        rig.send(m.Status(), test, at=SESSION_TIMEOUT_MS)  # keeps the test session alive
        rig.wait(10_000 + SESSION_TIMEOUT_MS + 1 - rig.now_ms)
        assert rig.device.open_sessions == 1
    else:
        assert type(rig.send(m.InjectFault(FaultKind.RESET, 0), test, at=20_000).ok) is m.Ack
        assert rig.device.open_sessions == 0
    return rig, rig.open(Role.CLINICIAN), token


@pytest.mark.parametrize("how", DROPS)
def test_a_dropped_stage_leaves_the_previous_program_running(how: str) -> None:
    rig, clin, token = _stage_and_drop(how)
    assert rig.pump.program == P0
    status = rig.send(m.Status(), clin).ok
    assert status.staged == 0
    assert status.mode is TherapyMode.CONTINUOUS
    assert status.rate_nl_per_day == RATE0
    assert rig.send(m.ReadProgram(ProgramSlot.STAGED), clin).code is ErrorCode.NOTHING_STAGED
    with _no_therapy_change(rig):
        assert rig.send(m.Commit(token), clin).code is ErrorCode.NOTHING_STAGED
    assert rig.send(m.ReadProgram(ProgramSlot.ACTIVE), clin).ok == P0
    # delivery carries on at the old rate, to the step
    t = rig.now_ms + 3 * 60_000
    assert rig.send(m.Status(), clin, at=t).ok.uptime_ms == t
    assert rig.pump.acc.steps_total == _steps_at(t)


@pytest.mark.parametrize("how", DROPS)
def test_a_dropped_stage_is_logged(how: str) -> None:
    """SPEC.md "Event log": PROGRAM_ABORTED, a staged change was aborted or discarded: code =
    StageKind, value_a = stage_token."""
    rig, _, token = _stage_and_drop(how)
    aborted = rig.pump.log.entries(LogEventKind.PROGRAM_ABORTED)
    assert [(e.code, e.value_a) for e in aborted] == [(StageKind.PROGRAM, token)]


def test_a_second_stage_replaces_the_first() -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    first = rig.send(m.StageProgram(0, P1), clin).ok.stage_token
    second = rig.send(m.StageProgram(0, P2), clin).ok.stage_token
    assert first != second
    assert rig.send(m.ReadProgram(ProgramSlot.STAGED), clin).ok == P2
    with _no_therapy_change(rig):
        assert rig.send(m.Commit(first), clin).code is ErrorCode.STAGE_MISMATCH
    assert rig.send(m.Commit(second), clin).ok.stage_token == second
    assert rig.pump.program == P2
    # a bolus staged over a program replaces it too
    third = rig.send(m.StageProgram(0, P1), clin).ok.stage_token
    bolus = rig.send(m.StageBolus(BolusKind.PRIMING, 0, 100_000, MS_PER_HOUR), clin).ok.stage_token
    assert rig.send(m.ReadProgram(ProgramSlot.STAGED), clin).code is ErrorCode.NOTHING_STAGED
    assert rig.send(m.Commit(third), clin).code is ErrorCode.STAGE_MISMATCH
    assert rig.send(m.Commit(bolus), clin).code is ErrorCode.OK
    assert rig.pump.program == P2


def test_read_program_staged_returns_the_staged_program() -> None:
    rig = _rig(program=None)
    clin = rig.open(Role.CLINICIAN)
    flex = EXAMPLE_REQUESTS[MsgType.STAGE_PROGRAM]
    reply = rig.send(flex, clin).ok
    assert reply.stage_token == crc32(encode_payload(flex))
    assert reply.kind is StageKind.PROGRAM
    assert rig.send(m.ReadProgram(ProgramSlot.STAGED), clin).ok == flex.program
    assert rig.send(m.ReadProgram(ProgramSlot.ACTIVE), clin).ok == rig.pump.program


def test_commit_is_logged_with_its_kind_token_and_dose() -> None:
    """SPEC.md "Event log": PROGRAM_COMMITTED: code = StageKind, value_a = stage_token,
    value_b = highest daily dose (ng/day)."""
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    reply = rig.send(m.StageProgram(0, P1), clin).ok
    rig.ok(m.Commit(reply.stage_token), clin)
    entry = rig.pump.log.entries(LogEventKind.PROGRAM_COMMITTED)[-1]
    assert (entry.code, entry.value_a, entry.value_b) == (
        StageKind.PROGRAM,
        reply.stage_token,
        reply.max_dose_ng_per_day,
    )


# ====================================================================== 5. alarms


def _alarm_rig() -> tuple[Rig, dict[Role, Session]]:
    """2.5 mL at 600,000 nL/day: LOW_RESERVOIR (2 mL) at step 2000, uptime 72,000,000 ms."""
    rig = _rig(volume_nl=2_500_000)
    return rig, _sessions(rig)


LOW_AT_MS = 2_000 * 36_000


def _notes(ex: Exchange) -> dict[int, list[m.AlarmNotify]]:
    """The notifications of an exchange by session id, checking their headers."""
    out: dict[int, list[m.AlarmNotify]] = {}
    for p in ex.notes:
        h = p.header
        assert h.from_pump
        assert h.secured
        assert not h.is_error
        assert h.echo_counter == 0
        assert h.command_id == 0
        out.setdefault(h.session_id, []).append(p.message)
    assert ex.others == [], f"frames the programmer could not accept: {ex.others}"
    return out


def test_low_reservoir_acknowledge_silence_and_clear_are_notified_into_every_session() -> None:
    rig, sessions = _alarm_rig()
    ids = {s.session_id for s in sessions.values()}
    ex = rig.send(m.AdvanceTime(MS_PER_DAY), sessions[Role.TEST])
    assert ex.ok.uptime_ms == MS_PER_DAY
    notes = _notes(ex)
    assert set(notes) == ids
    for got in notes.values():
        raised = [n for n in got if n.event is AlarmEvent.RAISED]
        assert raised == [
            m.AlarmNotify(
                AlarmCode.LOW_RESERVOIR,
                AlarmEvent.RAISED,
                AlarmPriority.NON_CRITICAL,
                TonePattern.SINGLE_TONE_1S,
                LOW_AT_MS,
                AlarmSet.LOW_RESERVOIR,
            )
        ]
    steps = [
        (sessions[Role.CLINICIAN], m.AcknowledgeAlarm(AlarmCode.LOW_RESERVOIR), AlarmEvent.ACKNOWLEDGED),
        (sessions[Role.PATIENT], m.SilenceAlarm(AlarmCode.LOW_RESERVOIR, MS_PER_HOUR), AlarmEvent.SILENCED),
        (sessions[Role.CLINICIAN], REFILL_FULL, AlarmEvent.CLEARED),
    ]
    for t, (session, message, event) in enumerate(steps, start=1):
        ex = rig.send(message, session, at=t * 1_000)
        assert ex.code is ErrorCode.OK
        assert ex.reply is not None
        notes = _notes(ex)
        assert set(notes) == ids
        after = AlarmSet(0) if event is AlarmEvent.CLEARED else AlarmSet.LOW_RESERVOIR
        for got in notes.values():
            assert [(n.alarm, n.event, n.at_ms, n.alarms) for n in got] == [
                (AlarmCode.LOW_RESERVOIR, event, MS_PER_DAY + t * 1_000, after)
            ]
        # the notification in the requester's session comes after its reply, on the pump's counter
        (mine,) = [p for p in ex.notes if p.header.session_id == session.session_id]
        assert mine.header.counter > ex.reply.header.counter


def test_every_repeat_is_notified() -> None:
    """SPEC.md "Alarms": the pump sends ALARM_NOTIFY for every alarm event, repeats included."""
    rig, sessions = _alarm_rig()
    rig.ok(m.AdvanceTime(LOW_AT_MS), sessions[Role.TEST])
    ex = rig.send(m.AdvanceTime(3 * MS_PER_HOUR), sessions[Role.TEST])
    for got in _notes(ex).values():
        assert [(n.event, n.at_ms) for n in got] == [
            (AlarmEvent.REPEATED, LOW_AT_MS + k * MS_PER_HOUR) for k in (1, 2, 3)
        ]


def test_a_notification_carries_the_alarms_active_after_its_event() -> None:
    """LOW_RESERVOIR then EMPTY_RESERVOIR within one advance: the LOW notification's set is
    what was active after LOW was raised (AlarmNotify.alarms: "alarms active after the event")."""
    rig, sessions = _alarm_rig()
    ex = rig.send(m.AdvanceTime(5 * MS_PER_DAY), sessions[Role.TEST])
    got = _notes(ex)[sessions[Role.CLINICIAN].session_id]
    raised = [(n.alarm, n.alarms) for n in got if n.event is AlarmEvent.RAISED]
    assert raised == [
        (AlarmCode.LOW_RESERVOIR, AlarmSet.LOW_RESERVOIR),
        (AlarmCode.EMPTY_RESERVOIR, AlarmSet.LOW_RESERVOIR | AlarmSet.EMPTY_RESERVOIR),
    ]


def test_no_notification_goes_to_a_closed_session_or_in_plaintext() -> None:
    rig, sessions = _alarm_rig()
    rig.send(m.SessionClose(), sessions[Role.PATIENT])
    ex = rig.send(m.AdvanceTime(MS_PER_DAY), sessions[Role.TEST])
    assert set(_notes(ex)) == {sessions[Role.CLINICIAN].session_id, sessions[Role.TEST].session_id}


# ====================================================================== 6. the test role


@given(delta=st.integers(1, 30 * MS_PER_DAY), host=st.integers(0, 200_000))
@settings(max_examples=30)
def test_advance_time_moves_uptime_by_exactly_delta(delta: int, host: int) -> None:
    rig = _rig()
    test = rig.open(Role.TEST)
    before = rig.send(m.Status(), test, at=host).ok.uptime_ms
    assert before == host
    reply = rig.send(m.AdvanceTime(delta), test).ok
    assert reply == m.ClockReply(host + delta, 0)
    assert rig.send(m.Status(), test).ok.uptime_ms == host + delta
    assert rig.pump.acc.steps_total == _steps_at(host + delta)


def test_hold_clock_freezes_pump_time_and_release_continues_from_it() -> None:
    rig = _rig()
    test = rig.open(Role.TEST)
    assert rig.send(m.HoldClock(1), test, at=1_000).ok == m.ClockReply(1_000, 1)
    steps = rig.pump.acc.steps_total
    assert rig.send(m.Status(), test, at=200_000).ok.uptime_ms == 1_000
    assert rig.pump.acc.steps_total == steps
    assert rig.send(m.AdvanceTime(MS_PER_HOUR), test, at=250_000).ok == m.ClockReply(1_000 + MS_PER_HOUR, 1)
    assert rig.send(m.Status(), test, at=260_000).ok.uptime_ms == 1_000 + MS_PER_HOUR
    assert rig.send(m.HoldClock(0), test, at=300_000).ok == m.ClockReply(1_000 + MS_PER_HOUR, 0)
    assert rig.send(m.Status(), test, at=350_000).ok.uptime_ms == 1_000 + MS_PER_HOUR + 50_000
    assert rig.pump.acc.steps_total == _steps_at(1_000 + MS_PER_HOUR + 50_000)


def test_an_injected_motor_stall_stops_the_steps_and_raises_motor_stall() -> None:
    rig = _rig()
    sessions = _sessions(rig, (Role.CLINICIAN, Role.TEST))
    test = sessions[Role.TEST]
    rig.ok(m.AdvanceTime(MS_PER_HOUR), test)
    assert rig.send(m.ReadPlant(), test).ok.steps_total == 100
    ex = rig.send(m.InjectFault(FaultKind.MOTOR_STALL, 0), test)
    assert type(ex.ok) is m.Ack
    for got in _notes(ex).values():
        assert [(n.alarm, n.event, n.priority, n.tone) for n in got] == [
            (AlarmCode.MOTOR_STALL, AlarmEvent.RAISED, AlarmPriority.CRITICAL, TonePattern.TWO_TONE_3S)
        ]
    rig.ok(m.AdvanceTime(MS_PER_HOUR), test)
    plant = rig.send(m.ReadPlant(), test).ok
    assert (plant.steps_total, plant.motor_stalled) == (100, 1)
    assert rig.send(m.Status(), test).ok.alarms & AlarmSet.MOTOR_STALL
    refused = rig.send(m.StageBolus(BolusKind.PRIMING, 0, 100_000, MS_PER_HOUR), sessions[Role.CLINICIAN])
    assert refused.code is ErrorCode.ALARM_ACTIVE
    ex = rig.send(m.InjectFault(FaultKind.MOTOR_STALL_CLEAR, 0), test)
    assert [n.event for n in _notes(ex)[test.session_id]] == [AlarmEvent.CLEARED]
    rig.ok(m.AdvanceTime(MS_PER_HOUR), test)
    plant = rig.send(m.ReadPlant(), test).ok
    assert (plant.steps_total, plant.motor_stalled) == (200, 0)


def test_read_plant_reports_the_true_volume_and_steps() -> None:
    cfg = PumpConfig(stroke_error_nl_per_step=5)
    rig = _rig(config=cfg)
    test = rig.open(Role.TEST)
    t = 5 * MS_PER_HOUR + 123
    rig.ok(m.AdvanceTime(t), test)
    steps = _steps_at(t)
    plant = rig.send(m.ReadPlant(), test).ok
    assert plant.steps_total == steps
    assert plant.stroke_error_nl_per_step == 5
    assert plant.true_reservoir_nl == 20_000_000 - steps * 255
    assert plant.delivered_true_nl == steps * 255
    assert plant.motor_stalled == 0
    # read before its own reply frame was charged (2 uC a frame)
    assert 0 <= plant.battery_charge_uc - rig.pump.acc.charge_pc // 1_000_000 <= 2
    status = rig.send(m.Status(), test).ok
    assert status.reservoir_estimate_nl == 20_000_000 - steps * 250  # the firmware's estimate
    assert status.delivered_nl == steps * 250


@given(dose=st.integers(2_500, 1_000_000), run_ms=st.integers(MS_PER_DAY, 3 * MS_PER_DAY))
@settings(max_examples=30)
def test_the_step_log_is_spaced_by_q_over_the_rate(dose: int, run_ms: int) -> None:
    program = dataclasses.replace(P0, dose_ng_per_day=dose)
    rate = dose * 1000 // CONC
    rig = _rig(program=program)
    test = rig.open(Role.TEST)
    rig.ok(m.AdvanceTime(run_ms), test)
    total = rig.pump.acc.steps_total
    assert total == rate * run_ms // Q
    first = max(0, total - m.MAX_STEP_LOG_PAGE)
    log = rig.send(m.ReadStepLog(first, m.MAX_STEP_LOG_PAGE), test).ok
    assert (log.steps_total, log.first_step) == (total, first)
    times = [s.at_ms for s in log.steps]
    assert len(times) == total - first
    # step k is taken when the integral reaches (k + 1) * Q, at the first whole millisecond
    assert times == [-(-(k + 1) * Q // rate) for k in range(first, total)]
    spacing = Q / rate
    assert all(abs((b - a) - spacing) < 1 for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("persistent", [False, True], ids=["no-nvm", "nvm"])
def test_reset_ends_every_session_and_counts_a_boot(persistent: bool) -> None:
    """SPEC.md "Handshake": a session ends when the pump resets; the boot counter increases at
    every boot (SessionOpenReply, InterrogateReply) and the RESET entry carries it ("Event log")."""
    if persistent:
        rig = Rig(boot_device())
        rig.pump.refill(0, 20_000_000, CONC)
        rig.pump.commit_program(P0)
    else:
        rig = _rig()
    sessions = _sessions(rig)
    boot = sessions[Role.CLINICIAN].open_reply.boot_counter
    rig.ok(m.InjectFault(FaultKind.RESET, 0), sessions[Role.TEST])
    for session in sessions.values():
        assert rig.send(m.Status(), session).code is ErrorCode.NO_SESSION
    clin = rig.open(Role.CLINICIAN)
    assert rig.ok(m.Status(), clin).rate_nl_per_day == RATE0  # therapy resumes
    assert clin.open_reply.boot_counter == boot + 1
    assert rig.ok(m.Interrogate(), clin).boot_counter == boot + 1
    entry = rig.pump.log.entries(LogEventKind.RESET)[-1]
    assert (entry.code, entry.value_a) == (0, boot + 1)


# ====================================================================== the event log


def _log_case_session_opened(rig: Rig, s: dict[Role, Session]) -> tuple[LogEventKind, int, int, int]:
    del s
    key = TEST_KEY_SET.for_role(Role.PATIENT)
    assert key is not None
    session = rig.open(Role.PATIENT)  # logged once the programmer proves its key (a first STATUS)
    return LogEventKind.SESSION_OPENED, Role.PATIENT, session.session_id, key.key_id


def _log_case_session_closed(rig: Rig, s: dict[Role, Session]) -> tuple[LogEventKind, int, int, int]:
    rig.ok(m.SessionClose(), s[Role.PATIENT])
    return LogEventKind.SESSION_CLOSED, Role.PATIENT, s[Role.PATIENT].session_id, 0


def _log_case_acknowledged(rig: Rig, s: dict[Role, Session]) -> tuple[LogEventKind, int, int, int]:
    rig.ok(m.AcknowledgeAlarm(AlarmCode.LOW_RESERVOIR), s[Role.CLINICIAN])
    return LogEventKind.ALARM_ACKNOWLEDGED, AlarmCode.LOW_RESERVOIR, Role.CLINICIAN, 0


def _log_case_silenced(rig: Rig, s: dict[Role, Session]) -> tuple[LogEventKind, int, int, int]:
    rig.ok(m.SilenceAlarm(AlarmCode.LOW_RESERVOIR, 600_000), s[Role.PATIENT])
    return LogEventKind.ALARM_SILENCED, AlarmCode.LOW_RESERVOIR, 600_000, Role.PATIENT


def _log_case_raised(rig: Rig, s: dict[Role, Session]) -> tuple[LogEventKind, int, int, int]:
    rig.ok(m.InjectFault(FaultKind.MOTOR_STALL, 0), s[Role.TEST])
    after = AlarmSet.LOW_RESERVOIR | AlarmSet.MOTOR_STALL
    return LogEventKind.ALARM_RAISED, AlarmCode.MOTOR_STALL, int(after), 0


def _log_case_cleared(rig: Rig, s: dict[Role, Session]) -> tuple[LogEventKind, int, int, int]:
    rig.ok(m.InjectFault(FaultKind.MOTOR_STALL, 0), s[Role.TEST])
    rig.ok(m.InjectFault(FaultKind.MOTOR_STALL_CLEAR, 0), s[Role.TEST])
    return LogEventKind.ALARM_CLEARED, AlarmCode.MOTOR_STALL, int(AlarmSet.LOW_RESERVOIR), 0


def _log_case_stall_recovered(rig: Rig, s: dict[Role, Session]) -> tuple[LogEventKind, int, int, int]:
    rig.ok(m.InjectFault(FaultKind.MOTOR_STALL, 0), s[Role.TEST], at=1_000)
    rig.ok(m.InjectFault(FaultKind.MOTOR_STALL_CLEAR, 0), s[Role.TEST], at=61_000)
    return LogEventKind.STALL_RECOVERED, AlarmCode.MOTOR_STALL, 60_000, 0


def _log_case_refill(rig: Rig, s: dict[Role, Session]) -> tuple[LogEventKind, int, int, int]:
    expected = rig.send(m.Status(), s[Role.CLINICIAN]).ok.reservoir_estimate_nl
    reply = rig.send(dataclasses.replace(REFILL_FULL, aspirated_volume_nl=1_000_000), s[Role.CLINICIAN]).ok
    assert reply.discrepancy_nl == 1_000_000 - expected
    return LogEventKind.REFILL, REFILL_FULL.drug, REFILL_FULL.added_volume_nl, reply.discrepancy_nl


def _log_case_limits(rig: Rig, s: dict[Role, Session]) -> tuple[LogEventKind, int, int, int]:
    limits = EXAMPLE_REQUESTS[MsgType.SET_LIMITS].limits
    rig.ok(m.SetLimits(limits), s[Role.CLINICIAN])
    return LogEventKind.LIMITS_SET, limits.drug, limits.hard_limit_ng_per_day, limits.soft_limit_ng_per_day


def _log_case_clock(rig: Rig, s: dict[Role, Session]) -> tuple[LogEventKind, int, int, int]:
    rig.ok(m.SetClock(1_795_000_000_000), s[Role.CLINICIAN], at=5_000)
    return LogEventKind.CLOCK_SET, 0, 5_000, 1_795_000_000_000


def _log_case_fault(rig: Rig, s: dict[Role, Session]) -> tuple[LogEventKind, int, int, int]:
    rig.ok(m.InjectFault(FaultKind.MOTOR_STALL_CLEAR, 0), s[Role.TEST])
    return LogEventKind.FAULT_INJECTED, FaultKind.MOTOR_STALL_CLEAR, 0, 0


LOG_CASES: dict[str, Callable[[Rig, dict[Role, Session]], tuple[LogEventKind, int, int, int]]] = {
    "session-opened": _log_case_session_opened,
    "session-closed": _log_case_session_closed,
    "alarm-acknowledged": _log_case_acknowledged,
    "alarm-silenced": _log_case_silenced,
    "alarm-raised": _log_case_raised,
    "alarm-cleared": _log_case_cleared,
    "stall-recovered": _log_case_stall_recovered,
    "refill": _log_case_refill,
    "limits-set": _log_case_limits,
    "clock-set": _log_case_clock,
    "fault-injected": _log_case_fault,
}


@pytest.mark.parametrize("case", LOG_CASES)
def test_log_entries_carry_what_the_event_log_table_says(case: str) -> None:
    """SPEC.md "Event log": code, value_a and value_b of each kind."""
    rig, sessions = _catalogue_rig()
    kind, code, value_a, value_b = LOG_CASES[case](rig, sessions)
    entries = rig.pump.log.entries(kind)
    assert entries, f"no {kind.name} entry"
    e = entries[-1]
    assert (e.code, e.count, e.value_a, e.value_b) == (code, 1, value_a, value_b)


# ====================================================================== 7. robustness


@dataclasses.dataclass(frozen=True)
class _Op:
    kind: str
    data: bytes
    n: int
    flag: bool


_OP_KINDS = ("garbage", "flip", "cut", "replay", "read", "read", "wait")
_OPS = st.builds(
    _Op,
    kind=st.sampled_from(_OP_KINDS),
    data=st.binary(max_size=80),
    n=st.integers(0, 1 << 16),
    flag=st.booleans(),
)
_READS = [m.Status(), m.ReadProgram(ProgramSlot.ACTIVE), m.ReadLimits()]
"""Reads whose answers hold nothing the battery charge of a frame moves (the garbage costs charge)."""


def _mutation_source(rig: Rig, sessions: dict[Role, Session], n: int) -> bytes:
    """A fresh valid frame with an effect if it were accepted (or IDENTIFY in plaintext)."""
    clin, patient, test = sessions[Role.CLINICIAN], sessions[Role.PATIENT], sessions[Role.TEST]
    sources: list[tuple[object, Session | None]] = [
        (REFILL_FULL, clin),
        (m.StageProgram(0, P1), clin),
        (m.Commit(crc32(encode_payload(m.StageProgram(0, P1)))), clin),
        (m.SetClock(1_795_000_000_000), clin),
        (m.PatientBolusRequest(), patient),
        (m.AdvanceTime(MS_PER_DAY), test),
        (m.InjectFault(FaultKind.MOTOR_STALL, 0), test),
        (m.Identify(), None),
    ]
    message, session = sources[n % len(sources)]
    return rig.frame(message, session).data


@given(ops=st.lists(_OPS, max_size=24))
def test_garbage_and_mutated_frames_change_nothing_and_valid_requests_still_get_answers(ops: list[_Op]) -> None:
    """The same valid requests go to a twin device that sees no garbage: every answer is the
    twin's, and at the end the therapy is the twin's."""
    main, twin = _rig(), _rig()
    main_sessions, twin_sessions = _sessions(main), _sessions(twin)
    valid_frames: list[bytes] = []
    for op in ops:
        if op.kind == "garbage":
            main.deliver(op.data)
        elif op.kind in ("flip", "cut"):
            wire = _mutation_source(main, main_sessions, op.n)
            if op.kind == "cut":
                main.deliver(wire[: op.n % (len(wire) - 1)])  # never all of it: a cut frame never completes
            elif op.flag:  # a correct CRC: the header checks and the tag must catch it
                main.deliver(flip_bit(wire, op.n % (len(body_of(wire)) * 8)))
            else:
                bit = op.n % (len(wire) * 8)
                main.deliver(bytes(b ^ (1 << bit % 8) if i == bit // 8 else b for i, b in enumerate(wire)))
        elif op.kind == "replay" and valid_frames:
            main.deliver(valid_frames[op.n % len(valid_frames)])
        elif op.kind == "read":
            role = (Role.CLINICIAN, Role.TEST)[op.flag]
            message = m.ReadStepLog(op.n, 16) if op.flag and op.n % 4 == 0 else _READS[op.n % len(_READS)]
            out = main.frame(message, main_sessions[role])
            valid_frames.append(out.data)
            got = main.deliver(out.data)
            want = twin.send(message, twin_sessions[role])
            assert got.reply is not None, f"a valid request went unanswered after garbage: {got.others}"
            assert want.reply is not None
            assert got.reply.message == want.reply.message
            assert got.code is ErrorCode.OK
        elif op.kind == "wait":
            main.wait(op.n % 10_000)
            twin.wait(op.n % 10_000)
    assert therapy_state(main.pump) == therapy_state(twin.pump)
    main_log = [(e.kind, e.code, e.at_ms, e.value_a, e.value_b) for e in main.pump.log.entries()]
    twin_log = [(e.kind, e.code, e.at_ms, e.value_a, e.value_b) for e in twin.pump.log.entries()]
    assert [e for e in main_log if e[0] is not LogEventKind.SECURITY] == twin_log


@given(chunks=st.lists(st.binary(max_size=300), max_size=12), split=st.integers(1, 64))
def test_random_bytes_in_any_chunking_never_escape_and_never_act(chunks: list[bytes], split: int) -> None:
    rig = _rig()
    clin = rig.open(Role.CLINICIAN)
    with _no_therapy_change(rig):
        for chunk in chunks:
            for i in range(0, len(chunk), split):
                rig.device.receive_data(chunk[i : i + split], rig.now_ms)
        rig.device.data_to_send()
    assert rig.send(m.Status(), clin).code is ErrorCode.OK
