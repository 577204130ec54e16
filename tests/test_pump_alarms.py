"""Alarms: reservoir alarms within one motor step of their thresholds, the motor held while
EMPTY/MOTOR_STALL/EOS stand, and no bolus during a critical alarm."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_model import Pump, PumpConfig, PumpState, RefusalError
from firmware_model.units import MS_PER_DAY, MS_PER_HOUR
from protocol_spec.enums import AlarmCode, BolusKind, ErrorCode, FaultKind, LogEventKind, TherapyMode
from protocol_spec.messages import PatientBolusSettings, Program

from .pump_strategies import (
    CONCENTRATIONS,
    REQUEST,
    Action,
    Advance,
    Observer,
    bolus,
    bolus_args,
    commit,
    configs,
    continuous_programs,
    fault,
    flex_programs,
    minimum_rate,
    patient,
    patient_settings,
    refill,
    reservoir_crossing_step,
    small_battery,
)


def _min_rate(program: Program, conc: int) -> int:
    if program.mode is TherapyMode.CONTINUOUS:
        doses = [program.dose_ng_per_day]
    elif program.mode is TherapyMode.FLEX:
        doses = [s.dose_ng_per_day for s in program.steps]
    else:
        return 5_000
    return min(d * 1000 // conc for d in doses)


@st.composite
def _runs_to_empty(draw: st.DrawFn) -> tuple[Pump, list[Action]]:
    """A pump filled with a volume it empties within about 60 days at its slowest basal rate,
    any low-reservoir threshold, boluses, stalls and resets along the way."""
    config = draw(configs())
    conc = draw(st.sampled_from(CONCENTRATIONS))
    program = draw(st.one_of(continuous_programs(conc), flex_programs(conc, max_per_day=4), st.just(minimum_rate())))
    slowest = _min_rate(program, conc)
    fill = draw(st.integers(1, min(config.reservoir_capacity_nl, slowest * 60)))
    pump = Pump(config, wall_clock_ms=draw(st.integers(0, 1 << 40)), record_rates=True)
    events = st.one_of(
        bolus_args(conc).map(lambda a: bolus(*a)),
        st.builds(patient, patient_settings(conc)),
        st.just(REQUEST),
        st.sampled_from([fault(FaultKind.MOTOR_STALL), fault(FaultKind.MOTOR_STALL_CLEAR), fault(FaultKind.RESET)]),
        st.builds(Advance, st.integers(0, 2 * MS_PER_DAY)),
        st.just(Advance(-1)),
    )
    middle = draw(st.lists(events, max_size=12))
    return pump, [refill(fill, conc), commit(program, True), *middle, fault(FaultKind.MOTOR_STALL_CLEAR)]


@given(_runs_to_empty())
def test_reservoir_alarms_fall_on_the_crossing_step(scenario: tuple[Pump, list[Action]]) -> None:
    """Run to empty at slow, middle and fast rates, with boluses, stalls and resets: LOW_RESERVOIR
    is raised at the time of the first step that brings the estimate to the threshold or below,
    EMPTY_RESERVOIR at the time of the first step that leaves less than one step, exactly one
    each; after EMPTY the motor takes no step however long the pump runs."""
    pump, actions = scenario
    obs = Observer(pump)  # also checks each raise against step_times as it happens
    obs.run(actions)
    for _ in range(5000):
        if AlarmCode.EMPTY_RESERVOIR in pump.alarms.active:
            break
        obs.step(Advance(-1))
    assert AlarmCode.EMPTY_RESERVOIR in pump.alarms.active
    step = pump.config.step_volume_nl
    fill, threshold = obs.fill_nl, pump.low_reservoir_threshold_nl
    assert pump.acc.steps_total == obs.fill_steps + fill // step
    assert 0 <= pump.acc.estimate_nl < step
    raised = {c: [e for e in pump.log.entries(LogEventKind.ALARM_RAISED) if e.code == c] for c in AlarmCode}
    assert len(raised[AlarmCode.EMPTY_RESERVOIR]) == 1
    # a threshold under one step can be out of reach: the motor stops (EMPTY) above it
    low_reached = pump.acc.estimate_nl <= threshold
    assert len(raised[AlarmCode.LOW_RESERVOIR]) == low_reached
    # the fill was at time 0: a fill already at a level raises its alarm then, not at a step
    n_empty = reservoir_crossing_step(fill, step, step, strict=True)
    n_low = reservoir_crossing_step(fill, threshold, step, strict=False)
    crossings = [(AlarmCode.EMPTY_RESERVOIR, n_empty)] + [(AlarmCode.LOW_RESERVOIR, n_low)] * low_reached
    for code, n in crossings:
        expected = pump.step_times(obs.fill_steps + n - 1, 1)[0] if n else 0
        assert raised[code][0].at_ms == expected, code
    steps = pump.acc.steps_total
    obs.step(Advance(90 * MS_PER_DAY))
    assert pump.acc.steps_total == steps


_CAUSES = ["stall", "empty", "low_battery_reset", "memory_error", "eos"]


@given(
    cause=st.sampled_from(_CAUSES),
    running=st.sampled_from([BolusKind.NONE, BolusKind.PRIMING, BolusKind.BRIDGE, BolusKind.PATIENT, BolusKind.SINGLE]),
    conc=st.sampled_from(CONCENTRATIONS),
    data=st.data(),
)
def test_critical_alarm_interrupts_and_forbids_boluses(
    cause: str, running: BolusKind, conc: int, data: st.DataObject
) -> None:
    """Raising a critical alarm (motor stall, empty reservoir, low battery reset, memory error,
    EOS) ends a running bolus of any kind, logged BOLUS_INTERRUPTED at the alarm's time; while
    it stands, start_bolus, request_patient_bolus and committing a SINGLE_BOLUS program are all
    refused with ALARM_ACTIVE, leaving the therapy digest unchanged."""
    battery = small_battery(data.draw(st.integers(1, 2))) if cause == "eos" else PumpConfig().battery
    pump = Pump(PumpConfig(battery=battery, event_log_capacity=1 << 16), record_rates=True)
    obs = Observer(pump)
    # long boluses of 2 uL over 3 days, still running when the alarm comes; for "empty" a fill
    # of 1.5 uL that runs out during the bolus (or, with no bolus, on the basal alone)
    obs.step(refill(1_500 if cause == "empty" else 20_000_000, conc))
    obs.step(commit(data.draw(continuous_programs(conc, top=1_000_000))))
    settings = data.draw(patient_settings(conc))
    obs.step(patient(settings))
    long = 3 * MS_PER_DAY
    start = {
        BolusKind.PRIMING: bolus(BolusKind.PRIMING, 2_000, long),
        BolusKind.BRIDGE: bolus(BolusKind.BRIDGE, 2_000, long),
        BolusKind.PATIENT: patient(PatientBolusSettings(1, 2 * conc, long, 0, 8)),
        BolusKind.SINGLE: commit(Program(TherapyMode.SINGLE_BOLUS, conc, 0, 2 * conc, long, 0, ())),
    }
    if running is not BolusKind.NONE:
        assert obs.step(start[running]) is None
        if running is BolusKind.PATIENT:
            assert obs.step(REQUEST) is None
        if cause != "empty":
            obs.step(Advance(data.draw(st.integers(0, 6 * MS_PER_HOUR))))
        assert pump.bolus is not None
        assert pump.bolus.kind is running
    code = {
        "stall": AlarmCode.MOTOR_STALL,
        "empty": AlarmCode.EMPTY_RESERVOIR,
        "low_battery_reset": AlarmCode.LOW_BATTERY_RESET,
        "memory_error": AlarmCode.MEMORY_ERROR,
        "eos": AlarmCode.EOS,
    }[cause]
    seq = pump.log.next_seq
    if cause == "stall":
        obs.step(fault(FaultKind.MOTOR_STALL))
    elif cause == "low_battery_reset":
        obs.step(fault(FaultKind.LOW_BATTERY_RESET))
    elif cause == "memory_error":
        pump.enter_safe_state(AlarmCode.MEMORY_ERROR)
        obs.check()
    else:
        for _ in range(1000):
            if code in pump.alarms.active:
                break
            obs.step(Advance(-1))
    assert code in pump.alarms.active
    assert pump.bolus is None
    new = pump.log.page(seq, 1 << 20)
    (raised,) = [e for e in new if e.kind is LogEventKind.ALARM_RAISED and e.code == code]
    interrupted = [e for e in new if e.kind is LogEventKind.BOLUS_INTERRUPTED]
    if running is BolusKind.NONE:
        assert interrupted == []
    else:
        assert [(e.code, e.at_ms) for e in interrupted] == [(running, raised.at_ms)]
    if running is BolusKind.SINGLE and cause != "eos":
        assert pump.state in (PumpState.STOPPED, PumpState.MINIMUM_RATE)
    # every way to start a bolus is refused while the alarm stands
    enable = PatientBolusSettings(1, settings.dose_ng, settings.duration_ms, 0, 8)
    assert obs.step(patient(enable)) is None
    attempts = [
        *(bolus(*data.draw(bolus_args(conc))) for _ in range(2)),
        bolus(BolusKind.PRIMING, 260_000 * 50 // conc or 1, MS_PER_HOUR),
        commit(Program(TherapyMode.SINGLE_BOLUS, conc, 0, 1_000, MS_PER_HOUR, 0, ())),
        REQUEST,
    ]
    for attempt in attempts:
        before = pump.therapy_digest()
        with pytest.raises(RefusalError) as refused:
            attempt.call(pump)
        assert refused.value.code is ErrorCode.ALARM_ACTIVE, (attempt, refused.value)
        assert pump.therapy_digest() == before
    obs.check()
