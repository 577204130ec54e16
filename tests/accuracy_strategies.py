"""Realistic therapies for the accuracy properties, and the rig that lives them.

A :class:`Session` is a pump (any configuration of ``pump_strategies.configs``), a first fill
and a list of (wait, action) pairs: each wait is an arbitrary number of milliseconds, so the
checkpoints fall anywhere (mid-step, mid-bolus, mid-flex-step), not only at whole days. The
actions are what happens to an implanted baclofen pump in the clinic and at home: refills
(same or another concentration of the drug library), continuous and flex programs at clinical
doses (25 to 1,500 ug/day typical, up to the library's 2,000 ug/day hard limit; flex up to 13
steps a day over 1 to 7 days), the single-bolus mode, priming and bridge boluses, patient
boluses with lockouts, clock changes, stops and restarts, motor stall and recovery, processor
resets, low battery resets and reboots from non-volatile memory. Every action prints as a
clinician would write it in the session notes, so a shrunk counterexample reads as one.

The :class:`Rig` runs a session and keeps what the properties need across reboots (a reboot
is a new ``Pump`` restored from the firmware record and the unchanged plant): the rate pieces
of every incarnation, the reservoir's concentration over time, the patient-bolus grants.
:class:`DoseProfile` turns the rate pieces into exact piecewise-linear volume and dose
integrals, to find the worst rolling 24 h window.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import strategies as st

from firmware_model import Pump, PumpConfig, RatePiece, RefusalError, ideal_nlms
from firmware_model.units import MS_PER_DAY, MS_PER_HOUR, NG_PER_UG, NL_PER_ML
from protocol_spec.enums import BolusKind, FaultKind, LogEventKind, TherapyMode
from protocol_spec.messages import PatientBolusSettings, Program

from .pump_strategies import (
    CONCENTRATIONS,
    STOPPED,
    bolus_args,
    configs,
    dose_bounds,
    flex_programs,
    minimum_rate,
    patient_settings,
    single_bolus_programs,
)

__all__ = [
    "Act",
    "DoseProfile",
    "RecordingPump",
    "Rig",
    "Session",
    "clinical_doses",
    "fmt_dose",
    "fmt_ms",
    "fmt_volume",
    "sessions",
    "waits",
]

TYPICAL_DOSE_NG_PER_DAY = (25 * NG_PER_UG, 1500 * NG_PER_UG)
"""Typical maintenance doses of intrathecal baclofen."""


# ---------------------------------------------------------------------------- readable units


def _decimal(value: int, scale: int) -> str:
    """``value / scale`` written exactly, without trailing zeros (integers only)."""
    whole, frac = divmod(value, scale)
    digits = len(str(scale)) - 1
    text = f"{frac:0{digits}d}".rstrip("0")
    return f"{whole:,}.{text}" if text else f"{whole:,}"


def fmt_volume(nl: int) -> str:
    """A volume in the unit a clinician would use: 18.25 mL, 260 uL, 37 nL."""
    sign, nl = ("-", -nl) if nl < 0 else ("", nl)
    if nl >= NL_PER_ML:
        return f"{sign}{_decimal(nl, NL_PER_ML)} mL"
    if nl >= 1000:
        return f"{sign}{_decimal(nl, 1000)} uL"
    return f"{sign}{nl} nL"


def fmt_dose(ng: int) -> str:
    """A dose in micrograms: 300 ug, 0.25 ug."""
    return f"{_decimal(ng, NG_PER_UG)} ug"


def fmt_ms(ms: int) -> str:
    """A duration: 2 d 3 h 20 min 5.123 s (parts that are zero left out)."""
    if ms == 0:
        return "0 s"
    sign, ms = ("-", -ms) if ms < 0 else ("", ms)
    days, rest = divmod(ms, MS_PER_DAY)
    hours, rest = divmod(rest, MS_PER_HOUR)
    minutes, rest = divmod(rest, 60_000)
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes)
    if rest:
        parts.append(f"{_decimal(rest, 1000)} s")
    return sign + " ".join(parts)


def _time_of_day(ms: int) -> str:
    h, rest = divmod(ms, MS_PER_HOUR)
    m, rest = divmod(rest, 60_000)
    return f"{h:02d}:{m:02d}" + (f"+{_decimal(rest, 1000)}s" if rest else "")


def describe_program(program: Program) -> str:
    """A program as the clinician's programmer shows it."""
    mode = program.mode
    if mode is TherapyMode.STOPPED:
        return "stop therapy"
    if mode is TherapyMode.MINIMUM_RATE:
        return "minimum rate"
    if mode is TherapyMode.CONTINUOUS:
        return f"program continuous {fmt_dose(program.dose_ng_per_day)}/day"
    if mode is TherapyMode.SINGLE_BOLUS:
        return f"single bolus of {fmt_dose(program.bolus_dose_ng)} over {fmt_ms(program.bolus_duration_ms)}"
    steps = ", ".join(
        f"d{s.day} {_time_of_day(s.start_ms_of_day)} {fmt_dose(s.dose_ng_per_day)}" for s in program.steps
    )
    return f"program flex {program.cycle_days}-day cycle [{steps}] (ug/day)"


