"""Therapy modes: what STATUS reports after a commit, what the pump delivers, and what it refuses."""

from __future__ import annotations

import itertools

import pytest

from hil.conformance import SUITE_CONCENTRATION_UG_PER_ML, DeviceUnderTest, continuous, refused
from protocol_spec import messages as m
from protocol_spec.enums import BolusKind, ErrorCode, Feature, ProgramSlot, TherapyMode

MS_PER_DAY = 86_400_000
PROGRAM_FIELD = 1
"""StageProgram's field index of the Program: a refused value inside it names this field."""
MIDNIGHT_WALL_MS = 19_675 * MS_PER_DAY
"""A wall clock at 00:00:00.000 (Unix epoch, 2023-11-14)."""
CONC = SUITE_CONCENTRATION_UG_PER_ML


def rate_nl_per_day(dose_ng_per_day: int, concentration_ug_per_ml: int = CONC) -> int:
    return dose_ng_per_day * 1000 // concentration_ug_per_ml


def stopped() -> m.Program:
    return m.Program(TherapyMode.STOPPED, 0, 0, 0, 0, 0, ())


def flex(cycle_days: int, *steps: tuple[int, int, int]) -> m.Program:
    """A FLEX program of (day, start_ms_of_day, dose_ng_per_day) steps."""
    return m.Program(TherapyMode.FLEX, CONC, 0, 0, 0, cycle_days, tuple(m.FlexStep(*s) for s in steps))


def assert_delivered(pump: DeviceUnderTest, before: m.StatusReply, after: m.StatusReply, ideal_nl: int) -> None:
    """Delivered within one motor step of ``ideal_nl``; the reservoir estimate fell by as much."""
    step = pump.baseline.step_volume_nl
    delivered = after.delivered_nl - before.delivered_nl
    assert abs(delivered - ideal_nl) <= step, f"delivered {delivered} nL, ideal {ideal_nl} nL (step {step} nL)"
    assert before.reservoir_estimate_nl - after.reservoir_estimate_nl == delivered


def assert_program_unchanged(pump: DeviceUnderTest, before: m.Program) -> None:
    assert pump.clinician.read_program(ProgramSlot.ACTIVE) == before
    status = pump.clinician.status()
    assert status.mode is before.mode
    assert status.staged == 0


# ---------------------------------------------------------------------- STATUS after a commit


@pytest.mark.requirement("THR-MOD-001")
@pytest.mark.parametrize("dose_ng_per_day", [80_000, 12_346])
def test_continuous_status_reports_mode_and_rate(pump: DeviceUnderTest, dose_ng_per_day: int) -> None:
    staged = pump.clinician.stage_program(continuous(dose_ng_per_day), override_soft_limits=True)
    assert staged.max_dose_ng_per_day == dose_ng_per_day
    assert staged.max_rate_nl_per_day == rate_nl_per_day(dose_ng_per_day)
    pump.clinician.commit(staged.stage_token)
    status = pump.clinician.status()
    assert status.mode is TherapyMode.CONTINUOUS
    assert status.rate_nl_per_day == rate_nl_per_day(dose_ng_per_day)
    assert pump.clinician.interrogate().dose_ng_per_day == dose_ng_per_day
    assert pump.clinician.read_program() == continuous(dose_ng_per_day)


@pytest.mark.requirement("THR-MOD-001")
def test_stopped_status_reports_mode_and_zero_rate(pump: DeviceUnderTest) -> None:
    pump.program(stopped())
    status = pump.clinician.status()
    assert status.mode is TherapyMode.STOPPED
    assert status.rate_nl_per_day == 0


# ---------------------------------------------------------------------- delivery under the held clock


