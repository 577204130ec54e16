"""Run a therapy on the virtual pump from a fill until a duration or until EOS.

Pure: the runner owns a Pump, walks it from event to event and reports what happened. The
``pumprig simulate`` command (in ``hil``) parses flags or a TOML file into a
``SimulationSpec`` and prints the ``SimulationResult``.

Like a clinic, the simulation accepts soft-limit crossings (recorded as warnings); hard
limits and impossible programs are refused with the pump's own error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from protocol_spec.enums import AlarmCode, LogEventKind, TherapyMode
from protocol_spec.messages import FlexStep, Program

from .config import PumpConfig, load_toml
from .errors import PumpError
from .pump import Pump
from .units import MS_PER_DAY, MS_PER_HOUR, NG_PER_UG

__all__ = [
    "Sample",
    "SimulationResult",
    "SimulationSpec",
    "SpecError",
    "continuous_program",
    "parse_days",
    "parse_dose_ug",
    "simulate",
    "spec_from_toml",
]


class SpecError(PumpError, ValueError):
    """A simulation description that cannot be run, with what to change."""


@dataclass(frozen=True)
class SimulationSpec:
    program: Program
    reservoir_ml: int = 20
    concentration_ug_per_ml: int = 500
    duration_ms: int | None = None
    """None: run until EOS."""
    auto_refill: bool = False
    """Refill to full whenever LOW_RESERVOIR is raised, as a clinic would."""
    stroke_error_nl_per_step: int = 0
    step_volume_nl: int = 250
    keep_samples: bool = False
    """Keep one sample per event (for plots)."""


@dataclass(frozen=True)
class Sample:
    at_ms: int
    estimate_nl: int
    true_nl: int
    battery_permille: int
    rate_nl_per_day: int


@dataclass
class SimulationResult:
    step_nl: int
    end_ms: int
    delivered_nl: int
    """True volume through the pump outlet."""
    commanded_nl: int
    """Steps times the nominal step volume: what the firmware believes it delivered."""
    steps: int
    refills: int
    eri_at_ms: int | None
    eos_at_ms: int | None
    alarms: list[tuple[AlarmCode, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    events: int = 0
    samples: list[Sample] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object: every time in seconds from the start of the run."""
        return {
            "step_nl": self.step_nl,
            "duration_s": _seconds(self.end_ms),
            "delivered_nl": self.delivered_nl,
            "commanded_nl": self.commanded_nl,
            "steps": self.steps,
            "refills": self.refills,
            "eri_at_s": None if self.eri_at_ms is None else _seconds(self.eri_at_ms),
            "eos_at_s": None if self.eos_at_ms is None else _seconds(self.eos_at_ms),
            "eri_to_eos_days": None
            if self.eri_at_ms is None or self.eos_at_ms is None
            else _days(self.eos_at_ms - self.eri_at_ms),
            "alarms": [{"code": code.name, "at_s": _seconds(at)} for code, at in self.alarms],
            "warnings": self.warnings,
            "events": self.events,
        }


def _seconds(ms: int) -> int | float:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def _days(ms: int) -> float:
    return round(ms / MS_PER_DAY, 3)


def simulate(spec: SimulationSpec, progress: Callable[[int], None] | None = None) -> SimulationResult:
    """Fill the pump, commit the program and run. ``progress(now_ms)`` is called as time moves."""
    cfg = PumpConfig.profile(
        spec.reservoir_ml, stroke_error_nl_per_step=spec.stroke_error_nl_per_step, step_volume_nl=spec.step_volume_nl
    )
    pump = Pump(cfg)
    capacity = cfg.reservoir_capacity_nl
    pump.refill(0, capacity, spec.concentration_ug_per_ml)
    check = pump.commit_program(spec.program, override_soft_limits=True)
    result = SimulationResult(cfg.step_volume_nl, 0, 0, 0, 0, 0, None, None)
    if check.soft_limit_overridden:
        result.warnings.append(
            f"the program crosses a soft limit (up to {check.max_dose_ng_per_day / NG_PER_UG:g} ug/day): "
            "a programmer would ask for an explicit override"
        )
    seen = pump.log.next_seq
    end = spec.duration_ms
    while True:
        nxt = pump.next_event_ms()
        target = nxt if end is None else end if nxt is None else min(nxt, end)
        if target is None:  # nothing will ever change again
            break
        pump.advance(target)
        for entry in pump.log.page(seen, pump.log.next_seq - seen):
            if entry.kind is LogEventKind.ALARM_RAISED:
                result.alarms.append((AlarmCode(entry.code), entry.at_ms))
        seen = pump.log.next_seq
        if spec.auto_refill and pump.alarms.is_active(AlarmCode.LOW_RESERVOIR) and pump.eos_at_ms is None:
            pump.refill(pump.acc.true_reservoir_nl, capacity, spec.concentration_ug_per_ml)
            result.refills += 1
            seen = pump.log.next_seq
        if spec.keep_samples:
            st = pump.status()
            result.samples.append(
                Sample(
                    st.now_ms,
                    st.reservoir_estimate_nl,
                    st.true_reservoir_nl,
                    st.battery_charge_pc * 1000 // cfg.battery.capacity_pc,
                    st.effective_rate_nl_per_day,
                )
            )
        if progress is not None:
            progress(pump.now_ms)
        if pump.eos_at_ms is not None and end is None:
            break
        if end is not None and pump.now_ms >= end:
            break
    result.end_ms = pump.now_ms
    result.delivered_nl = pump.acc.delivered_true_nl
    result.steps = pump.acc.steps_total
    result.commanded_nl = result.steps * cfg.step_volume_nl
    result.eri_at_ms, result.eos_at_ms = pump.eri_at_ms, pump.eos_at_ms
    result.events = pump.events_processed
    return result


