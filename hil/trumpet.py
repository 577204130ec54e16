"""Trumpet curves of a stepping pump: the IEC 60601-2-24 method, the same on implant time scales,
and the quantization bound no scheduler can beat. Pure: integers in, values out.

The IEC method (IEC 60601-2-24, the start-up and trumpet curves of an infusion pump). The
standard runs the pump for T = 120 min at the set rate r, weighs the delivered fluid on a
balance every S = 0.5 min and turns each interval's mass into a flow Q_i. Its trumpet curve is
computed over the analysis period T2, the second hour: for each observation window
P in (2, 5, 11, 19, 31) min, with m = P / S samples per window, every window of m consecutive
samples that starts on a sample and ends inside T2 (k = T2/S - m + 1 windows, each one sample
after the previous: they overlap by m - 1 samples) gets the mean of its samples' percentage
errors, (S/P) * sum 100 * (Q_i - r) / r, and Ep(max), Ep(min) are the largest and smallest of
these. The overall error is A = 100 * (Q - r) / r with Q the mean flow over T2.

What is computed here, and how it maps onto that:

* The balance reading at time t is the volume of the motor steps taken at times <= t. A sample
  is therefore the half-open interval (t, t + S]: the steps with ``t < time <= t + S``. This is
  the balance's convention (the reading at t includes what fell at t, the flow of interval i is
  W_i - W_(i-1)) and the pump's own (``Pump.advance(t)`` has taken the steps due at t), so the
  cumulative volume at every sample boundary is what the pump reports there, and the floor
  scheduler's is exactly floor(ideal) there. Every step counts in exactly one sample.
* The flow of a sample is its volume (steps * step volume, exact integers) over S; the mean of
  a window's percentage errors is then exactly its volume's percentage error against r * P:
  Ep = 100 * (V_window - r*P) / (r*P), which is what is computed, with exact integer/Fraction
  arithmetic until the percentage is reported as a float. A = 100 * (V_T2 - r*T2) / (r*T2).
* The grid starts at the analysis start; windows start on every sample of it and lie inside
  the analysis period (k windows for each P, as in the standard). The rate is the set rate,
  constant over the analysis period (an integer in nL/day; a program that changes the rate in
  the analysis period is outside this method, as it is outside the standard's).
* There is no balance noise, evaporation or start-up compliance: this measures the scheduler
  (when the steps fall), not a fluid path. ``IEC`` reproduces the standard's figures for the
  emulated pump: run it for 120 min from ``run_start_ms`` and it analyses the second hour.

Implant time scales. At implant rates (a few tens of uL to a few mL a day) a 2-minute window
holds from a few hundredths of a step (25 ug/day at 2000 ug/mL: 12.5 uL/day, 50 steps/day) to
about 20 steps (4 mL/day), so the IEC curve of any stepping pump reads -100 % and over +1000 %
at the low end: it measures the step size, not the pump. ``IMPLANT`` keeps the method and
scales the time: windows of 30 min and 1, 2, 6, 12 and 24 h (1 h holds about two steps at the
lowest clinical rate; 30 min is there so that a scheduler that bursts once an hour shows; the
longest is the unit the dose is prescribed in), a sample every
15 min (a divisor of every window: windows slide in quarter hours), and an analysis period the
caller chooses, by default the second and third day of a 3-day run (the standard's "skip the
first part, analyse the rest", with the longest window half the period as in the IEC method).
Windows of fixed time rather than of a fixed number of steps, because the clinical question is
the dose over a time.

The quantization bound (``quantization_bound``): what the best possible scheduler shows on the
same windows with the same step volume; ``TrumpetCurve.on_bound`` / ``at_bound`` set a curve
against it. ``ideal_step_times`` is the pump's own (floor) scheduler, ``burst_step_times`` a
deliberately naive one, both pure generators of step times.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from firmware_model.delivery import ms_to_reach, step_quantum_nlms
from firmware_model.units import MS_PER_DAY, MS_PER_HOUR

__all__ = [
    "IEC",
    "IMPLANT",
    "MS_PER_MINUTE",
    "TrumpetCurve",
    "TrumpetMethod",
    "burst_step_times",
    "ideal_step_count",
    "ideal_step_times",
    "quantization_bound",
    "sample_counts",
    "trumpet_curve",
]

MS_PER_MINUTE = 60_000


# ---------------------------------------------------------------------------- the bound


def ideal_step_count(rate_nl_per_day: int, step_nl: int, window_ms: int) -> Fraction:
    """r*P/s: how many steps the set rate is worth in a window (exact)."""
    return Fraction(rate_nl_per_day * window_ms, step_quantum_nlms(step_nl))


def _percent(steps: int, rate_nl_per_day: int, step_nl: int, window_ms: int) -> float:
    """100 * (steps*s - r*P) / (r*P), exact until the float."""
    ideal_nlms = rate_nl_per_day * window_ms
    return float(Fraction(100 * (steps * step_quantum_nlms(step_nl) - ideal_nlms), ideal_nlms))


def quantization_bound(rate_nl_per_day: int, step_nl: int, window_ms: int) -> tuple[float, float]:
    """(upper, lower): the tightest Ep(max) and Ep(min), in percent, that any scheduler of
    whole steps of ``step_nl`` can show at ``rate_nl_per_day`` on windows of ``window_ms``.

    With x = r*P/s the window's ideal step count, upper = 100 * (ceil(x)*s - r*P) / (r*P) and
    lower = 100 * (floor(x)*s - r*P) / (r*P): both 0 when x is whole, lower = -100 % when a
    window is worth less than one step.

    No scheduler does better over all window positions in the long run. Take any scheduler
    whose delivery keeps its long-run average equal to the ideal, i.e. its cumulative count
    stays within some B steps of the ideal r*t/s. P is a multiple of S, so windows P apart are
    grid windows too; L consecutive non-overlapping ones hold D(t0 + L*P) - D(t0) >= L*x - 2B
    steps in all. If x is not whole and every window held at most floor(x), they would hold at
    most L*x - L*frac(x): impossible once L > 2B / frac(x). So some window holds ceil(x) or
    more (Ep(max) >= upper) and, symmetrically, some window floor(x) or fewer (Ep(min) <=
    lower). If x is whole, any window holding n != x deviates by at least 100/x %, so (0, 0)
    is the best. A scheduler's only freedom is to keep every window at floor(x) or ceil(x):
    that is exactly the envelope (upper, lower).

    The floor scheduler reaches it. Its count up to t is floor(r*(t - t0)/Q) (Q = s * ms/day),
    so a window (a, a + P] holds floor(y + x) - floor(y) steps with y = r*(a - t0)/Q: floor(x)
    or ceil(x) for every window, on the grid or not (exactly x when x is whole). The count is
    ceil(x) when frac(y) >= 1 - frac(x). All quantities are integers, so the phase step from one
    grid window to the next, r*S/Q, is a fraction p/q: over q consecutive grid windows the
    phases are q points 1/q apart on the unit circle, and each of the two arcs [0, 1 - frac(x))
    and [1 - frac(x), 1) is a multiple of 1/q long (frac(x) = frac(m*p/q)), so each holds a
    point: both counts occur, and Ep(max) = upper, Ep(min) = lower. An analysis period with
    fewer than q window positions may show only one of them (``TrumpetCurve.shows_both``).
    """
    _check_positive(rate_nl_per_day=rate_nl_per_day, step_nl=step_nl, window_ms=window_ms)
    x = ideal_step_count(rate_nl_per_day, step_nl, window_ms)
    lo = x.numerator // x.denominator
    hi = -(-x.numerator // x.denominator)
    return _percent(hi, rate_nl_per_day, step_nl, window_ms), _percent(lo, rate_nl_per_day, step_nl, window_ms)


# ---------------------------------------------------------------------------- schedulers


def ideal_step_times(rate_nl_per_day: int, step_nl: int, start_ms: int, end_ms: int) -> list[int]:
    """The floor scheduler from an empty integral at ``start_ms``: the times of the steps taken
    in (start_ms, end_ms], step k (k >= 1) at the first millisecond t where
    rate * (t - start) >= k * step * MS_PER_DAY - ``firmware_model.delivery.ms_to_reach``, the
    rounding the pump itself uses (``Pump.step_times``)."""
    _check_span(start_ms, end_ms)
    _check_positive(step_nl=step_nl)
    if rate_nl_per_day < 0:
        raise ValueError(f"a rate is >= 0 nL/day, not {rate_nl_per_day}")
    if rate_nl_per_day == 0:
        return []
    q = step_quantum_nlms(step_nl)
    count = rate_nl_per_day * (end_ms - start_ms) // q
    return [start_ms + ms_to_reach(0, k * q, rate_nl_per_day) for k in range(1, count + 1)]


def burst_step_times(
    rate_nl_per_day: int, step_nl: int, start_ms: int, end_ms: int, every_ms: int = MS_PER_HOUR
) -> list[int]:
    """A deliberately naive scheduler: every ``every_ms`` after ``start_ms`` (the bursts in
    (start_ms, end_ms]) it takes, all at that millisecond, the steps the floor scheduler would
    have taken since the last burst. Same long-run average, and at every burst time exactly
    the floor scheduler's count: the same volume over whole periods."""
    _check_span(start_ms, end_ms)
    _check_positive(step_nl=step_nl, every_ms=every_ms)
    if rate_nl_per_day < 0:
        raise ValueError(f"a rate is >= 0 nL/day, not {rate_nl_per_day}")
    q = step_quantum_nlms(step_nl)
    out: list[int] = []
    for t in range(start_ms + every_ms, end_ms + 1, every_ms):
        due = rate_nl_per_day * (t - start_ms) // q
        out.extend(itertools.repeat(t, due - len(out)))
    return out


