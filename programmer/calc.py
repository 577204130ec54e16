"""The programmer's arithmetic and its local guards: pure, exact, integer units, no I/O.

Doses and rates (SPEC.md, "Therapy modes"; 1 ug/mL = 1 ng/uL):

    rate_nl_per_day = dose_ng_per_day * 1000 // concentration_ug_per_ml     (rounded down)
    dose_ng_per_day = rate_nl_per_day * concentration_ug_per_ml // 1000     (rounded down)

User input ("12.5", "0.25") is parsed exactly with ``fractions.Fraction``: never a float, so
"0.1" ug is exactly 100 ng. A value that does not come to a whole number of the wire unit is
refused, not rounded.

Guards against the documented programming errors (DOMAIN.md), all raised before anything is sent:

- **Per-hour doses in flex steps** (60 ug per hour entered as 60 ug/day): a step dose is a
  daily rate. ``--per-hour`` converts an hourly figure explicitly (x 24); without it, a schedule
  that looks hourly (a step dose below the drug library's lowest rate, or a daily mean 12 times
  or more below the running dose) is refused with a sentence about units (``UnitsError``).
- **Concentration entry mistakes**: a concentration not in the drug library, or not the one the
  pump holds, is refused (``UsageError``).
- **Limits** from ``read_limits()``: above the hard limit is refused with no way round; above
  the soft limit (or a rise above the allowed increase per 24 h) needs an explicit override
  (``LocalRefusal``, exit code 4 like the pump's own refusal, but nothing was sent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from protocol_spec import messages as m
from protocol_spec.enums import ErrorCode, MsgType

from .errors import PumpRefused, UsageError, quantity

__all__ = [
    "DoseRate",
    "LocalRefusal",
    "UnitsError",
    "check_bolus_dose",
    "check_concentration",
    "check_daily_dose",
    "check_per_hour",
    "check_rate",
    "dose_for_rate",
    "fmt_ml",
    "fmt_ug",
    "parse_decimal",
    "parse_duration_ms",
    "parse_flex_step",
    "parse_scaled",
    "rate_for_dose",
    "schedule_mean_ng_per_day",
]

MS_PER_DAY = m.MS_PER_DAY
PER_HOUR_FACTOR = 24
SUSPICIOUS_CUT = 12
"""A new daily mean this many times (or more) below the running dose looks like an hourly figure."""

_DECIMAL = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|min|m|h|d)")
_MS_PER_UNIT = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": MS_PER_DAY}
_STEP = re.compile(r"^\s*(?:(\d+)/)?(\d{1,2}):(\d{2})\s*=\s*(.+?)\s*$")


class UnitsError(UsageError):
    """A figure that looks like it was entered in the wrong unit (per hour instead of per day)."""


class LocalRefusal(PumpRefused):
    """The pump's drug library refuses it: found here, before anything was sent (exit code 4)."""

    def __init__(self, code: ErrorCode, hi: int, *, msg_type: MsgType, unit: str, hint: str = "") -> None:
        super().__init__(code, hi=hi, msg_type=msg_type)
        limit = quantity(hi, unit)
        if code is ErrorCode.HARD_LIMIT:
            what = f"above the pump's hard limit of {limit}; no override"
        elif code is ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE:
            what = f"above the soft limit of {limit}: repeat with --override once the clinician has confirmed it"
        else:
            what = f"out of range (limit {limit})"
        self.sentence = f"refused before sending (the pump's drug library): {what}{hint}"
        Exception.__init__(self, f"{msg_type.name} {self.sentence}")


# ---------------------------------------------------------------------- parsing


def parse_decimal(text: str, what: str) -> Fraction:
    """A non-negative decimal number, exactly ("12.5" -> 25/2); UsageError otherwise."""
    match = _DECIMAL.match(text)
    if match is None:
        raise UsageError(f"{what} must be a plain decimal number such as 300 or 12.5, not {text!r}")
    whole, frac = match.groups()
    return Fraction(int(whole + (frac or "")), 10 ** len(frac or ""))