# ---------------------------------------------------------------------- parsing helpers


def parse_days(text: str) -> int:
    """'30', '1.5', '0.25' days -> milliseconds, exactly (no float)."""
    try:
        days = Fraction(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise SpecError(f"--days takes a number of days such as 30 or 1.5, not {text!r}") from exc
    ms = days * MS_PER_DAY
    if ms <= 0 or ms.denominator != 1:
        raise SpecError(f"--days {text}: must be positive and a whole number of milliseconds")
    return int(ms)


def parse_dose_ug(text: str, what: str = "dose") -> int:
    """'300', '12.5' ug -> nanograms, exactly."""
    try:
        ng = Fraction(text) * NG_PER_UG
    except (ValueError, ZeroDivisionError) as exc:
        raise SpecError(f"{what} takes micrograms such as 300 or 12.5, not {text!r}") from exc
    if ng < 0 or ng.denominator != 1:
        raise SpecError(f"{what} {text} ug: must be positive and a whole number of nanograms")
    return int(ng)


def continuous_program(dose_ng_per_day: int, concentration_ug_per_ml: int) -> Program:
    return Program(TherapyMode.CONTINUOUS, concentration_ug_per_ml, dose_ng_per_day, 0, 0, 0, ())


def _clock(text: str) -> int:
    """'07:30' -> ms of day."""
    try:
        hh, mm = text.split(":")
        h, m = int(hh), int(mm)
    except ValueError as exc:
        raise SpecError(f"a flex step starts at HH:MM, not {text!r}") from exc
    if not (0 <= h < 24 and 0 <= m < 60):
        raise SpecError(f"a flex step starts at HH:MM within a day, not {text!r}")
    return h * MS_PER_HOUR + m * 60_000


def spec_from_toml(path: Path) -> SimulationSpec:
    """Read a simulation from TOML (the format is in ``pumprig simulate --help``)."""
    try:
        doc = load_toml(path)
    except ValueError as exc:
        raise SpecError(str(exc)) from exc
    try:
        conc = int(doc.get("concentration_ug_per_ml", 500))
        prog = doc["program"]
        mode = str(prog.get("mode", "continuous")).lower()
        if mode == "continuous":
            program = continuous_program(parse_dose_ug(str(prog["dose_ug_per_day"]), "dose_ug_per_day"), conc)
        elif mode == "flex":
            steps = tuple(
                FlexStep(
                    int(s.get("day", 0)),
                    _clock(str(s["start"])),
                    parse_dose_ug(str(s["dose_ug_per_day"]), f"steps[{i}].dose_ug_per_day"),
                )
                for i, s in enumerate(prog["steps"])
            )
            program = Program(TherapyMode.FLEX, conc, 0, 0, 0, int(prog.get("cycle_days", 1)), steps)
        else:
            raise SpecError(f"{path}: program mode {mode!r}: use 'continuous' or 'flex'")
        until_eos = str(doc.get("until", "")).lower() == "eos"
        return SimulationSpec(
            program=program,
            reservoir_ml=int(doc.get("reservoir_ml", 20)),
            concentration_ug_per_ml=conc,
            duration_ms=None if until_eos else parse_days(str(doc.get("days", 30))),
            auto_refill=bool(doc.get("auto_refill", False)),
            stroke_error_nl_per_step=int(doc.get("stroke_error_nl_per_step", 0)),
            step_volume_nl=int(doc.get("step_volume_nl", 250)),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError(
            f"{path}: {exc!r}: expected [program] with mode = 'continuous' and dose_ug_per_day, or mode = 'flex', "
            "cycle_days and [[program.steps]] tables with day, start = 'HH:MM' and dose_ug_per_day"
        ) from exc