# ---------------------------------------------------------------------------- the method


def sample_counts(step_times_ms: Sequence[int], start_ms: int, end_ms: int, sample_ms: int) -> list[int]:
    """Steps per sample: sample i is (start + i*S, start + (i+1)*S], the steps taken after its
    start and up to and including its end. ``step_times_ms`` must be non-decreasing (not checked
    here: ``trumpet_curve`` checks it); end - start must be a whole number of samples."""
    _check_positive(sample_ms=sample_ms)
    _check_span(start_ms, end_ms)
    if (end_ms - start_ms) % sample_ms:
        raise ValueError(f"the period {end_ms - start_ms} ms is not a whole number of {sample_ms} ms samples")
    cumulative = [bisect.bisect_right(step_times_ms, t) for t in range(start_ms, end_ms + 1, sample_ms)]
    return [b - a for a, b in itertools.pairwise(cumulative)]


@dataclass(frozen=True)
class TrumpetCurve:
    """A trumpet curve and the quantization bound on the same windows (tuples in window order).

    ``max_steps``/``min_steps`` are the largest and smallest step counts seen in a window of
    each length; the percentages are those counts' deviations from r*P (Ep(max), Ep(min)).
    ``overall_percent`` is A. ``analysis_steps`` the steps in the whole analysis period."""

    windows_ms: tuple[int, ...]
    max_percent: tuple[float, ...]
    min_percent: tuple[float, ...]
    overall_percent: float
    bound_upper_percent: tuple[float, ...]
    bound_lower_percent: tuple[float, ...]
    sample_ms: int
    analysis_start_ms: int
    analysis_end_ms: int
    rate_nl_per_day: int
    step_nl: int
    max_steps: tuple[int, ...]
    min_steps: tuple[int, ...]
    analysis_steps: int
    method: str = "custom"

    def on_bound(self, tolerance_percent: float = 1e-9) -> bool:
        """Within the quantization bound on every window: Ep(max) <= upper + tol and
        Ep(min) >= lower - tol."""
        return all(
            hi <= up + tolerance_percent and lo >= low - tolerance_percent
            for hi, lo, up, low in zip(
                self.max_percent, self.min_percent, self.bound_upper_percent, self.bound_lower_percent, strict=True
            )
        )

    def ideal_steps(self) -> tuple[Fraction, ...]:
        """r*P/s for each window."""
        return tuple(ideal_step_count(self.rate_nl_per_day, self.step_nl, w) for w in self.windows_ms)

    def shows_both(self) -> tuple[bool, ...]:
        """For each window: did the analysis see two different counts? (A window worth a whole
        number of steps is True when it saw only that number: there is one count to see.)"""
        return tuple(
            hi != lo or (x.denominator == 1 and hi == x)
            for hi, lo, x in zip(self.max_steps, self.min_steps, self.ideal_steps(), strict=True)
        )

    def at_bound(self) -> bool:
        """Equal to the bound, exactly (on the step counts, no tolerance), where the analysis
        can show it. A window worth a whole x steps must hold exactly x everywhere (Ep = 0).
        Otherwise, where the analysis shows two different counts, they must be exactly ceil(x)
        and floor(x): Ep(max) = upper and Ep(min) = lower. Where it shows a single count (the
        grid visited only phases giving one of them: see ``quantization_bound``), that count
        must be floor(x) or ceil(x) - the curve is at the bound on the side it shows and the
        data cannot show the other (``shows_both`` says which windows those are).

        For whole steps this is ``on_bound`` made exact: a count strictly between floor(x) and
        ceil(x) does not exist. Its point is the claim of equality: a curve at the bound is the
        best any scheduler can show on these windows, not merely within it."""
        for hi, lo, x in zip(self.max_steps, self.min_steps, self.ideal_steps(), strict=True):
            floor_x = x.numerator // x.denominator
            ceil_x = -(-x.numerator // x.denominator)
            if hi != lo and (hi, lo) != (ceil_x, floor_x):
                return False
            if hi == lo and hi not in (floor_x, ceil_x):
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        """A plain dict (lists, ints, floats, strings)."""
        return {
            "method": self.method,
            "rate_nl_per_day": self.rate_nl_per_day,
            "step_nl": self.step_nl,
            "sample_ms": self.sample_ms,
            "analysis_start_ms": self.analysis_start_ms,
            "analysis_end_ms": self.analysis_end_ms,
            "analysis_steps": self.analysis_steps,
            "overall_percent": self.overall_percent,
            "windows": [
                {
                    "window_ms": w,
                    "ideal_steps": float(x),
                    "max_steps": hi_n,
                    "min_steps": lo_n,
                    "max_percent": hi,
                    "min_percent": lo,
                    "bound_upper_percent": up,
                    "bound_lower_percent": low,
                }
                for w, x, hi_n, lo_n, hi, lo, up, low in zip(
                    self.windows_ms,
                    self.ideal_steps(),
                    self.max_steps,
                    self.min_steps,
                    self.max_percent,
                    self.min_percent,
                    self.bound_upper_percent,
                    self.bound_lower_percent,
                    strict=True,
                )
            ],
            "on_bound": self.on_bound(),
            "at_bound": self.at_bound(),
        }


def trumpet_curve(
    step_times_ms: Sequence[int],
    *,
    step_nl: int,
    rate_nl_per_day: int,
    windows_ms: Sequence[int],
    sample_ms: int,
    analysis_start_ms: int,
    analysis_end_ms: int,
    method: str = "custom",
) -> TrumpetCurve:
    """The trumpet curve of the steps taken at ``step_times_ms`` (non-decreasing ms; steps
    outside the analysis period are ignored) at the constant set rate ``rate_nl_per_day``
    (> 0), with its quantization bound. Every window and the analysis period must be whole
    multiples of ``sample_ms``, and every window at most the analysis period."""
    _check_positive(step_nl=step_nl, rate_nl_per_day=rate_nl_per_day, sample_ms=sample_ms)
    _check_span(analysis_start_ms, analysis_end_ms)
    analysis_ms = analysis_end_ms - analysis_start_ms
    if analysis_ms == 0 or analysis_ms % sample_ms:
        raise ValueError(f"the analysis period ({analysis_ms} ms) must be a positive multiple of {sample_ms} ms")
    if not windows_ms:
        raise ValueError("no observation window")
    for w in windows_ms:
        if w <= 0 or w % sample_ms or w > analysis_ms:
            raise ValueError(
                f"window {w} ms: a window is a positive multiple of the {sample_ms} ms sample "
                f"and at most the {analysis_ms} ms analysis period"
            )
    if not all(map(operator.le, step_times_ms, itertools.islice(step_times_ms, 1, None))):
        raise ValueError("step times must be non-decreasing")
    counts = sample_counts(step_times_ms, analysis_start_ms, analysis_end_ms, sample_ms)
    prefix = [0, *itertools.accumulate(counts)]
    maxima: list[int] = []
    minima: list[int] = []
    for w in windows_ms:
        m = w // sample_ms
        sums = [b - a for a, b in zip(prefix, prefix[m:], strict=False)]  # the k = n - m + 1 windows
        maxima.append(max(sums))
        minima.append(min(sums))
    bounds = [quantization_bound(rate_nl_per_day, step_nl, w) for w in windows_ms]
    windows = tuple(windows_ms)
    return TrumpetCurve(
        windows_ms=windows,
        max_percent=tuple(_percent(n, rate_nl_per_day, step_nl, w) for n, w in zip(maxima, windows, strict=True)),
        min_percent=tuple(_percent(n, rate_nl_per_day, step_nl, w) for n, w in zip(minima, windows, strict=True)),
        overall_percent=_percent(prefix[-1], rate_nl_per_day, step_nl, analysis_ms),
        bound_upper_percent=tuple(b[0] for b in bounds),
        bound_lower_percent=tuple(b[1] for b in bounds),
        sample_ms=sample_ms,
        analysis_start_ms=analysis_start_ms,
        analysis_end_ms=analysis_end_ms,
        rate_nl_per_day=rate_nl_per_day,
        step_nl=step_nl,
        max_steps=tuple(maxima),
        min_steps=tuple(minima),
        analysis_steps=prefix[-1],
        method=method,
    )


@dataclass(frozen=True)
class TrumpetMethod:
    """A named set of parameters of ``trumpet_curve``: windows, sample interval and a default
    analysis period (``analysis_offset_ms`` after the run starts, ``analysis_ms`` long)."""

    name: str
    windows_ms: tuple[int, ...]
    sample_ms: int
    analysis_offset_ms: int
    analysis_ms: int

    def analysis_period(self, run_start_ms: int = 0) -> tuple[int, int]:
        """(start, end) of the default analysis period of a run starting at ``run_start_ms``."""
        start = run_start_ms + self.analysis_offset_ms
        return start, start + self.analysis_ms

    def run_end_ms(self, run_start_ms: int = 0) -> int:
        """How long to run for the default analysis period: its end."""
        return self.analysis_period(run_start_ms)[1]

    def curve(
        self,
        step_times_ms: Sequence[int],
        *,
        step_nl: int,
        rate_nl_per_day: int,
        run_start_ms: int = 0,
        analysis_start_ms: int | None = None,
        analysis_end_ms: int | None = None,
    ) -> TrumpetCurve:
        """``trumpet_curve`` with this method's windows and sample; the analysis period is the
        default one of a run from ``run_start_ms`` unless given."""
        start, end = self.analysis_period(run_start_ms)
        return trumpet_curve(
            step_times_ms,
            step_nl=step_nl,
            rate_nl_per_day=rate_nl_per_day,
            windows_ms=self.windows_ms,
            sample_ms=self.sample_ms,
            analysis_start_ms=start if analysis_start_ms is None else analysis_start_ms,
            analysis_end_ms=end if analysis_end_ms is None else analysis_end_ms,
            method=self.name,
        )


IEC = TrumpetMethod(
    name="IEC 60601-2-24",
    windows_ms=tuple(p * MS_PER_MINUTE for p in (2, 5, 11, 19, 31)),
    sample_ms=MS_PER_MINUTE // 2,
    analysis_offset_ms=60 * MS_PER_MINUTE,
    analysis_ms=60 * MS_PER_MINUTE,
)
"""The standard's method: a 120 min run sampled every 0.5 min, the second hour analysed."""

IMPLANT = TrumpetMethod(
    name="implant",
    windows_ms=(30 * MS_PER_MINUTE, *(h * MS_PER_HOUR for h in (1, 2, 6, 12, 24))),
    sample_ms=15 * MS_PER_MINUTE,
    analysis_offset_ms=MS_PER_DAY,
    analysis_ms=2 * MS_PER_DAY,
)
"""The same method on implant time scales; by default days 2 and 3 of a 3-day run."""


# ---------------------------------------------------------------------------- checks


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, not {value}")


def _check_span(start_ms: int, end_ms: int) -> None:
    if end_ms < start_ms:
        raise ValueError(f"the period ends ({end_ms} ms) before it starts ({start_ms} ms)")