def parse_scaled(text: str, what: str, scale: int, unit: str) -> int:
    """A decimal figure in a clinician's unit as an integer wire value (ug -> ng: scale 1000)."""
    value = parse_decimal(text, what) * scale
    if value.denominator != 1:
        raise UsageError(f"{what} {text} is finer than 1 {unit}, the smallest step the pump takes")
    return int(value)


def parse_duration_ms(text: str, what: str = "duration") -> int:
    """``90s``, ``30m``, ``1h30m``, ``2d``, ``250ms`` (or a bare number of seconds) as ms."""
    stripped = text.strip().lower().replace(" ", "")
    if _DECIMAL.match(stripped):
        total = parse_decimal(stripped, what) * 1000
    else:
        parts = list(_DURATION_PART.finditer(stripped))
        if not parts or "".join(p.group(0) for p in parts) != stripped:
            raise UsageError(f"{what} must look like 90s, 30m, 1h30m or 2d, not {text!r}")
        total = sum((parse_decimal(p.group(1), what) * _MS_PER_UNIT[p.group(2)] for p in parts), Fraction(0))
    if total.denominator != 1:
        raise UsageError(f"{what} {text} is finer than 1 ms")
    return int(total)


def parse_flex_step(text: str, *, per_hour: bool) -> m.FlexStep:
    """``[DAY/]HH:MM=DOSE`` (DAY 0-based, default 0; DOSE in ug per day, or per hour with ``per_hour``)."""
    match = _STEP.match(text)
    if match is None:
        raise UsageError(f"a flex step is [DAY/]HH:MM=DOSE_UG (e.g. 08:00=350 or 1/22:30=300), not {text!r}")
    day_text, hh, mm, dose_text = match.groups()
    day, hours, minutes = int(day_text or 0), int(hh), int(mm)
    if hours > 23 or minutes > 59:
        raise UsageError(f"{hh}:{mm} is not a time of day (00:00 to 23:59) in flex step {text!r}")
    if day >= m.MAX_FLEX_DAYS:
        raise UsageError(f"day {day} of flex step {text!r} is past the longest cycle (days 0 to {m.MAX_FLEX_DAYS - 1})")
    dose = parse_scaled(dose_text, f"the dose of flex step {text!r}", 1000, "ng")
    if per_hour:
        dose *= PER_HOUR_FACTOR
    return m.FlexStep(day, (hours * 60 + minutes) * 60_000, dose)


# ---------------------------------------------------------------------- arithmetic


@dataclass(frozen=True)
class DoseRate:
    """A daily dose and the rate that delivers it at a concentration, as the pump computes them."""

    dose_ng_per_day: int
    concentration_ug_per_ml: int
    rate_nl_per_day: int


def _check_conc(concentration_ug_per_ml: int) -> None:
    if not 0 < concentration_ug_per_ml <= m.MAX_CONCENTRATION_UG_PER_ML:
        raise UsageError(
            f"the concentration must be 1 to {m.MAX_CONCENTRATION_UG_PER_ML} ug/mL, not {concentration_ug_per_ml}"
        )


def rate_for_dose(dose_ng_per_day: int, concentration_ug_per_ml: int) -> DoseRate:
    """The rate (nL/day, rounded down as the pump rounds) of a daily dose at a concentration."""
    _check_conc(concentration_ug_per_ml)
    rate = dose_ng_per_day * 1000 // concentration_ug_per_ml
    return DoseRate(dose_ng_per_day, concentration_ug_per_ml, rate)


def dose_for_rate(rate_nl_per_day: int, concentration_ug_per_ml: int) -> DoseRate:
    """The daily dose (ng/day, rounded down) a rate delivers at a concentration."""
    _check_conc(concentration_ug_per_ml)
    dose = rate_nl_per_day * concentration_ug_per_ml // 1000
    return DoseRate(dose, concentration_ug_per_ml, rate_nl_per_day)


