"""A clinician programmer's workflows, apart from how they are shown: build, compare, stage, commit.

Every change ends with the finish step (DOMAIN.md: "programmer finish screen"): the old and the
new settings side by side (``Change.rows``), a confirmation, then COMMIT of the token the pump
returned for exactly what was staged. A declined confirmation sends ABORT: the running program
continues unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

from protocol_spec import messages as m
from protocol_spec.enums import StageKind, TherapyMode

from .calc import fmt_ml, fmt_ug, rate_for_dose, schedule_mean_ng_per_day
from .errors import ProgrammerError, UsageError, quantity

__all__ = [
    "Change",
    "Finished",
    "StageMismatch",
    "bridge_duration_ms",
    "continuous_program",
    "flex_program",
    "minimum_rate_program",
    "program_settings",
    "refill_flag",
    "side_by_side",
    "single_bolus_program",
    "stage_and_commit",
    "stopped_program",
]

DEFAULT_DISCREPANCY_TOLERANCE_NL = 1_000_000
"""A refill discrepancy beyond 1 mL (or 10 % of the expected volume, whichever is larger) is flagged.
Our choice, not a vendor's (DOMAIN.md: "less than expected suggests over-infusion")."""


class StageMismatch(ProgrammerError):
    """The pump's StageReply does not describe what was asked: aborted, nothing applied."""

    exit_code = 3


class _Committer(Protocol):
    def commit(self, stage_token: int) -> m.CommitReply: ...
    def abort(self) -> m.Ack: ...


# ---------------------------------------------------------------------- programs


def stopped_program() -> m.Program:
    return m.Program(TherapyMode.STOPPED, 0, 0, 0, 0, 0, ())


def minimum_rate_program() -> m.Program:
    return m.Program(TherapyMode.MINIMUM_RATE, 0, 0, 0, 0, 0, ())


def continuous_program(concentration_ug_per_ml: int, dose_ng_per_day: int) -> m.Program:
    return m.Program(TherapyMode.CONTINUOUS, concentration_ug_per_ml, dose_ng_per_day, 0, 0, 0, ())


def single_bolus_program(concentration_ug_per_ml: int, dose_ng: int, duration_ms: int) -> m.Program:
    if duration_ms < 1:
        raise UsageError("a single bolus needs a duration of at least 1 ms")
    return m.Program(TherapyMode.SINGLE_BOLUS, concentration_ug_per_ml, 0, dose_ng, duration_ms, 0, ())


def flex_program(concentration_ug_per_ml: int, cycle_days: int, steps: list[m.FlexStep]) -> m.Program:
    """A flex program from steps in any order; the SPEC's schedule rules are checked here."""
    if not 1 <= cycle_days <= m.MAX_FLEX_DAYS:
        raise UsageError(f"--cycle-days is 1 to {m.MAX_FLEX_DAYS}, not {cycle_days}")
    if not steps:
        raise UsageError("a flex program needs at least one --step, the first at 00:00 of day 0")
    ordered = sorted(steps, key=lambda s: (s.day, s.start_ms_of_day))
    if (ordered[0].day, ordered[0].start_ms_of_day) != (0, 0):
        raise UsageError("the first flex step must start at 00:00 of day 0 (e.g. --step 00:00=300)")
    seen: set[tuple[int, int]] = set()
    per_day: dict[int, int] = {}
    for step in ordered:
        if step.day >= cycle_days:
            raise UsageError(f"a step on day {step.day} lies outside a {cycle_days}-day cycle (days are 0-based)")
        if (step.day, step.start_ms_of_day) in seen:
            raise UsageError(f"two steps start at the same time on day {step.day}")
        seen.add((step.day, step.start_ms_of_day))
        per_day[step.day] = per_day.get(step.day, 0) + 1
        if per_day[step.day] > m.MAX_FLEX_STEPS_PER_DAY:
            raise UsageError(f"day {step.day} has more than {m.MAX_FLEX_STEPS_PER_DAY} steps")
    return m.Program(TherapyMode.FLEX, concentration_ug_per_ml, 0, 0, 0, cycle_days, tuple(ordered))


def max_daily_dose(program: m.Program) -> int:
    """The highest daily dose rate a basal program delivers (what StageReply reports)."""
    if program.mode is TherapyMode.CONTINUOUS:
        return program.dose_ng_per_day
    if program.mode is TherapyMode.FLEX:
        return max((s.dose_ng_per_day for s in program.steps), default=0)
    return 0


# ---------------------------------------------------------------------- the finish step


@dataclass(frozen=True)
class Change:
    """What a workflow is about to do: a title and (setting, old, new) rows."""

    title: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Finished:
    """How the finish step ended: committed (with the pump's replies) or declined (aborted)."""

    committed: bool
    stage: m.StageReply
    commit: m.CommitReply | None = None