@pytest.mark.requirement("THR-MOD-002")
@pytest.mark.requires("test_role", "virtual_time")
@pytest.mark.parametrize(
    ("dose_ng_per_day", "advance_ms"),
    [(100_000, MS_PER_DAY), (70_000, 6 * 3_600_000 + 1), (33_333, 45_000), (130_000, 3 * MS_PER_DAY + 12_345)],
)
def test_continuous_delivers_rate_times_time(pump: DeviceUnderTest, dose_ng_per_day: int, advance_ms: int) -> None:
    pump.program(continuous(dose_ng_per_day), override_soft_limits=True)
    rate = pump.clinician.status().rate_nl_per_day
    before = pump.clinician.status()
    pump.advance(advance_ms)
    after = pump.clinician.status()
    assert after.uptime_ms - before.uptime_ms == advance_ms
    assert_delivered(pump, before, after, rate * advance_ms // MS_PER_DAY)


@pytest.mark.requirement("THR-MOD-002")
@pytest.mark.requires("test_role", "virtual_time")
def test_stopped_delivers_nothing(pump: DeviceUnderTest) -> None:
    pump.program(stopped())
    before = pump.clinician.status()
    pump.advance(2 * MS_PER_DAY)
    after = pump.clinician.status()
    assert after.delivered_nl == before.delivered_nl
    assert after.reservoir_estimate_nl == before.reservoir_estimate_nl


# ---------------------------------------------------------------------- MINIMUM_RATE


@pytest.mark.requirement("THR-MOD-003")
def test_minimum_rate_reports_the_library_minimum(pump: DeviceUnderTest) -> None:
    pump.program(m.Program(TherapyMode.MINIMUM_RATE, 0, 0, 0, 0, 0, ()))
    status = pump.clinician.status()
    assert status.mode is TherapyMode.MINIMUM_RATE
    assert status.rate_nl_per_day == pump.baseline.limits.min_rate_nl_per_day


@pytest.mark.requirement("THR-MOD-003")
@pytest.mark.requires("test_role", "virtual_time")
def test_minimum_rate_delivers_the_library_minimum(pump: DeviceUnderTest) -> None:
    pump.program(m.Program(TherapyMode.MINIMUM_RATE, 0, 0, 0, 0, 0, ()))
    before = pump.clinician.status()
    pump.advance(3 * MS_PER_DAY)
    after = pump.clinician.status()
    assert_delivered(pump, before, after, 3 * pump.baseline.limits.min_rate_nl_per_day)


# ---------------------------------------------------------------------- unused fields, concentration

_STEP = (m.FlexStep(0, 0, 50_000),)
UNUSED_FIELD_NOT_ZERO = {
    "stopped-with-dose": m.Program(TherapyMode.STOPPED, 0, 50_000, 0, 0, 0, ()),
    "minimum-rate-with-concentration": m.Program(TherapyMode.MINIMUM_RATE, CONC, 0, 0, 0, 0, ()),
    "minimum-rate-with-steps": m.Program(TherapyMode.MINIMUM_RATE, 0, 0, 0, 0, 0, _STEP),
    "continuous-with-bolus-dose": m.Program(TherapyMode.CONTINUOUS, CONC, 50_000, 1_000, 0, 0, ()),
    "continuous-with-cycle-days": m.Program(TherapyMode.CONTINUOUS, CONC, 50_000, 0, 0, 1, ()),
    "continuous-with-steps": m.Program(TherapyMode.CONTINUOUS, CONC, 50_000, 0, 0, 0, _STEP),
    "single-bolus-with-daily-dose": m.Program(TherapyMode.SINGLE_BOLUS, CONC, 50_000, 10_000, 3_600_000, 0, ()),
    "flex-with-daily-dose": m.Program(TherapyMode.FLEX, CONC, 50_000, 0, 0, 1, _STEP),
    "flex-with-bolus-dose": m.Program(TherapyMode.FLEX, CONC, 0, 10_000, 0, 1, _STEP),
}


@pytest.mark.requirement("THR-MOD-004")
@pytest.mark.parametrize("program", UNUSED_FIELD_NOT_ZERO.values(), ids=UNUSED_FIELD_NOT_ZERO.keys())
def test_fields_a_mode_does_not_use_must_be_zero(pump: DeviceUnderTest, program: m.Program) -> None:
    if program.mode is TherapyMode.FLEX and not pump.has(Feature.FLEX):
        pytest.skip(f"target {pump.target.name} lacks flex")
    before = pump.clinician.read_program()
    with refused(ErrorCode.OUT_OF_RANGE) as r:
        pump.clinician.stage_program(program, override_soft_limits=True)
    assert r.error is not None
    assert r.error.field == PROGRAM_FIELD
    assert_program_unchanged(pump, before)


WRONG_CONCENTRATION = {
    "continuous": continuous(50_000, 1000),
    "single-bolus": m.Program(TherapyMode.SINGLE_BOLUS, 2000, 0, 10_000, 3_600_000, 0, ()),
    "flex": m.Program(TherapyMode.FLEX, 50, 0, 0, 0, 1, _STEP),
}


@pytest.mark.requirement("THR-MOD-005")
@pytest.mark.parametrize("program", WRONG_CONCENTRATION.values(), ids=WRONG_CONCENTRATION.keys())
def test_concentration_mismatch_refused(pump: DeviceUnderTest, program: m.Program) -> None:
    if program.mode is TherapyMode.FLEX and not pump.has(Feature.FLEX):
        pytest.skip(f"target {pump.target.name} lacks flex")
    before = pump.clinician.read_program()
    with refused(ErrorCode.CONCENTRATION_MISMATCH) as r:
        pump.clinician.stage_program(program, override_soft_limits=True)
    assert r.error is not None
    assert r.error.field == PROGRAM_FIELD
    assert r.error.lo == r.error.hi == CONC
    assert_program_unchanged(pump, before)


# ---------------------------------------------------------------------- SINGLE_BOLUS


@pytest.mark.requirement("THR-MOD-006")
@pytest.mark.requires("test_role", "virtual_time")
def test_single_bolus_delivers_its_dose_then_stops(pump: DeviceUnderTest) -> None:
    dose_ng, duration_ms = 50_000, 3_600_000
    volume_nl = dose_ng * 1000 // CONC
    program = m.Program(TherapyMode.SINGLE_BOLUS, CONC, 0, dose_ng, duration_ms, 0, ())
    staged = pump.clinician.stage_program(program)
    assert staged.max_rate_nl_per_day == volume_nl * MS_PER_DAY // duration_ms
    before = pump.clinician.status()
    pump.clinician.commit(staged.stage_token)
    running = pump.clinician.status()
    assert running.mode is TherapyMode.SINGLE_BOLUS
    assert running.bolus_active is BolusKind.SINGLE
    pump.advance(duration_ms // 2)
    assert pump.clinician.status().bolus_active is BolusKind.SINGLE
    pump.advance(duration_ms // 2 + 1_000)
    done = pump.clinician.status()
    assert done.mode is TherapyMode.STOPPED
    assert done.bolus_active is BolusKind.NONE
    assert done.rate_nl_per_day == 0
    assert_delivered(pump, before, done, volume_nl)
    pump.advance(MS_PER_DAY)
    later = pump.clinician.status()
    assert later.delivered_nl == done.delivered_nl
    assert later.mode is TherapyMode.STOPPED


# ---------------------------------------------------------------------- FLEX


def set_wall_clock(pump: DeviceUnderTest, wall_clock_ms: int) -> None:
    pump.clinician.set_clock(wall_clock_ms)
    assert pump.clinician.status().wall_clock_ms == wall_clock_ms


@pytest.mark.requirement("THR-FLX-001")
@pytest.mark.requires("flex")
def test_flex_reports_the_present_step(pump: DeviceUnderTest) -> None:
    program = flex(2, (0, 0, 60_000), (0, 43_200_000, 90_000), (1, 0, 40_000))
    staged = pump.clinician.stage_program(program, override_soft_limits=True)
    assert staged.max_dose_ng_per_day == 90_000
    assert staged.max_rate_nl_per_day == rate_nl_per_day(90_000)
    pump.clinician.commit(staged.stage_token)
    status = pump.clinician.status()
    assert status.mode is TherapyMode.FLEX
    info = pump.clinician.interrogate()
    assert info.dose_ng_per_day in {60_000, 90_000, 40_000}
    assert status.rate_nl_per_day == rate_nl_per_day(info.dose_ng_per_day)
    assert pump.clinician.read_program() == program


@pytest.mark.requirement("THR-FLX-001")
@pytest.mark.requires("flex")
def test_flex_accepts_thirteen_steps_a_day(pump: DeviceUnderTest) -> None:
    steps = [(day, i * 3_600_000, 40_000 + 1_000 * i) for day in range(7) for i in range(13)]
    program = flex(7, *steps)
    staged = pump.clinician.stage_program(program, override_soft_limits=True)
    assert staged.max_dose_ng_per_day == 52_000
    pump.clinician.commit(staged.stage_token)
    assert pump.clinician.read_program() == program
    assert pump.clinician.status().mode is TherapyMode.FLEX


FLEX_RULE_BROKEN = {
    "unsorted-start": flex(1, (0, 0, 50_000), (0, 7_200_000, 60_000), (0, 3_600_000, 70_000)),
    "unsorted-day": flex(2, (0, 0, 50_000), (1, 0, 60_000), (0, 3_600_000, 70_000)),
    "same-start-twice": flex(1, (0, 0, 50_000), (0, 3_600_000, 60_000), (0, 3_600_000, 70_000)),
    "day-not-below-cycle": flex(2, (0, 0, 50_000), (2, 0, 60_000)),
    "first-step-not-at-0-ms": flex(1, (0, 1, 50_000), (0, 3_600_000, 60_000)),
    "first-step-not-day-0": flex(2, (1, 0, 50_000)),
    "fourteen-steps-in-a-day": flex(1, *[(0, i * 3_600_000, 50_000) for i in range(14)]),
    "no-steps": flex(1),
    "cycle-days-0": flex(0, (0, 0, 50_000)),
}


@pytest.mark.requirement("THR-FLX-002")
@pytest.mark.requires("flex")
@pytest.mark.parametrize("program", FLEX_RULE_BROKEN.values(), ids=FLEX_RULE_BROKEN.keys())
def test_flex_rules_refused(pump: DeviceUnderTest, program: m.Program) -> None:
    before = pump.clinician.read_program()
    with refused(ErrorCode.OUT_OF_RANGE) as r:
        pump.clinician.stage_program(program, override_soft_limits=True)
    assert r.error is not None
    assert r.error.field == PROGRAM_FIELD
    assert_program_unchanged(pump, before)


@pytest.mark.requirement("THR-FLX-003")
@pytest.mark.requires("flex", "test_role", "virtual_time")
def test_flex_step_follows_the_wall_clock(pump: DeviceUnderTest) -> None:
    noon_ms = 12 * 3_600_000
    night_dose, day_dose = 60_000, 90_000
    set_wall_clock(pump, MIDNIGHT_WALL_MS + noon_ms - 60_000)
    pump.program(flex(1, (0, 0, night_dose), (0, noon_ms, day_dose)), override_soft_limits=True)
    assert pump.clinician.status().rate_nl_per_day == rate_nl_per_day(night_dose)
    pump.advance(59_999)
    assert pump.clinician.status().rate_nl_per_day == rate_nl_per_day(night_dose)
    pump.advance(1)
    status = pump.clinician.status()
    assert status.wall_clock_ms % MS_PER_DAY == noon_ms
    assert status.rate_nl_per_day == rate_nl_per_day(day_dose)
    assert pump.clinician.interrogate().dose_ng_per_day == day_dose
    # the wall clock set back into the night step: the night rate at once
    set_wall_clock(pump, MIDNIGHT_WALL_MS + 3_600_000)
    assert pump.clinician.status().rate_nl_per_day == rate_nl_per_day(night_dose)
    # a day later at the same time of day, still the night step
    pump.advance(MS_PER_DAY)
    assert pump.clinician.status().rate_nl_per_day == rate_nl_per_day(night_dose)


@pytest.mark.requirement("THR-FLX-003", "THR-MOD-002")
@pytest.mark.requires("flex", "test_role", "virtual_time")
def test_flex_delivers_each_step_at_its_rate(pump: DeviceUnderTest) -> None:
    six_h = 6 * 3_600_000
    set_wall_clock(pump, MIDNIGHT_WALL_MS)
    doses = (40_000, 80_000, 60_000, 100_000)
    pump.program(flex(1, *[(0, i * six_h, d) for i, d in enumerate(doses)]), override_soft_limits=True)
    before = pump.clinician.status()
    pump.advance(MS_PER_DAY)
    after = pump.clinician.status()
    ideal = sum(rate_nl_per_day(d) * six_h // MS_PER_DAY for d in doses)
    assert_delivered(pump, before, after, ideal)


# ---------------------------------------------------------------------- step by step (step log)


def steps_between(pump: DeviceUnderTest, first_step: int, count: int) -> list[int]:
    """The times of steps ``first_step`` .. ``first_step + count - 1`` from the test role's step log."""
    times: list[int] = []
    while len(times) < count:
        page = pump.test.read_step_log(first_step + len(times), min(m.MAX_STEP_LOG_PAGE, count - len(times)))
        assert page.oldest_step <= first_step, "the step log no longer holds the steps of this test"
        assert page.steps, "the step log returned no steps"
        times.extend(s.at_ms for s in page.steps)
    return times


@pytest.mark.requirement("THR-DLV-001")
@pytest.mark.requires("test_role", "virtual_time", "step_log")
@pytest.mark.parametrize("dose_ng_per_day", [100_000, 31_000])
def test_steps_are_evenly_spread(pump: DeviceUnderTest, dose_ng_per_day: int) -> None:
    pump.program(continuous(dose_ng_per_day), override_soft_limits=True)
    step_nl = pump.baseline.step_volume_nl
    rate = pump.clinician.status().rate_nl_per_day
    quantum = step_nl * MS_PER_DAY
    gap_lo, gap_hi = quantum // rate, -(-quantum // rate)
    before = pump.clinician.status()
    first = pump.test.read_step_log(0, 1).steps_total
    advance_ms = 40 * gap_hi
    pump.advance(advance_ms)
    after = pump.clinician.status()
    count = pump.test.read_step_log(0, 1).steps_total - first
    assert count * step_nl == after.delivered_nl - before.delivered_nl
    assert 39 <= count <= 41
    times = steps_between(pump, first, count)
    assert all(before.uptime_ms < t <= after.uptime_ms for t in times)
    assert times[0] - before.uptime_ms <= gap_hi
    gaps = {b - a for a, b in itertools.pairwise(times)}
    assert gaps <= {gap_lo, gap_hi}, f"step gaps {sorted(gaps)}, expected {gap_lo} or {gap_hi} ms"
