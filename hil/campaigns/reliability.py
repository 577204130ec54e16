"""Reliability campaigns: lost replies, power cuts, memory corruption and over-limit programming.

    lost-replies       a Programmer through a seeded FaultyLink (drop, duplicate, delay, split) to a
                       device, around every effectful command kind; then the pump, interrogated over
                       a clean link, must agree with what the programmer believes
    power-loss         a standard scenario on a device with non-volatile memory, power cut at every
                       numbered write point (and again during the boot that follows)
    memory-corruption  random bit flips in the non-volatile image: one bad copy repaired, both bad
                       the safe state, never undetected
    overload           programs at plus or minus one unit of every limit of the drug library

Everything runs on virtual time (integer milliseconds passed in, a fake clock for the link); each
campaign is reproducible from its seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from firmware_model.config import DEFAULT_LIMITS, PumpConfig
from firmware_model.device import Device, DeviceConfig, nv_layout
from firmware_model.errors import RefusalError
from firmware_model.nvm import BootReport, PowerCutError, corrupt
from firmware_model.presets import make_pump
from firmware_model.pump import Pump
from firmware_model.units import MS_PER_DAY, MS_PER_HOUR, dose_ng_for_volume
from hil.faults import Direction, Fault, FaultyLink
from programmer import Programmer, ProgrammerError, PumpRefused, ReplyLost, UncertainOutcome
from programmer.session import ProgrammerSession
from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG
from protocol_spec.channel import Channel, client_finish, client_hello
from protocol_spec.codec import Packet, decode_payload, encode_payload
from protocol_spec.enums import (
    AlarmCode,
    BolusKind,
    DrugId,
    ErrorCode,
    FaultKind,
    LogEventKind,
    MsgType,
    RefillConfirmation,
    Role,
    StageKind,
    TherapyMode,
)
from protocol_spec.framing import Deframer, crc32
from protocol_spec.security import TEST_KEY_SET

from . import Budget, Outcome, campaign

__all__ = [
    "EFFECTS",
    "OP_KINDS",
    "CutCheck",
    "OpCheck",
    "check_cut",
    "check_op",
    "classify_boot",
    "judge_overload",
    "power_cut_cases",
]

CONFIG = PumpConfig()
LIMITS = DEFAULT_LIMITS
STEP_NL = CONFIG.step_volume_nl
CONFIRMED = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED
CONC_UG_PER_ML = 500
CONTINUOUS = m.Program(TherapyMode.CONTINUOUS, CONC_UG_PER_ML, 300_000, 0, 0, 0, ())
FLEX = m.Program(
    TherapyMode.FLEX,
    CONC_UG_PER_ML,
    0,
    0,
    0,
    1,
    (m.FlexStep(0, 0, 200_000), m.FlexStep(0, 12 * MS_PER_HOUR, 400_000)),
)
PATIENT_SETTINGS = m.PatientBolusSettings(enabled=1, dose_ng=25_000, duration_ms=300_000, lockout_ms=0, max_per_24h=255)
_NS_PER_MS = 1_000_000


def _rng(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - reproducible campaigns, not secrets


def _entries_since(device: Device, first_seq: int, kind: LogEventKind, code: int | None = None) -> list[m.LogEntry]:
    return [e for e in device.pump.log.entries(kind) if e.seq >= first_seq and (code is None or e.code == code)]


# ====================================================================== 1. lost replies and duplicates


class _FakeTime:
    """A monotonic clock that only ``sleep`` (and ``pass_ms``) moves: nothing waits in real time."""

    def __init__(self) -> None:
        self.now_ns = 0

    def monotonic(self) -> float:
        return self.now_ns / 1e9

    def ms(self) -> int:
        return self.now_ns // _NS_PER_MS

    def sleep(self, seconds: float) -> None:
        self.now_ns += max(1, round(seconds * 1e9))

    def pass_ms(self, ms: int) -> None:
        self.now_ns += ms * _NS_PER_MS


class _DevicePort:
    """A device behind an in-memory port; its host time is the fake clock's, so the pump's
    time follows the programmer's. Reads return at once with what is there."""

    def __init__(self, device: Device, clock: _FakeTime) -> None:
        self.device = device
        self._clock = clock
        self._rx = bytearray()
        self.timeout: float | None = 0.0

    def _pull(self) -> None:
        self.device.advance(self._clock.ms())
        self._rx += self.device.data_to_send()

    @property
    def in_waiting(self) -> int:
        self._pull()
        return len(self._rx)

    def read(self, size: int = 1, /) -> bytes:
        self._pull()
        data = bytes(self._rx[:size])
        del self._rx[:size]
        return data

    def write(self, data: bytes, /) -> int:
        self.device.receive_data(bytes(data), self._clock.ms())
        self._pull()
        return len(data)

    def close(self) -> None:
        pass


class _CountingProgrammer(Programmer):
    """A programmer that counts its frames sent again (retries of one request)."""

    resends = 0

    def _exchange(self, session: ProgrammerSession, first: bytes) -> Any:
        self.resends -= 1  # the first frame is not a retry; every _write is a frame
        return super()._exchange(session, first)

    def _write(self, data: bytes) -> None:
        self.resends += 1
        super()._write(data)


@dataclass(frozen=True)
class OpCheck:
    """One effectful operation as the programmer ended it and as the pump shows it afterwards."""

    kind: str
    result: object
    """The reply, or the exception raised."""
    effects: int
    """Times the pump carried it out (log entries of its kind since it started)."""
    listed: ErrorCode | None = None
    """For an uncertain outcome: the result the pump lists for its command id (None: not listed)."""
    program_ok: bool = True
    """For a program: the active program is the old or the new one, and the one interrogation shows."""
    state_ok: bool = True
    """For a reply: the pump holds what the command set."""


