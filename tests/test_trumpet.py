"""Trumpet curves (hil.trumpet): the IEC 60601-2-24 method computed by hand on small cases,
the quantization bound, the two reference schedulers, and the pump model's own steps."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_model import DEFAULT_LIMITS, Pump, PumpConfig
from firmware_model.simulate import continuous_program
from firmware_model.units import MS_PER_DAY, MS_PER_HOUR, rate_nl_per_day
from hil.trumpet import (
    IEC,
    IMPLANT,
    MS_PER_MINUTE,
    burst_step_times,
    ideal_step_count,
    ideal_step_times,
    quantization_bound,
    sample_counts,
    trumpet_curve,
)

STEP_NL = 250
CONCENTRATIONS = (50, 500, 1000, 2000)
ONE_STEP_PER_SAMPLE = 720_000
"""nL/day: one 250 nL step every 30 s, the IEC sample."""
FEW = settings(max_examples=50, deadline=None)


def _dose_range(conc: int) -> tuple[int, int]:
    """25 to 1500 ug/day (in ng/day), as far as the pump can pump it at ``conc``."""
    lo = max(25_000, -(-DEFAULT_LIMITS.min_rate_nl_per_day * conc // 1000))
    hi = min(1_500_000, DEFAULT_LIMITS.max_rate_nl_per_day * conc // 1000)
    return lo, hi


@st.composite
def clinical_doses(draw: st.DrawFn) -> tuple[int, int]:
    """(dose ng/day, concentration ug/mL) of the clinical range: 25-1500 ug/day at 50-2000 ug/mL
    (whole ug/day likely), where the pump can deliver them (5 uL/day to 4 mL/day)."""
    conc = draw(st.sampled_from(CONCENTRATIONS))
    lo, hi = _dose_range(conc)
    whole_ug = st.integers(-(-lo // 1000), hi // 1000).map(lambda ug: ug * 1000)
    return draw(st.one_of(st.sampled_from([lo, hi]), whole_ug, st.integers(lo, hi))), conc


def clinical_rates() -> st.SearchStrategy[int]:
    """Constant rates (nL/day) of the clinical range: rate = dose * 1000 // concentration."""
    return clinical_doses().map(lambda d: rate_nl_per_day(*d))


# ---------------------------------------------------------------------------- the IEC method by hand


def _every_sample(first_ms: int, last_ms: int) -> list[int]:
    return list(range(first_ms, last_ms + 1, 30_000))


def test_samples_are_half_open_after_their_start() -> None:
    """Sample i is (start + i*S, start + (i+1)*S]: a step at a boundary belongs to the sample
    that ends there; steps before or at the start and after the end are not counted."""
    times = [0, 0, 1, 30_000, 30_001, 59_999, 60_000, 60_001]
    assert sample_counts(times, 0, 60_000, 30_000) == [2, 3]
    assert sample_counts(times, 30_000, 60_000, 30_000) == [3]
    assert sample_counts([], 0, 90_000, 30_000) == [0, 0, 0]
    with pytest.raises(ValueError, match="whole number"):
        sample_counts(times, 0, 45_000, 30_000)


def test_a_perfectly_smooth_flow_is_zero_everywhere() -> None:
    """One step in every 0.5 min sample at one step per 0.5 min: every window holds exactly
    what the set rate is worth, so Ep(max) = Ep(min) = A = 0 and the bound is 0 as well."""
    times = _every_sample(30_000, 120 * MS_PER_MINUTE)
    curve = IEC.curve(times, step_nl=STEP_NL, rate_nl_per_day=ONE_STEP_PER_SAMPLE)
    assert (curve.analysis_start_ms, curve.analysis_end_ms) == (60 * MS_PER_MINUTE, 120 * MS_PER_MINUTE)
    assert curve.windows_ms == tuple(p * MS_PER_MINUTE for p in (2, 5, 11, 19, 31))
    assert curve.max_percent == curve.min_percent == (0.0,) * 5
    assert curve.bound_upper_percent == curve.bound_lower_percent == (0.0,) * 5
    assert curve.overall_percent == 0.0
    assert curve.analysis_steps == 120
    assert curve.max_steps == curve.min_steps == (4, 10, 22, 38, 62)
    assert curve.on_bound()
    assert curve.at_bound()
    assert times == ideal_step_times(ONE_STEP_PER_SAMPLE, STEP_NL, 0, 120 * MS_PER_MINUTE)


