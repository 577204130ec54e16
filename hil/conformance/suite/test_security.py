"""Security: the handshake, the access matrix, replay, bad tags and their logging (SPEC.md, Security,
Handshake, Counters and replay, Access control, Errors).

Sessions are opened by hand (``RawSession``) so that a test can send what a programmer never
would: a replayed frame, a counter below the mark, a frame whose tag fails, a type its role may
not send. The access matrix is driven from ``protocol_spec.catalog.CATALOG`` with the example
payload of every request (``protocol_spec.examples``), one session per role.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import pytest

from hil.conformance import SUITE_DOSE_NG_PER_DAY, DeviceUnderTest, continuous, refused
from hil.conformance.raw import RawSession, RawWire, assert_refusal, open_raw_session, raw_session, role_key
from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG, MessageDef
from protocol_spec.channel import client_hello, new_command_id
from protocol_spec.codec import HEADER_BYTES, Header, Packet, decode_body, decode_header, encode_packet, encode_payload
from protocol_spec.enums import (
    PROTOCOL_VERSION,
    AlarmSet,
    BolusKind,
    ErrorCode,
    FaultKind,
    Feature,
    FrameFlags,
    LogEventKind,
    MsgType,
    Role,
    TherapyMode,
)
from protocol_spec.examples import EXAMPLE_REQUESTS
from protocol_spec.framing import encode_frame
from protocol_spec.security import derive_session_keys

ROLES = [
    pytest.param(Role.CLINICIAN, id="clinician"),
    pytest.param(Role.PATIENT, id="patient"),
    pytest.param(Role.TEST, id="test", marks=pytest.mark.requires("test_role")),
]
SESSION_TYPES = [d for d in CATALOG.values() if d.request is not None and not d.pre_session]
PRE_SESSION_TYPES = [d for d in CATALOG.values() if d.pre_session]
ACCESS_REFUSALS = frozenset({ErrorCode.WRONG_ROLE, ErrorCode.NO_SESSION})


def _example(d: MessageDef) -> bytes:
    return encode_payload(EXAMPLE_REQUESTS[d.msg_type])


def _send_example(session: RawSession, d: MessageDef) -> tuple[Packet, int, int]:
    """The example request of ``d``, sealed (with a command id if effectful): (answer, counter, command id)."""
    command_id = new_command_id() if d.effectful else 0
    counter, body = session.body(d.msg_type, _example(d), command_id=command_id)
    return session.send(encode_frame(body), counter), counter, command_id


def _assert_nothing_done(pump: DeviceUnderTest, command_ids: list[int]) -> None:
    """The known state is untouched and no refused command id was recorded (refusals before step 17
    are never stored: SPEC.md, Command ids and exactly-once)."""
    info = pump.clinician.interrogate()
    recorded = {o.command_id for o in info.outcomes} & set(command_ids)
    assert not recorded, f"refused commands were recorded: {sorted(hex(c) for c in recorded)}"
    assert (info.mode, info.dose_ng_per_day) == (TherapyMode.CONTINUOUS, SUITE_DOSE_NG_PER_DAY)
    assert info.bolus_active is BolusKind.NONE
    assert AlarmSet.MOTOR_STALL not in AlarmSet(info.alarms)
    assert info.low_reservoir_threshold_nl == pump.baseline.low_reservoir_threshold_nl
    assert pump.clinician.status().staged == 0
    assert pump.clinician.read_limits() == pump.baseline.limits


# ---------------------------------------------------------------------- handshake


@pytest.mark.requirement("SEC-HSK-001", "PRT-ERR-001")
@pytest.mark.parametrize("case", ["unknown-key-id", "key-id-of-another-role", "test-key-without-test-role"])
def test_session_open_with_a_key_the_device_lacks_is_unknown_key(pump: DeviceUnderTest, case: str) -> None:
    clinician = role_key(pump, Role.CLINICIAN)
    if case == "unknown-key-id":
        known = {k.key_id for k in pump.keys.keys}
        role, key_id = Role.CLINICIAN, next(k for k in (clinician.key_id ^ 0xFFFF_FFFF, 0x5EC0_0001) if k not in known)
    elif case == "key-id-of-another-role":
        role, key_id = Role.CLINICIAN, role_key(pump, Role.PATIENT).key_id
    else:
        if pump.has(Feature.TEST_ROLE):
            pytest.skip("the device offers the test role")
        role, key_id = Role.TEST, role_key(pump, Role.TEST).key_id
    wire = RawWire(pump)
    counter = wire.counter()
    hello = m.SessionOpen(role, key_id, secrets.token_bytes(m.NONCE_BYTES))
    data = encode_packet(Header(PROTOCOL_VERSION, MsgType.SESSION_OPEN, FrameFlags(0), 0, counter, 0, 0), hello)
    packet = wire.ask_plain(data, counter)
    error = assert_refusal(packet, ErrorCode.UNKNOWN_KEY, msg_type=MsgType.SESSION_OPEN, counter=counter, secured=False)
    assert error.field == 1, "UNKNOWN_KEY names field 1 (key_id)"
    assert packet.header.session_id == 0, "a refused SESSION_OPEN names no session"


@pytest.mark.requirement("SEC-HSK-002")
@pytest.mark.parametrize("role", ROLES)
def test_handshake_opens_a_sealed_session(pump: DeviceUnderTest, role: Role) -> None:
    key = role_key(pump, role)
    wire = RawWire(pump)
    hello = client_hello(key, secrets.token_bytes(m.NONCE_BYTES))
    counter = wire.counter()
    request = Header(PROTOCOL_VERSION, MsgType.SESSION_OPEN, FrameFlags(0), 0, counter, 0, 0)
    packet = wire.ask_plain(encode_packet(request, hello), counter)
    h = packet.header
    assert h.from_pump
    assert not h.is_error, f"SESSION_OPEN was refused: {packet.message}"
    assert not h.secured, "SESSION_OPEN's reply is plaintext"
    assert h.echo_counter == counter
    assert h.session_id != 0, "the reply's header names the new session"
    assert h.session_id != pump.clinician.session_id, "a new session gets an id no open session has"
    reply = packet.message
    assert isinstance(reply, m.SessionOpenReply)
    keys = derive_session_keys(key, h.session_id, hello.client_nonce, reply.pump_nonce)
    assert reply.confirm == keys.confirm, "confirm is not HKDF output bytes 64..79 of the role key"
    session = RawSession(wire, keys)
    try:
        counters = []
        for _ in range(2):
            c, data = session.request(m.Status())
            wire.send(data)
            body = wire.answer(c)
            header = decode_header(body)
            assert header is not None
            assert header.secured
            assert header.session_id == h.session_id
            assert isinstance(decode_body(body, keys), Packet), "the reply does not open with key_p2c"
            counters.append(header.counter)
        assert 1 <= counters[0] < counters[1], f"the pump's counters in a session start at 1 and increase: {counters}"
    finally:
        session.close()


@pytest.mark.requirement("SEC-HSK-003")
def test_pump_nonces_differ_for_the_same_client_nonce(pump: DeviceUnderTest) -> None:
    """Even a programmer that repeats its nonce gets new session keys: the pump's nonce is fresh."""
    key = role_key(pump, Role.CLINICIAN)
    wire = RawWire(pump)
    client_nonce = secrets.token_bytes(m.NONCE_BYTES)
    pump_nonces = []
    session_keys = []
    for _ in range(2):
        counter = wire.counter()
        request = Header(PROTOCOL_VERSION, MsgType.SESSION_OPEN, FrameFlags(0), 0, counter, 0, 0)
        packet = wire.ask_plain(encode_packet(request, client_hello(key, client_nonce)), counter)
        reply = packet.message
        assert isinstance(reply, m.SessionOpenReply)
        pump_nonces.append(reply.pump_nonce)
        keys = derive_session_keys(key, packet.header.session_id, client_nonce, reply.pump_nonce)
        session_keys.append(keys.key_c2p)
        RawSession(wire, keys).close()
    assert pump_nonces[0] != pump_nonces[1], "the pump repeated its nonce"
    assert session_keys[0] != session_keys[1], "two sessions share their keys"