def _believed(check: OpCheck) -> int | None:
    """How many times the programmer believes the command ran (None: it may not know)."""
    r = check.result
    if isinstance(r, (ReplyLost, UncertainOutcome)) and r.msg_type is not EFFECTS[check.kind][2]:
        return 0  # an earlier step (a stage) was lost: the command with the effect was never sent
    if isinstance(r, ReplyLost):
        return 1
    if isinstance(r, UncertainOutcome):
        return None
    if isinstance(r, PumpRefused):
        return 0 if r.authenticated else None
    if isinstance(r, ProgrammerError):
        return 0  # the handshake or the stage step failed: the command was never sent
    return 1


def check_op(check: OpCheck) -> list[str]:
    """What is wrong with one operation: "double", "partial", "disagree", "state"; [] if nothing."""
    problems: list[str] = []
    if check.effects > 1:
        problems.append("double")
    if not check.program_ok:
        problems.append("partial")
    believed = _believed(check)
    if believed is None:  # resolved by the clean interrogation's list of outcomes
        believed = 1 if check.listed is ErrorCode.OK else 0
    if check.kind == "cancel":  # an Ack with no bolus running changes nothing
        if check.effects > believed:
            problems.append("disagree")
    elif check.effects != believed:
        problems.append("disagree")
    if not check.state_ok:
        problems.append("state")
    return problems


@dataclass
class _Schedule:
    """One schedule: a device, a faulty link, a clinician and a patient programmer."""

    rng: random.Random
    clock: _FakeTime
    device: Device
    port: _DevicePort
    link: FaultyLink
    clinician: _CountingProgrammer
    patient: _CountingProgrammer
    believed_program: m.Program = CONTINUOUS
    delay_ms: int = 0


EFFECTS: dict[str, tuple[LogEventKind, int | None, MsgType]] = {
    "program": (LogEventKind.PROGRAM_COMMITTED, StageKind.PROGRAM, MsgType.COMMIT),
    "priming": (LogEventKind.BOLUS_STARTED, BolusKind.PRIMING, MsgType.COMMIT),
    "patient": (LogEventKind.BOLUS_STARTED, BolusKind.PATIENT, MsgType.PATIENT_BOLUS_REQUEST),
    "refill": (LogEventKind.REFILL, None, MsgType.REFILL),
    "cancel": (LogEventKind.BOLUS_INTERRUPTED, None, MsgType.CANCEL_BOLUS),
    "clock": (LogEventKind.CLOCK_SET, None, MsgType.SET_CLOCK),
    "alarms": (LogEventKind.ALARM_CONFIG, None, MsgType.CONFIGURE_ALARMS),
    "limits": (LogEventKind.LIMITS_SET, None, MsgType.SET_LIMITS),
}
"""Per kind of effectful operation: the log entry (and code) that shows it was carried out, and
the message whose outcome says so."""
OP_KINDS = tuple(EFFECTS)
_PROGRAM_DOSES_NG_PER_DAY = (250_000, 300_000, 340_000, 380_000)
_LOWER_LIMITS = replace(LIMITS, hard_limit_ng_per_day=1_900_000, max_bolus_ng=400_000)


def _new_schedule(seed: int) -> _Schedule:
    rng = _rng(seed)
    clock = _FakeTime()
    pump = make_pump(None, CONFIG)
    pump.set_patient_bolus(PATIENT_SETTINGS)
    device = Device(pump, TEST_KEY_SET, config=DeviceConfig(test_role=True), entropy=rng.randbytes)
    port = _DevicePort(device, clock)
    delay_ms = rng.choice((0, 0, 3, 20))
    link = FaultyLink(
        port,
        seed=rng.getrandbits(64),
        drop=rng.choice((0.05, 0.1, 0.2, 0.3)),
        duplicate=rng.choice((0.0, 0.1, 0.2, 0.3)),
        delay_ms=delay_ms,
        split=rng.random() < 0.5,
        baud=rng.choice((None, 115_200)),
        clock=clock.monotonic,
        sleep=clock.sleep,
    )

    def ids() -> int:
        return rng.getrandbits(63) + 1

    def programmer(role: Role) -> _CountingProgrammer:
        return _CountingProgrammer(
            link, keys=TEST_KEY_SET, role=role, clock=clock.ms, sleep=clock.sleep, command_ids=ids
        )

    return _Schedule(
        rng, clock, device, port, link, programmer(Role.CLINICIAN), programmer(Role.PATIENT), pump.program, delay_ms
    )


def _program_for(rng: random.Random) -> m.Program:
    dose = rng.choice(_PROGRAM_DOSES_NG_PER_DAY)
    if rng.random() < 0.5:
        return replace(CONTINUOUS, dose_ng_per_day=dose)
    steps = (m.FlexStep(0, 0, dose), m.FlexStep(0, rng.randrange(1, 24) * MS_PER_HOUR, rng.choice((200_000, dose))))
    return replace(FLEX, steps=steps)