def test_one_missing_step() -> None:
    """Drop the step at 90 min (sample (89.5, 90], the 60th of the second hour): every window
    holding that sample is one step short, -100/m %; the 31 min window (62 samples, 59
    positions) holds it in every position, so even its maximum is -100/62 %; the others have
    windows without it (0 %). A = -100/120 %."""
    times = [t for t in _every_sample(30_000, 120 * MS_PER_MINUTE) if t != 90 * MS_PER_MINUTE]
    curve = IEC.curve(times, step_nl=STEP_NL, rate_nl_per_day=ONE_STEP_PER_SAMPLE)
    assert curve.min_percent == pytest.approx([-25.0, -10.0, -100 / 22, -100 / 38, -100 / 62], abs=1e-12)
    assert curve.max_percent == pytest.approx([0.0, 0.0, 0.0, 0.0, -100 / 62], abs=1e-12)
    assert curve.overall_percent == pytest.approx(-100 / 120, abs=1e-12)
    assert curve.min_steps == (3, 9, 21, 37, 61)
    assert not curve.on_bound()
    assert not curve.at_bound()


def test_one_extra_step_and_steps_outside_the_analysis() -> None:
    """A second step at 100 min (sample (99.5, 100], the 80th): +100/m % in the windows holding
    it; every length has windows without it (the 31 min ones starting in the first 9 min), so
    Ep(min) stays 0. Steps before the second hour (at or before 60 min) and after it change
    nothing."""
    base = _every_sample(30_000, 120 * MS_PER_MINUTE)
    extra = sorted([*base, 100 * MS_PER_MINUTE, 60 * MS_PER_MINUTE, 60 * MS_PER_MINUTE, 121 * MS_PER_MINUTE])
    curve = IEC.curve(extra, step_nl=STEP_NL, rate_nl_per_day=ONE_STEP_PER_SAMPLE)
    assert curve.max_percent == pytest.approx([25.0, 10.0, 100 / 22, 100 / 38, 100 / 62], abs=1e-12)
    assert curve.min_percent == (0.0,) * 5
    assert curve.overall_percent == pytest.approx(100 / 120, abs=1e-12)


def test_a_typical_rate_on_the_iec_windows() -> None:
    """300 ug/day at 500 ug/mL = 600 uL/day: 3 1/3 steps per 2 min. The floor scheduler shows
    exactly the bound: 4 steps (+20 %) and 3 steps (-10 %) in 2 min, and whole steps (0 %) where
    the window is worth a whole number (the analysed hour holds 100 steps: A = 0)."""
    rate = rate_nl_per_day(300_000, 500)
    assert ideal_step_count(rate, STEP_NL, 2 * MS_PER_MINUTE) == Fraction(10, 3)
    curve = IEC.curve(ideal_step_times(rate, STEP_NL, 0, IEC.run_end_ms()), step_nl=STEP_NL, rate_nl_per_day=rate)
    assert curve.max_percent[0] == pytest.approx(20.0)
    assert curve.min_percent[0] == pytest.approx(-10.0)
    assert curve.overall_percent == 0.0
    assert curve.at_bound()
    assert curve.max_percent == pytest.approx(curve.bound_upper_percent)
    assert curve.min_percent == pytest.approx(curve.bound_lower_percent)