# ---------------------------------------------------------------------------- the rig


class RecordingPump(Pump):
    """A pump that records its rate pieces from the start, also when ``Pump.restore`` builds it."""

    def __init__(self, config: PumpConfig | None = None, *, wall_clock_ms: int = 0, record_rates: bool = True) -> None:
        super().__init__(config, wall_clock_ms=wall_clock_ms, record_rates=record_rates)


@dataclass
class Rig:
    """Runs a session on a pump; a reboot replaces the pump by one restored from its record."""

    pump: Pump
    history: list[RatePiece] = field(default_factory=list)
    """The rate pieces of earlier incarnations, closed at their reboot."""
    concentrations: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    """(from uptime ms, the reservoir's concentration ug/mL): what the pump pumps from then on."""
    grants: list[int] = field(default_factory=list)
    """Uptimes of the patient boluses granted, over the whole life."""
    last_basal: Program | None = None
    """The last continuous or flex program committed (what a restart resumes)."""
    refusals: list[tuple[Act, RefusalError]] = field(default_factory=list)
    reboots: int = 0

    @property
    def now_ms(self) -> int:
        return self.pump.now_ms

    def pieces(self) -> list[RatePiece]:
        """Every rate piece since manufacture: THE ideal delivery is ``ideal_nlms`` over them."""
        assert self.pump.rate_pieces is not None
        return [*self.history, *self.pump.rate_pieces]

    def reboot(self) -> None:
        """The processor restarts from non-volatile memory: firmware state from the record, the
        plant (reservoir, delivered drug, battery) as it physically is, the log kept."""
        old = self.pump
        assert old.rate_pieces is not None
        now = old.now_ms
        self.history += [p if p.stop_ms is not None else replace(p, stop_ms=now) for p in old.rate_pieces]
        pump, interrupted = RecordingPump.restore(old.config, old.firmware_record(), old.plant(), old.log.entries())
        self.reboots += 1
        if interrupted is not None:
            pump.log_event(LogEventKind.BOLUS_INTERRUPTED, interrupted)
        pump.log_event(LogEventKind.RESET, 0, self.reboots)
        self.pump = pump

    def wait(self, ms: int) -> None:
        self.pump.advance(self.pump.now_ms + ms)

    def act(self, action: Act) -> RefusalError | None:
        """Do one action: None if the pump accepted it, else its refusal (anything else raises)."""
        try:
            action.run(self)
        except RefusalError as refusal:
            self.refusals.append((action, refusal))
            return refusal
        p = self.pump
        if p.concentration_ug_per_ml != self.concentrations[-1][1]:
            self.concentrations.append((p.now_ms, p.concentration_ug_per_ml))
        if p.program.mode in (TherapyMode.CONTINUOUS, TherapyMode.FLEX):
            self.last_basal = p.program
        if action.kind == "request":
            self.grants.append(p.now_ms)
        return None

    def run(self, session: Session, check: Callable[[Rig, str], None]) -> None:
        """Live the session; ``check(rig, where)`` at every checkpoint: after each wait and
        after each action (``where`` says which, for the failure message)."""
        for i, (wait_ms, action) in enumerate(session.steps):
            self.wait(wait_ms)
            check(self, f"#{i} after waiting {fmt_ms(wait_ms)} (t = {self.now_ms} ms)")
            refusal = self.act(action)
            check(self, f"#{i} after {action!r}" + (f" (refused: {refusal})" if refusal else ""))


