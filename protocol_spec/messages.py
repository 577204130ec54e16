"""The typed messages of the pumprig telemetry protocol: the public API of the codec.

Each message is a frozen dataclass; its fields, in declaration order, are its wire
layout (all integers little-endian). Ranges given here are the *wire* ranges a
receiver checks before anything else; a device's configured limits (drug library)
are narrower and checked by the device.
"""

from __future__ import annotations

from dataclasses import dataclass

from .enums import (
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
    LogEventKind,
    MsgType,
    ProgramSlot,
    RefillConfirmation,
    Role,
    StageKind,
    TherapyMode,
    TonePattern,
)
from .fields import array, i32, i64, raw, struct, text, u8, u16, u32, u64

__all__ = [
    "MAX_CONCENTRATION_UG_PER_ML",
    "MAX_DOSE_NG",
    "MAX_DOSE_NG_PER_DAY",
    "MAX_FLEX_STEPS",
    "MAX_FLEX_STEPS_PER_DAY",
    "MAX_LOG_PAGE",
    "MAX_OUTCOMES",
    "MAX_STEP_LOG_PAGE",
    "MAX_TIME_MS",
    "MAX_VOLUME_NL",
    "MS_PER_DAY",
    "NONCE_BYTES",
    "Abort",
    "Ack",
    "AcknowledgeAlarm",
    "AdvanceTime",
    "AlarmConfig",
    "AlarmNotify",
    "CancelBolus",
    "ClockReply",
    "CommandOutcome",
    "Commit",
    "CommitReply",
    "Concentration",
    "ConfigureAlarms",
    "DrugLimits",
    "ErrorReply",
    "FlexStep",
    "HoldClock",
    "Identify",
    "IdentifyReply",
    "InjectFault",
    "Interrogate",
    "InterrogateReply",
    "LogEntry",
    "LogPage",
    "PatientBolusGrant",
    "PatientBolusRequest",
    "PatientBolusSettings",
    "PlantReply",
    "Program",
    "ReadLimits",
    "ReadLog",
    "ReadPlant",
    "ReadProgram",
    "ReadStepLog",
    "Refill",
    "RefillReply",
    "SessionClose",
    "SessionOpen",
    "SessionOpenReply",
    "SetClock",
    "SetClockReply",
    "SetLimits",
    "SilenceAlarm",
    "StageBolus",
    "StagePatientBolus",
    "StageProgram",
    "StageReply",
    "Status",
    "StatusReply",
    "StepLogReply",
    "StepTime",
]

MS_PER_DAY = 86_400_000
MAX_TIME_MS = (1 << 63) - 1
"""Times are 64-bit milliseconds: a 32-bit millisecond clock wraps after 49.7 days."""
MAX_DURATION_MS = (1 << 32) - 1
MAX_VOLUME_NL = 100_000_000
"""100 mL: above any reservoir (20 and 40 mL profiles)."""
MAX_RATE_NL_PER_DAY = 100_000_000
MAX_DOSE_NG_PER_DAY = 100_000_000
"""100 mg/day on the wire; the drug library hard limit (default 2000 ug/day) is far narrower."""
MAX_DOSE_NG = 100_000_000
MAX_CONCENTRATION_UG_PER_ML = 50_000
MAX_FLEX_STEPS_PER_DAY = 13
MAX_FLEX_DAYS = 7
MAX_FLEX_STEPS = MAX_FLEX_STEPS_PER_DAY * MAX_FLEX_DAYS
MAX_OUTCOMES = 8
MAX_LOG_PAGE = 16
MAX_STEP_LOG_PAGE = 64
MAX_CONCENTRATIONS = 8
NONCE_BYTES = 16
CONFIRM_BYTES = 16


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class FlexStep:
    """One dose change of a flex schedule: from ``start_ms_of_day`` on ``day`` until the next step."""

    day: int = u8("day of the cycle, 0-based", lo=0, hi=MAX_FLEX_DAYS - 1)
    start_ms_of_day: int = u32("pump clock time of day the step starts", unit="ms", lo=0, hi=MS_PER_DAY - 1)
    dose_ng_per_day: int = u32(
        "daily dose rate during the step (a rate, per day, whatever the step's length)",
        unit="ng/day",
        lo=0,
        hi=MAX_DOSE_NG_PER_DAY,
    )