def test_the_bound_by_hand() -> None:
    assert quantization_bound(600_000, STEP_NL, 2 * MS_PER_MINUTE) == pytest.approx((20.0, -10.0))
    assert quantization_bound(600_000, STEP_NL, MS_PER_HOUR) == (0.0, 0.0)  # 100 steps exactly
    # 25 ug/day at 2000 ug/mL: 12.5 uL/day, 1/14.4 step in 2 min: 0 steps (-100 %) or 1 (+1340 %).
    assert quantization_bound(12_500, STEP_NL, 2 * MS_PER_MINUTE) == pytest.approx((1340.0, -100.0))
    # ... and 2 1/12 steps an hour: 3 (+44 %) or 2 (-4 %).
    assert quantization_bound(12_500, STEP_NL, MS_PER_HOUR) == pytest.approx((44.0, -4.0))


def test_the_presets_and_the_json() -> None:
    assert IMPLANT.windows_ms == (30 * MS_PER_MINUTE, *(h * MS_PER_HOUR for h in (1, 2, 6, 12, 24)))
    assert IMPLANT.sample_ms == 15 * MS_PER_MINUTE
    assert IMPLANT.analysis_period(5) == (5 + MS_PER_DAY, 5 + 3 * MS_PER_DAY)
    rate = 80_010
    curve = IMPLANT.curve(ideal_step_times(rate, STEP_NL, 0, 3 * MS_PER_DAY), step_nl=STEP_NL, rate_nl_per_day=rate)
    doc = json.loads(json.dumps(curve.to_json()))
    assert doc["method"] == "implant"
    assert [w["window_ms"] for w in doc["windows"]] == list(IMPLANT.windows_ms)
    assert doc["on_bound"] is doc["at_bound"] is True


def test_bad_input_is_refused() -> None:
    def curve(times: list[int], window_ms: int, end_ms: int) -> object:
        return trumpet_curve(
            times,
            step_nl=STEP_NL,
            rate_nl_per_day=600_000,
            windows_ms=[window_ms],
            sample_ms=30_000,
            analysis_start_ms=0,
            analysis_end_ms=end_ms,
        )

    with pytest.raises(ValueError, match="non-decreasing"):
        curve([2, 1], 60_000, 60_000)
    with pytest.raises(ValueError, match="window"):
        curve([], 45_000, 60_000)
    with pytest.raises(ValueError, match="window"):
        curve([], 90_000, 60_000)
    with pytest.raises(ValueError, match="analysis period"):
        curve([], 30_000, 50_000)
    with pytest.raises(ValueError, match="rate_nl_per_day"):
        IEC.curve([], step_nl=STEP_NL, rate_nl_per_day=0)


# ---------------------------------------------------------------------------- the floor scheduler and the bound


@FEW
@given(clinical_rates())
def test_the_floor_scheduler_is_at_the_bound_on_implant_windows(rate: int) -> None:
    """Days 2 and 3 of a 3-day run at a constant clinical rate: every window holds floor or ceil
    of its ideal count; where the analysis shows both, the curve equals the bound."""
    curve = IMPLANT.curve(ideal_step_times(rate, STEP_NL, 0, 3 * MS_PER_DAY), step_nl=STEP_NL, rate_nl_per_day=rate)
    assert curve.on_bound()
    assert curve.at_bound()
    for hi, lo, up, low, both in zip(
        curve.max_percent,
        curve.min_percent,
        curve.bound_upper_percent,
        curve.bound_lower_percent,
        curve.shows_both(),
        strict=True,
    ):
        if both:
            assert (hi, lo) == (up, low)
        else:
            assert hi == lo
            assert hi in (up, low)
    assert curve.overall_percent == pytest.approx(
        100 * (curve.analysis_steps * STEP_NL * MS_PER_DAY - rate * 2 * MS_PER_DAY) / (rate * 2 * MS_PER_DAY)
    )


