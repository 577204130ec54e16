"""The clock: SET_CLOCK (wall clock) against the monotonic uptime; the test role's hold and advance."""

from __future__ import annotations

import time

import pytest

from hil.conformance import DeviceUnderTest
from protocol_spec.enums import LogEventKind

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@pytest.mark.requirement("CLK-SET-001")
@pytest.mark.parametrize("shift_ms", [3 * DAY_MS + 12_345, -5 * HOUR_MS])
def test_set_clock_sets_wall_clock(pump: DeviceUnderTest, shift_ms: int) -> None:
    c = pump.clinician
    before = c.status()
    seq = c.read_log(0, 1).next_seq
    new_ms = before.wall_clock_ms + shift_ms
    reply = c.set_clock(new_ms)
    after = c.status()
    elapsed = after.uptime_ms - before.uptime_ms  # 0 when the clock is held (test role)
    assert reply.wall_clock_ms == new_ms
    assert before.wall_clock_ms <= reply.previous_wall_clock_ms <= before.wall_clock_ms + elapsed
    assert new_ms <= after.wall_clock_ms <= new_ms + elapsed
    assert after.uptime_ms >= before.uptime_ms, "SET_CLOCK moved the uptime back"
    assert c.interrogate().wall_clock_ms - new_ms <= c.status().uptime_ms - before.uptime_ms
    clock_set = [e for e in c.read_all_log(seq) if e.kind is LogEventKind.CLOCK_SET]
    assert [(e.value_a, e.value_b) for e in clock_set] == [(reply.previous_wall_clock_ms, new_ms)]


@pytest.mark.requirement("CLK-SET-001")
@pytest.mark.requires("test_role", "virtual_time")
def test_set_clock_leaves_uptime_alone(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    before = c.status()
    reply = c.set_clock(before.wall_clock_ms - DAY_MS)
    after = c.status()
    assert reply.previous_wall_clock_ms == before.wall_clock_ms
    assert (after.uptime_ms, after.wall_clock_ms) == (before.uptime_ms, before.wall_clock_ms - DAY_MS)


@pytest.mark.requirement("CLK-MON-001")
@pytest.mark.requires("test_role", "virtual_time")
def test_clock_change_neither_skips_nor_repeats_delivery(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    step = pump.baseline.step_volume_nl
    start = c.status()
    pump.advance(6 * HOUR_MS)
    c.set_clock(c.status().wall_clock_ms - 12 * HOUR_MS)  # back: must not deliver 12 h again
    pump.advance(6 * HOUR_MS)
    c.set_clock(c.status().wall_clock_ms + DAY_MS)  # forward: must not deliver a day at once
    pump.advance(12 * HOUR_MS)
    end = c.status()
    assert end.uptime_ms - start.uptime_ms == DAY_MS
    ideal = start.rate_nl_per_day  # one day at the program's rate
    delivered = end.delivered_nl - start.delivered_nl
    assert abs(delivered - ideal) < step, f"{delivered} nL delivered in a day at {ideal} nL/day"
    assert start.reservoir_estimate_nl - end.reservoir_estimate_nl == delivered


@pytest.mark.requirement("CLK-HLD-001")
@pytest.mark.requires("test_role", "virtual_time")
def test_hold_clock_freezes_uptime(pump: DeviceUnderTest) -> None:
    c, t = pump.clinician, pump.test
    held = t.hold_clock(True)
    assert held.held == 1
    first = c.status()
    time.sleep(0.03)
    second = c.status()
    assert first.uptime_ms == second.uptime_ms == c.interrogate().uptime_ms == held.uptime_ms
    assert first.wall_clock_ms == second.wall_clock_ms
    try:
        released = t.hold_clock(False)
        assert (released.held, released.uptime_ms) == (0, held.uptime_ms)
        time.sleep(0.03)
        assert c.status().uptime_ms > second.uptime_ms, "the released clock does not run"
    finally:
        assert t.hold_clock(True).held == 1


@pytest.mark.requirement("CLK-ADV-001")
@pytest.mark.requires("test_role", "virtual_time")
@pytest.mark.parametrize("delta_ms", [1, 999, DAY_MS + 7])
def test_advance_time_moves_by_delta(pump: DeviceUnderTest, delta_ms: int) -> None:
    c = pump.clinician
    before = c.status()
    reply = pump.advance(delta_ms)
    assert (reply.uptime_ms, reply.held) == (before.uptime_ms + delta_ms, 1)
    after = c.status()
    assert after.uptime_ms == before.uptime_ms + delta_ms
    assert after.wall_clock_ms == before.wall_clock_ms + delta_ms
