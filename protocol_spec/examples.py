"""Worked examples: a deterministic handshake and one example of every message and error.

The golden vectors, SPEC.md's worked handshake and ``pumprig demo`` all come from here, so
the numbers a reader sees in the spec are the bytes in the vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import messages as m
from .catalog import CATALOG
from .channel import Channel, client_finish, client_hello
from .codec import Header, encode_payload
from .enums import (
    PROTOCOL_VERSION,
    AlarmCode,
    AlarmEvent,
    AlarmPriority,
    AlarmSet,
    BatteryState,
    BolusKind,
    DeviceClass,
    DrugId,
    ErrorCode,
    FaultKind,
    Feature,
    FrameFlags,
    LogEventKind,
    MsgType,
    ProgramSlot,
    RefillConfirmation,
    Role,
    StageKind,
    TherapyMode,
    TonePattern,
)
from .framing import crc32
from .security import TEST_KEY_SET, RoleKey, SessionKeys, derive_session_keys, pump_nonce

__all__ = [
    "EXAMPLE_ERRORS",
    "EXAMPLE_REPLIES",
    "EXAMPLE_REQUESTS",
    "HANDSHAKE",
    "HandshakeExample",
    "ScriptedFrame",
    "example_session",
    "flex_13_steps",
]


@dataclass(frozen=True)
class HandshakeExample:
    """Fixed inputs of the worked handshake (SPEC.md, vectors/handshake.json)."""

    role_key: RoleKey
    client_nonce: bytes
    pump_entropy: bytes
    boot_counter: int
    session_serial: int
    session_id: int

    @property
    def pump_nonce(self) -> bytes:
        return pump_nonce(self.pump_entropy, self.boot_counter, self.session_serial)

    @property
    def keys(self) -> SessionKeys:
        return derive_session_keys(self.role_key, self.session_id, self.client_nonce, self.pump_nonce)


def _role_key(role: Role) -> RoleKey:
    key = TEST_KEY_SET.for_role(role)
    assert key is not None
    return key


HANDSHAKE = HandshakeExample(
    role_key=_role_key(Role.CLINICIAN),
    client_nonce=bytes(range(0x10, 0x20)),
    pump_entropy=bytes(range(0xA0, 0xB0)),
    boot_counter=7,
    session_serial=1,
    session_id=0x1A2B3C4D,
)

UG = 1000  # ng per ug


def flex_13_steps() -> m.Program:
    """A one-day flex program with 13 steps (the benchmark's largest common program)."""
    hour = 3_600_000
    starts = [0, 2, 4, 6, 7, 8, 10, 12, 14, 16, 18, 20, 22]
    doses = [250, 250, 300, 350, 400, 400, 350, 300, 300, 350, 400, 300, 250]
    return m.Program(
        mode=TherapyMode.FLEX,
        concentration_ug_per_ml=500,
        dose_ng_per_day=0,
        bolus_dose_ng=0,
        bolus_duration_ms=0,
        cycle_days=1,
        steps=tuple(m.FlexStep(0, h * hour, d * UG) for h, d in zip(starts, doses, strict=True)),
    )


_CONTINUOUS = m.Program(TherapyMode.CONTINUOUS, 500, 300 * UG, 0, 0, 0, ())
"""The active program throughout the example session (600,000 nL/day at 500 ug/mL)."""
_PATIENT = m.PatientBolusSettings(1, 25 * UG, 600_000, 3_600_000, 4)
_STAGE_PROGRAM = m.StageProgram(0, flex_13_steps())
_STAGE_BOLUS = m.StageBolus(BolusKind.BRIDGE, 0, 260_000, 7_200_000)
_STAGE_PATIENT = m.StagePatientBolus(0, _PATIENT)


def _crc_of(message: object) -> int:
    """CRC-32 of a payload: a stage token (of the staged request) or a program's CRC."""
    return crc32(encode_payload(message))


_PROGRAM_TOKEN = _crc_of(_STAGE_PROGRAM)
_LIMITS = m.DrugLimits(
    drug=DrugId.BACLOFEN,
    concentrations=tuple(m.Concentration(c) for c in (50, 500, 1000, 2000)),
    min_rate_nl_per_day=5_000,
    max_rate_nl_per_day=4_000_000,
    hard_limit_ng_per_day=2000 * UG,
    soft_limit_ng_per_day=1000 * UG,
    soft_increase_permille_per_24h=300,
    max_bolus_ng=500 * UG,
)

EXAMPLE_REQUESTS: dict[MsgType, Any] = {
    MsgType.IDENTIFY: m.Identify(),
    MsgType.SESSION_OPEN: client_hello(HANDSHAKE.role_key, HANDSHAKE.client_nonce),
    MsgType.SESSION_CLOSE: m.SessionClose(),
    MsgType.INTERROGATE: m.Interrogate(),
    MsgType.STATUS: m.Status(),
    MsgType.READ_PROGRAM: m.ReadProgram(ProgramSlot.ACTIVE),
    MsgType.STAGE_PROGRAM: _STAGE_PROGRAM,
    MsgType.STAGE_BOLUS: _STAGE_BOLUS,
    MsgType.STAGE_PATIENT_BOLUS: _STAGE_PATIENT,
    MsgType.COMMIT: m.Commit(_PROGRAM_TOKEN),
    MsgType.ABORT: m.Abort(),
    MsgType.PATIENT_BOLUS_REQUEST: m.PatientBolusRequest(),
    MsgType.CANCEL_BOLUS: m.CancelBolus(),
    MsgType.REFILL: m.Refill(
        aspirated_volume_nl=2_050_000,
        added_volume_nl=20_000_000,
        drug=DrugId.BACLOFEN,
        concentration_ug_per_ml=500,
        catheter_volume_nl=195_000,
        confirmations=RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED,
    ),
    MsgType.CONFIGURE_ALARMS: m.ConfigureAlarms(2_000_000, 600_000, 3_600_000),
    MsgType.SILENCE_ALARM: m.SilenceAlarm(AlarmCode.LOW_RESERVOIR, 3_600_000),
    MsgType.ACKNOWLEDGE_ALARM: m.AcknowledgeAlarm(AlarmCode.LOW_RESERVOIR),
    MsgType.READ_LOG: m.ReadLog(0, 2),
    MsgType.SET_CLOCK: m.SetClock(1_795_000_000_000),
    MsgType.READ_LIMITS: m.ReadLimits(),
    MsgType.SET_LIMITS: m.SetLimits(_LIMITS),
    MsgType.TEST_ADVANCE_TIME: m.AdvanceTime(86_400_000),
    MsgType.TEST_HOLD_CLOCK: m.HoldClock(1),
    MsgType.TEST_INJECT_FAULT: m.InjectFault(FaultKind.MOTOR_STALL, 0),
    MsgType.TEST_READ_PLANT: m.ReadPlant(),
    MsgType.TEST_READ_STEP_LOG: m.ReadStepLog(71_597, 4),
}

EXAMPLE_REPLIES: dict[MsgType, Any] = {
    MsgType.IDENTIFY: m.IdentifyReply(
        protocol_version=PROTOCOL_VERSION,
        min_protocol_version=PROTOCOL_VERSION,
        device_class=DeviceClass.ITB_PUMP,
        features=Feature.TEST_ROLE
        | Feature.VIRTUAL_TIME
        | Feature.FAULT_INJECTION
        | Feature.STEP_LOG
        | Feature.FLEX
        | Feature.PATIENT_BOLUS,
        max_frame_bytes=1024,
        firmware_major=0,
        firmware_minor=1,
        firmware_patch=0,
    ),
    MsgType.SESSION_OPEN: m.SessionOpenReply(
        pump_nonce=HANDSHAKE.pump_nonce,
        boot_counter=HANDSHAKE.boot_counter,
        session_timeout_ms=300_000,
        confirm=HANDSHAKE.keys.confirm,
    ),
    MsgType.SESSION_CLOSE: m.Ack(),
    MsgType.INTERROGATE: m.InterrogateReply(
        serial_number="VP0000001",
        model="pumprig-virtual",
        firmware_major=0,
        firmware_minor=1,
        firmware_patch=0,
        protocol_version=PROTOCOL_VERSION,
        boot_counter=7,
        uptime_ms=2_592_000_000,
        wall_clock_ms=1_795_000_000_000,
        reservoir_capacity_nl=20_000_000,
        reservoir_estimate_nl=2_100_000,
        low_reservoir_threshold_nl=2_000_000,
        catheter_volume_nl=195_000,
        tubing_volume_nl=65_000,
        step_volume_nl=250,
        last_refill_ms=0,
        battery_state=BatteryState.OK,
        battery_remaining_permille=873,
        eri_at_ms=0,
        alarms=AlarmSet(0),
        silenced=AlarmSet(0),
        drug=DrugId.BACLOFEN,
        concentration_ug_per_ml=500,
        mode=TherapyMode.CONTINUOUS,
        dose_ng_per_day=300 * UG,
        rate_nl_per_day=600_000,
        program_crc=_crc_of(_CONTINUOUS),
        bolus_active=BolusKind.NONE,
        patient_bolus=_PATIENT,
        outcomes=(
            m.CommandOutcome(0x0C0FFEE000000002, MsgType.COMMIT, ErrorCode.OK, 2_591_000_000),
            m.CommandOutcome(0x0C0FFEE000000001, MsgType.STAGE_PROGRAM, ErrorCode.OK, 2_590_990_000),
        ),
    ),
    MsgType.STATUS: m.StatusReply(
        uptime_ms=2_592_000_000,
        wall_clock_ms=1_795_000_000_000,
        mode=TherapyMode.CONTINUOUS,
        rate_nl_per_day=600_000,
        bolus_active=BolusKind.NONE,
        reservoir_estimate_nl=2_100_000,
        delivered_nl=17_900_000,
        battery_state=BatteryState.OK,
        alarms=AlarmSet(0),
        staged=0,
    ),
    MsgType.READ_PROGRAM: _CONTINUOUS,
    # the flex program peaks at 400 ug/day = 800,000 nL/day at 500 ug/mL
    MsgType.STAGE_PROGRAM: m.StageReply(_PROGRAM_TOKEN, StageKind.PROGRAM, 400 * UG, 800_000, 0),
    # 260,000 nL (130 ug at 500 ug/mL) in two hours: 3,120,000 nL/day, 1,560,000 ng/day
    MsgType.STAGE_BOLUS: m.StageReply(_crc_of(_STAGE_BOLUS), StageKind.BOLUS, 1_560 * UG, 3_120_000, 0),
    # four boluses of 25 ug in any 24 h
    MsgType.STAGE_PATIENT_BOLUS: m.StageReply(
        _crc_of(_STAGE_PATIENT), StageKind.PATIENT_BOLUS_SETTINGS, 100 * UG, 0, 0
    ),
    MsgType.COMMIT: m.CommitReply(_PROGRAM_TOKEN, 2_592_000_500),
    MsgType.ABORT: m.Ack(),
    MsgType.PATIENT_BOLUS_REQUEST: m.PatientBolusGrant(25 * UG, 600_000, 2_595_600_000, 3),
    MsgType.CANCEL_BOLUS: m.Ack(),
    MsgType.REFILL: m.RefillReply(2_100_000, 2_050_000, -50_000, 20_000_000, 0, 260_000),
    MsgType.CONFIGURE_ALARMS: m.AlarmConfig(2_000_000, 600_000, 3_600_000),
    MsgType.SILENCE_ALARM: m.Ack(),
    MsgType.ACKNOWLEDGE_ALARM: m.Ack(),
    MsgType.ALARM_NOTIFY: m.AlarmNotify(
        AlarmCode.LOW_RESERVOIR,
        AlarmEvent.RAISED,
        AlarmPriority.NON_CRITICAL,
        TonePattern.SINGLE_TONE_1S,
        2_592_100_000,
        AlarmSet.LOW_RESERVOIR,
    ),
    MsgType.READ_LOG: m.LogPage(
        0,
        42,
        (
            m.LogEntry(0, 0, 1_792_408_000_000, LogEventKind.RESET, 0, 1, 7, 0),
            m.LogEntry(1, 1_000, 1_792_408_001_000, LogEventKind.REFILL, int(DrugId.BACLOFEN), 1, 20_000_000, 0),
        ),
    ),
    MsgType.SET_CLOCK: m.SetClockReply(1_794_999_990_000, 1_795_000_000_000),
    MsgType.READ_LIMITS: _LIMITS,
    MsgType.SET_LIMITS: _LIMITS,
    MsgType.TEST_ADVANCE_TIME: m.ClockReply(2_678_400_000, 1),
    MsgType.TEST_HOLD_CLOCK: m.ClockReply(2_592_000_000, 1),
    MsgType.TEST_INJECT_FAULT: m.Ack(),
    MsgType.TEST_READ_PLANT: m.PlantReply(2_099_750, 17_900_250, 71_601, 0, 9_812_000_000, 0),
    # 600,000 nL/day in 250 nL steps: one step every 36 s; steps 71,597 to 71,600 of 71,601
    MsgType.TEST_READ_STEP_LOG: m.StepLogReply(
        71_601,
        71_345,
        71_597,
        tuple(m.StepTime(2_592_000_000 - 36_000 * k) for k in (3, 2, 1, 0)),
    ),
}

_NONE = 255
EXAMPLE_ERRORS: dict[ErrorCode, tuple[MsgType | int, m.ErrorReply]] = {
    ErrorCode.BAD_TAG: (MsgType.STATUS, m.ErrorReply(ErrorCode.BAD_TAG, _NONE, 0, 0, 2_000)),
    ErrorCode.REPLAYED_COUNTER: (MsgType.STATUS, m.ErrorReply(ErrorCode.REPLAYED_COUNTER, _NONE, 0, 0, 0)),
    ErrorCode.WRONG_ROLE: (MsgType.STAGE_PROGRAM, m.ErrorReply(ErrorCode.WRONG_ROLE, _NONE, 0, 0, 0)),
    ErrorCode.NO_SESSION: (MsgType.INTERROGATE, m.ErrorReply(ErrorCode.NO_SESSION, _NONE, 0, 0, 0)),
    ErrorCode.UNKNOWN_MESSAGE: (0x7E, m.ErrorReply(ErrorCode.UNKNOWN_MESSAGE, _NONE, 0, 0, 0)),
    ErrorCode.NOT_SUPPORTED: (MsgType.TEST_READ_STEP_LOG, m.ErrorReply(ErrorCode.NOT_SUPPORTED, _NONE, 0, 0, 0)),
    ErrorCode.VERSION_MISMATCH: (MsgType.IDENTIFY, m.ErrorReply(ErrorCode.VERSION_MISMATCH, _NONE, 1, 1, 0)),
    ErrorCode.OUT_OF_RANGE: (MsgType.CONFIGURE_ALARMS, m.ErrorReply(ErrorCode.OUT_OF_RANGE, 0, 0, 20_000_000, 0)),
    ErrorCode.HARD_LIMIT: (MsgType.STAGE_PROGRAM, m.ErrorReply(ErrorCode.HARD_LIMIT, 1, 0, 2000 * UG, 0)),
    ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE: (
        MsgType.STAGE_PROGRAM,
        m.ErrorReply(ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE, 1, 0, 1000 * UG, 0),
    ),
    ErrorCode.ALARM_ACTIVE: (MsgType.PATIENT_BOLUS_REQUEST, m.ErrorReply(ErrorCode.ALARM_ACTIVE, _NONE, 0, 0, 0)),
    ErrorCode.BUSY: (MsgType.STAGE_PROGRAM, m.ErrorReply(ErrorCode.BUSY, _NONE, 0, 0, 500)),
    ErrorCode.STORAGE_FAULT: (MsgType.COMMIT, m.ErrorReply(ErrorCode.STORAGE_FAULT, _NONE, 0, 0, 0)),
    ErrorCode.MALFORMED: (MsgType.REFILL, m.ErrorReply(ErrorCode.MALFORMED, _NONE, 0, 0, 0)),
    ErrorCode.UNKNOWN_KEY: (MsgType.SESSION_OPEN, m.ErrorReply(ErrorCode.UNKNOWN_KEY, 1, 0, 0, 0)),
    ErrorCode.NOTHING_STAGED: (MsgType.COMMIT, m.ErrorReply(ErrorCode.NOTHING_STAGED, _NONE, 0, 0, 0)),
    ErrorCode.STAGE_MISMATCH: (MsgType.COMMIT, m.ErrorReply(ErrorCode.STAGE_MISMATCH, 0, 0, 0, 0)),
    ErrorCode.COMMAND_ID_REUSED: (MsgType.REFILL, m.ErrorReply(ErrorCode.COMMAND_ID_REUSED, _NONE, 0, 0, 0)),
    ErrorCode.BOLUS_LOCKOUT: (
        MsgType.PATIENT_BOLUS_REQUEST,
        m.ErrorReply(ErrorCode.BOLUS_LOCKOUT, _NONE, 0, 0, 1_800_000),
    ),
    ErrorCode.BOLUS_DAILY_MAX: (MsgType.PATIENT_BOLUS_REQUEST, m.ErrorReply(ErrorCode.BOLUS_DAILY_MAX, _NONE, 0, 4, 0)),
    ErrorCode.CONCENTRATION_MISMATCH: (
        MsgType.STAGE_PROGRAM,
        m.ErrorReply(ErrorCode.CONCENTRATION_MISMATCH, 1, 500, 500, 0),
    ),
    ErrorCode.MISSING_COMMAND_ID: (MsgType.REFILL, m.ErrorReply(ErrorCode.MISSING_COMMAND_ID, _NONE, 0, 0, 0)),
}
"""For every error code but OK: the request type it answers and an example refusal."""


@dataclass(frozen=True)
class ScriptedFrame:
    """One frame of the example session, with everything needed to reproduce its bytes."""

    name: str
    header: Header
    message: Any
    data: bytes
    keys: SessionKeys | None


def _command_ids() -> Any:
    n = 0
    while True:
        n += 1
        yield 0x0C0FFEE000000000 + n


def example_session() -> list[ScriptedFrame]:
    """A deterministic session that sends every message type and every error code once.

    Identify and the handshake in plaintext, then every request with its reply in a
    clinician session (patient and test requests in sessions of their roles), one alarm
    notification, and one refusal of each error code.
    """
    frames: list[ScriptedFrame] = []
    ids = _command_ids()

    def exchange(client: Channel, pump: Channel, t: MsgType, request: Any | None = None) -> Header:
        req = client.request(
            request if request is not None else EXAMPLE_REQUESTS[t], next(ids) if CATALOG[t].effectful else 0
        )
        frames.append(ScriptedFrame(f"{t.name} request", req.header, EXAMPLE_REQUESTS[t], req.data, client.keys))
        reply_msg = EXAMPLE_REPLIES[t]
        rep = pump.reply(req.header, reply_msg)
        frames.append(ScriptedFrame(f"{t.name} reply", rep.header, reply_msg, rep.data, pump.keys))
        return req.header

    plain_client = Channel(from_pump=False)
    plain_pump = Channel(from_pump=True)
    exchange(plain_client, plain_pump, MsgType.IDENTIFY)

    sessions: dict[Role, tuple[Channel, Channel]] = {}
    for serial, role in enumerate((Role.CLINICIAN, Role.PATIENT, Role.TEST), start=1):
        hs = HandshakeExample(
            _role_key(role),
            bytes((b + serial - 1) & 0xFF for b in HANDSHAKE.client_nonce),
            bytes((b + serial - 1) & 0xFF for b in HANDSHAKE.pump_entropy),
            HANDSHAKE.boot_counter,
            serial,
            HANDSHAKE.session_id + serial - 1,
        )
        hello = client_hello(hs.role_key, hs.client_nonce)
        req = plain_client.request(hello)
        frames.append(ScriptedFrame(f"SESSION_OPEN request ({role.name.lower()})", req.header, hello, req.data, None))
        reply_msg = m.SessionOpenReply(hs.pump_nonce, hs.boot_counter, 300_000, hs.keys.confirm)
        rep = plain_pump.reply(req.header, reply_msg, session_id=hs.session_id)
        frames.append(ScriptedFrame(f"SESSION_OPEN reply ({role.name.lower()})", rep.header, reply_msg, rep.data, None))
        keys = client_finish(hs.role_key, hello, rep.header, reply_msg)
        assert keys is not None
        sessions[role] = (Channel(from_pump=False, keys=keys), Channel(from_pump=True, keys=keys))

    for t, d in CATALOG.items():
        if d.pre_session or d.request is None or t is MsgType.SESSION_CLOSE:
            continue
        role = Role.TEST if d.test_only else Role.PATIENT if d.roles == {Role.PATIENT} else Role.CLINICIAN
        exchange(*sessions[role], t)

    client, pump = sessions[Role.CLINICIAN]
    note = pump.notify(EXAMPLE_REPLIES[MsgType.ALARM_NOTIFY])
    frames.append(
        ScriptedFrame("ALARM_NOTIFY", note.header, EXAMPLE_REPLIES[MsgType.ALARM_NOTIFY], note.data, pump.keys)
    )

    for code, (answered, error) in EXAMPLE_ERRORS.items():
        raw_type = int(answered)
        known = raw_type in MsgType._value2member_map_
        request = EXAMPLE_REQUESTS.get(MsgType(raw_type)) if known else None
        if request is not None:
            req = client.request(request, next(ids) if CATALOG[MsgType(raw_type)].effectful else 0)
            req_header = req.header
        else:  # a type the pump does not know: the header alone matters
            req_header = Header(PROTOCOL_VERSION, raw_type, FrameFlags.SECURED, client.session_id, 0, 0, 0)
        err = pump.error(req_header, error)
        frames.append(ScriptedFrame(f"{code.name} error reply", err.header, error, err.data, pump.keys))

    client_close, pump_close = sessions[Role.CLINICIAN]
    exchange(client_close, pump_close, MsgType.SESSION_CLOSE)
    return frames