def schedule_mean_ng_per_day(steps: tuple[m.FlexStep, ...], cycle_days: int) -> Fraction:
    """The time-weighted mean daily dose of a flex schedule over its cycle (steps sorted)."""
    if not steps or cycle_days < 1:
        return Fraction(0)
    cycle_ms = cycle_days * MS_PER_DAY
    starts = [s.day * MS_PER_DAY + s.start_ms_of_day for s in steps]
    total = Fraction(0)
    for i, step in enumerate(steps):
        end = starts[i + 1] if i + 1 < len(steps) else cycle_ms
        total += Fraction(step.dose_ng_per_day * (end - starts[i]))
    return total / cycle_ms


def fmt_ug(ng: int | Fraction, per: str = "") -> str:
    """ng as ug, exactly (300000 -> '300', 12500 -> '12.5')."""
    value = Fraction(ng) / 1000
    text = _decimal_text(value)
    return f"{text} ug{per}"


def fmt_ml(nl: int | Fraction, per: str = "") -> str:
    """nL as mL (20000000 -> '20', 600000 -> '0.6')."""
    return f"{_decimal_text(Fraction(nl) / 1_000_000)} mL{per}"


def _decimal_text(value: Fraction, places: int = 6) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    scaled = value * 10**places
    rounded = int(scaled) + (1 if scaled - int(scaled) >= Fraction(1, 2) else 0)
    whole, frac = divmod(rounded, 10**places)
    frac_text = f"{frac:0{places}d}".rstrip("0")
    approx = "~" if Fraction(rounded, 10**places) != value else ""
    return f"{approx}{sign}{whole}" + (f".{frac_text}" if frac_text else "")


# ---------------------------------------------------------------------- guards


def check_concentration(concentration_ug_per_ml: int, limits: m.DrugLimits, held_ug_per_ml: int | None) -> None:
    """A concentration entered by hand: in the drug library, and (when given) the one the pump holds."""
    allowed = [c.ug_per_ml for c in limits.concentrations]
    if allowed and concentration_ug_per_ml not in allowed:
        listed = ", ".join(str(c) for c in allowed)
        raise UsageError(
            f"{concentration_ug_per_ml} ug/mL is not a concentration of the drug library ({listed} ug/mL): "
            "check the vial's label"
        )
    if held_ug_per_ml is not None and concentration_ug_per_ml != held_ug_per_ml:
        held = f"{held_ug_per_ml} ug/mL" if held_ug_per_ml else "no drug"
        raise UsageError(
            f"the pump's reservoir holds {held}, not {concentration_ug_per_ml} ug/mL: a concentration entry "
            "mistake changes the dose by the same factor. Check the refill record; change the concentration "
            "only with `pumprig refill`"
        )


def check_daily_dose(
    dose_ng_per_day: int,
    limits: m.DrugLimits,
    *,
    override: bool,
    running_ng_per_day: int = 0,
    msg_type: MsgType = MsgType.STAGE_PROGRAM,
) -> bool:
    """Hard limit: refused. Soft limit or a rise above the allowed 24 h increase: needs ``override``.

    Returns True if a soft limit is crossed (under override).
    """
    if limits.hard_limit_ng_per_day and dose_ng_per_day > limits.hard_limit_ng_per_day:
        raise LocalRefusal(
            ErrorCode.HARD_LIMIT,
            limits.hard_limit_ng_per_day,
            msg_type=msg_type,
            unit="ng/day",
            hint=f" ({fmt_ug(dose_ng_per_day, '/day')} asked)",
        )
    crossed = False
    if limits.soft_limit_ng_per_day and dose_ng_per_day > limits.soft_limit_ng_per_day:
        if not override:
            raise LocalRefusal(
                ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE,
                limits.soft_limit_ng_per_day,
                msg_type=msg_type,
                unit="ng/day",
                hint=f" ({fmt_ug(dose_ng_per_day, '/day')} asked)",
            )
        crossed = True
    if running_ng_per_day and limits.soft_increase_permille_per_24h:
        ceiling = running_ng_per_day * (1000 + limits.soft_increase_permille_per_24h) // 1000
        if dose_ng_per_day > ceiling:
            if not override:
                raise LocalRefusal(
                    ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE,
                    ceiling,
                    msg_type=msg_type,
                    unit="ng/day",
                    hint=(
                        f": a rise from {fmt_ug(running_ng_per_day, '/day')} of more than "
                        f"{limits.soft_increase_permille_per_24h / 10:g} % in 24 h"
                    ),
                )
            crossed = True
    return crossed