def _hhmm(ms_of_day: int) -> str:
    minutes = ms_of_day // 60_000
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def program_settings(program: m.Program) -> dict[str, str]:
    """A program as clinician-readable settings (setting -> value)."""
    out: dict[str, str] = {"mode": program.mode.name}
    conc = program.concentration_ug_per_ml
    if program.mode in (TherapyMode.CONTINUOUS, TherapyMode.FLEX, TherapyMode.SINGLE_BOLUS):
        out["concentration"] = f"{conc} ug/mL"
    if program.mode is TherapyMode.CONTINUOUS:
        out["daily dose"] = fmt_ug(program.dose_ng_per_day, "/day")
        if conc:
            out["rate"] = fmt_ml(rate_for_dose(program.dose_ng_per_day, conc).rate_nl_per_day, "/day")
    elif program.mode is TherapyMode.FLEX:
        out["cycle"] = f"{program.cycle_days} day(s)"
        for step in program.steps:
            label = f"step day {step.day} {_hhmm(step.start_ms_of_day)}"
            out[label] = fmt_ug(step.dose_ng_per_day, "/day")
        out["mean daily dose"] = fmt_ug(schedule_mean_ng_per_day(program.steps, program.cycle_days), "/day")
    elif program.mode is TherapyMode.SINGLE_BOLUS:
        out["bolus dose"] = fmt_ug(program.bolus_dose_ng)
        out["bolus duration"] = quantity(program.bolus_duration_ms, "ms")
    elif program.mode is TherapyMode.MINIMUM_RATE:
        out["rate"] = "the drug library's minimum rate"
    else:
        out["delivery"] = "none (pump stopped)"
    return out


def side_by_side(old: dict[str, str], new: dict[str, str]) -> list[tuple[str, str, str]]:
    """Rows (setting, old, new) over the union of the settings, old ones first."""
    keys = list(old) + [k for k in new if k not in old]
    return [(k, old.get(k, "-"), new.get(k, "-")) for k in keys]


def stage_and_commit(
    prog: _Committer,
    stage: Callable[[], m.StageReply],
    confirm: Callable[[m.StageReply], bool],
    *,
    expect_kind: StageKind,
    expect_max_dose_ng_per_day: int | None = None,
) -> Finished:
    """Stage (the client checks the token), check what the pump says it will do, confirm, commit.

    A StageReply of another kind or dose is aborted and raised as StageMismatch; a declined
    confirmation is aborted and returned as ``Finished(committed=False)``.
    """
    reply = stage()
    wrong = ""
    if reply.kind != expect_kind:
        wrong = f"the pump staged a {StageKind(reply.kind).name} change, not {expect_kind.name}"
    elif expect_max_dose_ng_per_day is not None and reply.max_dose_ng_per_day != expect_max_dose_ng_per_day:
        wrong = (
            f"the pump would deliver up to {fmt_ug(reply.max_dose_ng_per_day, '/day')}, not the "
            f"{fmt_ug(expect_max_dose_ng_per_day, '/day')} asked"
        )
    if wrong:
        prog.abort()
        raise StageMismatch(f"{wrong}: aborted, nothing was applied")
    if not confirm(reply):
        prog.abort()
        return Finished(False, reply)
    return Finished(True, reply, prog.commit(reply.stage_token))


# ---------------------------------------------------------------------- refill


def refill_flag(reply: m.RefillReply, tolerance_nl: int | None = None) -> str | None:
    """'possible over-infusion' / 'possible under-infusion' when aspirated and expected differ too much."""
    tolerance = tolerance_nl
    if tolerance is None:
        tolerance = max(DEFAULT_DISCREPANCY_TOLERANCE_NL, reply.expected_volume_nl // 10)
    if reply.discrepancy_nl < -tolerance:
        return (
            f"possible OVER-infusion: {fmt_ml(-reply.discrepancy_nl)} less aspirated than expected "
            "(the low-reservoir alarm is calculated, so an over-infusing pump empties without warning)"
        )
    if reply.discrepancy_nl > tolerance:
        return (
            f"possible UNDER-infusion: {fmt_ml(reply.discrepancy_nl)} more aspirated than expected "
            "(a blocked or kinked catheter, or a motor stall)"
        )
    return None


def bridge_duration_ms(bridge_volume_nl: int, old_concentration_ug_per_ml: int, dose_ng_per_day: int) -> int:
    """Time to deliver the old drug left in tubing and catheter at the running daily dose."""
    if dose_ng_per_day <= 0 or old_concentration_ug_per_ml <= 0:
        raise UsageError("a bridge bolus needs a running daily dose and the old concentration")
    old_drug_ng = Fraction(bridge_volume_nl * old_concentration_ug_per_ml, 1000)
    return max(1, int(old_drug_ng * m.MS_PER_DAY / dose_ng_per_day))