@dataclass(frozen=True)
class Act:
    """One thing done to the pump; ``label`` is how it is written in the session notes."""

    label: str
    run: Callable[[Rig], object] = field(compare=False)
    kind: str = ""
    conc: int = 0
    """A refill's concentration (ug/mL)."""

    def _repr_pretty_(self, printer: Any, _cycle: bool) -> None:
        """Hypothesis prints counterexamples with this (it would print a dataclass field by field)."""
        printer.text(repr(self))

    def __repr__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Session:
    """A pump, a first fill, and (wait, action) pairs."""

    config: PumpConfig
    wall_clock_ms: int
    steps: tuple[tuple[int, Act], ...]

    def rig(self) -> Rig:
        return Rig(RecordingPump(self.config, wall_clock_ms=self.wall_clock_ms))

    def _repr_pretty_(self, printer: Any, _cycle: bool) -> None:
        """Hypothesis prints counterexamples with this (it would print a dataclass field by field)."""
        printer.text(repr(self))

    def __repr__(self) -> str:
        c = self.config
        error = f", stroke error {c.stroke_error_nl_per_step:+d} nL" if c.stroke_error_nl_per_step else ""
        head = (
            f"{fmt_volume(c.reservoir_capacity_nl)} pump, {c.step_volume_nl} nL steps{error}, "
            f"low-reservoir alarm at {fmt_volume(c.low_reservoir_threshold_nl)}, "
            f"dead volume {fmt_volume(c.dead_volume_nl)}, wall clock {self.wall_clock_ms} ms"
        )
        lines = [f"  after {fmt_ms(w)}: {a!r}" for w, a in self.steps]
        return "Session(" + head + "\n" + "\n".join(lines) + "\n)"


# ---------------------------------------------------------------------------- actions


def refill_act(added_nl: int, conc: int, catheter_nl: int | None = None) -> Act:
    """Aspirate everything (the clinician measures the true volume) and fill."""
    revised = f", catheter revised to {fmt_volume(catheter_nl)}" if catheter_nl is not None else ""

    def run(r: Rig) -> object:
        return r.pump.refill(r.pump.acc.true_reservoir_nl, added_nl, conc, catheter_volume_nl=catheter_nl)

    return Act(f"refill: aspirate, add {fmt_volume(added_nl)} of {conc} ug/mL{revised}", run, "refill", conc)


def program_act(program: Program, override: bool = True) -> Act:
    """Commit a program at the concentration the pump holds (as the programmer reads it)."""

    def run(r: Rig) -> object:
        p = r.pump
        own = program
        if program.mode not in (TherapyMode.STOPPED, TherapyMode.MINIMUM_RATE):
            own = replace(program, concentration_ug_per_ml=p.concentration_ug_per_ml)
        return p.commit_program(own, override)

    suffix = "" if override or program.mode in (TherapyMode.STOPPED, TherapyMode.MINIMUM_RATE) else " (no override)"
    return Act(describe_program(program) + suffix, run, "commit")


def _restart(r: Rig) -> object:
    if r.last_basal is None:
        return None
    return r.pump.commit_program(replace(r.last_basal, concentration_ug_per_ml=r.pump.concentration_ug_per_ml), True)


RESTART = Act("restart the last program", _restart, "commit")


def bolus_act(kind: BolusKind, volume_nl: int, duration_ms: int) -> Act:
    verb = "prime" if kind is BolusKind.PRIMING else "bridge bolus"
    return Act(
        f"{verb} {fmt_volume(volume_nl)} over {fmt_ms(duration_ms)}",
        lambda r: r.pump.start_bolus(kind, volume_nl, duration_ms),
        "bolus",
    )


def _planned_bridge(r: Rig) -> object:
    plan = r.pump.bridge_plan()
    return None if plan is None else r.pump.start_bolus(BolusKind.BRIDGE, *plan)


BRIDGE_AS_PLANNED = Act("bridge bolus as the pump plans it", _planned_bridge, "bridge")
CANCEL_BOLUS = Act("cancel the running bolus", lambda r: r.pump.cancel_bolus(), "cancel")
PRESS = Act("patient presses the bolus button", lambda r: r.pump.request_patient_bolus(), "request")


def patient_act(s: PatientBolusSettings) -> Act:
    return Act(
        f"allow patient boluses of {fmt_dose(s.dose_ng)} over {fmt_ms(s.duration_ms)}, "
        f"lockout {fmt_ms(s.lockout_ms)}, at most {s.max_per_24h} a day",
        lambda r: r.pump.set_patient_bolus(s),
        "patient",
    )


def clock_act(delta_ms: int) -> Act:
    way = "forward" if delta_ms >= 0 else "back"
    return Act(
        f"set the clock {way} {fmt_ms(abs(delta_ms))}",
        lambda r: r.pump.set_clock(r.pump.wall_clock_ms + delta_ms),
        "clock",
    )


def fault_act(kind: FaultKind) -> Act:
    label = {
        FaultKind.MOTOR_STALL: "motor stalls",
        FaultKind.MOTOR_STALL_CLEAR: "motor recovers",
        FaultKind.RESET: "processor reset",
        FaultKind.LOW_BATTERY_RESET: "low battery reset",
    }[kind]
    return Act(label, lambda r: r.pump.inject_fault(kind), "fault")