@pytest.mark.requirement("SEC-HSK-004", "PRT-ERR-007")
@pytest.mark.parametrize("case", ["closed", "never-opened", "session-id-0"])
def test_frame_of_a_session_not_held_is_no_session(pump: DeviceUnderTest, case: str) -> None:
    wire = RawWire(pump)
    key = role_key(pump, Role.CLINICIAN)
    if case == "closed":
        session = open_raw_session(wire, key)
        session.close()
    else:
        session_id = 0 if case == "session-id-0" else 0x5EC0_0000 + secrets.randbelow(1 << 16)
        nonce = secrets.token_bytes(m.NONCE_BYTES)
        session = RawSession(wire, derive_session_keys(key, session_id, nonce, nonce))
    counter, data = session.request(m.Status(), counter=session.highest_sent + 1)
    packet = session.send(data, counter)
    assert_refusal(packet, ErrorCode.NO_SESSION, msg_type=MsgType.STATUS, counter=counter, secured=False)
    assert packet.header.session_id == 0


# ---------------------------------------------------------------------- access control


@pytest.mark.requirement("SEC-ROL-001")
@pytest.mark.parametrize("role", ROLES)
def test_access_matrix_refuses_what_the_role_may_not_send(pump: DeviceUnderTest, role: Role) -> None:
    refused_types = [d for d in SESSION_TYPES if role not in d.roles]
    wrong: list[str] = []
    command_ids: list[int] = []
    with raw_session(pump, role) as session:
        for d in refused_types:
            packet, counter, command_id = _send_example(session, d)
            command_ids.append(command_id)
            try:
                assert_refusal(
                    packet,
                    ErrorCode.WRONG_ROLE,
                    msg_type=d.msg_type,
                    counter=counter,
                    command_id=command_id,
                    secured=True,
                )
            except AssertionError as exc:
                wrong.append(f"{d.msg_type.name}: {exc}")
    assert not wrong, f"{role.name} sent what it may not, and was not refused with WRONG_ROLE:\n" + "\n".join(wrong)
    _assert_nothing_done(pump, command_ids)