def check_rate(dose: DoseRate, limits: m.DrugLimits) -> None:
    """The rate of a non-zero dose must lie within the drug library's programmable rates."""
    if dose.dose_ng_per_day == 0:
        return
    lo, hi = limits.min_rate_nl_per_day, limits.max_rate_nl_per_day
    if hi and dose.rate_nl_per_day > hi:
        raise UsageError(
            f"{fmt_ug(dose.dose_ng_per_day, '/day')} at {dose.concentration_ug_per_ml} ug/mL needs "
            f"{fmt_ml(dose.rate_nl_per_day, '/day')}, above the pump's highest rate of {fmt_ml(hi, '/day')}"
        )
    if dose.rate_nl_per_day < lo:
        raise UsageError(
            f"{fmt_ug(dose.dose_ng_per_day, '/day')} at {dose.concentration_ug_per_ml} ug/mL needs "
            f"{fmt_ml(dose.rate_nl_per_day, '/day')}, below the pump's lowest rate of {fmt_ml(lo, '/day')} "
            "(use `program minimum-rate` for the lowest rate)"
        )


def check_bolus_dose(dose_ng: int, limits: m.DrugLimits, msg_type: MsgType) -> None:
    if limits.max_bolus_ng and dose_ng > limits.max_bolus_ng:
        raise LocalRefusal(
            ErrorCode.HARD_LIMIT,
            limits.max_bolus_ng,
            msg_type=msg_type,
            unit="ng",
            hint=f" ({fmt_ug(dose_ng)} asked; the largest bolus)",
        )


def check_per_hour(
    steps: tuple[m.FlexStep, ...],
    cycle_days: int,
    *,
    concentration_ug_per_ml: int,
    limits: m.DrugLimits,
    running_ng_per_day: int,
    per_hour: bool,
    units_confirmed: bool,
) -> None:
    """Refuse a flex schedule whose doses look like per-hour figures entered as per-day ones.

    Nothing is refused when the clinician said ``--per-hour`` (the doses were converted) or
    confirmed the daily units explicitly (``units_confirmed``).
    """
    if per_hour or units_confirmed or not steps:
        return
    advice = (
        "Flex step doses are daily doses (ug/day), whatever the step's length. If these are ug per hour, "
        "repeat with --per-hour (they are multiplied by 24); if they really are ug per day, repeat with "
        "--confirm-daily-units"
    )
    for step in steps:
        if step.dose_ng_per_day == 0:
            continue
        rate = step.dose_ng_per_day * 1000 // concentration_ug_per_ml
        if rate < limits.min_rate_nl_per_day:
            raise UnitsError(
                f"the step at day {step.day} {_hhmm(step.start_ms_of_day)} asks for "
                f"{fmt_ug(step.dose_ng_per_day, '/day')}, below the pump's lowest rate: it looks like a per-hour "
                f"figure. {advice}"
            )
    mean = schedule_mean_ng_per_day(steps, cycle_days)
    if running_ng_per_day and mean * SUSPICIOUS_CUT <= running_ng_per_day:
        raise UnitsError(
            f"the schedule's mean of {fmt_ug(mean, '/day')} is {_ratio(running_ng_per_day, mean)} times below the "
            f"running {fmt_ug(running_ng_per_day, '/day')}: it looks like per-hour figures (a day has 24 hours), "
            f"and a cut that deep risks baclofen withdrawal. {advice}"
        )


def _ratio(a: int, b: Fraction) -> str:
    return "infinitely many" if b == 0 else f"{float(Fraction(a) / b):.1f}"


def _hhmm(ms_of_day: int) -> str:
    minutes = ms_of_day // 60_000
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
