"""Every named number on the wire. Names here are the names used everywhere (JSON included)."""

from __future__ import annotations

import enum

__all__ = [
    "PROTOCOL_VERSION",
    "AlarmCode",
    "AlarmEvent",
    "AlarmPriority",
    "AlarmSet",
    "BatteryState",
    "BolusKind",
    "DeviceClass",
    "Direction",
    "DrugId",
    "ErrorCode",
    "FaultKind",
    "Feature",
    "FrameFlags",
    "LogEventKind",
    "MsgType",
    "ProgramSlot",
    "RefillConfirmation",
    "Role",
    "StageKind",
    "TherapyMode",
    "TonePattern",
    "alarm_priority",
    "alarms_in",
]

PROTOCOL_VERSION = 1
"""The protocol version this package speaks (header byte 0)."""


class MsgType(enum.IntEnum):
    """Message type (header byte 1). A reply carries the type of the request it answers."""

    IDENTIFY = 0x01
    SESSION_OPEN = 0x02
    SESSION_CLOSE = 0x03
    INTERROGATE = 0x10
    STATUS = 0x11
    READ_PROGRAM = 0x12
    STAGE_PROGRAM = 0x20
    STAGE_BOLUS = 0x21
    STAGE_PATIENT_BOLUS = 0x22
    COMMIT = 0x28
    ABORT = 0x29
    PATIENT_BOLUS_REQUEST = 0x30
    CANCEL_BOLUS = 0x31
    REFILL = 0x40
    CONFIGURE_ALARMS = 0x50
    SILENCE_ALARM = 0x51
    ACKNOWLEDGE_ALARM = 0x52
    ALARM_NOTIFY = 0x5F
    READ_LOG = 0x60
    SET_CLOCK = 0x70
    READ_LIMITS = 0x80
    SET_LIMITS = 0x81
    TEST_ADVANCE_TIME = 0xE0
    TEST_HOLD_CLOCK = 0xE1
    TEST_INJECT_FAULT = 0xE2
    TEST_READ_PLANT = 0xE3
    TEST_READ_STEP_LOG = 0xE4


class FrameFlags(enum.IntFlag):
    """Header byte 2."""

    FROM_PUMP = 0x01
    """Sent by the pump (a reply or a notification); clear on everything a programmer sends."""
    SECURED = 0x02
    """The payload is ChaCha20-Poly1305 ciphertext followed by a 16-byte tag."""
    ERROR = 0x04
    """The payload is an ErrorReply; only with FROM_PUMP."""


class Direction(enum.IntEnum):
    """Which way a frame travels; part of every AEAD nonce."""

    PROGRAMMER_TO_PUMP = 0
    PUMP_TO_PROGRAMMER = 1


class Role(enum.IntEnum):
    """Who holds the key a session was opened with."""

    CLINICIAN = 1
    PATIENT = 2
    TEST = 3


class DeviceClass(enum.IntEnum):
    ITB_PUMP = 1


class Feature(enum.IntFlag):
    """Capabilities a device announces in its identify reply."""

    TEST_ROLE = 0x01
    VIRTUAL_TIME = 0x02
    FAULT_INJECTION = 0x04
    STEP_LOG = 0x08
    FLEX = 0x10
    PATIENT_BOLUS = 0x20
    PERSISTENT_STATE = 0x40


class ErrorCode(enum.IntEnum):
    """Why a request was refused. 0 is success and only appears in command outcomes."""

    OK = 0
    BAD_TAG = 1
    REPLAYED_COUNTER = 2
    WRONG_ROLE = 3
    NO_SESSION = 4
    UNKNOWN_MESSAGE = 5
    NOT_SUPPORTED = 6
    VERSION_MISMATCH = 7
    OUT_OF_RANGE = 8
    HARD_LIMIT = 9
    SOFT_LIMIT_NEEDS_OVERRIDE = 10
    ALARM_ACTIVE = 11
    BUSY = 12
    STORAGE_FAULT = 13
    MALFORMED = 14
    UNKNOWN_KEY = 15
    NOTHING_STAGED = 16
    STAGE_MISMATCH = 17
    COMMAND_ID_REUSED = 18
    BOLUS_LOCKOUT = 19
    BOLUS_DAILY_MAX = 20
    CONCENTRATION_MISMATCH = 21
    MISSING_COMMAND_ID = 22