@FEW
@given(
    st.integers(1, 5_000_000),
    st.sampled_from([250, 1000, 37]),
    st.integers(0, MS_PER_DAY),
    st.integers(0, 10 * MS_PER_HOUR),
)
def test_the_floor_scheduler_is_within_the_bound_anywhere(rate: int, step_nl: int, start_ms: int, lag_ms: int) -> None:
    """Any rate, step volume and start, and an analysis grid at any offset from the start: the
    IEC windows never leave the bound."""
    analysis_start = start_ms + lag_ms
    end = analysis_start + IEC.analysis_ms
    curve = IEC.curve(
        ideal_step_times(rate, step_nl, start_ms, end + 7),
        step_nl=step_nl,
        rate_nl_per_day=rate,
        analysis_start_ms=analysis_start,
        analysis_end_ms=end,
    )
    assert curve.on_bound()
    assert curve.at_bound()


def test_a_short_analysis_may_show_one_count_only() -> None:
    """80,010 nL/day is 320.04 steps a day: a day-long window holds 321 steps only when its
    phase is in the last 4 % of a step. The 15 min grid moves the phase by 80,010/24,000 steps
    (3.334 = 8001/2400), so 2400 window positions visit every phase; days 2-3 of a 3-day run
    (97 positions) see only 320, while a 26-day analysis sees both."""
    rate = 80_010
    short = IMPLANT.curve(ideal_step_times(rate, STEP_NL, 0, 3 * MS_PER_DAY), step_nl=STEP_NL, rate_nl_per_day=rate)
    assert short.shows_both()[-1] is False
    assert short.max_steps[-1] == short.min_steps[-1] == 320
    assert short.at_bound()
    assert short.max_percent[-1] == short.bound_lower_percent[-1]
    long = IMPLANT.curve(
        ideal_step_times(rate, STEP_NL, 0, 27 * MS_PER_DAY),
        step_nl=STEP_NL,
        rate_nl_per_day=rate,
        analysis_end_ms=27 * MS_PER_DAY,
    )
    assert all(long.shows_both())
    assert (long.max_steps[-1], long.min_steps[-1]) == (321, 320)
    assert long.at_bound()


# ---------------------------------------------------------------------------- the burst scheduler


@FEW
@given(clinical_rates())
def test_hourly_bursts_leave_the_bound_on_the_iec_windows(rate: int) -> None:
    """All IEC windows are shorter than the hour between bursts: in the second hour only the
    windows ending with the 120 min sample hold the burst, the others none (-100 %). Once a
    2-minute window is worth a whole step (>= 180 uL/day: typical rates) that is below the
    bound; the windows holding the burst are above it."""
    steps = burst_step_times(rate, STEP_NL, 0, IEC.run_end_ms())
    curve = IEC.curve(steps, step_nl=STEP_NL, rate_nl_per_day=rate)
    assert curve.min_percent == (-100.0,) * 5
    if ideal_step_count(rate, STEP_NL, 2 * MS_PER_MINUTE) >= 1:
        assert not curve.on_bound()
        assert all(lo < low for lo, low in zip(curve.min_percent, curve.bound_lower_percent, strict=True))
        assert curve.max_percent[0] > curve.bound_upper_percent[0]


@FEW
@given(clinical_rates())
def test_daily_bursts_leave_the_bound_on_shorter_implant_windows(rate: int) -> None:
    """A burst a day: the 1 to 12 h windows (all worth at least a step at clinical rates) see
    nothing (-100 %) or the whole day's steps; the 24 h window, a whole burst period, stays
    within the bound."""
    steps = burst_step_times(rate, STEP_NL, 0, 3 * MS_PER_DAY, every_ms=MS_PER_DAY)
    curve = IMPLANT.curve(steps, step_nl=STEP_NL, rate_nl_per_day=rate)
    for w, hi, lo, up, low in zip(
        curve.windows_ms,
        curve.max_percent,
        curve.min_percent,
        curve.bound_upper_percent,
        curve.bound_lower_percent,
        strict=True,
    ):
        if w < MS_PER_DAY:
            assert lo == -100.0 < low
            assert hi > up
        else:
            assert low <= lo <= hi <= up