def _run_op(s: _Schedule, kind: str) -> tuple[object, Callable[[Device], bool]]:
    """Carry out one operation; (its result or exception, whether the pump holds what it set)."""
    rng, c = s.rng, s.clinician
    action: Callable[[], object]
    holds: Callable[[Device], bool] = lambda _d: True  # noqa: E731
    if kind == "program":
        program = _program_for(rng)

        def action() -> object:
            return c.commit(c.stage_program(program).stage_token)

        holds = lambda d: d.pump.program == program  # noqa: E731
    elif kind == "priming":
        volume_nl = rng.choice((10_000, 20_000))

        def action() -> object:
            return c.commit(c.stage_bolus(BolusKind.PRIMING, volume_nl, 120_000).stage_token)

    elif kind == "patient":
        action = s.patient.patient_bolus_request
    elif kind == "refill":
        added = rng.randrange(15, 21) * 1_000_000

        def action() -> object:
            return c.refill(
                aspirated_volume_nl=0,
                added_volume_nl=added,
                drug=DrugId.BACLOFEN,
                concentration_ug_per_ml=CONC_UG_PER_ML,
                catheter_volume_nl=195_000,
                confirmations=CONFIRMED,
            )

        holds = lambda d: d.pump.log.entries(LogEventKind.REFILL)[-1].value_a == added  # noqa: E731
    elif kind == "cancel":
        action = c.cancel_bolus
        holds = lambda d: d.pump.bolus is None  # noqa: E731
    elif kind == "clock":
        wall_ms = 1_790_000_000_000 + rng.randrange(10**9)
        action = lambda: c.set_clock(wall_ms)  # noqa: E731
        holds = lambda d: d.pump.log.entries(LogEventKind.CLOCK_SET)[-1].value_b == wall_ms  # noqa: E731
    elif kind == "alarms":
        threshold = rng.randrange(1_000, 3_001) * 1_000
        action = lambda: c.configure_alarms(  # noqa: E731
            low_reservoir_threshold_nl=threshold, critical_repeat_ms=600_000, non_critical_repeat_ms=3_600_000
        )
        holds = lambda d: d.pump.low_reservoir_threshold_nl == threshold  # noqa: E731
    elif kind == "limits":
        limits = rng.choice((LIMITS, _LOWER_LIMITS))
        action = lambda: c.set_limits(limits)  # noqa: E731
        holds = lambda d: d.pump.limits == limits  # noqa: E731
    else:  # pragma: no cover
        raise ValueError(kind)
    try:
        result = action()
    except ProgrammerError as exc:
        result = exc
    return result, holds


def _clean_interrogation(s: _Schedule) -> m.InterrogateReply:
    """Let every frame still held on the faulty link arrive, then interrogate over a clean link."""
    s.clock.pass_ms(s.delay_ms + 1_000)
    _ = s.link.in_waiting  # delivers what the link held back, both ways
    clean = Programmer(s.port, keys=TEST_KEY_SET, role=Role.CLINICIAN, clock=s.clock.ms, sleep=s.clock.sleep)
    try:
        return clean.interrogate()
    finally:
        clean.close()


def _one_op(s: _Schedule, kind: str, counts: dict[str, int]) -> list[str]:
    device = s.device
    log_kind, code, msg_type = EFFECTS[kind]
    first_seq = device.pump.log.next_seq
    old_program = device.pump.program
    result, holds = _run_op(s, kind)
    reply = _clean_interrogation(s)
    effects = len(_entries_since(device, first_seq, log_kind, code))
    listed: ErrorCode | None = None
    if isinstance(result, UncertainOutcome) and result.msg_type is msg_type:
        listed = next((ErrorCode(o.result) for o in reply.outcomes if o.command_id == result.command_id), None)
    believed = _believed(OpCheck(kind, result, effects))
    done = (listed is ErrorCode.OK) if believed is None else bool(believed)
    program_ok = True
    if kind == "program":  # exactly the old or the new program, and what the pump reports
        now = device.pump.program
        program_ok = (now == old_program or holds(device)) and reply.program_crc == crc32(encode_payload(now))
        if done:
            s.believed_program = now if holds(device) else s.believed_program
    state_ok = (not done or effects == 0 or holds(device)) and device.pump.program == s.believed_program
    check = OpCheck(kind, result, effects, listed, program_ok, state_ok)
    name = type(result).__name__ if isinstance(result, ProgrammerError) else "reply"
    counts[name] = counts.get(name, 0) + 1
    return check_op(check)


def _run_schedule(seed: int, ops: int, counts: dict[str, int]) -> list[str]:
    s = _new_schedule(seed)
    kinds = list(OP_KINDS) + [s.rng.choice(("patient", "cancel", "program", "priming")) for _ in range(ops - 8)]
    s.rng.shuffle(kinds)
    problems: list[str] = []
    for kind in kinds:
        s.clock.pass_ms(s.rng.choice((0, 30_000, 200_000, 400_000)))
        try:
            problems += [f"{kind}: {p}" for p in _one_op(s, kind, counts)]
        except Exception as exc:
            problems.append(f"{kind}: exception {type(exc).__name__}: {exc}")
        counts["commands"] = counts.get("commands", 0) + 1
    counts["retries"] = counts.get("retries", 0) + s.clinician.resends + s.patient.resends
    faults = s.link.counts()
    for fault in (Fault.DROP, Fault.DUPLICATE):
        n = sum(faults.get((d, fault), 0) for d in Direction)
        counts[f"frames_{fault.value}"] = counts.get(f"frames_{fault.value}", 0) + n
    return problems


@campaign(
    "lost-replies",
    row="lost replies and duplicates",
    target="0 double boluses, 0 partly applied programs; programmer and pump agree after an interrogation",
    unit="schedules",
    sizes=(300, 10_000),
)
def lost_replies(size: int, budget: Budget, seed: int) -> Outcome:
    rng = _rng(seed)
    counts: dict[str, int] = {}
    problems: list[str] = []
    done = 0
    for _ in range(size):
        if budget.expired():
            break
        problems += _run_schedule(rng.getrandbits(64), 10, counts)
        done += 1
    double_boluses = sum(1 for p in problems if p.endswith(": double") and p.split(":")[0] in ("patient", "priming"))
    figures: dict[str, int | float] = {
        "commands": counts.get("commands", 0),
        "replies": counts.get("reply", 0),
        "refused": counts.get("PumpRefused", 0),
        "replies_lost_resolved": counts.get("ReplyLost", 0),
        "uncertain": counts.get("UncertainOutcome", 0),
        "no_reply": counts.get("NoReply", 0),
        "retries": counts.get("retries", 0),
        "frames_dropped": counts.get("frames_drop", 0),
        "frames_duplicated": counts.get("frames_duplicate", 0),
        "double_boluses": double_boluses,
        "double_effects": sum(1 for p in problems if p.endswith(": double")) - double_boluses,
        "partial_programs": sum(1 for p in problems if p.endswith(": partial")),
        "disagreements": sum(1 for p in problems if p.endswith((": disagree", ": state"))),
        "exceptions": sum(1 for p in problems if ": exception " in p),
    }
    return Outcome(done, figures, ok=not problems and done > 0, note=problems[0] if problems else "")


