"""Refills: the bridge bolus after a concentration change (the old drug in the pump tubing and
the catheter reaches the patient at the old dose, then the new concentration takes over), and
a pump that was never filled."""

from __future__ import annotations

from firmware_model import Pump, ideal_nlms
from firmware_model.units import MS_PER_DAY
from protocol_spec.enums import AlarmCode, BolusKind, LogEventKind, TherapyMode
from protocol_spec.messages import Program

DOSE_NG_PER_DAY = 300_000


def test_bridge_delivers_the_dead_volume_at_the_old_rate_then_the_new_rate() -> None:
    pump = Pump(record_rates=True)
    pump.refill(0, 20_000_000, 500)
    pump.commit_program(Program(TherapyMode.CONTINUOUS, 500, DOSE_NG_PER_DAY, 0, 0, 0, ()))
    pump.advance(MS_PER_DAY)
    assert pump.bridge_plan() is None  # no concentration change yet
    old_rate = pump.program_rate_nl_per_day()
    assert old_rate == 600_000
    result = pump.refill(pump.acc.true_reservoir_nl, 20_000_000, 2000)
    assert result.concentration_changed
    dead = pump.catheter_volume_nl + pump.config.tubing_volume_nl
    assert result.bridge_volume_nl == dead
    plan = pump.bridge_plan()
    assert plan is not None
    volume, duration = plan
    assert volume == dead
    # the shortest duration at which the bridge runs no faster than the old basal
    assert (duration - 1) * old_rate < volume * MS_PER_DAY <= duration * old_rate
    assert pump.program_rate_nl_per_day() == 150_000  # the same dose at four times the concentration
    start_ms, start_steps = pump.now_ms, pump.acc.steps_total
    pump.start_bolus(BolusKind.BRIDGE, volume, duration)
    assert pump.status().effective_rate_nl_per_day == volume * MS_PER_DAY // duration  # replaces the basal
    pump.advance(start_ms + duration + 1)
    completed = pump.log.entries(LogEventKind.BOLUS_COMPLETED)
    assert completed[-1].code == BolusKind.BRIDGE
    assert completed[-1].value_a == dead  # the whole dead volume went out, at the old rate
    assert pump.program == Program(TherapyMode.CONTINUOUS, 2000, DOSE_NG_PER_DAY, 0, 0, 0, ())
    assert pump.status().effective_rate_nl_per_day == 150_000
    # the motor followed the ideal through the whole change
    assert pump.rate_pieces is not None
    q = pump.config.step_volume_nl * MS_PER_DAY
    assert 0 <= ideal_nlms(pump.rate_pieces, pump.now_ms) - pump.acc.steps_total * q < q
    assert pump.acc.steps_total - start_steps >= dead // pump.config.step_volume_nl


def test_a_pump_never_filled_takes_no_step_even_in_the_safe_state() -> None:
    """Before the first refill there is nothing to pump: the motor stays still and the
    estimate never goes below zero, whatever the therapy (here the safe state's minimum rate)."""
    pump = Pump()
    pump.enter_safe_state(AlarmCode.LOW_BATTERY_RESET)
    assert pump.mode is TherapyMode.MINIMUM_RATE
    pump.advance(10 * MS_PER_DAY)
    assert pump.acc.steps_total == 0
    assert pump.acc.estimate_nl == 0
    pump.refill(0, 1_000_000, 500)
    pump.advance(11 * MS_PER_DAY)
    assert pump.acc.steps_total == pump.limits.min_rate_nl_per_day // pump.config.step_volume_nl
