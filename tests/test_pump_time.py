"""Time semantics: held time is lost, not caught up; the wall clock moves only the flex
schedule; a reset loses a running bolus; steps are evenly spread and reported where they fell."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import assume, given
from hypothesis import strategies as st

from firmware_model import Pump, PumpConfig, PumpState, ideal_nlms
from firmware_model.config import DEFAULT_LIMITS
from firmware_model.units import MS_PER_DAY, MS_PER_HOUR, rate_nl_per_day
from protocol_spec.enums import BolusKind, FaultKind, LogEventKind, TherapyMode
from protocol_spec.messages import FlexStep, PatientBolusSettings, Program

from .pump_strategies import (
    CONCENTRATIONS,
    LIMITS,
    REQUEST,
    STOPPED,
    Action,
    Advance,
    Command,
    FlexOracle,
    Observer,
    apply,
    bolus,
    bolus_args,
    clock,
    clock_shift,
    commit,
    configs,
    continuous_programs,
    dose_bounds,
    expected_basal,
    fault,
    flex_programs,
    held,
    minimum_rate,
    patient,
    patient_settings,
    quantum,
    refill,
    scenarios,
    single_bolus_programs,
    small_battery,
)

_TIME = st.one_of(st.integers(0, 60_000), st.integers(0, 8 * MS_PER_HOUR), st.integers(0, 10 * MS_PER_DAY))


def _advance_integrating(p: Pump, flex: FlexOracle, ms: int) -> int:
    """Advance by ``ms`` event by event; what the program asked for meanwhile (nlms), by the
    oracle: the committed program's rate, zero while held."""
    target = p.now_ms + ms
    total = 0
    while True:
        nxt = p.next_event_ms()
        t = target if nxt is None else min(nxt, target)
        total += expected_basal(p, flex) * (t - p.now_ms)
        p.advance(t)
        if t == target:
            return total


@given(st.data())
def test_held_or_stopped_time_is_never_caught_up(data: st.DataObject) -> None:
    """Stop, stall, empty reservoir and EOS deliver nothing, and nothing is made up afterwards:
    at every checkpoint the integral equals the program's rate integrated over exactly the
    monotonic time the motor was free and the program running (clock changes included: a flex
    schedule follows the new time of day, nothing is skipped or repeated)."""
    config = data.draw(configs())
    if data.draw(st.booleans()):
        config = dataclasses.replace(config, battery=small_battery(data.draw(st.integers(1, 20))))
    conc = data.draw(st.sampled_from(CONCENTRATIONS))
    program = data.draw(
        st.one_of(continuous_programs(conc), flex_programs(conc, max_per_day=4), st.just(minimum_rate()))
    )
    pump = Pump(config, wall_clock_ms=data.draw(st.integers(0, 1 << 40)), record_rates=True)
    flex = FlexOracle()
    pump.refill(0, config.reservoir_capacity_nl, conc)
    pump.commit_program(program, override_soft_limits=True)
    flex.committed(pump)
    pauses: list[Action] = [
        commit(STOPPED),
        commit(program, True),
        fault(FaultKind.MOTOR_STALL),
        fault(FaultKind.MOTOR_STALL_CLEAR),
        fault(FaultKind.RESET),
    ]
    expected = pump.acc.integral_nlms
    for _ in range(data.draw(st.integers(1, 12))):
        expected += _advance_integrating(pump, flex, data.draw(_TIME))
        assert pump.acc.integral_nlms == expected
        action = data.draw(
            st.one_of(
                st.sampled_from(pauses),
                st.builds(refill, st.integers(1, 50_000), st.just(conc)),
                st.builds(clock_shift, st.integers(-3 * MS_PER_DAY, 3 * MS_PER_DAY)),
            )
        )
        before = pump.acc.integral_nlms
        accepted = apply(pump, action) is None
        if accepted and action is pauses[1]:
            flex.committed(pump)
        assert pump.acc.integral_nlms == before, "a command moved the integral"
        if held(pump) or pump.state is PumpState.STOPPED:
            steps = pump.acc.steps_total
            expected += _advance_integrating(pump, flex, data.draw(_TIME))
            assert pump.acc.integral_nlms == expected
            if held(pump) or pump.state is PumpState.STOPPED:
                assert pump.acc.steps_total == steps
    assert pump.rate_pieces is not None
    assert ideal_nlms(pump.rate_pieces, pump.now_ms) == expected