# ====================================================================== the device's own client


class _Client:
    """A minimal programmer over the device's three calls (no link, no faults)."""

    def __init__(self, device: Device, role: Role, rng: random.Random, now_ms: int) -> None:
        self.device = device
        self.rng = rng
        self.now_ms = now_ms
        plain = Channel(from_pump=False)
        role_key = TEST_KEY_SET.for_role(role)
        assert role_key is not None
        hello = client_hello(role_key, rng.randbytes(16))
        reply = self._exchange(plain, plain.request(hello).data)
        keys = client_finish(role_key, hello, reply.header, reply.message)
        if keys is None:
            raise RuntimeError("the handshake failed")
        self.channel = Channel(from_pump=False, keys=keys)

    def _exchange(self, channel: Channel, data: bytes) -> Packet:
        self.device.receive_data(data, self.now_ms)
        for body in Deframer().feed(self.device.data_to_send()):
            if isinstance(body, bytes):
                got = channel.accept(body)
                if isinstance(got, Packet) and got.header.msg_type != MsgType.ALARM_NOTIFY:
                    return got
        raise RuntimeError("no reply")

    def send(self, message: Any) -> Any:
        t = next(t for t, d in CATALOG.items() if d.request is type(message))
        cid = self.rng.getrandbits(63) + 1 if CATALOG[t].effectful else 0
        return self._exchange(self.channel, self.channel.request(message, cid).data).message

    def commit(self, stage: Any) -> Any:
        staged = self.send(stage)
        if not isinstance(staged, m.StageReply):
            return staged
        return self.send(m.Commit(staged.stage_token))


def _boot(image: bytes | None, plant_of: Pump | None, host_ms: int, on_write: Any = None) -> tuple[Device, BootReport]:
    return Device.boot(
        CONFIG,
        TEST_KEY_SET,
        config=DeviceConfig(test_role=True),
        image=image,
        plant=None if plant_of is None else plant_of.plant(),
        host_ms=host_ms,
        entropy=_rng(7).randbytes,
        on_write=on_write,
    )


# ====================================================================== 2. power loss during an NVM write


class _Rig:
    """A device and its clients on virtual time; clients are opened again after a reboot."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.now_ms = device._host_ms
        self.rng = _rng(1)
        self._clients: dict[Role, tuple[int, _Client]] = {}

    def client(self, role: Role) -> _Client:
        held = self._clients.get(role)
        if held is None or held[0] != self.device.boot_counter:
            held = (self.device.boot_counter, _Client(self.device, role, self.rng, self.now_ms))
            self._clients[role] = held
        held[1].now_ms = self.now_ms
        return held[1]


Step = Callable[[_Rig], Any]


def _clinician(message: Any) -> Step:
    return lambda r: r.client(Role.CLINICIAN).send(message)


def _commit(stage: Any) -> Step:
    return lambda r: r.client(Role.CLINICIAN).commit(stage)


def _tester(message: Any) -> Step:
    return lambda r: r.client(Role.TEST).send(message)


SHORT_SCENARIO: tuple[Step, ...] = (
    _clinician(m.Refill(0, 20_000_000, DrugId.BACLOFEN, CONC_UG_PER_ML, 195_000, CONFIRMED)),
    _commit(m.StageProgram(0, CONTINUOUS)),
    _clinician(m.ConfigureAlarms(3_000_000, 600_000, 3_600_000)),
    _commit(m.StagePatientBolus(0, m.PatientBolusSettings(1, 25_000, 600_000, 0, 8))),
    _commit(m.StageBolus(BolusKind.PRIMING, 0, 100_000, 600_000)),
    _commit(m.StageProgram(1, FLEX)),  # +33 % in 24 h: a soft limit, overridden
    _clinician(m.SetClock(1_795_000_000_000)),
)
"""The CI scenario: refill, programs, alarms, boluses, the clock."""

FULL_SCENARIO: tuple[Step, ...] = (
    *SHORT_SCENARIO,
    lambda r: r.client(Role.PATIENT).send(m.PatientBolusRequest()),
    _tester(m.InjectFault(FaultKind.MOTOR_STALL, 0)),
    _clinician(m.AcknowledgeAlarm(AlarmCode.MOTOR_STALL)),
    _tester(m.InjectFault(FaultKind.MOTOR_STALL_CLEAR, 0)),
    _tester(m.InjectFault(FaultKind.RESET, 0)),  # a reboot: the boot counter and the boot's own writes
    _clinician(m.Refill(1_000_000, 18_000_000, DrugId.BACLOFEN, CONC_UG_PER_ML, 195_000, CONFIRMED)),
    lambda r: r.client(Role.PATIENT).send(m.PatientBolusRequest()),
    _clinician(m.CancelBolus()),
    _tester(m.AdvanceTime(MS_PER_DAY)),  # accounting of a day of steps
    _commit(m.StageProgram(0, CONTINUOUS)),
    _clinician(m.SetLimits(_LOWER_LIMITS)),
    _clinician(m.SetClock(1_795_100_000_000)),
)
"""The full scenario: the short one, then boluses, an alarm, a reset, a refill, a day, limits."""
_LAYOUT = nv_layout(CONFIG, DeviceConfig(test_role=True))
STEP_GAP_MS = 40_000
"""Host time between the scenario's steps: the motor steps, and the sessions stay open."""


@dataclass(frozen=True)
class Snapshot:
    """What the firmware believes, and the counters that must never go back."""

    program: m.Program
    concentration: int
    threshold_nl: int
    patient: m.PatientBolusSettings
    limits: m.DrugLimits
    outcomes: frozenset[int]
    estimate_nl: int
    steps: int
    boot_counter: int
    durable_log_next_seq: int
    """The event log as committed to the memory: the next sequence number."""

    def therapy(self) -> tuple[object, ...]:
        return (self.program, self.concentration, self.threshold_nl, self.patient, self.limits)


