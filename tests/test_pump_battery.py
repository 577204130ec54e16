"""Battery: under every unchanged therapy, ERI at least 90 days before EOS, EOS within 7 years,
and at EOS the motor stops for good with a critical alarm."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from firmware_model import Pump, PumpConfig, PumpState
from firmware_model.units import MS_PER_DAY, MS_PER_YEAR
from protocol_spec.enums import AlarmCode, BatteryState, LogEventKind
from protocol_spec.messages import Program

from .pump_strategies import CONCENTRATIONS, STOPPED, continuous_programs, flex_programs, minimum_rate

# A run to EOS takes up to ~30,000 events (a 7-day flex cycle with 13 steps a day for six years,
# or ~400 refills at 4 mL/day), at most about half a second: the profile's example count is kept
# (about 5 s in the ci profile).


@st.composite
def _therapies(draw: st.DrawFn) -> tuple[PumpConfig, int, Program]:
    conc = draw(st.sampled_from(CONCENTRATIONS))
    program = draw(
        st.one_of(
            continuous_programs(conc),
            continuous_programs(conc),
            flex_programs(conc),
            st.sampled_from([STOPPED, minimum_rate()]),
        )
    )
    reservoir = draw(st.sampled_from([20, 40]))
    error = draw(st.one_of(st.just(0), st.integers(-12, 12), st.integers(-200, 250)))
    return PumpConfig.profile(reservoir, stroke_error_nl_per_step=error), conc, program


@given(_therapies(), st.integers(0, 1 << 40))
def test_eri_comes_90_days_before_eos_within_7_years(therapy: tuple[PumpConfig, int, Program], wall: int) -> None:
    """For an unchanged therapy (continuous doses over the whole rate range at each library
    concentration, flex schedules, minimum rate, stopped), refilled whenever LOW_RESERVOIR is
    raised: ERI comes at least 90 days before EOS, EOS no later than 7 years after implant; ERI
    and EOS are each logged once at those times; after EOS no motor step is ever taken, the EOS
    alarm is critical and active, the battery reports EOS."""
    config, conc, program = therapy
    pump = Pump(config, wall_clock_ms=wall)
    full = config.reservoir_capacity_nl
    pump.refill(0, full, conc)
    pump.commit_program(program, override_soft_limits=True)
    events = 0
    while pump.eos_at_ms is None:
        nxt = pump.next_event_ms()
        assert nxt is not None, "the battery never runs out"
        pump.advance(nxt)
        events += 1
        assert events < 100_000
        assert AlarmCode.EMPTY_RESERVOIR not in pump.alarms.active
        if AlarmCode.LOW_RESERVOIR in pump.alarms.active and pump.eos_at_ms is None:
            pump.refill(pump.acc.estimate_nl, full, conc)
    eri, eos = pump.eri_at_ms, pump.eos_at_ms
    assert eri is not None
    assert eos - eri >= 90 * MS_PER_DAY, f"ERI only {(eos - eri) / MS_PER_DAY:.1f} days before EOS"
    assert eos <= 7 * MS_PER_YEAR, f"EOS after {eos / MS_PER_YEAR:.2f} years"
    raised = {e.code: e.at_ms for e in pump.log.entries(LogEventKind.ALARM_RAISED)}
    assert raised[AlarmCode.ERI] == eri
    assert raised[AlarmCode.EOS] == eos
    assert pump.state is PumpState.END_OF_SERVICE
    assert pump.status().battery_state is BatteryState.EOS
    assert pump.alarms.critical_active
    steps = pump.acc.steps_total
    pump.advance(pump.now_ms + MS_PER_YEAR)
    assert pump.acc.steps_total == steps
    assert pump.status().effective_rate_nl_per_day == 0
