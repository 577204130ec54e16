"""Hypothesis strategies, oracles and drivers for the pump model's property tests.

The oracles here are written from the rules (DOMAIN.md, SPEC.md's mode table, the drug library),
not copied from ``firmware_model.pump``: ``expected_basal`` says what the basal rate must be
from the committed program alone, ``reservoir_crossing_step`` which motor step must raise a
reservoir alarm, ``FlexOracle`` where a flex cycle stands. ``apply`` runs one generated
action and returns its refusal (None if accepted), checking on the way that a refusal changed
nothing; ``Observer`` runs actions and checks every invariant after each.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from hypothesis import strategies as st

from firmware_model import DEFAULT_LIMITS, BatteryConfig, Pump, PumpConfig, PumpState, RefusalError, ideal_nlms
from firmware_model.delivery import step_quantum_nlms
from firmware_model.units import MS_PER_DAY, MS_PER_HOUR, NL_PER_ML, rate_nl_per_day
from protocol_spec.enums import (
    AlarmCode,
    BolusKind,
    DrugId,
    ErrorCode,
    FaultKind,
    LogEventKind,
    TherapyMode,
)
from protocol_spec.messages import (
    MAX_DOSE_NG,
    MAX_DOSE_NG_PER_DAY,
    MAX_DURATION_MS,
    MAX_VOLUME_NL,
    FlexStep,
    PatientBolusSettings,
    Program,
)

__all__ = [
    "CANCEL",
    "CONCENTRATIONS",
    "HOLDING",
    "LIMITS",
    "REQUEST",
    "STOPPED",
    "Action",
    "Advance",
    "Command",
    "FlexOracle",
    "Observer",
    "acknowledge",
    "actions",
    "alarm_config",
    "apply",
    "arbitrary_commands",
    "arbitrary_programs",
    "bolus",
    "bolus_args",
    "clock",
    "clock_shift",
    "commit",
    "configs",
    "continuous_programs",
    "dose_bounds",
    "doses",
    "expected_basal",
    "fault",
    "flex_programs",
    "held",
    "minimum_rate",
    "outcome",
    "patient",
    "patient_settings",
    "quantum",
    "refill",
    "reservoir_crossing_step",
    "scenarios",
    "silence",
    "single_bolus_programs",
    "small_battery",
    "valid_programs",
]

LIMITS = DEFAULT_LIMITS
CONCENTRATIONS: tuple[int, ...] = tuple(c.ug_per_ml for c in LIMITS.concentrations)
STOPPED = Program(TherapyMode.STOPPED, 0, 0, 0, 0, 0, ())
HOLDING = frozenset({AlarmCode.EMPTY_RESERVOIR, AlarmCode.MOTOR_STALL, AlarmCode.EOS})
"""Alarms under which the motor must not move."""
U32 = (1 << 32) - 1
T = TypeVar("T")
_MAX_BOLUS_RATE = PumpConfig().max_bolus_rate_nl_per_day


def quantum(p: Pump) -> int:
    """Q: one motor step in the integral's unit (nL*ms/day)."""
    return step_quantum_nlms(p.config.step_volume_nl)


def held(p: Pump) -> bool:
    """The motor must be still: never filled, empty reservoir, motor stall or end of service."""
    never_filled = p.acc.filled_total_nl == 0
    return never_filled or bool(HOLDING & p.alarms.active.keys()) or p.state is PumpState.END_OF_SERVICE


def minimum_rate() -> Program:
    return Program(TherapyMode.MINIMUM_RATE, 0, 0, 0, 0, 0, ())


# ---------------------------------------------------------------------------- configurations


