"""The test role's own view of the pump: the plant's true state and the motor's step log."""

from __future__ import annotations

import itertools

import pytest

from hil.conformance import DeviceUnderTest
from protocol_spec import messages as m

DAY_MS = 86_400_000


def ms_for_steps(steps: int, step_nl: int, rate_nl_per_day: int) -> int:
    """Long enough for ``steps`` whole steps at ``rate_nl_per_day``, whatever part of one was under way."""
    return -(-steps * step_nl * DAY_MS // rate_nl_per_day)


@pytest.mark.requirement("CLK-PLT-001")
@pytest.mark.requires("test_role", "virtual_time")
def test_plant_accounts_for_stroke_error(pump: DeviceUnderTest) -> None:
    c, t = pump.clinician, pump.test
    step = pump.baseline.step_volume_nl
    s0, p0 = c.status(), t.read_plant()
    # just refilled by the reset, nothing delivered since: the estimate is the truth
    assert p0.true_reservoir_nl == s0.reservoir_estimate_nl == pump.baseline.reservoir_capacity_nl
    assert p0.motor_stalled == 0
    pump.advance(ms_for_steps(20, step, s0.rate_nl_per_day))
    s1, p1 = c.status(), t.read_plant()
    steps = p1.steps_total - p0.steps_total
    assert steps >= 20
    assert s1.delivered_nl - s0.delivered_nl == steps * step
    true_step = step + p1.stroke_error_nl_per_step
    assert p1.delivered_true_nl - p0.delivered_true_nl == steps * true_step
    assert p0.true_reservoir_nl - p1.true_reservoir_nl == steps * true_step
    assert s1.reservoir_estimate_nl - p1.true_reservoir_nl == steps * p1.stroke_error_nl_per_step
    assert p1.battery_charge_uc < p0.battery_charge_uc


@pytest.mark.requirement("CLK-STP-001")
@pytest.mark.requires("test_role", "virtual_time", "step_log")
def test_step_log_matches_delivery(pump: DeviceUnderTest) -> None:
    c, t = pump.clinician, pump.test
    step = pump.baseline.step_volume_nl
    s0 = c.status()
    first = t.read_step_log(0, 1).steps_total
    assert first == s0.delivered_nl // step
    pump.advance(ms_for_steps(12, step, s0.rate_nl_per_day))
    s1 = c.status()
    log = t.read_step_log(first, 64)
    assert log.steps_total == s1.delivered_nl // step
    assert s1.delivered_nl % step == 0
    times = [x.at_ms for x in log.steps]
    assert len(times) == min(64, log.steps_total - first) >= 12
    assert all(a <= b for a, b in itertools.pairwise(times)), "step times went back"
    assert s0.uptime_ms < times[0]
    assert times[-1] <= s1.uptime_ms
    spacing = step * DAY_MS / s0.rate_nl_per_day  # one step's time at the constant rate
    for a, b in itertools.pairwise(times):
        assert abs((b - a) - spacing) <= 1, f"steps {b - a} ms apart at a constant rate, expected {spacing:.1f}"


@pytest.mark.requirement("CLK-STP-001")
@pytest.mark.requires("test_role", "virtual_time", "step_log")
def test_step_log_pages(pump: DeviceUnderTest) -> None:
    c, t = pump.clinician, pump.test
    step = pump.baseline.step_volume_nl
    pump.advance(ms_for_steps(10, step, c.status().rate_nl_per_day))
    total = t.read_step_log(0, 1).steps_total
    start = total - 10
    whole = t.read_step_log(start, 10)
    assert (whole.first_step, len(whole.steps)) == (start, 10)
    assert whole.oldest_step <= start
    joined: list[m.StepTime] = []
    for first in range(start, total, 4):
        page = t.read_step_log(first, 4)
        assert page.first_step == first
        assert len(page.steps) == min(4, total - first)
        joined.extend(page.steps)
    assert joined == list(whole.steps)
    oldest = t.read_step_log(0, 1)
    assert oldest.first_step == oldest.oldest_step
    assert t.read_step_log(total, 8).steps == ()