@pytest.mark.requirement("SEC-ROL-004")
@pytest.mark.parametrize("role", ROLES)
def test_access_matrix_answers_what_the_role_may_send(pump: DeviceUnderTest, role: Role) -> None:
    """Every type without effect the matrix gives the role is answered, not refused for access."""
    allowed = [
        d for d in SESSION_TYPES if role in d.roles and not d.effectful and d.msg_type is not MsgType.SESSION_CLOSE
    ]
    denied: list[str] = []
    with raw_session(pump, role) as session:
        for d in allowed:
            packet, _, _ = _send_example(session, d)
            if packet.header.is_error:
                error = packet.message
                assert isinstance(error, m.ErrorReply)
                if ErrorCode(error.code) is not ErrorCode.NOT_SUPPORTED:  # a feature this device lacks
                    denied.append(f"{d.msg_type.name}: {ErrorCode(error.code).name}")
        closed = session.call(m.SessionClose())
        session.closed = True
        if closed.header.is_error:
            denied.append(f"SESSION_CLOSE: {closed.message}")
    assert not denied, f"{role.name} was refused what the access matrix allows: {denied}"


@pytest.mark.requirement("SEC-ROL-002")
def test_session_only_types_in_plaintext_are_no_session(pump: DeviceUnderTest) -> None:
    wire = RawWire(pump)
    wrong: list[str] = []
    command_ids: list[int] = []
    for d in SESSION_TYPES:
        command_id = new_command_id() if d.effectful else 0
        command_ids.append(command_id)
        counter, data = wire.plain(d.msg_type, _example(d), command_id=command_id)
        try:
            assert_refusal(
                wire.ask_plain(data, counter),
                ErrorCode.NO_SESSION,
                msg_type=d.msg_type,
                counter=counter,
                command_id=command_id,
                secured=False,
            )
        except AssertionError as exc:
            wrong.append(f"{d.msg_type.name}: {exc}")
    assert not wrong, "session-only types sent in plaintext:\n" + "\n".join(wrong)
    _assert_nothing_done(pump, command_ids)


