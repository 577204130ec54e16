"""The programmer: the sans-IO session against the device, the facade over pump:// and a served
socket, every message once, refusals, link and key errors, and exactly-once under lost frames.

The key property (SAFETY.md, "lost ACK / duplicate / retry: 0 double boluses; programmer and
pump agree afterwards") is a hypothesis test: the real ``Programmer`` on virtual time, over a
link to a ``firmware_model`` device that drops frames in both directions per a generated
schedule, asked for one PATIENT_BOLUS_REQUEST or one REFILL.
"""

from __future__ import annotations

import errno
import os
import random
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from cobs import cobs
from hypothesis import event, given
from hypothesis import strategies as st
from serial.serialutil import SerialException

import hil.urlhandler
from firmware_model.config import PumpConfig
from firmware_model.device import Device, DeviceConfig
from firmware_model.presets import make_pump
from programmer import (
    EXIT_CODES,
    AlarmNotified,
    BackingOff,
    GiveUp,
    KeyMismatch,
    LinkError,
    NoReply,
    Programmer,
    ProgrammerError,
    ProgrammerSession,
    PublishedKeysWarning,
    PumpRefused,
    Refused,
    ReplyLost,
    ReplyReceived,
    Resend,
    SessionOpened,
    SessionState,
    UncertainOutcome,
    UsageError,
    Verdict,
    describe_refusal,
    exit_code_for,
    judge_outcome,
    open_port,
)
from programmer.client import link_error
from protocol_spec import messages as m
from protocol_spec.channel import Channel
from protocol_spec.codec import Header, decode_header
from protocol_spec.enums import (
    AlarmCode,
    AlarmEvent,
    AlarmPriority,
    AlarmSet,
    BolusKind,
    DrugId,
    ErrorCode,
    FaultKind,
    LogEventKind,
    MsgType,
    ProgramSlot,
    RefillConfirmation,
    Role,
    TherapyMode,
    TonePattern,
)
from protocol_spec.framing import Deframer, crc32, encode_frame
from protocol_spec.security import TEST_KEY_SET, KeySet, RoleKey, generate_key_set
from protocol_spec.timing import REPLY_TIMEOUT_MS, RETRIES