def _durable_log_next(device: Device) -> int:
    raw = device.store.read("log") if device.store is not None else None
    if not raw:
        return 0
    size = len(encode_payload(m.LogEntry(0, 0, 0, LogEventKind.RESET, 0, 1, 0, 0)))
    last = decode_payload(m.LogEntry, raw[-size:])
    return last.seq + 1 if isinstance(last, m.LogEntry) else 0


def _snapshot(device: Device) -> Snapshot:
    p = device.pump
    return Snapshot(
        p.program,
        p.concentration_ug_per_ml,
        p.low_reservoir_threshold_nl,
        p.patient_bolus,
        p.limits,
        frozenset(device._outcomes),
        p.acc.estimate_nl,
        p.acc.steps_total,
        device.boot_counter,
        _durable_log_next(device),
    )


@dataclass(frozen=True)
class CutCheck:
    """A power cut: the firmware before and after the operation cut short, and after the reboot."""

    old: Snapshot
    new: Snapshot
    got: Snapshot
    got_log_next_seq: int
    log_kept: bool
    """The entries committed before the cut are still there, unchanged."""


def check_cut(c: CutCheck) -> list[str]:
    """What is wrong after a power cut and a reboot; [] if it recovered to the old or new state."""
    problems: list[str] = []
    matches = [s for s in (c.old, c.new) if s.therapy() == c.got.therapy()]
    if not matches:
        problems.append("neither old nor new state")
    if not any(s.estimate_nl - STEP_NL <= c.got.estimate_nl <= s.estimate_nl for s in matches):
        problems.append("accounting")
    if not any(s.steps <= c.got.steps <= s.steps + 1 for s in matches):
        problems.append("steps")
    if not c.old.outcomes <= c.got.outcomes <= c.new.outcomes:
        problems.append("outcomes")
    if c.got.boot_counter <= c.new.boot_counter:
        problems.append("boot counter")
    if c.got_log_next_seq <= c.old.durable_log_next_seq or not c.log_kept:
        problems.append("log")
    return problems