@pytest.mark.requirement("SEC-ROL-003")
@pytest.mark.parametrize("role", ROLES)
def test_pre_session_types_inside_a_session_are_wrong_role(pump: DeviceUnderTest, role: Role) -> None:
    with raw_session(pump, role) as session:
        for d in PRE_SESSION_TYPES:
            payload = m.SessionOpen(role, session.keys.key_id, secrets.token_bytes(m.NONCE_BYTES))
            message = payload if d.msg_type is MsgType.SESSION_OPEN else EXAMPLE_REQUESTS[d.msg_type]
            counter, body = session.body(d.msg_type, encode_payload(message))
            packet = session.send(encode_frame(body), counter)
            assert_refusal(packet, ErrorCode.WRONG_ROLE, msg_type=d.msg_type, counter=counter, secured=True)


@pytest.mark.requirement("SEC-ROL-005")
def test_patient_cannot_change_therapy(pump: DeviceUnderTest) -> None:
    patient = pump.patient
    b = pump.baseline
    attempts: list[Callable[[], object]] = [
        lambda: patient.stage_program(continuous(2 * SUITE_DOSE_NG_PER_DAY)),
        lambda: patient.stage_bolus(BolusKind.BRIDGE, 10_000, 3_600_000),
        lambda: patient.commit(0x1234_5678),
        lambda: patient.set_limits(b.limits),
        lambda: patient.configure_alarms(
            low_reservoir_threshold_nl=0, critical_repeat_ms=600_000, non_critical_repeat_ms=3_600_000
        ),
        patient.interrogate,
    ]
    for attempt in attempts:
        with refused(ErrorCode.WRONG_ROLE):
            attempt()
    _assert_nothing_done(pump, [])


@pytest.mark.requirement("SEC-ROL-001")
def test_clinician_cannot_send_test_messages(pump: DeviceUnderTest) -> None:
    clinician = pump.clinician
    before = clinician.status()
    for attempt in (
        lambda: clinician.inject_fault(FaultKind.MOTOR_STALL),
        lambda: clinician.advance_time(3_600_000),
        lambda: clinician.hold_clock(False),
        clinician.read_plant,
    ):
        with refused(ErrorCode.WRONG_ROLE):
            attempt()
    after = clinician.status()
    assert AlarmSet.MOTOR_STALL not in AlarmSet(after.alarms)
    if pump.has(Feature.TEST_ROLE):  # the clock is held: nothing may have moved it
        assert after.uptime_ms == before.uptime_ms
        assert pump.test.hold_clock(True).uptime_ms == before.uptime_ms


# ---------------------------------------------------------------------- counters and replay