@dataclass(frozen=True)
class Program:
    """A basal program. Fields a mode does not use must be 0 (or empty)."""

    mode: TherapyMode = u8("therapy mode", enum=TherapyMode)
    concentration_ug_per_ml: int = u32(
        "concentration the clinician believes is in the reservoir; must equal the pump's "
        "(0 for STOPPED and MINIMUM_RATE)",
        unit="ug/mL",
        lo=0,
        hi=MAX_CONCENTRATION_UG_PER_ML,
    )
    dose_ng_per_day: int = u32("CONTINUOUS: daily dose", unit="ng/day", lo=0, hi=MAX_DOSE_NG_PER_DAY)
    bolus_dose_ng: int = u32("SINGLE_BOLUS: dose of the bolus", unit="ng", lo=0, hi=MAX_DOSE_NG)
    bolus_duration_ms: int = u32("SINGLE_BOLUS: time over which it is delivered", unit="ms", lo=0, hi=MAX_DURATION_MS)
    cycle_days: int = u8("FLEX: length of the cycle (1 to 7 days; 0 otherwise)", unit="days", lo=0, hi=MAX_FLEX_DAYS)
    steps: tuple[FlexStep, ...] = array(
        FlexStep, MAX_FLEX_STEPS, "FLEX: steps sorted by (day, start); at most 13 per day; day 0 starts at 0 ms"
    )


@dataclass(frozen=True)
class PatientBolusSettings:
    """Patient-activated bolus: what the patient may request, and how often."""

    enabled: int = u8("1 if the patient may request boluses", lo=0, hi=1)
    dose_ng: int = u32("dose of one patient bolus", unit="ng", lo=0, hi=MAX_DOSE_NG)
    duration_ms: int = u32("time over which one is delivered", unit="ms", lo=0, hi=MAX_DURATION_MS)
    lockout_ms: int = u32("minimum time from one bolus start to the next", unit="ms", lo=0, hi=MAX_DURATION_MS)
    max_per_24h: int = u8("maximum boluses started in any rolling 24 h", lo=0, hi=255)


@dataclass(frozen=True)
class CommandOutcome:
    """What became of one effectful command (by command id), kept by the pump."""

    command_id: int = u64("the command id of the request")
    msg_type: MsgType = u8("its message type", enum=MsgType)
    result: ErrorCode = u16("OK, or the refusal", enum=ErrorCode)
    at_ms: int = u64("pump uptime when it was decided", unit="ms", hi=MAX_TIME_MS)


@dataclass(frozen=True)
class LogEntry:
    """One event-log entry. Meaning of code/value_a/value_b per kind: see SPEC.md."""

    seq: int = u32("sequence number, increasing by one per entry over the pump's life")
    at_ms: int = u64("pump uptime at the event", unit="ms", hi=MAX_TIME_MS)
    wall_clock_ms: int = u64("pump wall clock at the event (Unix epoch)", unit="ms", hi=MAX_TIME_MS)
    kind: LogEventKind = u8("event kind", enum=LogEventKind)
    code: int = u16("alarm code, error code, fault kind or mode, by kind")
    count: int = u16("events aggregated in this entry (security bursts); 1 otherwise", lo=1)
    value_a: int = i64("first value, by kind")
    value_b: int = i64("second value, by kind")


@dataclass(frozen=True)
class Concentration:
    ug_per_ml: int = u32(
        "a concentration available in the drug library", unit="ug/mL", lo=1, hi=MAX_CONCENTRATION_UG_PER_ML
    )


@dataclass(frozen=True)
class StepTime:
    at_ms: int = u64("pump uptime at which the motor step was taken", unit="ms", hi=MAX_TIME_MS)


# --------------------------------------------------------------------------- generic


@dataclass(frozen=True)
class Ack:
    """Empty reply: the request was carried out."""


@dataclass(frozen=True)
class ErrorReply:
    """A refusal (header flag ERROR). Unauthenticated error replies never prove a command did not run."""

    code: ErrorCode = u16("why the request was refused", enum=ErrorCode)
    field: int = u8("0-based index of the offending request field; 255 if none", lo=0, hi=255)
    lo: int = i64(
        "the lowest allowed value (OUT_OF_RANGE, and any code that refuses a value: see the code's row "
        "in Errors; VERSION_MISMATCH: oldest version spoken); 0 where the code carries none"
    )
    hi: int = i64(
        "the highest allowed value or the limit crossed (OUT_OF_RANGE, HARD_LIMIT, SOFT_LIMIT_NEEDS_OVERRIDE "
        "and other value refusals; VERSION_MISMATCH: newest version spoken); 0 where the code carries none"
    )
    retry_after_ms: int = u32(
        "do not send again before this many ms (BUSY, BAD_TAG backoff, lockouts); 0 if no wait is asked",
        unit="ms",
    )