@st.composite
def configs(draw: st.DrawFn, *, big_logs: bool = True) -> PumpConfig:
    """20 or 40 mL pumps with small and large stroke errors (either sign) and varied step volumes.

    ``big_logs`` keeps every step time and log entry, so tests can look far back."""
    step = draw(st.sampled_from([250, 250, 1000, 100, 37]))
    small = st.integers(-(step // 20), step // 20)
    large = st.integers(-(step - 1), step)
    error = draw(st.one_of(st.just(0), small, large))
    reservoir = draw(st.sampled_from([20, 40])) * NL_PER_ML
    threshold = draw(st.one_of(st.just(2 * NL_PER_ML), st.just(4 * NL_PER_ML), st.integers(0, reservoir - 1)))
    config = PumpConfig(
        reservoir_capacity_nl=reservoir,
        step_volume_nl=step,
        stroke_error_nl_per_step=error,
        low_reservoir_threshold_nl=threshold,
    )
    return replace(config, step_log_capacity=1 << 24, event_log_capacity=1 << 20) if big_logs else config


def small_battery(days: int) -> BatteryConfig:
    """A battery that reaches EOS after about ``days`` days at rest (for alarm tests)."""
    b = BatteryConfig()
    return BatteryConfig(capacity_pc=b.quiescent_pc_per_ms * days * MS_PER_DAY)


# ---------------------------------------------------------------------------- programs


def dose_bounds(conc: int) -> tuple[int, int]:
    """The daily doses whose rate at ``conc`` is programmable and within the hard limit."""
    lo = -(-LIMITS.min_rate_nl_per_day * conc // 1000)
    hi = min(LIMITS.hard_limit_ng_per_day, ((LIMITS.max_rate_nl_per_day + 1) * conc - 1) // 1000)
    return lo, hi


def doses(conc: int, *, top: int | None = None) -> st.SearchStrategy[int]:
    """Programmable doses at ``conc``, with the ends of the range and the soft limit likely."""
    lo, hi = dose_bounds(conc)
    if top is not None:
        hi = max(lo, min(hi, top))
    edges = [d for d in (lo, hi, LIMITS.soft_limit_ng_per_day, LIMITS.soft_limit_ng_per_day + 1) if lo <= d <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def continuous_programs(conc: int, *, top: int | None = None) -> st.SearchStrategy[Program]:
    return doses(conc, top=top).map(lambda d: Program(TherapyMode.CONTINUOUS, conc, d, 0, 0, 0, ()))


_TIME_OF_DAY = st.one_of(
    st.integers(0, 24 * 60 - 1).map(lambda minute: minute * 60_000), st.integers(0, MS_PER_DAY - 1)
)


@st.composite
def flex_programs(draw: st.DrawFn, conc: int, *, max_per_day: int = 13, top: int | None = None) -> Program:
    """A valid FLEX program: 1-7 day cycle, the first step day 0 at 0 ms, up to 13 steps a day."""
    cycle = draw(st.integers(1, 7))
    steps: list[FlexStep] = []
    for day in range(cycle):
        starts = draw(st.sets(_TIME_OF_DAY, max_size=max_per_day))
        if day == 0:
            starts = set(sorted({0} | starts)[:max_per_day])
        steps.extend(FlexStep(day, s, draw(doses(conc, top=top))) for s in sorted(starts))
    return Program(TherapyMode.FLEX, conc, 0, 0, 0, cycle, tuple(steps))


def _bolus_duration(volume_nl: int) -> st.SearchStrategy[int]:
    """Durations giving a bolus rate in [1, max bolus rate] for ``volume_nl``."""
    lo = volume_nl * MS_PER_DAY // (_MAX_BOLUS_RATE + 1) + 1
    hi = max(lo, min(volume_nl * MS_PER_DAY, 2 * MS_PER_DAY))
    return st.one_of(st.just(lo), st.integers(lo, min(hi, lo + 6 * MS_PER_HOUR)), st.integers(lo, hi))


def _max_bolus_volume(conc: int) -> int:
    """The largest volume whose dose at ``conc`` is within the library's bolus limit."""
    return ((LIMITS.max_bolus_ng + 1) * 1000 - 1) // conc


@st.composite
def bolus_args(draw: st.DrawFn, conc: int) -> tuple[BolusKind, int, int]:
    """A PRIMING or BRIDGE bolus the pump accepts at ``conc`` (if nothing else forbids it)."""
    kind = draw(st.sampled_from([BolusKind.PRIMING, BolusKind.BRIDGE]))
    top = min(_max_bolus_volume(conc), NL_PER_ML)
    volume = draw(st.one_of(st.integers(1, 2000), st.integers(1, top), st.just(260_000)).map(lambda v: min(v, top)))
    return kind, volume, draw(_bolus_duration(volume))


@st.composite
def single_bolus_programs(draw: st.DrawFn, conc: int) -> Program:
    lo_dose = -(-conc // 1000)  # at least 1 nL
    dose = draw(st.integers(lo_dose, LIMITS.max_bolus_ng))
    duration = draw(_bolus_duration(dose * 1000 // conc))
    return Program(TherapyMode.SINGLE_BOLUS, conc, 0, dose, duration, 0, ())


@st.composite
def patient_settings(draw: st.DrawFn, conc: int) -> PatientBolusSettings:
    """Enabled patient-bolus settings valid at ``conc``; lockouts from 0 to 3 days."""
    dose = draw(st.integers(-(-conc // 1000), min(LIMITS.max_bolus_ng, 100_000)))
    duration = draw(_bolus_duration(dose * 1000 // conc))
    lockout = draw(st.one_of(st.just(0), st.integers(0, 6 * MS_PER_HOUR), st.integers(MS_PER_DAY, 3 * MS_PER_DAY)))
    return PatientBolusSettings(1, dose, duration, lockout, draw(st.integers(1, 8)))


def valid_programs(conc: int) -> st.SearchStrategy[Program]:
    """Programs of every mode that the drug library allows at ``conc`` (0: no drug loaded)."""
    fixed = st.sampled_from([STOPPED, minimum_rate()])
    if conc == 0:
        return fixed
    return st.one_of(fixed, continuous_programs(conc), flex_programs(conc, max_per_day=4), single_bolus_programs(conc))


# ---------------------------------------------------------------------------- oracles


@dataclass
class FlexOracle:
    """Where a FLEX cycle starts: cycle day 0 is the wall-clock day of the commit. A refill keeps
    it (the program's doses and schedule stay; only their rates follow a new concentration)."""

    anchor_wall_ms: int = 0

    def committed(self, p: Pump) -> None:
        wall = p.wall_clock_ms
        self.anchor_wall_ms = wall - wall % MS_PER_DAY


def expected_basal(p: Pump, flex: FlexOracle) -> int:
    """The basal rate the committed program asks for now (0 while the motor is held)."""
    if held(p):
        return 0
    prog = p.program
    state = p.state
    if state is PumpState.MINIMUM_RATE:
        return LIMITS.min_rate_nl_per_day
    if state is PumpState.CONTINUOUS:
        return rate_nl_per_day(prog.dose_ng_per_day, p.concentration_ug_per_ml)
    if state is PumpState.FLEX:
        pos = (p.wall_clock_ms - flex.anchor_wall_ms) % (prog.cycle_days * MS_PER_DAY)
        offsets = [s.day * MS_PER_DAY + s.start_ms_of_day for s in prog.steps]
        i = bisect.bisect_right(offsets, pos) - 1  # -1: before the first step, the last one runs on
        return rate_nl_per_day(prog.steps[i].dose_ng_per_day, p.concentration_ug_per_ml)
    return 0


def reservoir_crossing_step(filled_nl: int, level_nl: int, step_nl: int, *, strict: bool) -> int:
    """How many steps after a fill of ``filled_nl`` the estimate first falls to ``level_nl``
    (``strict``: below it). The estimate after n steps is filled - n * step."""
    gap = filled_nl - level_nl
    if strict:
        return gap // step_nl + 1 if gap >= 0 else 0
    return -(-gap // step_nl) if gap > 0 else 0


# ---------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Advance:
    """Move virtual time: by ``ms``, or (``ms`` < 0) to the next event if it is within 400 days."""

    ms: int


class Command:
    """One pump command: ``label`` says what it is (hypothesis prints it), ``call`` does it.

    ``kind`` is refill, commit, bolus, cancel, patient, request, clock, fault, alarms or other;
    ``detail`` the volume of a refill, the kind of a bolus or fault; ``program`` a commit's
    program given the pump (it may take the pump's concentration)."""

    __slots__ = ("call", "detail", "kind", "label", "program")

    def __init__(
        self,
        label: str,
        call: Callable[[Pump], object],
        kind: str = "",
        detail: object = None,
        program: Callable[[Pump], Program] | None = None,
    ) -> None:
        self.label = label
        self.call = call
        self.kind = kind
        self.detail = detail
        self.program = program

    def __repr__(self) -> str:
        return self.label


Action = Advance | Command


def apply(p: Pump, action: Action) -> RefusalError | None:
    """Run one action: None if accepted, else the refusal, which must have left the therapy
    digest unchanged (checked here). Any other exception propagates (a crash is a failure)."""
    if isinstance(action, Advance):
        if action.ms >= 0:
            p.advance(p.now_ms + action.ms)
        else:
            nxt = p.next_event_ms()
            p.advance(nxt if nxt is not None and nxt - p.now_ms <= 400 * MS_PER_DAY else p.now_ms + MS_PER_DAY)
        return None
    before = p.therapy_digest()
    refusal = outcome(lambda: action.call(p))[1]
    if refusal is not None:
        assert p.therapy_digest() == before, f"{action!r} was refused ({refusal}) but changed the therapy state"
    return refusal


def outcome(call: Callable[[], T]) -> tuple[T | None, RefusalError | None]:
    """What a command returned, or the RefusalError it raised (anything else propagates)."""
    try:
        return call(), None
    except RefusalError as refusal:
        return None, refusal


def own_concentration(program: Program) -> Callable[[Pump], Program]:
    """The program with the pump's present concentration (modes that use none keep 0)."""

    def at(p: Pump) -> Program:
        if program.mode in (TherapyMode.STOPPED, TherapyMode.MINIMUM_RATE):
            return program
        return replace(program, concentration_ug_per_ml=p.concentration_ug_per_ml)

    return at


def commit(program: Program, override: bool = False, *, own_conc: bool = False) -> Command:
    make = own_concentration(program) if own_conc else (lambda _p: program)
    return Command(
        f"commit({program!r}, override={override}, own_conc={own_conc})",
        lambda p: p.commit_program(make(p), override),
        "commit",
        program=make,
    )


def refill(added_nl: int, conc: int, aspirated_nl: int = 0, drug: DrugId = DrugId.BACLOFEN) -> Command:
    return Command(
        f"refill(aspirated={aspirated_nl}, added={added_nl}, conc={conc}, {drug.name})",
        lambda p: p.refill(aspirated_nl, added_nl, conc, drug),
        "refill",
        added_nl,
    )


def bolus(kind: BolusKind, volume_nl: int, duration_ms: int) -> Command:
    return Command(
        f"start_bolus({kind.name}, {volume_nl}, {duration_ms})",
        lambda p: p.start_bolus(kind, volume_nl, duration_ms),
        "bolus",
        kind,
    )


CANCEL = Command("cancel_bolus()", lambda p: p.cancel_bolus(), "cancel")
REQUEST = Command("request_patient_bolus()", lambda p: p.request_patient_bolus(), "request")


def patient(settings: PatientBolusSettings) -> Command:
    return Command(f"set_patient_bolus({settings!r})", lambda p: p.set_patient_bolus(settings), "patient", settings)


def clock(wall_ms: int) -> Command:
    return Command(f"set_clock({wall_ms})", lambda p: p.set_clock(wall_ms), "clock")


def clock_shift(delta_ms: int) -> Command:
    return Command(f"set_clock(wall + {delta_ms})", lambda p: p.set_clock(p.wall_clock_ms + delta_ms), "clock")


def fault(kind: FaultKind) -> Command:
    return Command(f"inject_fault({kind.name})", lambda p: p.inject_fault(kind), "fault", kind)


def alarm_config(threshold_nl: int, critical_ms: int, other_ms: int) -> Command:
    return Command(
        f"configure_alarms({threshold_nl}, {critical_ms}, {other_ms})",
        lambda p: p.configure_alarms(threshold_nl, critical_ms, other_ms),
        "alarms",
    )


def silence(code: AlarmCode, duration_ms: int) -> Command:
    return Command(f"silence_alarm({code.name}, {duration_ms})", lambda p: p.silence_alarm(code, duration_ms), "other")


def acknowledge(code: AlarmCode) -> Command:
    return Command(f"acknowledge_alarm({code.name})", lambda p: p.acknowledge_alarm(code), "other")


# ---------------------------------------------------------------------------- action lists

_advances = st.one_of(
    st.builds(Advance, st.integers(0, 10_000)),
    st.builds(Advance, st.integers(0, 12 * MS_PER_HOUR)),
    st.builds(Advance, st.integers(0, 20 * MS_PER_DAY)),
    st.just(Advance(-1)),
)
_fill_volumes = st.one_of(
    st.integers(1, 3000), st.integers(1, 3 * NL_PER_ML), st.just(20 * NL_PER_ML), st.integers(1, 40 * NL_PER_ML)
)


def actions(conc: int, *, arbitrary: bool = False) -> st.SearchStrategy[Action]:
    """Time steps and commands of every kind, mostly valid for a pump filled at ``conc``:
    refills (same or another concentration), programs of every mode, boluses of every kind,
    clock changes, stalls, resets, low battery resets, alarm settings. ``arbitrary`` mixes in
    commands with any wire-range arguments."""
    faults = [FaultKind.MOTOR_STALL, FaultKind.MOTOR_STALL_CLEAR, FaultKind.RESET, FaultKind.LOW_BATTERY_RESET]
    commands: list[st.SearchStrategy[Action]] = [
        st.builds(refill, _fill_volumes, st.one_of(st.just(conc), st.sampled_from(CONCENTRATIONS)), _fill_volumes),
        st.builds(commit, valid_programs(conc), st.booleans(), own_conc=st.just(True)),
        bolus_args(conc).map(lambda a: bolus(*a)),
        st.just(CANCEL),
        st.builds(patient, patient_settings(conc)),
        st.just(REQUEST),
        st.builds(clock_shift, st.one_of(st.integers(-3 * MS_PER_DAY, 3 * MS_PER_DAY), st.integers(-1000, 1000))),
        st.builds(fault, st.sampled_from(faults)),
        st.builds(
            alarm_config,
            st.one_of(st.just(2 * NL_PER_ML), st.integers(0, 20 * NL_PER_ML)),
            st.integers(1000, MS_PER_DAY),
            st.integers(1000, MS_PER_DAY),
        ),
        st.builds(acknowledge, st.sampled_from(AlarmCode)),
        st.builds(silence, st.sampled_from(AlarmCode), st.integers(0, MS_PER_DAY)),
    ]
    if arbitrary:
        commands.append(arbitrary_commands())
    return st.one_of(_advances, _advances, _advances, *commands)


@st.composite
def scenarios(draw: st.DrawFn, *, arbitrary: bool = False, max_actions: int = 40) -> tuple[Pump, list[Action]]:
    """A fresh pump (any configuration, any wall clock) and a list of actions to drive it.
    Most scenarios start with a refill and a program, so the pump is usually running."""
    config = draw(configs())
    conc = draw(st.sampled_from(CONCENTRATIONS))
    pump = Pump(config, wall_clock_ms=draw(st.integers(0, 1 << 42)), record_rates=True)
    prefix: list[Action] = []
    if draw(st.integers(0, 9)):
        prefix.append(refill(draw(st.integers(1, config.reservoir_capacity_nl)), conc))
        prefix.append(commit(draw(valid_programs(conc)), True))
    return pump, prefix + draw(st.lists(actions(conc, arbitrary=arbitrary), max_size=max_actions))


# ---------------------------------------------------------------------------- arbitrary commands

_u32 = st.one_of(st.integers(0, 300), st.integers(0, U32))
_conc_any = st.one_of(st.sampled_from([*CONCENTRATIONS, 0, 1, 7, 49_999]), st.integers(0, 50_000))


@st.composite
def arbitrary_programs(draw: st.DrawFn) -> Program:
    """Programs within the wire's field ranges but otherwise anything: wrong concentrations,
    fields the mode does not use, doses beyond the limits, unsorted or crowded flex steps."""
    steps = draw(
        st.lists(
            st.builds(
                FlexStep,
                st.integers(0, 6),
                st.integers(0, MS_PER_DAY - 1),
                st.one_of(st.integers(0, 3_000_000), st.integers(0, MAX_DOSE_NG_PER_DAY)),
            ),
            max_size=16,
        )
    )
    return Program(
        draw(st.sampled_from(TherapyMode)),
        draw(_conc_any),
        draw(st.one_of(st.just(0), st.integers(0, 3_000_000), st.integers(0, MAX_DOSE_NG_PER_DAY))),
        draw(st.one_of(st.just(0), st.integers(0, 600_000), st.integers(0, MAX_DOSE_NG))),
        draw(st.one_of(st.just(0), st.integers(0, MAX_DURATION_MS))),
        draw(st.integers(0, 7)),
        tuple(steps),
    )


def arbitrary_commands() -> st.SearchStrategy[Command]:
    """Any command with wire-range arguments, most of them invalid for the pump's state."""
    volume = st.one_of(st.integers(0, 50 * NL_PER_ML), st.integers(0, MAX_VOLUME_NL))
    return st.one_of(
        st.builds(refill, volume, _conc_any, volume),
        st.builds(refill, volume, _conc_any, st.just(0), st.sampled_from(DrugId)),
        st.builds(commit, arbitrary_programs(), st.booleans(), own_conc=st.booleans()),
        st.builds(bolus, st.sampled_from(BolusKind), volume, _u32),
        st.just(CANCEL),
        st.builds(
            lambda *x: patient(PatientBolusSettings(*x)),
            st.integers(0, 1),
            st.one_of(st.integers(0, 600_000), st.integers(0, MAX_DOSE_NG)),
            _u32,
            _u32,
            st.integers(0, 255),
        ),
        st.just(REQUEST),
        st.builds(clock, st.integers(-(10**12), 1 << 50)),
        st.builds(fault, st.sampled_from(FaultKind)),
        st.builds(
            alarm_config,
            st.integers(-1, 50 * NL_PER_ML),
            st.integers(0, 3 * MS_PER_DAY),
            st.integers(0, 3 * MS_PER_DAY),
        ),
        st.builds(silence, st.sampled_from(AlarmCode), st.integers(0, MS_PER_DAY)),
        st.builds(acknowledge, st.sampled_from(AlarmCode)),
    )


# ---------------------------------------------------------------------------- the observer


@dataclass
class _Before:
    program: Program
    state: PumpState
    basal: int
    steps: int
    integral: int
    held: bool
    critical: bool
    bolus: BolusKind
    seq: int
    patient_enabled: bool


class Observer:
    """Drives a pump (``record_rates=True``, big logs) action by action and checks, after each,
    every invariant the properties state. It keeps only what the rules need: the last fill, the
    flex anchor, the patient-bolus grants."""

    def __init__(self, p: Pump) -> None:
        assert p.rate_pieces is not None, "the observer needs record_rates=True"
        self.p = p
        self.flex = FlexOracle()
        self.fill_nl = 0
        self.fill_steps = 0
        self.eos_steps: int | None = None
        self.checked_steps = 0
        self.grants: list[int] = []
        self.refusals: list[RefusalError] = []
        self.check()

    def run(self, actions: Sequence[Action]) -> None:
        for action in actions:
            self.step(action)

    def step(self, action: Action) -> RefusalError | None:
        p = self.p
        a = p.acc
        before = _Before(
            p.program,
            p.state,
            p.status().basal_rate_nl_per_day,
            a.steps_total,
            a.integral_nlms,
            held(p),
            p.alarms.critical_active,
            p.bolus.kind if p.bolus is not None else BolusKind.NONE,
            p.log.next_seq,
            bool(p.patient_bolus.enabled),
        )
        planned = action.program(p) if isinstance(action, Command) and action.program is not None else None
        refusal = apply(p, action)
        if refusal is not None:
            self.refusals.append(refusal)
        if isinstance(action, Advance):
            self._after_advance(before)
        else:
            self._after_command(action, before, refusal, planned)
        self.check()
        return refusal

    # ----------------------------------------------------------- per action

    def _after_advance(self, b: _Before) -> None:
        p = self.p
        if b.held:
            assert p.acc.steps_total == b.steps, "the motor moved while empty, stalled or at EOS"
            assert p.acc.integral_nlms == b.integral, "delivery accrued while the motor was held"
        if b.bolus is not BolusKind.SINGLE:
            assert p.program == b.program, "time alone changed the program"
        elif p.program != b.program:
            assert p.program == STOPPED
            assert p.state is PumpState.STOPPED
        step = p.config.step_volume_nl
        for e in p.log.page(b.seq, 1 << 30):
            if e.kind is not LogEventKind.ALARM_RAISED:
                continue
            if e.code == AlarmCode.LOW_RESERVOIR:
                n = reservoir_crossing_step(self.fill_nl, p.low_reservoir_threshold_nl, step, strict=False)
            elif e.code == AlarmCode.EMPTY_RESERVOIR:
                n = reservoir_crossing_step(self.fill_nl, step, step, strict=True)
            else:
                continue
            k = self.fill_steps + n  # this step (1-based) first brings the estimate to the level
            assert n >= 1, f"{AlarmCode(e.code).name} raised by time alone though the fill was already there"
            if k - 1 < p.oldest_logged_step:
                continue  # a small step log no longer holds that step (tests of timing use big logs)
            assert p.step_times(k - 1, 1) == [e.at_ms], (
                f"{AlarmCode(e.code).name} raised at {e.at_ms}, not at step {k} ({p.step_times(k - 1, 1)})"
            )

    def _after_command(self, c: Command, b: _Before, refusal: RefusalError | None, planned: Program | None) -> None:
        p = self.p
        accepted = refusal is None
        if c.kind == "refill" and accepted:
            assert isinstance(c.detail, int)
            self.fill_nl, self.fill_steps = c.detail, p.acc.steps_total
            assert p.acc.estimate_nl == c.detail
        elif c.kind == "commit":
            assert planned is not None
            if accepted:
                assert p.program == planned
                if planned.mode is TherapyMode.FLEX:
                    self.flex.committed(p)
                if planned.mode is TherapyMode.SINGLE_BOLUS:
                    assert p.state is PumpState.SINGLE_BOLUS
                    assert p.bolus is not None
                    assert p.bolus.kind is BolusKind.SINGLE
            elif (
                planned.mode is TherapyMode.SINGLE_BOLUS
                and b.critical
                and planned.concentration_ug_per_ml == p.concentration_ug_per_ml != 0
                and not (planned.dose_ng_per_day or planned.cycle_days or planned.steps)
            ):
                assert refusal is not None
                assert refusal.code is ErrorCode.ALARM_ACTIVE, refusal
        elif c.kind in ("bolus", "request"):
            if b.critical and (
                (c.kind == "bolus" and c.detail in _REPLACING) or (c.kind == "request" and b.patient_enabled)
            ):
                assert refusal is not None, "a bolus started during a critical alarm"
                assert refusal.code is ErrorCode.ALARM_ACTIVE, refusal
            if accepted:
                assert not b.critical
                self._supplemental_unchanged_basal(b)
                assert p.bolus is not None
                if c.kind == "request":
                    assert p.bolus.kind is BolusKind.PATIENT
                    self._check_patient_grant()
        elif c.kind == "cancel":
            if b.bolus in _SUPPLEMENTAL:
                assert p.bolus is None
                self._supplemental_unchanged_basal(b)
                last = p.log.entries()[-1]
                assert last.kind is LogEventKind.BOLUS_INTERRUPTED
                assert last.code == b.bolus
        elif c.kind == "clock" and accepted:
            assert p.program == b.program
        elif c.kind == "fault" and accepted:
            self._after_fault(c, b)

    def _supplemental_unchanged_basal(self, b: _Before) -> None:
        p = self.p
        assert p.program == b.program, "a supplemental bolus changed the basal program"
        assert p.state is b.state
        assert p.status().basal_rate_nl_per_day == b.basal, "a supplemental bolus changed the basal rate"

    def _check_patient_grant(self) -> None:
        p = self.p
        s = p.patient_bolus
        now = p.now_ms
        if self.grants:
            assert now >= self.grants[-1] + s.lockout_ms, "a patient bolus granted inside its lockout"
        self.grants.append(now)
        in_window = [t for t in self.grants if t > now - MS_PER_DAY]
        assert len(in_window) <= s.max_per_24h, "more patient boluses in 24 h than allowed"

    def _after_fault(self, c: Command, b: _Before) -> None:
        p = self.p
        new = p.log.page(b.seq, 1 << 30)
        interrupted = [e for e in new if e.kind is LogEventKind.BOLUS_INTERRUPTED]
        if c.detail in (FaultKind.RESET, FaultKind.LOW_BATTERY_RESET) or (
            c.detail is FaultKind.MOTOR_STALL and AlarmCode.MOTOR_STALL in p.alarms.active
        ):
            assert p.bolus is None, f"{c.detail} left a bolus running"
            if b.bolus is not BolusKind.NONE:
                assert [e.code for e in interrupted] == [b.bolus], "the lost bolus was not logged as interrupted"
        if c.detail is FaultKind.RESET:
            assert p.program == (STOPPED if b.bolus is BolusKind.SINGLE else b.program)
        if c.detail is FaultKind.LOW_BATTERY_RESET and b.state is not PumpState.END_OF_SERVICE:
            assert p.state is PumpState.MINIMUM_RATE
            assert AlarmCode.LOW_BATTERY_RESET in p.alarms.active

    # ----------------------------------------------------------- invariants

    def check(self) -> None:
        p = self.p
        a = p.acc
        cfg = p.config
        q = quantum(p)
        assert p.rate_pieces is not None
        # 1. conservation
        assert a.true_reservoir_nl + a.delivered_true_nl + a.removed_true_nl == a.filled_total_nl
        # 2. the integral is THE ideal, and the motor lags it by less than one step
        ideal = ideal_nlms(p.rate_pieces, p.now_ms)
        assert a.integral_nlms == ideal
        assert 0 <= ideal - a.steps_total * q < q
        n = a.steps_total - self.fill_steps
        assert a.estimate_nl == self.fill_nl - n * cfg.step_volume_nl
        true_step = cfg.step_volume_nl + cfg.stroke_error_nl_per_step
        assert a.true_reservoir_nl == max(0, self.fill_nl - n * true_step)
        # 3. reservoir alarms stand exactly where the estimate is
        if a.filled_total_nl:
            active = p.alarms.active
            assert (AlarmCode.LOW_RESERVOIR in active) == (a.estimate_nl <= p.low_reservoir_threshold_nl)
            assert (AlarmCode.EMPTY_RESERVOIR in active) == (a.estimate_nl < cfg.step_volume_nl)
        # 6. no bolus runs during a critical alarm
        if p.alarms.critical_active:
            assert p.bolus is None
        assert (p.state is PumpState.SINGLE_BOLUS) == (p.bolus is not None and p.bolus.kind is BolusKind.SINGLE)
        # 5. the basal rate is the program's; a bolus only adds to (or, priming, replaces) it
        st_ = p.status()
        assert st_.basal_rate_nl_per_day == expected_basal(p, self.flex)
        bolus_rate = p.bolus.rate_nl_per_day if p.bolus is not None else 0
        shown_basal = 0 if p.bolus is not None and p.bolus.kind in _REPLACING else st_.basal_rate_nl_per_day
        assert st_.effective_rate_nl_per_day == shown_basal + bolus_rate
        if p.program.mode in (TherapyMode.CONTINUOUS, TherapyMode.FLEX):
            assert p.program.concentration_ug_per_ml == p.concentration_ug_per_ml
        # every bolus started ends exactly once, completed or interrupted (while the log holds all)
        if p.log.oldest_seq == 0:
            started = len(p.log.entries(LogEventKind.BOLUS_STARTED))
            ended = len(p.log.entries(LogEventKind.BOLUS_COMPLETED)) + len(
                p.log.entries(LogEventKind.BOLUS_INTERRUPTED)
            )
            assert started == ended + (p.bolus is not None)
        # 8. EOS: the motor stops for good, with a critical alarm, after ERI
        if p.eos_at_ms is not None:
            assert p.state is PumpState.END_OF_SERVICE
            assert AlarmCode.EOS in p.alarms.active
            assert p.eri_at_ms is not None
            assert p.eri_at_ms <= p.eos_at_ms
            if self.eos_steps is None:
                self.eos_steps = a.steps_total
            assert a.steps_total == self.eos_steps, "a step after EOS"
        # the newest step fell at the first ms the ideal reached it
        if a.steps_total and a.steps_total != self.checked_steps:
            k = a.steps_total - 1
            (t,) = p.step_times(k, 1)
            assert t <= p.now_ms
            assert ideal_nlms(p.rate_pieces, t) >= (k + 1) * q > ideal_nlms(p.rate_pieces, t - 1), (
                f"step {k} reported at {t} ms"
            )
            self.checked_steps = a.steps_total


_REPLACING = frozenset({BolusKind.PRIMING, BolusKind.BRIDGE})
_SUPPLEMENTAL = frozenset({BolusKind.PRIMING, BolusKind.BRIDGE, BolusKind.PATIENT})