CONFIRMED = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED
PATIENT_SETTINGS = m.PatientBolusSettings(enabled=1, dose_ng=250, duration_ms=2000, lockout_ms=0, max_per_24h=255)
"""250 ng at 500 ug/mL is 500 nL, 2 motor steps, over 2 s; no lockout: only exactly-once stops a double."""


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test closes what it opened (ports, ptys, sockets)."""
    if not Path("/proc/self/fd").is_dir():
        yield
        return
    before = set(os.listdir("/proc/self/fd"))
    yield
    leaked = set(os.listdir("/proc/self/fd")) - before
    assert not leaked, f"file descriptors left open: {sorted(leaked)}"


@pytest.fixture(autouse=True, scope="module")
def pump_url_handler() -> None:
    hil.urlhandler.register()


def _key(role: Role, keys: KeySet = TEST_KEY_SET) -> RoleKey:
    key = keys.for_role(role)
    assert key is not None
    return key


def _open(
    url: str = "pump://", role: Role = Role.CLINICIAN, *, timeout_ms: int = REPLY_TIMEOUT_MS, retries: int = RETRIES
) -> Programmer:
    return Programmer.open(url, keys=TEST_KEY_SET, role=role, timeout_ms=timeout_ms, retries=retries)


def _continuous(dose_ng_per_day: int, concentration: int = 500) -> m.Program:
    return m.Program(TherapyMode.CONTINUOUS, concentration, dose_ng_per_day, 0, 0, 0, ())


# ---------------------------------------------------------------------- the facade over pump://


def test_open_without_keys_warns_and_opens_a_clinician_session() -> None:
    with pytest.warns(PublishedKeysWarning, match="published TEST keys"):
        prog = Programmer.open("pump://")
    with prog:
        assert prog.role is Role.CLINICIAN
        assert prog.identity is not None
        assert prog.identity.protocol_version == 1
        assert prog.session.state is SessionState.OPEN
        assert prog.session_id != 0
        assert prog.identify() == prog.identity
    session = prog.session
    assert session.state is SessionState.CLOSED


def test_clinician_reads() -> None:
    with _open() as prog:
        info = prog.interrogate()
        assert info.concentration_ug_per_ml == 500
        assert info.mode is TherapyMode.CONTINUOUS
        assert prog.status().mode is TherapyMode.CONTINUOUS
        assert prog.read_program() == _continuous(300_000)
        limits = prog.read_limits()
        assert limits.hard_limit_ng_per_day == 2_000_000
        page = prog.read_log(0, 2)
        assert len(page.entries) == 2
        seqs = [e.seq for e in prog.read_all_log(page_size=3)]
        assert seqs == list(range(page.oldest_seq, page.next_seq))
        entries = list(prog.read_all_log(page.next_seq - 1))
        assert entries[-1].kind is LogEventKind.SESSION_OPENED  # ours, the newest


def test_two_step_programming_stage_commit_abort() -> None:
    with _open() as prog:
        program = _continuous(350_000)
        staged = prog.stage_program(program)
        assert staged.max_dose_ng_per_day == 350_000
        assert prog.read_program(ProgramSlot.STAGED) == program
        assert prog.status().staged == 1
        committed = prog.commit(staged.stage_token)
        assert committed.stage_token == staged.stage_token
        assert prog.read_program() == program
        again = prog.stage_program(_continuous(380_000))
        assert prog.abort() == m.Ack()
        with pytest.raises(PumpRefused) as refused:
            prog.commit(again.stage_token)
        assert refused.value.code is ErrorCode.NOTHING_STAGED
        assert prog.read_program() == program


def test_bolus_cancel_refill_alarms_clock_limits() -> None:
    with _open("pump://?preset=low-reservoir") as prog:
        assert prog.status().alarms & AlarmSet.LOW_RESERVOIR
        assert prog.silence_alarm(AlarmCode.LOW_RESERVOIR, 60_000) == m.Ack()
        assert prog.acknowledge_alarm(AlarmCode.LOW_RESERVOIR) == m.Ack()
        assert prog.interrogate().silenced & AlarmSet.LOW_RESERVOIR
        config = prog.configure_alarms(
            low_reservoir_threshold_nl=1_500_000, critical_repeat_ms=600_000, non_critical_repeat_ms=3_600_000
        )
        assert config.low_reservoir_threshold_nl == 1_500_000
        staged = prog.stage_bolus(BolusKind.PRIMING, 1_000, 3_600)
        prog.commit(staged.stage_token)
        assert prog.status().bolus_active is BolusKind.PRIMING
        assert prog.cancel_bolus() == m.Ack()
        assert prog.status().bolus_active is BolusKind.NONE
        refill = prog.refill(
            aspirated_volume_nl=0,
            added_volume_nl=20_000_000,
            drug=DrugId.BACLOFEN,
            concentration_ug_per_ml=500,
            catheter_volume_nl=195_000,
            confirmations=CONFIRMED,
        )
        assert refill.reservoir_estimate_nl == 20_000_000
        clock = prog.set_clock(1_700_000_000_000)
        assert clock.wall_clock_ms == 1_700_000_000_000
        limits = prog.read_limits()
        assert prog.set_limits(limits) == limits


def test_patient_bolus_settings_then_a_patient_request_on_one_port() -> None:
    port = open_port("pump://?virtual=1")  # host time stands still: only the test role moves it
    try:
        clinician = Programmer(port, keys=TEST_KEY_SET, role=Role.CLINICIAN)
        clinician.connect()
        settings = m.PatientBolusSettings(enabled=1, dose_ng=250, duration_ms=2000, lockout_ms=3_600_000, max_per_24h=4)
        staged = clinician.stage_patient_bolus(settings)
        clinician.commit(staged.stage_token)
        patient = Programmer(port, keys=TEST_KEY_SET, role=Role.PATIENT)
        patient.connect()
        tester = Programmer(port, keys=TEST_KEY_SET, role=Role.TEST)
        tester.connect()
        grant = patient.patient_bolus_request()
        assert grant.dose_ng == 250
        assert grant.remaining_24h == 3
        with pytest.raises(PumpRefused) as busy:
            patient.patient_bolus_request()
        assert busy.value.code is ErrorCode.BUSY
        assert "busy" in str(busy.value)
        tester.advance_time(5_000)  # the bolus is over; the lockout is not
        with pytest.raises(PumpRefused) as locked:
            patient.patient_bolus_request()
        assert locked.value.code is ErrorCode.BOLUS_LOCKOUT
        assert locked.value.retry_after_ms == 3_600_000 - 5_000
        assert "locked out; the next patient bolus may be granted in 59 min 55 s" in str(locked.value)
        with pytest.raises(PumpRefused) as wrong_role:
            patient.interrogate()
        assert wrong_role.value.code is ErrorCode.WRONG_ROLE
        for prog in (tester, patient, clinician):
            prog.close()
    finally:
        port.close()


def test_test_role_methods() -> None:
    with _open(role=Role.TEST) as prog:
        held = prog.hold_clock(True)
        assert held.held == 1
        advanced = prog.advance_time(86_400_000)
        assert advanced.uptime_ms == held.uptime_ms + 86_400_000
        assert prog.inject_fault(FaultKind.MOTOR_STALL) == m.Ack()
        assert prog.read_plant().motor_stalled == 1
        assert prog.notifications
        assert prog.notifications[-1].alarm is AlarmCode.MOTOR_STALL
        prog.inject_fault(FaultKind.MOTOR_STALL_CLEAR)
        assert prog.read_plant().motor_stalled == 0
        steps = prog.read_step_log(0, 4)
        assert steps.steps_total > 0
        assert len(steps.steps) == 4
        assert prog.hold_clock(False).held == 0


def test_a_reset_ends_the_session_and_the_next_request_opens_another() -> None:
    with _open(role=Role.TEST) as prog:
        first = prog.session_id
        prog.inject_fault(FaultKind.RESET)
        assert prog.status().mode is TherapyMode.CONTINUOUS  # NO_SESSION, then a new session
        assert prog.session_id != first


def test_refusals_carry_code_limit_and_a_sentence() -> None:
    with _open() as prog:
        with pytest.raises(PumpRefused) as hard:
            prog.stage_program(_continuous(2_500_000))
        assert hard.value.code is ErrorCode.HARD_LIMIT
        assert hard.value.hi == 2_000_000
        assert "refused: above the hard limit of 2000 ug/day" in str(hard.value)
        assert hard.value.exit_code == 4
        assert hard.value.authenticated
        with pytest.raises(PumpRefused) as soft:
            prog.stage_program(_continuous(1_200_000))
        assert soft.value.code is ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE
        assert "soft limit of 1000 ug/day" in str(soft.value)
        with pytest.raises(PumpRefused) as conc:
            prog.stage_program(_continuous(300_000, concentration=1000))
        assert conc.value.code is ErrorCode.CONCENTRATION_MISMATCH
        assert "holds 500 ug/mL" in str(conc.value)
        with pytest.raises(PumpRefused) as role:
            prog.advance_time(1000)
        assert role.value.code is ErrorCode.WRONG_ROLE
        with pytest.raises(PumpRefused) as bolus:
            prog.stage_bolus(BolusKind.PRIMING, 2_000_000, 600_000_000)
        assert bolus.value.code is ErrorCode.HARD_LIMIT
        assert "500 ug" in str(bolus.value)


def test_local_validation_sends_nothing() -> None:
    with _open() as prog:
        before = prog.interrogate().outcomes
        with pytest.raises(UsageError, match="volume_nl") as bad:
            prog.stage_bolus(BolusKind.PRIMING, 0, 1000)
        assert bad.value.exit_code == 2
        assert not prog.session.busy
        assert prog.interrogate().outcomes == before
        with pytest.raises(UsageError):
            prog.request(m.Ack())


def test_a_key_the_pump_does_not_hold() -> None:
    with pytest.raises(KeyMismatch) as unknown:
        Programmer.open("pump://", keys=generate_key_set())
    assert unknown.value.code is ErrorCode.UNKNOWN_KEY
    assert unknown.value.exit_code == 7
    assert "holds no CLINICIAN key" in str(unknown.value)
    impostor = KeySet((RoleKey(Role.CLINICIAN, _key(Role.CLINICIAN).key_id, bytes(32)),))
    with pytest.raises(KeyMismatch) as confirm:
        Programmer.open("pump://", keys=impostor)
    assert confirm.value.code is None
    assert "confirmation does not match" in str(confirm.value)
    with pytest.raises(UsageError, match="no PATIENT key"):
        Programmer.open("pump://", keys=generate_key_set([Role.CLINICIAN]), role=Role.PATIENT)


def test_link_errors_say_what_is_wrong() -> None:
    with pytest.raises(LinkError) as missing:
        _open("/dev/does-not-exist")
    assert missing.value.reason == "missing"
    assert missing.value.exit_code == 3
    assert "does not exist" in str(missing.value)
    with pytest.raises(UsageError, match="not a port"):
        _open("nosuch://x")
    denied = link_error("/dev/ttyS9", SerialException(errno.EACCES, "could not open port: [Errno 13] denied"))
    assert denied.reason == "permission"
    assert "dialout" in str(denied)
    locked = link_error("/dev/ttyS9", SerialException(errno.EWOULDBLOCK, "Could not exclusively lock port"))
    assert locked.reason == "busy"
    refused = link_error("socket://127.0.0.1:9", SerialException("Could not open port: [Errno 111] Connection refused"))
    assert refused.reason == "refused"


@contextmanager
def _pty() -> Iterator[str]:
    """A pty with nothing behind it: a port where no pump answers."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(slave)
        os.close(master)