# --------------------------------------------------------------------------- session


@dataclass(frozen=True)
class Identify:
    """Who are you? Accepted without a session; also a ping."""


@dataclass(frozen=True)
class IdentifyReply:
    """Protocol and capabilities. Never carries a serial number or patient data."""

    protocol_version: int = u8("protocol version spoken", lo=1, hi=255)
    min_protocol_version: int = u8("oldest protocol version understood", lo=1, hi=255)
    device_class: DeviceClass = u8("device class", enum=DeviceClass)
    features: Feature = u32("capabilities", flags=Feature)
    max_frame_bytes: int = u16("largest frame accepted, before COBS", unit="bytes", lo=64, hi=65535)
    firmware_major: int = u8("firmware version, major")
    firmware_minor: int = u8("firmware version, minor")
    firmware_patch: int = u8("firmware version, patch")


@dataclass(frozen=True)
class SessionOpen:
    """Handshake, first half: the programmer's role, key id and fresh nonce."""

    role: Role = u8("role of the key", enum=Role)
    key_id: int = u32("id of the key to use (random, never derived from the serial number)")
    client_nonce: bytes = raw(NONCE_BYTES, "fresh random nonce from the programmer")


@dataclass(frozen=True)
class SessionOpenReply:
    """Handshake, second half: the header carries the new session id."""

    pump_nonce: bytes = raw(NONCE_BYTES, "pump nonce: SHA-256 of entropy and boot counter (SPEC.md)")
    boot_counter: int = u64("pump boot counter (non-volatile, increases at every boot)")
    session_timeout_ms: int = u32("the session ends after this long without a valid frame", unit="ms")
    confirm: bytes = raw(CONFIRM_BYTES, "key confirmation: HKDF output bytes 64..79 (SPEC.md)")


@dataclass(frozen=True)
class SessionClose:
    """End the session; its keys are forgotten."""


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Interrogate:
    """Everything a programmer shows on its first screen."""


@dataclass(frozen=True)
class InterrogateReply:
    serial_number: str = text(16, "device serial number")
    model: str = text(16, "device model")
    firmware_major: int = u8("firmware version, major")
    firmware_minor: int = u8("firmware version, minor")
    firmware_patch: int = u8("firmware version, patch")
    protocol_version: int = u8("protocol version", lo=1)
    boot_counter: int = u64("boots since manufacture")
    uptime_ms: int = u64("monotonic time since implant clock start", unit="ms", hi=MAX_TIME_MS)
    wall_clock_ms: int = u64("pump wall clock (Unix epoch)", unit="ms", hi=MAX_TIME_MS)
    reservoir_capacity_nl: int = u32("reservoir capacity", unit="nL", hi=MAX_VOLUME_NL)
    reservoir_estimate_nl: int = u32(
        "firmware's reservoir estimate (filled minus commanded)", unit="nL", hi=MAX_VOLUME_NL
    )
    low_reservoir_threshold_nl: int = u32("LOW_RESERVOIR threshold", unit="nL", hi=MAX_VOLUME_NL)
    catheter_volume_nl: int = u32("catheter volume", unit="nL", hi=MAX_VOLUME_NL)
    tubing_volume_nl: int = u32("pump tubing volume", unit="nL", hi=MAX_VOLUME_NL)
    step_volume_nl: int = u32("volume per motor step", unit="nL", lo=1, hi=1_000_000)
    last_refill_ms: int = u64("uptime of the last refill (0: never)", unit="ms", hi=MAX_TIME_MS)
    battery_state: BatteryState = u8("battery state", enum=BatteryState)
    battery_remaining_permille: int = u16("charge remaining", unit="permille", hi=1000)
    eri_at_ms: int = u64("uptime at which ERI was raised (0: not raised)", unit="ms", hi=MAX_TIME_MS)
    alarms: AlarmSet = u16("active alarms", flags=AlarmSet)
    silenced: AlarmSet = u16("active alarms currently silenced", flags=AlarmSet)
    drug: DrugId = u8("drug in the reservoir", enum=DrugId)
    concentration_ug_per_ml: int = u32("its concentration", unit="ug/mL", hi=MAX_CONCENTRATION_UG_PER_ML)
    mode: TherapyMode = u8("active basal mode", enum=TherapyMode)
    dose_ng_per_day: int = u32(
        "active daily dose (for FLEX: the present step's)", unit="ng/day", hi=MAX_DOSE_NG_PER_DAY
    )
    rate_nl_per_day: int = u32("present basal rate", unit="nL/day", hi=MAX_RATE_NL_PER_DAY)
    program_crc: int = u32("CRC-32 of the active Program's encoding (READ_PROGRAM gives it whole)")
    bolus_active: BolusKind = u8("supplemental or single bolus running (NONE if not)", enum=BolusKind)
    patient_bolus: PatientBolusSettings = struct(PatientBolusSettings, "patient bolus settings")
    outcomes: tuple[CommandOutcome, ...] = array(
        CommandOutcome, MAX_OUTCOMES, "outcomes of the most recent effectful commands, newest first"
    )