@st.composite
def _non_flex_actions(draw: st.DrawFn, conc: int) -> list[Action]:
    program = st.one_of(
        continuous_programs(conc), single_bolus_programs(conc), st.sampled_from([STOPPED, minimum_rate()])
    )
    action = st.one_of(
        st.builds(Advance, _TIME),
        st.builds(Advance, _TIME),
        st.just(Advance(-1)),
        st.builds(commit, program, st.booleans()),
        bolus_args(conc).map(lambda a: bolus(*a)),
        st.builds(patient, patient_settings(conc)),
        st.just(REQUEST),
        st.builds(refill, st.integers(1, 20_000_000), st.just(conc)),
        st.sampled_from([fault(k) for k in (FaultKind.MOTOR_STALL, FaultKind.MOTOR_STALL_CLEAR, FaultKind.RESET)]),
    )
    return draw(st.lists(action, max_size=25))


def _accounts(p: Pump) -> tuple[object, ...]:
    a = p.acc
    s = p.status()
    return (
        p.now_ms,
        a.integral_nlms,
        a.steps_total,
        a.estimate_nl,
        a.true_reservoir_nl,
        a.delivered_true_nl,
        a.charge_pc,
        s.effective_rate_nl_per_day,
        s.alarms,
        p.state,
        p.step_times(max(0, a.steps_total - 3), 3),
    )


@given(st.data())
def test_clock_changes_neither_skip_nor_repeat_delivery(data: st.DataObject) -> None:
    """Two pumps run the same commands (every non-flex mode, boluses, stalls, resets, refills);
    one also has its wall clock set forward and back, by seconds to years. Their integrals,
    steps, reservoirs, batteries, alarms and step times are identical at every checkpoint:
    delivery runs on monotonic time only."""
    config = data.draw(configs())
    conc = data.draw(st.sampled_from(CONCENTRATIONS))
    wall = data.draw(st.integers(0, 1 << 40))
    plain = Pump(config, wall_clock_ms=wall)
    moved = Pump(config, wall_clock_ms=wall)
    shifts = st.one_of(st.integers(-MS_PER_HOUR, MS_PER_HOUR), st.integers(-400 * MS_PER_DAY, 400 * MS_PER_DAY)).map(
        clock_shift
    )
    for action in [refill(20_000_000, conc), *data.draw(_non_flex_actions(conc))]:
        refused = [apply(p, action) for p in (plain, moved)]
        assert [r is None for r in refused] == [refused[0] is None] * 2
        for shift in data.draw(st.lists(st.one_of(shifts, st.builds(clock, st.integers(0, 1 << 42))), max_size=2)):
            apply(moved, shift)  # refused only if it would set the clock below 0
        assert _accounts(plain) == _accounts(moved)


@given(st.data())
def test_flex_schedule_follows_the_wall_clock(data: st.DataObject) -> None:
    """Under FLEX, setting the clock moves the position in the schedule: right after set_clock
    the basal rate is the rate of the step in force at the new wall time (day 0 = the day of
    the commit); the integral and the steps are not touched by the change."""
    conc = data.draw(st.sampled_from(CONCENTRATIONS))
    program = data.draw(flex_programs(conc))
    pump = Pump(data.draw(configs()), wall_clock_ms=data.draw(st.integers(0, 1 << 40)), record_rates=True)
    obs = Observer(pump)  # checks the basal rate against the schedule after every action
    obs.run([refill(20_000_000, conc), commit(program, True)])
    for _ in range(data.draw(st.integers(1, 8))):
        obs.step(Advance(data.draw(_TIME)))
        acc = (pump.acc.integral_nlms, pump.acc.steps_total)
        target = data.draw(st.one_of(st.integers(0, 1 << 42), st.integers(-8 * MS_PER_DAY, 8 * MS_PER_DAY)))
        obs.step(clock(target) if target >= 0 and data.draw(st.booleans()) else clock_shift(target))
        assert (pump.acc.integral_nlms, pump.acc.steps_total) == acc