class _Flash:
    """The memory's write hook (it sees every write of every boot, numbered across reboots):
    a mirror of the image that tears write point ``cut_at`` (half of it lands) and then
    raises ``PowerCutError``, as ``NvStore.cut_power_at`` does within one boot."""

    def __init__(self, image: bytes, cut_at: int | None) -> None:
        self.image = bytearray(image)
        self.cut_at = cut_at
        self.writes = 0

    def __call__(self, offset: int, length: int, data: bytes) -> None:
        point = self.writes
        self.writes += 1
        if point == self.cut_at:
            half = data[: length // 2]
            self.image[offset : offset + len(half)] = half
            raise PowerCutError(f"power cut at write point {point}")
        self.image[offset : offset + length] = data


def _run_scenario(
    scenario: tuple[Step, ...], cut_at: int | None
) -> tuple[Device, _Flash, Snapshot, Snapshot, list[m.LogEntry]]:
    """Run ``scenario`` from a factory boot, cutting power at write point ``cut_at``.
    Returns the device (off), the flash, the snapshot before the operation that was cut, the
    one after it (in memory), and the log entries committed before it."""
    flash = _Flash(_LAYOUT.blank_image(), cut_at)
    device, _ = _boot(None, None, 0, flash)
    rig = _Rig(device)
    old = _snapshot(device)
    durable: list[m.LogEntry] = []
    try:
        for step in scenario:
            rig.now_ms += STEP_GAP_MS
            for time_passes in (True, False):  # each is one operation: time passing, then the command
                old = _snapshot(device)
                durable = [e for e in device.pump.log.entries() if e.seq < old.durable_log_next_seq]
                if time_passes:
                    device.advance(rig.now_ms)
                else:
                    step(rig)
    except PowerCutError:
        return device, flash, old, _snapshot(device), durable
    if cut_at is not None:
        raise AssertionError(f"write point {cut_at} never came")
    return device, flash, old, old, durable


def _write_points(scenario: tuple[Step, ...]) -> tuple[int, int]:
    """(the first write point after the factory boot, the write points of boot and scenario)."""
    flash = _Flash(_LAYOUT.blank_image(), None)
    _boot(None, None, 0, flash)
    first = flash.writes
    _, flash, *_ = _run_scenario(scenario, None)
    return first, flash.writes


def _boot_with_cut(image: bytes, plant_of: Pump, host_ms: int, cut_at: int | None) -> tuple[Device | None, bytes]:
    """Boot ``image``; with ``cut_at``, power fails at that write of the boot (half of it lands).
    Returns the device (None if cut) and the image as the power left it."""
    flash = _Flash(image, cut_at)
    try:
        device, _ = _boot(image, plant_of, host_ms, flash)
    except PowerCutError:
        return None, bytes(flash.image)
    return device, bytes(flash.image)


def power_cut_cases(scenario: tuple[Step, ...], double: bool) -> Iterator[tuple[int, int | None]]:
    """(write point of the scenario, write point of the boot after it or None): every single
    cut, then (``double``) every cut followed by a cut at each write of the boot that follows."""
    first, total = _write_points(scenario)
    for cut in range(first, total):
        yield cut, None
    if double:
        for cut in range(first, total):
            for second in range(_BOOT_WRITES_MAX):
                yield cut, second


_BOOT_WRITES_MAX = 7
"""Writes of a boot after a cut: a repair, the boot counter (2), the state (2), the log (2)."""


def _one_cut(scenario: tuple[Step, ...], cut: int, second: int | None) -> list[str] | None:
    """Problems after a cut (and a second cut during the next boot); None if the boot had
    fewer writes than ``second`` (nothing to cut)."""
    device, flash, old, new, durable = _run_scenario(scenario, cut)
    image = bytes(flash.image)
    host_ms = device._host_ms
    if second is not None:
        booted, image = _boot_with_cut(image, device.pump, host_ms, second)
        if booted is not None:
            return None
    got, _ = _boot(image, device.pump, host_ms)
    kept = {e.seq: e for e in got.pump.log.entries()}
    log_kept = all(kept.get(e.seq) == e for e in durable if e.seq >= got.pump.log.oldest_seq)
    return check_cut(CutCheck(old, new, _snapshot(got), got.pump.log.next_seq, log_kept))


@campaign(
    "power-loss",
    row="power loss during an NVM write",
    target="100 % recover to the old or the new state; accounting error <= 1 step; counters never go back",
    unit="power cuts",
    sizes=(150, 2_832),
)
def power_loss(size: int, budget: Budget, seed: int) -> Outcome:
    """Units are cut cases: the short scenario's write points (CI), or the full scenario's
    write points and then each with a second cut during the boot that follows (the full size
    is all of them; a campaign that runs out of cases first is complete all the same)."""
    del seed  # every write point, in order: nothing random
    short = size <= sum(1 for _ in power_cut_cases(SHORT_SCENARIO, double=False))
    scenario = SHORT_SCENARIO if short else FULL_SCENARIO
    cases = power_cut_cases(scenario, double=not short)
    first, total = _write_points(scenario)
    done = recovered = double_cuts = 0
    problems: list[str] = []
    exhausted = True
    for cut, second in cases:
        if done >= size or budget.expired():
            exhausted = False
            break
        found = _one_cut(scenario, cut, second)
        done += 1
        if found is None:
            continue  # that boot had fewer writes
        double_cuts += second is not None
        if found:
            problems += [f"cut {cut}/{second}: {p}" for p in found]
        else:
            recovered += 1
    figures: dict[str, int | float] = {
        "write_points": total - first,
        "cuts": done,
        "double_cuts": double_cuts,
        "recovered": recovered,
        "not_old_or_new": sum(1 for p in problems if p.endswith("neither old nor new state")),
        "accounting_errors": sum(1 for p in problems if p.endswith(("accounting", "steps"))),
        "counters_back": sum(1 for p in problems if p.endswith(("outcomes", "boot counter", "log"))),
    }
    ok = not problems and done > 0
    return Outcome(done, figures, ok=ok, note=problems[0] if problems else "", exhausted=exhausted)


# ====================================================================== 3. memory corruption


def _corruption_base() -> tuple[Device, bytes]:
    """A device after a short scenario (refill, programs, alarms, boluses): its image."""
    device, flash, *_ = _run_scenario(SHORT_SCENARIO, None)
    return device, bytes(flash.image)


def classify_boot(
    report: BootReport, hit: dict[str, int], device: Device, before: Snapshot, repaired_logged: int
) -> str:
    """ "repaired", "safe" or "undetected" (or "wrong: ..."): what a boot made of bit flips
    (``hit``: record -> copies hit, 1 or 2)."""
    pump = device.pump
    both = sorted(name for name, copies in hit.items() if copies == 2)
    one = sorted(name for name, copies in hit.items() if copies == 1)
    if both:
        if sorted(report.failed) != both:
            return "undetected"
        if not pump.alarms.is_active(AlarmCode.MEMORY_ERROR) or pump.mode is not TherapyMode.MINIMUM_RATE:
            return "wrong: no safe state"
        if pump.program_rate_nl_per_day() != pump.limits.min_rate_nl_per_day:
            return "wrong: not the minimum rate"
        return "safe"
    if report.failed or sorted(report.repaired) != one:
        return "undetected" if sorted(report.repaired) != one else "wrong: failed"
    if repaired_logged != len(one):
        return "wrong: repair not logged"
    if pump.alarms.is_active(AlarmCode.MEMORY_ERROR) or _snapshot(device).therapy() != before.therapy():
        return "wrong: state changed"
    return "repaired"


_MINIMUM_STEPS_PER_DAY = LIMITS.min_rate_nl_per_day // STEP_NL


@campaign(
    "memory-corruption",
    row="memory corruption",
    target="100 % detected; one bad copy repaired; both bad: MEMORY_ERROR and the safe state; "
    "no delivery from corrupt parameters",
    unit="corrupted images",
    sizes=(2_000, 200_000),
)
def memory_corruption(size: int, budget: Budget, seed: int) -> Outcome:
    rng = _rng(seed)
    base, image = _corruption_base()
    before = _snapshot(base)
    layout = base.store.layout if base.store is not None else None
    assert layout is not None
    counts = {"repaired": 0, "safe": 0, "undetected": 0, "wrong": 0, "delivery_beyond_minimum": 0}
    flips = 0
    note = ""
    done = 0
    names = layout.names
    while done < size and not budget.expired():
        name = rng.choice(("state", "state", "log", "boot")) if rng.random() < 0.9 else rng.choice(names)
        copies = (rng.randrange(2),) if rng.random() < 0.6 else (0, 1)
        bad = bytearray(image)
        size_bits = layout.record(name).copy_size * 8
        n_flips = 0
        for copy in copies:
            offset = layout.copy_offsets(name)[copy]
            # distinct bits: the same bit flipped twice is no corruption at all
            for bit in rng.sample(range(size_bits), rng.choice((1, 1, 1, 2, 3, 8))):
                corrupt(bad, offset * 8 + bit)
                n_flips += 1
        flips += n_flips
        device, report = _boot(bytes(bad), base.pump, base._host_ms)
        logged = len(device.pump.log.entries(LogEventKind.MEMORY_REPAIRED))
        verdict = classify_boot(report, {name: len(copies)}, device, before, logged)
        if verdict == "safe":  # a day in the safe state: no more than the minimum rate's steps
            steps = device.pump.acc.steps_total
            device.advance(base._host_ms + MS_PER_DAY)
            if device.pump.acc.steps_total - steps > _MINIMUM_STEPS_PER_DAY + 1:
                counts["delivery_beyond_minimum"] += 1
                note = note or f"{name} x{len(copies)}: delivery beyond the minimum rate"
        key = verdict.split(":")[0]
        counts[key] += 1
        if key in ("wrong", "undetected"):
            note = note or f"{name} x{len(copies)}: {verdict}"
        done += 1
    figures: dict[str, int | float] = {"corrupted_images": done, "bits_flipped": flips, **counts}
    ok = done > 0 and counts["undetected"] == 0 and counts["wrong"] == 0 and counts["delivery_beyond_minimum"] == 0
    return Outcome(done, figures, ok=ok, note=note)


# ====================================================================== 4. over-limit programming


@dataclass
class _Candidate:
    """One generated request at a limit: what it is and what an independent oracle says of it."""

    what: str
    apply: Callable[[Pump], object]
    beyond_hard: bool
    needs_override: bool
    override: bool


@dataclass
class _Tally:
    accepted: int = 0
    accepted_beyond_hard: int = 0
    soft_without_override: int = 0
    soft_overrides_logged: int = 0
    soft_overrides_unlogged: int = 0
    refused_within_limits: int = 0
    exceptions: int = 0
    refusals: dict[str, int] = field(default_factory=dict)


def judge_overload(c: _Candidate, pump: Pump, tally: _Tally) -> str | None:
    """Apply one candidate to ``pump`` and count it; a problem in words, or None."""
    first_seq = pump.log.next_seq
    try:
        c.apply(pump)
    except RefusalError as exc:
        tally.refusals[exc.code.name] = tally.refusals.get(exc.code.name, 0) + 1
        if not c.beyond_hard and not (c.needs_override and not c.override):
            tally.refused_within_limits += 1  # conservative: allowed, but not a failure
        return None
    except Exception as exc:
        tally.exceptions += 1
        return f"{c.what}: {type(exc).__name__}: {exc}"
    tally.accepted += 1
    if c.beyond_hard:
        tally.accepted_beyond_hard += 1
        return f"{c.what}: accepted beyond a hard limit"
    if c.needs_override:
        if not c.override:
            tally.soft_without_override += 1
            return f"{c.what}: a soft limit crossed without override"
        logged = [e for e in pump.log.entries(LogEventKind.SOFT_LIMIT_OVERRIDE) if e.seq >= first_seq]
        if logged:
            tally.soft_overrides_logged += 1
        else:
            tally.soft_overrides_unlogged += 1
            return f"{c.what}: soft limit overridden, not logged"
    return None


_LIBRARY = tuple(c.ug_per_ml for c in LIMITS.concentrations)
_MAX_BOLUS_RATE = CONFIG.max_bolus_rate_nl_per_day


def _dose_up(volume_nl: int, conc: int) -> int:
    return -(-volume_nl * conc // 1000)


def _boundary_doses(conc: int) -> dict[str, int]:
    """The daily doses at the limits for ``conc``: the last allowed dose of each."""
    return {
        "hard": LIMITS.hard_limit_ng_per_day,
        "soft": LIMITS.soft_limit_ng_per_day,
        "rate_min": -(-LIMITS.min_rate_nl_per_day * conc // 1000) - 1,  # the last dose below the minimum rate
        "rate_max": ((LIMITS.max_rate_nl_per_day + 1) * conc - 1) // 1000,
    }


def _basal_verdict(doses: list[int], conc: int, baseline: int) -> tuple[bool, bool]:
    """(beyond a hard limit, needs an override) for a basal program at the reservoir's ``conc``."""
    beyond = any(
        d > LIMITS.hard_limit_ng_per_day
        or not LIMITS.min_rate_nl_per_day <= d * 1000 // conc <= LIMITS.max_rate_nl_per_day
        for d in doses
    )
    top = max(doses)
    beyond = beyond or max(baseline, top) > LIMITS.hard_limit_ng_per_day
    soft = top > LIMITS.soft_limit_ng_per_day or top > baseline * (1000 + LIMITS.soft_increase_permille_per_24h) // 1000
    return beyond, soft


def _base_pump(conc: int, baseline: int) -> Pump:
    """A pump filled at ``conc`` running ``baseline`` ng/day (committed with override)."""
    pump = Pump(CONFIG)
    pump.refill(0, CONFIG.reservoir_capacity_nl, conc)
    pump.commit_program(m.Program(TherapyMode.CONTINUOUS, conc, baseline, 0, 0, 0, ()), True)
    return pump


def _baseline_for(rng: random.Random, conc: int) -> int:
    """A running daily dose inside the library at ``conc``."""
    lo = -(-LIMITS.min_rate_nl_per_day * conc // 1000)
    hi = min(LIMITS.hard_limit_ng_per_day, LIMITS.max_rate_nl_per_day * conc // 1000)
    return rng.choice((lo, hi, rng.randrange(lo, hi + 1), min(hi, max(lo, 300_000))))


_OVERLOAD_KINDS = ("continuous", "flex", "single", "single_ms", "priming", "priming_ms", "patient", "window", "conc")


def _overload_candidate(rng: random.Random) -> tuple[_Candidate, int, int]:
    """One candidate at plus or minus one unit of a limit: (candidate, concentration, baseline)."""
    conc = rng.choice(_LIBRARY)
    baseline = _baseline_for(rng, conc)
    delta = rng.choice((-1, 0, 1))
    override = rng.random() < 0.5
    kind = rng.choice(
        ("continuous", "flex", "single", "single_ms", "priming", "priming_ms", "patient", "window", "conc")
    )
    if kind in ("continuous", "flex"):
        limit = rng.choice(("hard", "soft", "rate_min", "rate_max", "increase"))
        edge = baseline * 1300 // 1000 if limit == "increase" else _boundary_doses(conc)[limit]
        dose = max(0, edge + delta)
        doses = [dose]
        if kind == "continuous":
            program = m.Program(TherapyMode.CONTINUOUS, conc, dose, 0, 0, 0, ())
        else:
            other = _baseline_for(rng, conc)
            doses = [other, dose] if rng.random() < 0.5 else [dose, other]
            steps = (m.FlexStep(0, 0, doses[0]), m.FlexStep(rng.randrange(2), 6 * MS_PER_HOUR, doses[1]))
            program = m.Program(TherapyMode.FLEX, conc, 0, 0, 0, 2, steps)
        beyond, soft = _basal_verdict(doses, conc, baseline)
        what = f"{kind} {limit}{delta:+d} at {conc} ug/mL, running {baseline}"
        return (
            _Candidate(what, lambda p: p.commit_program(program, override), beyond, soft, override),
            conc,
            baseline,
        )
    if kind in ("single", "single_ms"):
        if kind == "single":
            dose = LIMITS.max_bolus_ng + delta
            volume = dose * 1000 // conc
            duration = max(1, -(-volume * MS_PER_DAY // _MAX_BOLUS_RATE)) * 2
        else:
            dose = rng.choice((10_000, 100_000, LIMITS.max_bolus_ng))
            volume = dose * 1000 // conc
            duration = max(1, -(-volume * MS_PER_DAY // _MAX_BOLUS_RATE) + delta)
        program = m.Program(TherapyMode.SINGLE_BOLUS, conc, 0, dose, duration, 0, ())
        rate = volume * MS_PER_DAY // duration
        beyond = (
            not 1 <= dose <= LIMITS.max_bolus_ng
            or rate > _MAX_BOLUS_RATE
            or baseline + dose > LIMITS.hard_limit_ng_per_day
        )
        what = f"single bolus {dose} ng over {duration} ms at {conc} ug/mL, running {baseline}"
        return _Candidate(what, lambda p: p.commit_program(program, override), beyond, False, override), conc, baseline
    if kind in ("priming", "priming_ms", "window"):
        if kind == "priming":
            volume = ((LIMITS.max_bolus_ng + 1) * 1000 - 1) // conc + delta  # the largest volume within, +-1 nL
            duration = max(1, -(-volume * MS_PER_DAY // _MAX_BOLUS_RATE)) * 2
        elif kind == "priming_ms":
            volume = rng.choice((10_000, 100_000, 250_000))
            duration = max(1, -(-volume * MS_PER_DAY // _MAX_BOLUS_RATE) + delta)
        else:  # the daily dose in any 24 h: the running basal plus this bolus, at the hard limit
            room = LIMITS.hard_limit_ng_per_day - baseline
            volume = max(1, (room * 1000) // conc + delta)
            duration = max(1, -(-volume * MS_PER_DAY // _MAX_BOLUS_RATE)) * 2
        rate = volume * MS_PER_DAY // duration
        dose = dose_ng_for_volume(volume, conc)
        beyond = (
            dose > LIMITS.max_bolus_ng
            or rate > _MAX_BOLUS_RATE
            or baseline + _dose_up(volume, conc) > LIMITS.hard_limit_ng_per_day
        )
        what = f"{kind} {volume} nL over {duration} ms at {conc} ug/mL, running {baseline}"
        return (
            _Candidate(what, lambda p: p.start_bolus(BolusKind.PRIMING, volume, duration), beyond, False, False),
            conc,
            baseline,
        )
    if kind == "patient":
        dose = LIMITS.max_bolus_ng + delta
        volume = dose * 1000 // conc
        duration = max(1, -(-volume * MS_PER_DAY // _MAX_BOLUS_RATE)) + rng.choice((-1, 0, 1))
        settings = m.PatientBolusSettings(1, dose, duration, 0, 4)
        beyond = dose > LIMITS.max_bolus_ng or volume * MS_PER_DAY // max(1, duration) > _MAX_BOLUS_RATE
        what = f"patient bolus {dose} ng over {duration} ms at {conc} ug/mL"
        return _Candidate(what, lambda p: p.set_patient_bolus(settings), beyond, False, False), conc, baseline
    # a concentration not in the library: in a refill, or a program that names another one
    near = rng.choice(_LIBRARY) + rng.choice((-1, 1))
    if rng.random() < 0.5:
        what = f"refill at {near} ug/mL"
        return (
            _Candidate(what, lambda p: p.refill(0, 1_000_000, near), near not in _LIBRARY, False, False),
            conc,
            baseline,
        )
    program = m.Program(TherapyMode.CONTINUOUS, near, baseline, 0, 0, 0, ())
    what = f"program at {near} ug/mL, the reservoir holds {conc}"
    return _Candidate(what, lambda p: p.commit_program(program, override), True, False, override), conc, baseline


@campaign(
    "overload",
    row="over-limit programming",
    target="0 accepted beyond hard limits; soft limits only with override, logged",
    unit="programs",
    sizes=(20_000, 100_000),
)
def overload(size: int, budget: Budget, seed: int) -> Outcome:
    rng = _rng(seed)
    tally = _Tally()
    problems: list[str] = []
    done = 0
    while done < size and not budget.expired():
        candidate, conc, baseline = _overload_candidate(rng)
        problem = judge_overload(candidate, _base_pump(conc, baseline), tally)
        if problem is not None:
            problems.append(problem)
        done += 1
    figures: dict[str, int | float] = {
        "programs": done,
        "accepted": tally.accepted,
        "accepted_beyond_hard": tally.accepted_beyond_hard,
        "soft_without_override": tally.soft_without_override,
        "soft_overrides_logged": tally.soft_overrides_logged,
        "soft_overrides_unlogged": tally.soft_overrides_unlogged,
        "refused_within_limits": tally.refused_within_limits,
        "exceptions": tally.exceptions,
        **{f"refused_{code.lower()}": n for code, n in sorted(tally.refusals.items())},
    }
    return Outcome(done, figures, ok=not problems and done > 0, note=problems[0] if problems else "")
