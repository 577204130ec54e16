"""Delivery accuracy over a day, step by step, with the plot the report shows."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hil.conformance import SUITE_CONCENTRATION_UG_PER_ML, DeviceUnderTest
from protocol_spec import messages as m
from protocol_spec.enums import TherapyMode

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 24 * MS_PER_HOUR
MIDNIGHT_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: the wall clock is set here so the schedule's times of day are known."""
SCHEDULE = ((0, 40_000), (6 * MS_PER_HOUR, 160_000), (9 * MS_PER_HOUR, 80_000), (18 * MS_PER_HOUR, 120_000))
"""(start ms of day, dose ng/day): a day with a morning peak."""


def _rate_nl_per_day(dose_ng_per_day: int) -> int:
    return dose_ng_per_day * 1000 // SUITE_CONCENTRATION_UG_PER_ML


def _ideal_nl_ms_per_day(since_midnight_ms: int) -> int:
    """The integral of the schedule's rate from midnight, in nL*ms/day (exact integers)."""
    total = 0
    bounds = [start for start, _ in SCHEDULE[1:]] + [MS_PER_DAY]
    for (start, dose), end in zip(SCHEDULE, bounds, strict=True):
        if since_midnight_ms <= start:
            break
        total += _rate_nl_per_day(dose) * (min(end, since_midnight_ms) - start)
    return total


@pytest.mark.requirement("THR-ACC-001")
@pytest.mark.requires("test_role", "virtual_time", "step_log", "flex")
def test_a_day_of_flex_delivery_stays_within_one_step_of_the_ideal(
    pump: DeviceUnderTest, pump_figure: Callable[..., None]
) -> None:
    step_nl = pump.baseline.step_volume_nl
    c = pump.clinician
    c.set_clock(MIDNIGHT_MS)
    steps = tuple(m.FlexStep(0, start, dose) for start, dose in SCHEDULE)
    program = m.Program(TherapyMode.FLEX, SUITE_CONCENTRATION_UG_PER_ML, 0, 0, 0, 1, steps)
    t0_ms = pump.program(program, override_soft_limits=True).applied_at_ms
    first_step = pump.test.read_step_log(0, 1).steps_total
    times: list[int] = []
    for _hour in range(24):
        pump.advance(MS_PER_HOUR)
        while True:
            page = pump.test.read_step_log(first_step + len(times))
            assert page.first_step == first_step + len(times), "the step log lost steps between reads"
            times.extend(s.at_ms for s in page.steps)
            if not page.steps or page.first_step + len(page.steps) >= page.steps_total:
                break
    assert c.status().uptime_ms == t0_ms + MS_PER_DAY
    delivered, ideal = [(0, 0)], [(0, 0)]
    worst_over_nl = worst_under_nl = 0
    for n, at_ms in enumerate(times, start=1):
        since_ms = at_ms - t0_ms
        ideal_nl_ms = _ideal_nl_ms_per_day(since_ms)
        # after step n: n steps delivered; the ideal at that instant, exactly
        over = n * step_nl * MS_PER_DAY - ideal_nl_ms
        assert over <= step_nl * MS_PER_DAY, f"step {n} at +{since_ms} ms is more than one step ahead of the ideal"
        assert over > -step_nl * MS_PER_DAY, f"step {n} at +{since_ms} ms lags the ideal by a step or more"
        worst_over_nl = max(worst_over_nl, over // MS_PER_DAY)
        worst_under_nl = min(worst_under_nl, over // MS_PER_DAY)
        delivered.append((since_ms, n * step_nl))
        ideal.append((since_ms, ideal_nl_ms // MS_PER_DAY))
    day_nl = _ideal_nl_ms_per_day(MS_PER_DAY) // MS_PER_DAY
    assert day_nl - step_nl < len(times) * step_nl <= day_nl + step_nl
    pump_figure(
        f"a day of FLEX delivery: {len(times)} steps of {step_nl} nL (worst {worst_under_nl}..+{worst_over_nl} nL)",
        "ms since the commit",
        "nL",
        {"delivered (motor steps)": delivered, "ideal (integral of the rate)": ideal},
    )