@given(st.data())
def test_refill_keeps_the_flex_position(data: st.DataObject) -> None:
    """A refill, even with a new concentration, keeps a flex program where it is in its cycle:
    the dose in force afterwards is the dose of the same step (its rate now at the new
    concentration), for every day of a multi-day cycle."""
    old, new = data.draw(st.lists(st.sampled_from(CONCENTRATIONS), min_size=2, max_size=2, unique=True))
    lo = max(dose_bounds(old)[0], dose_bounds(new)[0])
    hi = min(dose_bounds(old)[1], dose_bounds(new)[1], 800 * min(old, new))  # <= 0.8 mL/day: no empty
    assume(lo <= hi)
    cycle = data.draw(st.integers(2, 7))
    doses = data.draw(st.lists(st.integers(lo, hi), min_size=cycle, max_size=cycle, unique=True))
    program = Program(TherapyMode.FLEX, old, 0, 0, 0, cycle, tuple(FlexStep(d, 0, x) for d, x in enumerate(doses)))
    pump = Pump(wall_clock_ms=data.draw(st.integers(0, 1 << 40)), record_rates=True)
    obs = Observer(pump)
    obs.run(
        [refill(20_000_000, old), commit(program, True), Advance(data.draw(st.integers(0, 3 * cycle * MS_PER_DAY)))]
    )
    day = (pump.wall_clock_ms - obs.flex.anchor_wall_ms) // MS_PER_DAY % cycle
    assert pump.status().basal_rate_nl_per_day == rate_nl_per_day(doses[day], old)
    assert obs.step(refill(20_000_000, new, pump.acc.estimate_nl)) is None
    assert pump.status().basal_rate_nl_per_day == rate_nl_per_day(doses[day], new)