class AlarmCode(enum.IntEnum):
    """Alarm names, fixed by the spec and used everywhere."""

    LOW_RESERVOIR = 1
    EMPTY_RESERVOIR = 2
    ERI = 3
    EOS = 4
    MOTOR_STALL = 5
    LOW_BATTERY_RESET = 6
    MEMORY_ERROR = 7


class AlarmSet(enum.IntFlag):
    """A set of alarms: bit (code - 1) for each AlarmCode."""

    LOW_RESERVOIR = 1 << 0
    EMPTY_RESERVOIR = 1 << 1
    ERI = 1 << 2
    EOS = 1 << 3
    MOTOR_STALL = 1 << 4
    LOW_BATTERY_RESET = 1 << 5
    MEMORY_ERROR = 1 << 6


class AlarmPriority(enum.IntEnum):
    NON_CRITICAL = 1
    CRITICAL = 2


class TonePattern(enum.IntEnum):
    """Audible pattern by priority (DOMAIN.md: Medtronic advisory)."""

    SINGLE_TONE_1S = 1
    TWO_TONE_3S = 2


_CRITICAL = {
    AlarmCode.EMPTY_RESERVOIR,
    AlarmCode.EOS,
    AlarmCode.MOTOR_STALL,
    AlarmCode.LOW_BATTERY_RESET,
    AlarmCode.MEMORY_ERROR,
}


def alarm_priority(code: AlarmCode) -> AlarmPriority:
    """Critical alarms stop or limit delivery; the others warn."""
    return AlarmPriority.CRITICAL if code in _CRITICAL else AlarmPriority.NON_CRITICAL


def alarms_in(alarm_set: int) -> list[AlarmCode]:
    """The alarm codes present in an AlarmSet bitmask, in code order."""
    return [code for code in AlarmCode if alarm_set & (1 << (code - 1))]


class AlarmEvent(enum.IntEnum):
    RAISED = 1
    REPEATED = 2
    ACKNOWLEDGED = 3
    SILENCED = 4
    CLEARED = 5


class TherapyMode(enum.IntEnum):
    """Basal therapy modes."""

    STOPPED = 0
    MINIMUM_RATE = 1
    CONTINUOUS = 2
    FLEX = 3
    SINGLE_BOLUS = 4


class BolusKind(enum.IntEnum):
    """Which bolus is running. Supplemental boluses (PRIMING, BRIDGE, PATIENT) never change
    the basal program; SINGLE is the bolus of the SINGLE_BOLUS therapy mode."""

    NONE = 0
    PRIMING = 1
    BRIDGE = 2
    PATIENT = 3
    SINGLE = 4


class StageKind(enum.IntEnum):
    """What a staged change will do when committed."""

    PROGRAM = 1
    BOLUS = 2
    PATIENT_BOLUS_SETTINGS = 3


class ProgramSlot(enum.IntEnum):
    ACTIVE = 0
    STAGED = 1


class BatteryState(enum.IntEnum):
    OK = 0
    ERI = 1
    EOS = 2


class DrugId(enum.IntEnum):
    NONE = 0
    BACLOFEN = 1
    SALINE = 2


class RefillConfirmation(enum.IntFlag):
    """Clinician confirmations that guard against a pocket fill."""

    NEEDLE_IN_RESERVOIR = 0x01
    ASPIRATION_CONFIRMED = 0x02


class FaultKind(enum.IntEnum):
    """Faults the test role can inject."""

    MOTOR_STALL = 1
    MOTOR_STALL_CLEAR = 2
    LOW_BATTERY_RESET = 3
    MEMORY_CORRUPTION = 4
    RESET = 5
    POWER_CUT = 6


class LogEventKind(enum.IntEnum):
    """Kinds of event-log entry. ``code`` and ``value_a``/``value_b`` are per kind (SPEC.md)."""

    ALARM_RAISED = 1
    ALARM_ACKNOWLEDGED = 2
    ALARM_SILENCED = 3
    ALARM_CLEARED = 4
    PROGRAM_COMMITTED = 5
    PROGRAM_ABORTED = 6
    REFILL = 7
    BOLUS_STARTED = 8
    BOLUS_COMPLETED = 9
    BOLUS_INTERRUPTED = 10
    RESET = 11
    FAULT_INJECTED = 12
    SECURITY = 13
    CLOCK_SET = 14
    LIMITS_SET = 15
    SOFT_LIMIT_OVERRIDE = 16
    SESSION_OPENED = 17
    SESSION_CLOSED = 18
    MEMORY_REPAIRED = 19
    ALARM_CONFIG = 20
    STALL_RECOVERED = 21