@dataclass(frozen=True)
class Status:
    """A short, frequent poll."""


@dataclass(frozen=True)
class StatusReply:
    uptime_ms: int = u64("monotonic pump time", unit="ms", hi=MAX_TIME_MS)
    wall_clock_ms: int = u64("pump wall clock (Unix epoch)", unit="ms", hi=MAX_TIME_MS)
    mode: TherapyMode = u8("active basal mode", enum=TherapyMode)
    rate_nl_per_day: int = u32("present basal rate", unit="nL/day", hi=MAX_RATE_NL_PER_DAY)
    bolus_active: BolusKind = u8("bolus running", enum=BolusKind)
    reservoir_estimate_nl: int = u32("reservoir estimate", unit="nL", hi=MAX_VOLUME_NL)
    delivered_nl: int = u64("volume commanded since manufacture", unit="nL")
    battery_state: BatteryState = u8("battery state", enum=BatteryState)
    alarms: AlarmSet = u16("active alarms", flags=AlarmSet)
    staged: int = u8("1 if a change is staged and awaits COMMIT", lo=0, hi=1)


@dataclass(frozen=True)
class ReadProgram:
    slot: ProgramSlot = u8("which program", enum=ProgramSlot)


# --------------------------------------------------------------------------- programming


@dataclass(frozen=True)
class StageProgram:
    """Stage a basal program; nothing changes until COMMIT."""

    override_soft_limits: int = u8("1 to accept crossing a soft limit (logged)", lo=0, hi=1)
    program: Program = struct(Program, "the program")


@dataclass(frozen=True)
class StageBolus:
    """Stage a supplemental bolus (priming or bridge); the basal program is not changed."""

    kind: BolusKind = u8("PRIMING or BRIDGE", enum=BolusKind, lo=1, hi=2)
    override_soft_limits: int = u8("1 to accept crossing a soft limit (logged)", lo=0, hi=1)
    volume_nl: int = u32("volume to deliver", unit="nL", lo=1, hi=MAX_VOLUME_NL)
    duration_ms: int = u32("time over which to deliver it", unit="ms", lo=1, hi=MAX_DURATION_MS)


@dataclass(frozen=True)
class StagePatientBolus:
    """Stage new patient-bolus settings."""

    override_soft_limits: int = u8("1 to accept crossing a soft limit (logged)", lo=0, hi=1)
    settings: PatientBolusSettings = struct(PatientBolusSettings, "the settings")


@dataclass(frozen=True)
class StageReply:
    """What COMMIT will apply, as the pump computed it."""

    stage_token: int = u32("CRC-32 of the staged request payload; COMMIT must quote it")
    kind: StageKind = u8("what is staged", enum=StageKind)
    max_dose_ng_per_day: int = u32("highest daily dose rate the change delivers", unit="ng/day", hi=MAX_DOSE_NG_PER_DAY)
    max_rate_nl_per_day: int = u32("highest rate the change delivers", unit="nL/day", hi=MAX_RATE_NL_PER_DAY)
    soft_limit_overridden: int = u8("1 if a soft limit is crossed under override", lo=0, hi=1)


@dataclass(frozen=True)
class Commit:
    stage_token: int = u32("token from the STAGE reply")


@dataclass(frozen=True)
class CommitReply:
    stage_token: int = u32("the committed token")
    applied_at_ms: int = u64("uptime at which it took effect", unit="ms", hi=MAX_TIME_MS)


@dataclass(frozen=True)
class Abort:
    """Drop the staged change; the running program continues."""