@pytest.mark.requirement("SEC-RPL-001")
def test_replayed_frame_is_refused_and_does_nothing(pump: DeviceUnderTest) -> None:
    stage = m.StageProgram(1, continuous(SUITE_DOSE_NG_PER_DAY // 2))
    command_id = new_command_id()
    with raw_session(pump, Role.CLINICIAN) as session:
        counter, data = session.request(stage, command_id=command_id)
        first = session.send(data, counter)
        assert not first.header.is_error, f"STAGE_PROGRAM was refused: {first.message}"
        assert isinstance(session.reply(m.Abort(), command_id=new_command_id()), m.Ack)
        replay = session.send(data, counter)
        assert_refusal(
            replay,
            ErrorCode.REPLAYED_COUNTER,
            msg_type=MsgType.STAGE_PROGRAM,
            counter=counter,
            command_id=command_id,
            secured=True,
        )
        status = session.reply(m.Status())
        assert isinstance(status, m.StatusReply)
        assert status.staged == 0, "the replayed STAGE_PROGRAM staged again"


@pytest.mark.requirement("SEC-RPL-002")
def test_counter_at_or_below_the_mark_is_replayed_counter(pump: DeviceUnderTest) -> None:
    with raw_session(pump, Role.CLINICIAN) as session:
        assert not session.call(m.Status(), counter=5).header.is_error, "a gap in the counters is allowed"
        for counter in (5, 3, 1):
            c, data = session.request(m.ReadLimits(), counter=counter)
            assert_refusal(
                session.send(data, c), ErrorCode.REPLAYED_COUNTER, msg_type=MsgType.READ_LIMITS, counter=c, secured=True
            )
        assert not session.call(m.ReadLimits(), counter=6).header.is_error


REFUSED_BEFORE_THE_MARK: dict[str, tuple[int, bytes, int, ErrorCode]] = {
    "malformed": (MsgType.STATUS, b"\x00", 0, ErrorCode.MALFORMED),
    "out-of-range": (MsgType.READ_LOG, bytes(5), 0, ErrorCode.OUT_OF_RANGE),
    "unknown-message": (0x7E, b"", 0, ErrorCode.UNKNOWN_MESSAGE),
    "missing-command-id": (MsgType.ABORT, b"", 0, ErrorCode.MISSING_COMMAND_ID),
}


@pytest.mark.requirement("SEC-RPL-003")
@pytest.mark.parametrize("case", REFUSED_BEFORE_THE_MARK.values(), ids=REFUSED_BEFORE_THE_MARK.keys())
def test_frame_refused_before_the_counter_check_does_not_move_the_mark(
    pump: DeviceUnderTest, case: tuple[int, bytes, int, ErrorCode]
) -> None:
    msg_type, payload, command_id, code = case
    with raw_session(pump, Role.CLINICIAN) as session:
        counter, body = session.body(msg_type, payload, counter=100, command_id=command_id)
        assert_refusal(
            session.send(encode_frame(body), counter),
            code,
            msg_type=msg_type,
            counter=counter,
            command_id=command_id,
            secured=True,
        )
        packet = session.call(m.Status(), counter=2)
        assert not packet.header.is_error, f"a refused frame ({code.name}) moved the counter mark: {packet.message}"


@pytest.mark.requirement("SEC-RPL-003")
def test_frame_refused_for_its_role_moves_the_mark(pump: DeviceUnderTest) -> None:
    """WRONG_ROLE is step 15, after the counter check (step 14): the frame was authentic, its counter is spent."""
    with raw_session(pump, Role.CLINICIAN) as session:
        command_id = new_command_id()
        counter, data = session.request(m.PatientBolusRequest(), counter=100, command_id=command_id)
        assert_refusal(
            session.send(data, counter),
            ErrorCode.WRONG_ROLE,
            msg_type=MsgType.PATIENT_BOLUS_REQUEST,
            counter=counter,
            command_id=command_id,
            secured=True,
        )
        c, data = session.request(m.Status(), counter=2)
        assert_refusal(
            session.send(data, c), ErrorCode.REPLAYED_COUNTER, msg_type=MsgType.STATUS, counter=c, secured=True
        )


# ---------------------------------------------------------------------- bad tags

_backoff_ends = [0.0]
"""time.monotonic() at which the last BAD_TAG backoff seen ends (for devices where a verified frame
does not end it: the next test that needs an answered BAD_TAG waits it out once)."""


def _corrupt(body: bytes, how: str) -> bytes:
    b = bytearray(body)
    if how == "tag":
        b[-1] ^= 0x01
    elif how == "ciphertext":
        b[HEADER_BYTES] ^= 0x80
    elif how == "header":
        b[23] ^= 0x01  # the low byte of command_id: associated data
    elif how == "truncated":
        del b[HEADER_BYTES + 10 :]  # fewer than 16 bytes after the header
    return bytes(b)


def _bad_tag_answer(
    session: RawSession, make: Callable[[], tuple[int, bytes]], *, follow: bytes = b""
) -> tuple[Packet, int, Packet, list[Header]]:
    """Send the corrupted frame ``make`` builds (and ``follow`` in the same write), then a verified
    STATUS at the counter after the mark. Returns (the answer to the corrupted frame, its counter,
    STATUS's answer, the headers of every frame received before STATUS's answer)."""
    for attempt in range(2):
        mark = session.highest_sent
        counter, body = make()
        session.wire.send(encode_frame(body) + follow)
        before, status = session.fence(counter=mark + 1)
        headers = [h for h in map(decode_header, before) if h is not None]
        answers = [b for b, h in zip(before, headers, strict=True) if h.echo_counter == counter]
        if answers:
            packet = session.open(answers[0], in_order=False)
            if isinstance(packet.message, m.ErrorReply):
                _backoff_ends[0] = time.monotonic() + packet.message.retry_after_ms / 1000
            return packet, counter, status, headers
        wait_s = _backoff_ends[0] - time.monotonic()
        if attempt or wait_s <= 0:
            break
        time.sleep(wait_s + 0.05)
    raise AssertionError("a frame whose tag fails was not answered with BAD_TAG (outside any backoff)")


def _stage_frame(session: RawSession, how: str, command_id: int) -> Callable[[], tuple[int, bytes]]:
    payload = encode_payload(m.StageProgram(1, continuous(SUITE_DOSE_NG_PER_DAY // 2)))

    def make() -> tuple[int, bytes]:
        counter, body = session.body(
            MsgType.STAGE_PROGRAM, payload, counter=session.highest_sent + 100, command_id=command_id
        )
        return counter, _corrupt(body, how)

    return make


@pytest.mark.requirement("SEC-TAG-001", "SEC-RPL-003", "PRT-ERR-007")
@pytest.mark.parametrize("how", ["tag", "ciphertext", "header", "truncated"])
def test_frame_whose_tag_fails_is_bad_tag_with_a_backoff(pump: DeviceUnderTest, how: str) -> None:
    command_id = new_command_id()
    with raw_session(pump, Role.CLINICIAN) as session:
        packet, counter, status, _ = _bad_tag_answer(session, _stage_frame(session, how, command_id))
        echoed_id = command_id ^ 0x01 if how == "header" else command_id
        error = assert_refusal(
            packet,
            ErrorCode.BAD_TAG,
            msg_type=MsgType.STAGE_PROGRAM,
            counter=counter,
            command_id=echoed_id,
            secured=True,
        )
        assert error.retry_after_ms >= 1, "BAD_TAG asks for a backoff"
        # STATUS, with a counter below the refused frame's: the failed tag did not move the mark
        assert not status.header.is_error, f"a frame whose tag failed moved the counter mark: {status.message}"
        assert isinstance(status.message, m.StatusReply)
        assert status.message.staged == 0, "a frame whose tag failed staged a program"
    _assert_nothing_done(pump, [command_id, echoed_id])


@pytest.mark.requirement("SEC-TAG-002")
def test_bad_tags_during_the_backoff_are_dropped_and_good_frames_processed(pump: DeviceUnderTest) -> None:
    with raw_session(pump, Role.CLINICIAN) as session:
        second_counter, second = session.body(MsgType.STATUS, b"", counter=session.highest_sent + 200)
        packet, counter, status, before = _bad_tag_answer(
            session, _stage_frame(session, "tag", new_command_id()), follow=encode_frame(_corrupt(second, "tag"))
        )
        error = assert_refusal(
            packet,
            ErrorCode.BAD_TAG,
            msg_type=MsgType.STAGE_PROGRAM,
            counter=counter,
            command_id=packet.header.command_id,
            secured=True,
        )
        if error.retry_after_ms < 50:
            pytest.skip(f"a backoff of {error.retry_after_ms} ms is too short to send into over a link")
        answered = [h for h in before if h.echo_counter == second_counter]
        assert not answered, f"a frame whose tag fails was answered during the backoff: {answered}"
        assert not status.header.is_error, f"a frame that verifies was refused during the backoff: {status.message}"
        assert isinstance(status.message, m.StatusReply)


# ---------------------------------------------------------------------- security log

LOG_WINDOW = 64
"""How far back (entries) a burst's aggregated entry is looked for."""


def _log_start(pump: DeviceUnderTest) -> int:
    page = pump.clinician.read_log(0, 1)
    return max(page.oldest_seq, page.next_seq - LOG_WINDOW)


def _security_entries(pump: DeviceUnderTest, code: ErrorCode, first_seq: int) -> dict[int, m.LogEntry]:
    return {
        e.seq: e
        for e in pump.clinician.read_all_log(first_seq)
        if e.kind == LogEventKind.SECURITY and e.code == code and e.seq >= first_seq
    }


def _logged(
    pump: DeviceUnderTest, code: ErrorCode, provoke: Callable[[], tuple[int, int]]
) -> tuple[int, list[m.LogEntry], tuple[int, int]]:
    """Run ``provoke``; (how many more events of ``code`` the log counts, the entries that grew or
    appeared, what ``provoke`` returned)."""
    start = _log_start(pump)
    before = _security_entries(pump, code, start)
    expected = provoke()
    after = _security_entries(pump, code, start)
    grown = [e for seq, e in after.items() if seq not in before or e.count > before[seq].count]
    added = sum(e.count for e in after.values()) - sum(e.count for e in before.values())
    return added, grown, expected


def _provoke(pump: DeviceUnderTest, code: ErrorCode) -> tuple[int, int]:
    """One refusal of ``code``: (the session id the log names, the msg_type of the refused frame)."""
    wire = RawWire(pump)
    if code is ErrorCode.NO_SESSION:
        counter, data = wire.plain(MsgType.STATUS)
        assert_refusal(wire.ask_plain(data, counter), code, msg_type=MsgType.STATUS, counter=counter, secured=False)
        return 0, MsgType.STATUS
    if code is ErrorCode.UNKNOWN_KEY:
        counter = wire.counter()
        hello = m.SessionOpen(Role.CLINICIAN, role_key(pump, Role.CLINICIAN).key_id ^ 0xFFFF_FFFF, bytes(16))
        data = encode_packet(Header(PROTOCOL_VERSION, MsgType.SESSION_OPEN, FrameFlags(0), 0, counter, 0, 0), hello)
        assert_refusal(
            wire.ask_plain(data, counter), code, msg_type=MsgType.SESSION_OPEN, counter=counter, secured=False
        )
        return 0, MsgType.SESSION_OPEN
    with raw_session(pump, Role.CLINICIAN, wire) as session:
        if code is ErrorCode.BAD_TAG:
            _bad_tag_answer(session, _stage_frame(session, "tag", new_command_id()))
            return session.session_id, MsgType.STAGE_PROGRAM
        if code is ErrorCode.REPLAYED_COUNTER:
            counter, data = session.request(m.Status())
            session.send(data, counter)
            assert_refusal(session.send(data, counter), code, msg_type=MsgType.STATUS, counter=counter, secured=True)
            return session.session_id, MsgType.STATUS
        command_id = new_command_id()
        counter, data = session.request(m.PatientBolusRequest(), command_id=command_id)
        packet = session.send(data, counter)
        assert_refusal(
            packet, code, msg_type=MsgType.PATIENT_BOLUS_REQUEST, counter=counter, command_id=command_id, secured=True
        )
        return session.session_id, MsgType.PATIENT_BOLUS_REQUEST


SECURITY_CODES = [
    ErrorCode.BAD_TAG,
    ErrorCode.REPLAYED_COUNTER,
    ErrorCode.WRONG_ROLE,
    ErrorCode.NO_SESSION,
    ErrorCode.UNKNOWN_KEY,
]


@pytest.mark.requirement("SEC-LOG-001")
@pytest.mark.parametrize("code", SECURITY_CODES, ids=lambda c: c.name)
def test_refusal_is_logged_as_a_security_event(pump: DeviceUnderTest, code: ErrorCode) -> None:
    added, grown, (session_id, msg_type) = _logged(pump, code, lambda: _provoke(pump, code))
    assert added >= 1, f"a {code.name} refusal was not logged as a SECURITY event"
    assert grown
    assert grown[-1].value_a == session_id, f"the SECURITY entry names session {grown[-1].value_a:#x}"
    assert grown[-1].value_b == msg_type, "the SECURITY entry does not name the refused frame's msg_type"


@pytest.mark.requirement("SEC-LOG-002")
def test_burst_of_refusals_shares_one_log_entry(pump: DeviceUnderTest) -> None:
    def twice() -> tuple[int, int]:
        _provoke(pump, ErrorCode.WRONG_ROLE)
        return _provoke(pump, ErrorCode.WRONG_ROLE)

    added, grown, _ = _logged(pump, ErrorCode.WRONG_ROLE, twice)
    assert added == 2, f"two WRONG_ROLE refusals counted {added} times"
    assert len(grown) == 1, f"a burst of two refusals took {len(grown)} log entries"
    assert grown[0].count >= 2