@given(
    kind=st.sampled_from([BolusKind.PRIMING, BolusKind.BRIDGE, BolusKind.PATIENT, BolusKind.SINGLE]),
    how=st.sampled_from([FaultKind.RESET, FaultKind.LOW_BATTERY_RESET]),
    conc=st.sampled_from(CONCENTRATIONS),
    data=st.data(),
)
def test_a_reset_loses_the_running_bolus(kind: BolusKind, how: FaultKind, conc: int, data: st.DataObject) -> None:
    """A reset (or low battery reset) during a bolus of any kind ends it, logged
    BOLUS_INTERRUPTED with the volume delivered so far; the rest of the bolus is never
    delivered: afterwards the integral grows at the basal rate only."""
    pump = Pump(PumpConfig(event_log_capacity=1 << 16), record_rates=True)
    obs = Observer(pump)
    room = DEFAULT_LIMITS.hard_limit_ng_per_day - DEFAULT_LIMITS.max_bolus_ng  # a bolus fits in the 24 h
    obs.run([refill(20_000_000, conc), commit(data.draw(continuous_programs(conc, top=room)), True)])
    long = 2 * MS_PER_DAY
    start: dict[BolusKind, list[Action]] = {
        BolusKind.PRIMING: [bolus(BolusKind.PRIMING, 100_000 * 50 // conc, long)],
        BolusKind.BRIDGE: [bolus(BolusKind.BRIDGE, 100_000 * 50 // conc, long)],
        BolusKind.PATIENT: [patient(PatientBolusSettings(1, 5_000, long, 0, 4)), REQUEST],
        BolusKind.SINGLE: [commit(Program(TherapyMode.SINGLE_BOLUS, conc, 0, 5_000, long, 0, ()))],
    }
    for action in start[kind]:
        assert obs.step(action) is None
    obs.step(Advance(data.draw(st.integers(0, long - 1))))
    running = pump.bolus
    assert running is not None
    delivered = (running.volume_nl * MS_PER_DAY - running.remaining_nlms) // MS_PER_DAY
    program = pump.program
    obs.step(fault(how))
    assert pump.bolus is None
    last = pump.log.entries(LogEventKind.BOLUS_INTERRUPTED)[-1]
    assert (last.code, last.at_ms, last.value_a) == (kind, pump.now_ms, delivered)
    if how is FaultKind.RESET:
        assert pump.program == (STOPPED if kind is BolusKind.SINGLE else program)
    else:
        assert pump.state is PumpState.MINIMUM_RATE
    basal = pump.status().basal_rate_nl_per_day
    before = pump.acc.integral_nlms
    later = data.draw(st.integers(1, 3 * MS_PER_DAY))
    obs.step(Advance(later))
    assert pump.acc.integral_nlms - before == basal * later


@given(st.data())
def test_steps_are_evenly_spread_at_a_constant_rate(data: st.DataObject) -> None:
    """Under a constant rate r (any programmable continuous dose at any concentration, the
    minimum rate, or a lone bolus), consecutive steps are floor(Q/r) or ceil(Q/r) ms apart
    (no bursts), the first falls ceil(Q/r) ms after delivery starts, and after T ms exactly
    floor(r*T/Q) steps have been taken."""
    config = data.draw(configs())
    conc = data.draw(st.sampled_from(CONCENTRATIONS))
    pump = Pump(config, record_rates=True)
    pump.refill(0, config.reservoir_capacity_nl, conc)
    pump.advance(data.draw(st.integers(0, MS_PER_DAY)))
    start = pump.now_ms
    source = data.draw(st.sampled_from(["continuous", "minimum", "bolus"]))
    if source == "continuous":
        program = data.draw(continuous_programs(conc))
        pump.commit_program(program, override_soft_limits=True)
        rate = rate_nl_per_day(program.dose_ng_per_day, conc)
    elif source == "minimum":
        pump.commit_program(minimum_rate())
        rate = LIMITS.min_rate_nl_per_day
    else:
        kind, volume, duration = data.draw(bolus_args(conc))
        rate = pump.start_bolus(kind, volume, duration).max_rate_nl_per_day
    q = quantum(pump)
    n = data.draw(st.integers(3, 300))
    limit = pump.bolus.volume_nl * MS_PER_DAY // q if pump.bolus is not None else n
    assume(limit >= 3)
    n = min(n, limit)
    span = n * q // rate  # within the bolus while it lasts: its budget is not reached
    pump.advance(start + span)
    assert pump.acc.steps_total == rate * span // q
    times = pump.step_times(0, pump.acc.steps_total)
    assert len(times) == pump.acc.steps_total >= 2
    assert times[0] - start == -(-q // rate)
    gaps = {b - a for a, b in itertools.pairwise(times)}
    assert gaps <= {q // rate, -(-q // rate)}, gaps


def _bolus_at_rate(rate: int, duration: int, max_volume: int) -> tuple[int, int] | None:
    """Volume and duration (from ``duration`` up) of a bolus whose rate is exactly ``rate`` and
    whose last millisecond delivers only part of it."""
    for d in range(duration, duration + 50_000):
        volume = -(-rate * d // MS_PER_DAY)
        if volume > max_volume:
            return None
        if volume * MS_PER_DAY // d == rate and volume * MS_PER_DAY % rate:
            return volume, d
    return None


@given(st.data())
def test_every_step_is_reported_where_it_fell(data: st.DataObject) -> None:
    """step_times(k) is the first millisecond at which THE ideal delivery reached (k+1)*Q, for
    every step, across rate changes, stalls and boluses - including boluses whose rate equals
    the basal (the total rate does not change when they start or end, but their last
    millisecond delivers only part of a millisecond's worth)."""
    conc = data.draw(st.sampled_from(CONCENTRATIONS))
    config = PumpConfig(step_volume_nl=1000, step_log_capacity=1 << 20)
    program = data.draw(continuous_programs(conc, top=600_000))
    rate = rate_nl_per_day(program.dose_ng_per_day, conc)
    pump = Pump(config, record_rates=True)
    obs = Observer(pump)
    obs.run([refill(data.draw(st.integers(1, 3_000_000)), conc), commit(program, True)])  # <= 3000 steps
    max_volume = min(((LIMITS.max_bolus_ng + 1) * 1000 - 1) // conc, 1_000_000)
    same_rate: list[Command] = []
    for kind in (BolusKind.PRIMING, BolusKind.BRIDGE):
        found = _bolus_at_rate(rate, data.draw(st.integers(30 * 60_000, 4 * MS_PER_HOUR)), max_volume)
        if found is not None:
            same_rate.append(bolus(kind, *found))
    choices: list[st.SearchStrategy[Action]] = [
        st.builds(Advance, st.integers(0, 6 * MS_PER_HOUR)),
        st.just(Advance(-1)),
        bolus_args(conc).map(lambda a: bolus(*a)),
        st.sampled_from([fault(FaultKind.MOTOR_STALL), fault(FaultKind.MOTOR_STALL_CLEAR)]),
    ]
    if same_rate:
        choices.append(st.sampled_from(same_rate))
    obs.run(data.draw(st.lists(st.one_of(*choices), max_size=12)))
    obs.step(Advance(-1))
    pieces = pump.rate_pieces
    assert pieces is not None
    q = quantum(pump)
    steps = pump.acc.steps_total
    for k, t in enumerate(pump.step_times(0, steps)):
        assert ideal_nlms(pieces, t) >= (k + 1) * q > ideal_nlms(pieces, t - 1), f"step {k} at {t}"


@given(scenarios(), _TIME)
def test_the_record_at_a_later_time_is_the_record_the_pump_reaches_there(
    scenario: tuple[Pump, list[Action]], ms: int
) -> None:
    """A time jump on a pump with memory commits ``record_at(t)`` and moves the pump to ``t`` at
    that commit point: the two must be one and the same state, whatever the pump was doing."""
    pump, actions = scenario
    for action in actions:
        apply(pump, action)
    target = pump.now_ms + ms
    before = pump.firmware_record()
    log_before = pump.log.entries()
    record = pump.record_at(target)
    assert pump.firmware_record() == before, "record_at changes nothing"
    assert pump.log.entries() == log_before
    pump.advance(target)
    assert record == pump.firmware_record()