@FEW
@given(clinical_rates())
def test_hourly_bursts_leave_the_bound_on_the_half_hour_window_only(rate: int) -> None:
    """A burst an hour: a 30 min window holds a burst or none (-100 %, or twice the half hour's
    worth), far outside the bound; every window of whole hours holds as many bursts as hour marks,
    i.e. the floor scheduler's count between two hour marks, and sits on the bound."""
    steps = burst_step_times(rate, STEP_NL, 0, 3 * MS_PER_DAY)
    curve = IMPLANT.curve(steps, step_nl=STEP_NL, rate_nl_per_day=rate)
    assert curve.windows_ms[0] == 30 * MS_PER_MINUTE
    assert curve.min_percent[0] == -100.0 < curve.bound_lower_percent[0]
    assert curve.max_percent[0] > curve.bound_upper_percent[0]
    for hi, lo, up, low in list(
        zip(curve.max_percent, curve.min_percent, curve.bound_upper_percent, curve.bound_lower_percent, strict=True)
    )[1:]:
        assert low - 1e-9 <= lo <= hi <= up + 1e-9


@FEW
@given(st.integers(0, 5_000_000), st.sampled_from([250, 1000, 37]), st.integers(0, 1 << 40), st.integers(0, 80))
def test_both_schedulers_deliver_the_same_over_whole_hours(rate: int, step_nl: int, start_ms: int, hours: int) -> None:
    """Up to every hour mark both have taken floor(rate * t / step) steps: the same volume over
    any whole number of hours, and the same long-run average."""
    end = start_ms + hours * MS_PER_HOUR
    ideal = ideal_step_times(rate, step_nl, start_ms, end)
    burst = burst_step_times(rate, step_nl, start_ms, end)
    assert sample_counts(ideal, start_ms, end, MS_PER_HOUR) == sample_counts(burst, start_ms, end, MS_PER_HOUR)
    assert len(ideal) == len(burst) == rate * hours * MS_PER_HOUR // (step_nl * MS_PER_DAY)
    assert burst == sorted(burst)
    assert all(start_ms < t <= end for t in ideal)


# ---------------------------------------------------------------------------- the pump model


@settings(max_examples=25, deadline=None)
@given(clinical_doses(), st.integers(0, 3 * MS_PER_DAY), st.integers(1, 2 * MS_PER_DAY))
def test_the_pump_takes_the_ideal_steps(dose_conc: tuple[int, int], commit_ms: int, run_ms: int) -> None:
    """A continuous program committed on a filled, stopped pump at ``commit_ms``: the steps the
    model takes are ideal_step_times from the commit, millisecond for millisecond, and so is its
    trumpet curve."""
    dose, conc = dose_conc
    rate = rate_nl_per_day(dose, conc)
    config = PumpConfig(step_volume_nl=STEP_NL, step_log_capacity=1 << 20)
    pump = Pump(config)
    pump.refill(0, config.reservoir_capacity_nl, conc)
    pump.advance(commit_ms)
    pump.commit_program(continuous_program(dose, conc), override_soft_limits=True)
    end = commit_ms + run_ms
    pump.advance(end)
    taken = pump.step_times(0, pump.acc.steps_total)
    assert taken == ideal_step_times(rate, STEP_NL, commit_ms, end)
    assert len(taken) == pump.acc.steps_total


def test_the_pump_on_both_curves() -> None:
    """The default therapy (300 ug/day at 500 ug/mL) on the model: both curves at the bound."""
    config = PumpConfig(step_log_capacity=1 << 20)
    pump = Pump(config)
    pump.refill(0, config.reservoir_capacity_nl, 500)
    pump.commit_program(continuous_program(300_000, 500))
    pump.advance(IMPLANT.run_end_ms())
    taken = pump.step_times(0, pump.acc.steps_total)
    for method in (IEC, IMPLANT):
        curve = method.curve(taken, step_nl=STEP_NL, rate_nl_per_day=600_000)
        assert curve.at_bound()
        assert curve.on_bound()