@dataclass(frozen=True)
class PatientBolusRequest:
    """Patient role: request one bolus under the programmed settings."""


@dataclass(frozen=True)
class PatientBolusGrant:
    dose_ng: int = u32("dose being delivered", unit="ng", hi=MAX_DOSE_NG)
    duration_ms: int = u32("over this time", unit="ms")
    next_allowed_ms: int = u64("uptime from which the next request may be granted", unit="ms", hi=MAX_TIME_MS)
    remaining_24h: int = u8("boluses still allowed in the present rolling 24 h")


@dataclass(frozen=True)
class CancelBolus:
    """Stop the running supplemental bolus (logged as interrupted)."""


# --------------------------------------------------------------------------- refill


@dataclass(frozen=True)
class Refill:
    aspirated_volume_nl: int = u32("volume withdrawn from the reservoir", unit="nL", hi=MAX_VOLUME_NL)
    added_volume_nl: int = u32("volume injected", unit="nL", hi=MAX_VOLUME_NL)
    drug: DrugId = u8("drug injected", enum=DrugId)
    concentration_ug_per_ml: int = u32("its concentration", unit="ug/mL", lo=0, hi=MAX_CONCENTRATION_UG_PER_ML)
    catheter_volume_nl: int = u32("catheter volume (for the bridge bolus)", unit="nL", hi=MAX_VOLUME_NL)
    confirmations: RefillConfirmation = u8("clinician confirmations (pocket-fill guard)", flags=RefillConfirmation)


@dataclass(frozen=True)
class RefillReply:
    expected_volume_nl: int = u32("reservoir estimate before the refill", unit="nL", hi=MAX_VOLUME_NL)
    aspirated_volume_nl: int = u32("as reported", unit="nL", hi=MAX_VOLUME_NL)
    discrepancy_nl: int = i32("aspirated minus expected; negative suggests over-infusion", unit="nL")
    reservoir_estimate_nl: int = u32("estimate after the refill", unit="nL", hi=MAX_VOLUME_NL)
    concentration_changed: int = u8("1 if the concentration differs from before", lo=0, hi=1)
    bridge_volume_nl: int = u32("dead volume holding the old drug (tubing + catheter)", unit="nL", hi=MAX_VOLUME_NL)


# --------------------------------------------------------------------------- alarms


@dataclass(frozen=True)
class ConfigureAlarms:
    low_reservoir_threshold_nl: int = u32("LOW_RESERVOIR threshold", unit="nL", hi=MAX_VOLUME_NL)
    critical_repeat_ms: int = u32("repeat interval of critical alarms", unit="ms", lo=1000, hi=MAX_DURATION_MS)
    non_critical_repeat_ms: int = u32("repeat interval of non-critical alarms", unit="ms", lo=1000, hi=MAX_DURATION_MS)


@dataclass(frozen=True)
class AlarmConfig:
    low_reservoir_threshold_nl: int = u32("LOW_RESERVOIR threshold", unit="nL", hi=MAX_VOLUME_NL)
    critical_repeat_ms: int = u32("repeat interval of critical alarms", unit="ms")
    non_critical_repeat_ms: int = u32("repeat interval of non-critical alarms", unit="ms")


@dataclass(frozen=True)
class SilenceAlarm:
    alarm: AlarmCode = u8("alarm to silence", enum=AlarmCode)
    duration_ms: int = u32("silence its tone for this long", unit="ms", lo=1, hi=MAX_DURATION_MS)


@dataclass(frozen=True)
class AcknowledgeAlarm:
    alarm: AlarmCode = u8("alarm acknowledged by the clinician", enum=AlarmCode)


@dataclass(frozen=True)
class AlarmNotify:
    """Unsolicited, from the pump, while a session is open (echo counter 0)."""

    alarm: AlarmCode = u8("alarm", enum=AlarmCode)
    event: AlarmEvent = u8("what happened", enum=AlarmEvent)
    priority: AlarmPriority = u8("priority", enum=AlarmPriority)
    tone: TonePattern = u8("tone pattern", enum=TonePattern)
    at_ms: int = u64("uptime of the event", unit="ms", hi=MAX_TIME_MS)
    alarms: AlarmSet = u16("alarms active after the event", flags=AlarmSet)


# --------------------------------------------------------------------------- log, clock, limits


@dataclass(frozen=True)
class ReadLog:
    first_seq: int = u32("first sequence number wanted (older entries may be gone)")
    max_entries: int = u8("page size", lo=1, hi=MAX_LOG_PAGE)