def test_a_port_is_locked_while_open() -> None:
    with _pty() as path:
        first = open_port(path)
        try:
            with pytest.raises(LinkError) as busy:
                open_port(path)
            assert busy.value.reason == "busy"
        finally:
            first.close()
        open_port(path, exclusive=True).close()  # free again


def test_no_reply_from_an_empty_port() -> None:
    with _pty() as path, pytest.raises(NoReply) as silent:
        _open(path, timeout_ms=20, retries=1)
    assert silent.value.msg_type is MsgType.IDENTIFY
    assert silent.value.attempts == 2
    assert silent.value.exit_code == 5


def _pumprig() -> list[str]:
    script = Path(sys.executable).with_name("pumprig")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from hil.cli import main; main()"]


def test_over_a_served_tcp_socket(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen([*_pumprig(), "serve", "--tcp", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=err)
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30.0)
            assert ready, (tmp_path / "stderr").read_text()
            url = proc.stdout.readline().decode().strip()
            assert url.startswith("socket://")
            with _open(url) as prog:
                assert prog.status().mode is TherapyMode.CONTINUOUS
                staged = prog.stage_program(_continuous(320_000))
                assert prog.commit(staged.stage_token).stage_token == staged.stage_token
        finally:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


# ---------------------------------------------------------------------- errors and exit codes


def test_exit_codes_are_distinct_and_documented() -> None:
    import programmer.errors as errors_module

    assert exit_code_for(None) == 0
    assert exit_code_for(ValueError()) == 1
    codes = {cls.__name__: code for cls, code in EXIT_CODES.items()}
    assert codes == {
        "UsageError": 2,
        "LinkError": 3,
        "PumpRefused": 4,
        "NoReply": 5,
        "ReplyLost": 5,
        "UncertainOutcome": 6,
        "KeyMismatch": 7,
    }
    doc = errors_module.__doc__ or ""
    for name, code in codes.items():
        assert f"``{name}``" in doc
        assert f"\n{code}  " in doc
    uncertain = UncertainOutcome(0x1234, MsgType.PATIENT_BOLUS_REQUEST)
    assert exit_code_for(uncertain) == 6
    assert "UNKNOWN" in str(uncertain)
    assert "Interrogate" in str(uncertain)
    assert all(issubclass(cls, ProgrammerError) for cls in EXIT_CODES)


def test_every_error_code_has_a_sentence() -> None:
    for code in ErrorCode:
        sentence = describe_refusal(code, 255, 0, 0, 0)
        assert sentence, code
        assert code.name not in sentence, code
        if code is not ErrorCode.OK:
            assert sentence.startswith("refused"), code
    busy = describe_refusal(ErrorCode.BUSY, retry_after_ms=1500)
    assert "try again in 1.5 s" in busy
    ranged = describe_refusal(ErrorCode.OUT_OF_RANGE, 1, 1, 20_000_000, msg_type=MsgType.REFILL)
    assert ranged == "refused: added_volume_nl is out of range (allowed 1 nL to 20 mL)"


# ---------------------------------------------------------------------- the sans-IO session


def _device(*, seed: int = 1) -> Device:
    pump = make_pump(None, PumpConfig())
    pump.set_patient_bolus(PATIENT_SETTINGS)
    return Device(pump, TEST_KEY_SET, config=DeviceConfig(test_role=True), entropy=random.Random(seed).randbytes)


def _session(device: Device, role: Role = Role.CLINICIAN, now_ms: int = 0) -> ProgrammerSession:
    rng = random.Random(7)
    session = ProgrammerSession(_key(role), nonces=rng.randbytes, command_ids=lambda: rng.getrandbits(63) + 1)
    device.receive_data(session.start_handshake(now_ms), now_ms)
    (opened,) = session.receive_data(device.data_to_send(), now_ms)
    assert isinstance(opened, SessionOpened)
    assert session.state is SessionState.OPEN
    return session


def _headers(wire: bytes) -> list[Header]:
    out = []
    for body in Deframer().feed(wire):
        assert isinstance(body, bytes)
        header = decode_header(body)
        assert header is not None
        out.append(header)
    return out


def _refills(device: Device) -> int:
    return sum(1 for _ in device.pump.log.entries(LogEventKind.REFILL))


REFILL = m.Refill(0, 20_000_000, DrugId.BACLOFEN, 500, 195_000, CONFIRMED)


def test_session_retries_with_a_new_counter_and_the_same_command_id() -> None:
    device = _device()
    session = _session(device)
    refills = _refills(device)
    first = session.send(REFILL, 0)
    device.receive_data(first, 0)
    device.data_to_send()  # the reply is lost
    assert session.poll(REPLY_TIMEOUT_MS - 1) is None
    again = session.poll(REPLY_TIMEOUT_MS)
    assert isinstance(again, Resend)
    assert again.attempt == 2
    (h1,), (h2,) = _headers(first), _headers(again.data)
    assert h2.command_id == h1.command_id != 0
    assert h2.counter > h1.counter
    device.receive_data(again.data, REPLY_TIMEOUT_MS)
    (reply,) = session.receive_data(device.data_to_send(), REPLY_TIMEOUT_MS)
    assert isinstance(reply, ReplyReceived)
    assert isinstance(reply.message, m.RefillReply)
    assert reply.header.echo_counter == h2.counter
    assert _refills(device) == refills + 1
    assert session.poll(10 * REPLY_TIMEOUT_MS) is None


def test_a_late_reply_to_an_earlier_attempt_answers_and_the_later_one_is_ignored() -> None:
    device = _device()
    session = _session(device)
    refills = _refills(device)
    device.receive_data(session.send(REFILL, 0), 0)
    late = device.data_to_send()  # held back
    retry = session.poll(REPLY_TIMEOUT_MS)
    assert isinstance(retry, Resend)
    device.receive_data(retry.data, REPLY_TIMEOUT_MS)
    second = device.data_to_send()
    (reply,) = session.receive_data(late, REPLY_TIMEOUT_MS + 1)
    assert isinstance(reply, ReplyReceived)
    assert session.receive_data(second, REPLY_TIMEOUT_MS + 2) == []
    assert session.stats.unmatched == 1
    assert _refills(device) == refills + 1


def test_session_gives_up_after_the_last_attempt() -> None:
    device = _device()
    session = _session(device)
    session.send(REFILL, 0)
    now = 0
    decisions = []
    for _ in range(RETRIES + 1):
        now += REPLY_TIMEOUT_MS
        decisions.append(session.poll(now))
    assert [type(d) for d in decisions] == [Resend] * RETRIES + [GiveUp]
    give_up = decisions[-1]
    assert isinstance(give_up, GiveUp)
    assert give_up.uncertain
    assert give_up.attempts == RETRIES + 1
    assert not session.busy
    assert session.next_deadline_ms is None


def _pump_side(session: ProgrammerSession) -> Channel:
    keys = session.session_keys
    assert keys is not None
    return Channel(from_pump=True, keys=keys)


def test_busy_with_a_wait_delays_the_retry() -> None:
    device = _device()
    session = _session(device)
    first = session.send(REFILL, 0)
    (request,) = _headers(first)
    pump = _pump_side(session)
    busy = pump.error(request, m.ErrorReply(ErrorCode.BUSY, 255, 0, 0, 1500)).data
    (event,) = session.receive_data(busy, 100)
    assert isinstance(event, BackingOff)
    assert event.resend_at_ms == 1600
    assert session.poll(REPLY_TIMEOUT_MS) is None  # the wait overrides the timeout
    retry = session.poll(1600)
    assert isinstance(retry, Resend)
    (retried,) = _headers(retry.data)
    assert retried.command_id == request.command_id
    final = pump.error(retried, m.ErrorReply(ErrorCode.HARD_LIMIT, 1, 0, 2, 0)).data
    (refused,) = session.receive_data(final, 1700)
    assert isinstance(refused, Refused)
    assert refused.authenticated
    assert refused.error.code is ErrorCode.HARD_LIMIT


def test_notifications_and_garbage() -> None:
    device = _device()
    session = _session(device)
    pump = _pump_side(session)
    note = m.AlarmNotify(
        AlarmCode.MOTOR_STALL, AlarmEvent.RAISED, AlarmPriority.CRITICAL, TonePattern.TWO_TONE_3S, 5, AlarmSet(0x10)
    )
    other = _session(device)  # a second session: its frames are not ours
    stranger = _pump_side(other).notify(note).data
    plain = Channel(from_pump=True).notify(note).data  # unauthenticated: not believed
    (body,) = Deframer().feed(pump.notify(note).data)
    assert isinstance(body, bytes)
    bad_crc = b"\x00" + cobs.encode(body[:-1] + bytes([body[-1] ^ 1]) + crc32(body).to_bytes(4, "little")) + b"\x00"
    events = session.receive_data(
        b"\x00\x13\x37\x00" + bytes(bad_crc) + stranger + plain + pump.notify(note).data[:10], 0
    )
    assert events == []
    assert session.stats.framing_errors == 2
    assert session.stats.other_session == 1
    assert session.stats.unmatched == 1
    (event,) = session.receive_data(pump.notify(note).data, 0)  # a fresh frame, after the cut one
    assert isinstance(event, AlarmNotified)
    assert event.notify == note


def test_plaintext_refusal_in_a_session_is_flagged_unauthenticated() -> None:
    device = _device()
    session = _session(device)
    (request,) = _headers(session.send(REFILL, 0))
    forged = Channel(from_pump=True).error(request, m.ErrorReply(ErrorCode.NO_SESSION, 255, 0, 0, 0)).data
    (event,) = session.receive_data(forged, 1)
    assert isinstance(event, Refused)
    assert not event.authenticated
    assert session.state is SessionState.LOST


def test_session_refuses_local_misuse() -> None:
    device = _device()
    session = ProgrammerSession(_key(Role.CLINICIAN))
    with pytest.raises(UsageError, match="needs an open session"):
        session.send(m.Status(), 0)
    session = _session(device)
    session.send(m.Status(), 0)
    with pytest.raises(UsageError, match="one request at a time"):
        session.send(m.Status(), 0)


def test_judge_outcome() -> None:
    def outcome(cid: int, result: ErrorCode = ErrorCode.OK) -> m.CommandOutcome:
        return m.CommandOutcome(cid, MsgType.REFILL, result, 0)

    bolus = MsgType.REFILL
    assert judge_outcome(5, bolus, [outcome(5)]) == (Verdict.CARRIED_OUT, outcome(5))
    assert judge_outcome(5, bolus, [outcome(5, ErrorCode.BUSY)])[0] is Verdict.REFUSED
    assert judge_outcome(5, MsgType.COMMIT, [outcome(5)])[0] is Verdict.UNKNOWN
    assert judge_outcome(5, bolus, [outcome(1)]) == (Verdict.NEVER_RAN, None)
    full = [outcome(100 + i) for i in range(m.MAX_OUTCOMES)]
    assert judge_outcome(5, bolus, full) == (Verdict.UNKNOWN, None)
    assert judge_outcome(5, bolus, full, recorded_before={107}) == (Verdict.NEVER_RAN, None)


# ---------------------------------------------------------------------- exactly-once under lost frames


class LossyLink:
    """A port whose far end is a ``Device`` on virtual time; frames are dropped, while ``armed``,
    as the schedules say (True: drop), one entry per frame, then as ``dead`` says."""

    def __init__(self, device: Device, to_pump: list[bool], from_pump: list[bool], *, dead: bool) -> None:
        self.device = device
        self.now_ms = 0
        self.timeout: float | None = 0.02
        self._rx = bytearray()
        self._to_pump = iter(to_pump)
        self._from_pump = iter(from_pump)
        self.dead = dead
        self.armed = False
        self.sent: list[Header] = []
        self.dropped = 0

    def _drop(self, schedule: Iterator[bool]) -> bool:
        if not self.armed:
            return False
        drop = next(schedule, self.dead)
        self.dropped += drop
        return drop

    def clock(self) -> int:
        return self.now_ms

    def sleep(self, seconds: float) -> None:
        self.now_ms += max(1, int(seconds * 1000))

    def _pull(self) -> None:
        self.device.advance(self.now_ms)
        for body in Deframer().feed(self.device.data_to_send()):
            assert isinstance(body, bytes)
            if not self._drop(self._from_pump):
                self._rx += encode_frame(body)

    @property
    def in_waiting(self) -> int:
        self._pull()
        return len(self._rx)

    def read(self, size: int = 1, /) -> bytes:
        self._pull()
        if not self._rx:
            self.now_ms += int((self.timeout or 0) * 1000)
            self._pull()
        data = bytes(self._rx[:size])
        del self._rx[:size]
        return data

    def write(self, data: bytes, /) -> int:
        for body in Deframer().feed(data):
            assert isinstance(body, bytes)
            header = decode_header(body)
            assert header is not None
            self.sent.append(header)
            if not self._drop(self._to_pump):
                self.device.receive_data(encode_frame(body), self.now_ms)
        return len(data)

    def close(self) -> None:
        pass


def _count(device: Device, kind: LogEventKind) -> int:
    return sum(1 for _ in device.pump.log.entries(kind))


@given(
    to_pump=st.lists(st.booleans(), max_size=24),
    from_pump=st.lists(st.booleans(), max_size=24),
    dead=st.booleans(),
    patient=st.booleans(),
)
def test_lost_frames_never_double_an_effect(
    to_pump: list[bool], from_pump: list[bool], dead: bool, patient: bool
) -> None:
    device = _device()
    link = LossyLink(device, to_pump, from_pump, dead=dead)
    role, msg_type, kind = (
        (Role.PATIENT, MsgType.PATIENT_BOLUS_REQUEST, LogEventKind.BOLUS_STARTED)
        if patient
        else (Role.CLINICIAN, MsgType.REFILL, LogEventKind.REFILL)
    )
    prog = Programmer(link, keys=TEST_KEY_SET, role=role, clock=link.clock, sleep=link.sleep)
    prog.connect()
    before = _count(device, kind)
    link.armed = True
    result: object
    try:
        result = prog.patient_bolus_request() if patient else _refill(prog)
    except (PumpRefused, UncertainOutcome, ReplyLost) as exc:
        result = exc
    link.armed = False
    acted = _count(device, kind) - before
    resolved = any(h.msg_type == MsgType.INTERROGATE for h in link.sent)
    event(f"{type(result).__name__}, acted {acted}{', outcomes read' if resolved else ''}")

    ids = {h.command_id for h in link.sent if h.msg_type == msg_type}
    assert len(ids) == 1, "every attempt of one command carries one command id"
    (command_id,) = ids
    assert acted <= 1
    if isinstance(result, (m.PatientBolusGrant, m.RefillReply, ReplyLost)):
        assert acted == 1
    elif isinstance(result, PumpRefused):
        assert acted == 0
    if not dead and link.dropped <= RETRIES:
        assert not isinstance(result, ProgrammerError), f"{link.dropped} drops must not defeat 4 attempts: {result}"

    # the programmer and the pump agree afterwards
    prog.close()
    with Programmer(link, keys=TEST_KEY_SET, role=Role.CLINICIAN, clock=link.clock, sleep=link.sleep) as check:
        check.connect()
        listed = {o.command_id: o.result for o in check.interrogate().outcomes}
    if acted:
        assert listed.get(command_id) is ErrorCode.OK
    elif not isinstance(result, UncertainOutcome):
        assert listed.get(command_id, ErrorCode.OK) is not ErrorCode.OK


def _refill(prog: Programmer) -> m.RefillReply:
    return prog.refill(
        aspirated_volume_nl=0,
        added_volume_nl=20_000_000,
        drug=DrugId.BACLOFEN,
        concentration_ug_per_ml=500,
        catheter_volume_nl=195_000,
        confirmations=CONFIRMED,
    )


def test_reply_lost_when_the_pump_lists_it_but_its_reply_never_arrives() -> None:
    device = _device()
    lost, heard = True, False
    replies = [lost] * 4 + [heard] + [lost] * 4 + [heard, heard] + [lost] * 4  # see the comments below
    link = LossyLink(device, [], replies, dead=False)
    prog = Programmer(link, keys=TEST_KEY_SET, role=Role.CLINICIAN, clock=link.clock, sleep=link.sleep)
    prog.connect()
    refills = _refills(device)
    link.armed = True
    # REFILL x4 unanswered; INTERROGATE lists it OK; REFILL again x4 unanswered;
    # a new session and INTERROGATE (still OK); REFILL again x4 unanswered
    with pytest.raises(ReplyLost) as lost_reply:
        _refill(prog)
    assert lost_reply.value.outcome.result is ErrorCode.OK
    assert "was carried out" in str(lost_reply.value)
    assert lost_reply.value.exit_code == 5
    assert _refills(device) == refills + 1
    ids = {h.command_id for h in link.sent if h.msg_type == MsgType.REFILL}
    assert ids == {lost_reply.value.command_id}


def test_a_stage_whose_reply_is_lost_is_staged_again_as_a_new_command() -> None:
    """Staging replaces the staged change and nothing else, so the programmer stages again
    (a new command id) rather than report a lost token it cannot commit."""
    device = _device()
    lost, heard = True, False
    # STAGE x4 unanswered; INTERROGATE lists it OK; STAGE again x4 unanswered; a new session
    # and INTERROGATE; STAGE again x4 unanswered: that stage's reply is lost. The next one is heard.
    replies = [lost] * 4 + [heard] + [lost] * 4 + [heard, heard] + [lost] * 4
    link = LossyLink(device, [], replies, dead=False)
    prog = Programmer(link, keys=TEST_KEY_SET, role=Role.CLINICIAN, clock=link.clock, sleep=link.sleep)
    prog.connect()
    link.armed = True
    program = replace(device.pump.program, dose_ng_per_day=device.pump.program.dose_ng_per_day + 1_000)
    staged = prog.stage_program(program)
    stage_ids = [h.command_id for h in link.sent if h.msg_type == MsgType.STAGE_PROGRAM]
    assert len(set(stage_ids)) == 2, "the lost stage, then one new stage"
    assert prog.commit(staged.stage_token).stage_token == staged.stage_token
    assert device.pump.program == program


def test_a_patient_only_key_set_resolves_by_the_same_command_id() -> None:
    device = _device()
    link = LossyLink(device, [], [True] * (RETRIES + 1), dead=False)
    patient_only = KeySet((_key(Role.PATIENT),))
    prog = Programmer(link, keys=patient_only, role=Role.PATIENT, clock=link.clock, sleep=link.sleep)
    prog.connect()
    starts = _count(device, LogEventKind.BOLUS_STARTED)
    link.armed = True
    grant = prog.patient_bolus_request()
    assert grant.dose_ng == PATIENT_SETTINGS.dose_ng
    assert _count(device, LogEventKind.BOLUS_STARTED) == starts + 1
    assert not any(h.msg_type == MsgType.INTERROGATE for h in link.sent)
    requests = [h for h in link.sent if h.msg_type == MsgType.PATIENT_BOLUS_REQUEST]
    assert len(requests) == RETRIES + 2
    assert len({h.command_id for h in requests}) == 1