REBOOT = Act("reboot from non-volatile memory", lambda r: r.reboot(), "reboot")


def threshold_act(threshold_nl: int) -> Act:
    def run(r: Rig) -> object:
        a = r.pump.alarms
        r.pump.configure_alarms(threshold_nl, a.critical_repeat_ms, a.non_critical_repeat_ms)
        return None

    return Act(f"set the low-reservoir alarm at {fmt_volume(threshold_nl)}", run, "alarms")


# ---------------------------------------------------------------------------- strategies


def clinical_doses(conc: int) -> st.SearchStrategy[int]:
    """Daily doses a clinician programs at ``conc``: mostly the typical 25 to 1,500 ug/day, up to
    the hard limit, within what the pump can pump at that concentration (5 uL to 4 mL a day)."""
    lo, hi = dose_bounds(conc)
    typ_lo, typ_hi = max(lo, TYPICAL_DOSE_NG_PER_DAY[0]), min(hi, TYPICAL_DOSE_NG_PER_DAY[1])
    if typ_lo > typ_hi:
        typ_lo, typ_hi = lo, hi
    edges = sorted({typ_lo, typ_hi, hi})
    return st.one_of(
        st.integers(typ_lo, typ_hi), st.sampled_from(edges), st.sampled_from(edges), st.integers(typ_lo, hi)
    )


def waits() -> st.SearchStrategy[int]:
    """Arbitrary waits: seconds, hours, days; none lands on a whole day on purpose."""
    return st.one_of(
        st.integers(0, 60_000),
        st.integers(0, 8 * MS_PER_HOUR),
        st.integers(0, 3 * MS_PER_DAY),
        st.integers(MS_PER_DAY, 12 * MS_PER_DAY),
    )


_FILLS = st.one_of(
    st.sampled_from([20 * NL_PER_ML, 18 * NL_PER_ML, 10 * NL_PER_ML]),
    st.integers(NL_PER_ML, 20 * NL_PER_ML),
    st.integers(1, 2 * NL_PER_ML),
)


def _programs(conc: int) -> st.SearchStrategy[Program]:
    continuous = clinical_doses(conc).map(lambda d: Program(TherapyMode.CONTINUOUS, conc, d, 0, 0, 0, ()))
    top = dose_bounds(conc)[1]
    return st.one_of(
        continuous,
        continuous,
        flex_programs(conc, max_per_day=13, top=top),
        flex_programs(conc, max_per_day=3, top=top),
        st.sampled_from([STOPPED, minimum_rate()]),
    )


@st.composite
def _clinic_actions(draw: st.DrawFn, conc: int, *, boluses: bool, reboots: bool) -> Act:
    """One thing that happens to the pump, valid for a pump holding ``conc`` (mostly)."""
    faults = [FaultKind.MOTOR_STALL, FaultKind.MOTOR_STALL_CLEAR, FaultKind.RESET, FaultKind.LOW_BATTERY_RESET]
    choices: list[st.SearchStrategy[Act]] = [
        st.builds(program_act, _programs(conc), st.sampled_from([True, True, False])),
        st.builds(
            refill_act,
            _FILLS,
            st.one_of(st.just(conc), st.sampled_from(CONCENTRATIONS)),
        ),
        st.sampled_from([RESTART, program_act(STOPPED)]),
        st.builds(
            clock_act, st.one_of(st.integers(-MS_PER_HOUR, MS_PER_HOUR), st.integers(-3 * MS_PER_DAY, MS_PER_DAY))
        ),
        st.sampled_from([fault_act(k) for k in faults] + [REBOOT] * reboots),
        st.builds(threshold_act, st.one_of(st.just(2 * NL_PER_ML), st.integers(0, 10 * NL_PER_ML))),
    ]
    if boluses:
        choices += [
            bolus_args(conc).map(lambda a: bolus_act(*a)),
            st.just(BRIDGE_AS_PLANNED),
            single_bolus_programs(conc).map(program_act),
            st.builds(patient_act, patient_settings(conc)),
            st.just(PRESS),
            st.just(PRESS),
            st.just(CANCEL_BOLUS),
        ]
    action: Act = draw(st.one_of(*choices))
    return action