@dataclass(frozen=True)
class LogPage:
    oldest_seq: int = u32("oldest sequence number still held")
    next_seq: int = u32("sequence number the next entry will get")
    entries: tuple[LogEntry, ...] = array(
        LogEntry, MAX_LOG_PAGE, "entries from first_seq (or the oldest held), oldest first"
    )


@dataclass(frozen=True)
class SetClock:
    wall_clock_ms: int = u64(
        "new wall clock (Unix epoch); flex steps follow its time of day", unit="ms", hi=MAX_TIME_MS
    )


@dataclass(frozen=True)
class SetClockReply:
    previous_wall_clock_ms: int = u64("wall clock before", unit="ms", hi=MAX_TIME_MS)
    wall_clock_ms: int = u64("wall clock now", unit="ms", hi=MAX_TIME_MS)


@dataclass(frozen=True)
class ReadLimits:
    """The drug library and its limits."""


@dataclass(frozen=True)
class DrugLimits:
    drug: DrugId = u8("drug", enum=DrugId)
    concentrations: tuple[Concentration, ...] = array(Concentration, MAX_CONCENTRATIONS, "concentrations allowed")
    min_rate_nl_per_day: int = u32(
        "lowest programmable rate (MINIMUM_RATE mode)", unit="nL/day", hi=MAX_RATE_NL_PER_DAY
    )
    max_rate_nl_per_day: int = u32("highest programmable rate", unit="nL/day", hi=MAX_RATE_NL_PER_DAY)
    hard_limit_ng_per_day: int = u32("refused above this daily dose", unit="ng/day", hi=MAX_DOSE_NG_PER_DAY)
    soft_limit_ng_per_day: int = u32("override needed above this daily dose", unit="ng/day", hi=MAX_DOSE_NG_PER_DAY)
    soft_increase_permille_per_24h: int = u16(
        "override needed to raise a running daily dose by more than this in a rolling 24 h", unit="permille"
    )
    max_bolus_ng: int = u32("largest single bolus", unit="ng", hi=MAX_DOSE_NG)


@dataclass(frozen=True)
class SetLimits:
    limits: DrugLimits = struct(DrugLimits, "the new drug library entry")


# --------------------------------------------------------------------------- test role


@dataclass(frozen=True)
class AdvanceTime:
    delta_ms: int = u64("advance the pump's virtual time by this much", unit="ms", lo=1, hi=MAX_TIME_MS)


@dataclass(frozen=True)
class HoldClock:
    hold: int = u8("1: freeze time (only TEST_ADVANCE_TIME moves it); 0: release", lo=0, hi=1)


@dataclass(frozen=True)
class ClockReply:
    uptime_ms: int = u64("pump uptime now", unit="ms", hi=MAX_TIME_MS)
    held: int = u8("1 if the clock is held", lo=0, hi=1)


@dataclass(frozen=True)
class InjectFault:
    fault: FaultKind = u8("fault to inject", enum=FaultKind)
    param: int = u32("fault parameter (MEMORY_CORRUPTION: bit index; others: 0)")


@dataclass(frozen=True)
class ReadPlant:
    """The plant's true state, which the firmware itself cannot see."""


@dataclass(frozen=True)
class PlantReply:
    true_reservoir_nl: int = u32("true volume in the reservoir", unit="nL", hi=MAX_VOLUME_NL)
    delivered_true_nl: int = u64("true volume through the pump outlet since manufacture", unit="nL")
    steps_total: int = u64("motor steps taken since manufacture")
    stroke_error_nl_per_step: int = i32("true minus nominal volume per step", unit="nL")
    battery_charge_uc: int = u64("battery charge left", unit="uC")
    motor_stalled: int = u8("1 if the motor is stalled", lo=0, hi=1)


@dataclass(frozen=True)
class ReadStepLog:
    first_step: int = u64("index (0-based, since manufacture) of the first step wanted")
    max_items: int = u8("page size", lo=1, hi=MAX_STEP_LOG_PAGE)


@dataclass(frozen=True)
class StepLogReply:
    steps_total: int = u64("motor steps since manufacture")
    oldest_step: int = u64("index of the oldest step still in the ring")
    first_step: int = u64("index of the first step in this page")
    steps: tuple[StepTime, ...] = array(StepTime, MAX_STEP_LOG_PAGE, "step times, oldest first")