@st.composite
def sessions(
    draw: st.DrawFn,
    *,
    boluses: bool = True,
    reboots: bool = True,
    max_actions: int = 20,
    config: PumpConfig | None = None,
) -> Session:
    """A first fill at a library concentration, a first program, then (wait, action) pairs.
    The concentration the strategy believes the pump holds follows its own refills."""
    cfg = config if config is not None else draw(configs())
    conc = draw(st.sampled_from(CONCENTRATIONS))
    fill = min(draw(_FILLS), cfg.reservoir_capacity_nl)
    steps: list[tuple[int, Act]] = [(0, refill_act(fill, conc)), (draw(waits()), program_act(draw(_programs(conc))))]
    for _ in range(draw(st.integers(0, max_actions))):
        action = draw(_clinic_actions(conc, boluses=boluses, reboots=reboots))
        steps.append((draw(waits()), action))
        if action.kind == "refill":
            conc = action.conc
    return Session(cfg, draw(st.integers(0, 1 << 41)), tuple(steps))


# ---------------------------------------------------------------------------- the exact dose profile


@dataclass(frozen=True)
class DoseProfile:
    """The ideal delivery as an exact piecewise-linear function of uptime (integer breakpoints).

    ``volume_nlms(t)`` is ``ideal_nlms(pieces, t)``; ``dose_pgms(t)`` the same weighted by the
    reservoir's concentration at each moment: a dose of X pg/day for T ms adds X*T, so
    MS_PER_DAY pgms are one picogram (1 nL at 1 ug/mL is 1 pg). A bolus piece is cut where its
    budget runs out: full rate for whole milliseconds, then the remainder in the next one.
    """

    times_ms: tuple[int, ...]
    vol_rates: tuple[int, ...]
    dose_rates: tuple[int, ...]
    vol_at: tuple[int, ...]
    dose_at: tuple[int, ...]
    end_ms: int

    @classmethod
    def of(cls, pieces: Iterable[RatePiece], concentrations: list[tuple[int, int]], end_ms: int) -> DoseProfile:
        deltas: dict[int, int] = {0: 0, end_ms: 0}
        for p in pieces:
            stop = end_ms if p.stop_ms is None else min(p.stop_ms, end_ms)
            if stop <= p.start_ms or p.rate_nl_per_day == 0:
                continue
            parts = [(p.start_ms, stop, p.rate_nl_per_day)]
            if p.budget_nl is not None:
                whole, rest = divmod(p.budget_nl * MS_PER_DAY, p.rate_nl_per_day)
                cut = p.start_ms + whole
                parts = [(p.start_ms, min(stop, cut), p.rate_nl_per_day)]
                if rest and cut < stop:
                    parts.append((cut, cut + 1, rest))
            for a, b, rate in parts:
                if b > a:
                    deltas[a] = deltas.get(a, 0) + rate
                    deltas[b] = deltas.get(b, 0) - rate
        for t, _ in concentrations:
            deltas.setdefault(t, 0)
        times = sorted(t for t in deltas if t <= end_ms)
        conc_times = [t for t, _ in concentrations]
        vol_rates, dose_rates, vol_at, dose_at = [], [], [0], [0]
        rate = 0
        for i, t in enumerate(times):
            rate += deltas[t]
            conc = concentrations[bisect.bisect_right(conc_times, t) - 1][1]
            vol_rates.append(rate)
            dose_rates.append(rate * conc)
            if i + 1 < len(times):
                dt = times[i + 1] - t
                vol_at.append(vol_at[-1] + rate * dt)
                dose_at.append(dose_at[-1] + rate * conc * dt)
        return cls(tuple(times), tuple(vol_rates), tuple(dose_rates), tuple(vol_at), tuple(dose_at), end_ms)

    def _at(self, t: int, totals: tuple[int, ...], rates: tuple[int, ...]) -> int:
        if t <= 0:
            return 0
        i = bisect.bisect_right(self.times_ms, t) - 1
        return totals[i] + rates[i] * (t - self.times_ms[i])

    def volume_nlms(self, t: int) -> int:
        return self._at(t, self.vol_at, self.vol_rates)

    def dose_pgms(self, t: int) -> int:
        return self._at(t, self.dose_at, self.dose_rates)

    def worst_window(self, window_ms: int) -> tuple[int, int]:
        """(the largest dose in any window (t - window_ms, t] with 0 <= t <= end, in pgms; that t).
        Between breakpoints both ends move linearly, so the maximum is at a breakpoint of one end."""
        candidates = {self.end_ms}
        for t in self.times_ms:
            candidates.update(x for x in (t, t + window_ms) if 0 <= x <= self.end_ms)
        return max((self.dose_pgms(t) - self.dose_pgms(t - window_ms), t) for t in candidates)


def ideal_now(rig: Rig) -> int:
    """THE ideal delivery (nlms) since manufacture, across every incarnation of the firmware."""
    return ideal_nlms(rig.pieces(), rig.now_ms)
