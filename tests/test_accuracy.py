"""The accuracy promise, deep: realistic therapies (``accuracy_strategies.sessions``) lived
through refills, concentration changes, boluses, clock changes, stalls, resets and reboots
from non-volatile memory, checked at arbitrary checkpoints (after every wait of any length and
after every action).

test_pump_sequences.py checks the same lag and conservation on one firmware incarnation with
wire-level actions; here they are carried across reboots (a new ``Pump`` restored from its
record and the unchanged plant) on clinical sessions, and the dose, bridge, patient-bolus and
stroke-error promises are added. Volumes are nL, doses ng (pg where exact), times ms, the
ideal in nlms (nL*ms/day); nothing accumulates in floats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from firmware_model import Pump, PumpConfig
from firmware_model.units import MS_PER_DAY, MS_PER_HOUR, NL_PER_ML, rate_nl_per_day
from protocol_spec.enums import AlarmCode, BolusKind, ErrorCode, FaultKind, LogEventKind, TherapyMode
from protocol_spec.messages import FlexStep, Program

from .accuracy_strategies import (
    PRESS,
    REBOOT,
    Act,
    DoseProfile,
    RecordingPump,
    Rig,
    Session,
    clinical_doses,
    describe_program,
    fault_act,
    fmt_ms,
    fmt_volume,
    ideal_now,
    patient_act,
    program_act,
    refill_act,
    sessions,
    waits,
)
from .pump_strategies import (
    CONCENTRATIONS,
    LIMITS,
    STOPPED,
    configs,
    continuous_programs,
    dose_bounds,
    outcome,
    patient_settings,
    quantum,
    reservoir_crossing_step,
)

# ---------------------------------------------------------------------------- lag and conservation


@given(sessions())
def test_commanded_delivery_lags_the_ideal_by_less_than_one_step(session: Session) -> None:
    """At every checkpoint of a clinical session, reboots included: the pump's integral equals
    THE ideal (ideal_nlms over the rate pieces of every firmware incarnation), and the commanded
    delivery (motor steps * Q) lags it by at least zero and less than one step:
    0 <= ideal - steps * Q < Q."""

    def check(rig: Rig, where: str) -> None:
        p = rig.pump
        ideal = ideal_now(rig)
        q = quantum(p)
        assert p.acc.integral_nlms == ideal, f"{where}: integral {p.acc.integral_nlms} != ideal {ideal}"
        lag = ideal - p.acc.steps_total * q
        assert 0 <= lag < q, f"{where}: commanded delivery lags the ideal by {lag} nlms (one step is {q})"

    session.rig().run(session, check)


@given(sessions())
def test_the_plant_conserves_volume(session: Session) -> None:
    """At every checkpoint, reboots included: true reservoir + delivered (true) + removed at
    refills (true) = everything ever filled (true); none is negative; and between two
    checkpoints the drug that left the reservoir is exactly min(steps taken * (step volume +
    stroke error), what the reservoir held): a step moves its true volume until the reservoir
    is dry, then nothing."""
    seen: list[tuple[int, int, int]] = []

    def check(rig: Rig, where: str) -> None:
        a = rig.pump.acc
        cfg = rig.pump.config
        assert a.true_reservoir_nl + a.delivered_true_nl + a.removed_true_nl == a.filled_total_nl, where
        assert min(a.true_reservoir_nl, a.delivered_true_nl, a.removed_true_nl) >= 0, where
        if seen:
            steps, delivered, reservoir = seen[-1]
            moved = min((a.steps_total - steps) * (cfg.step_volume_nl + cfg.stroke_error_nl_per_step), reservoir)
            assert a.delivered_true_nl - delivered == moved, f"{where}: delivered {a.delivered_true_nl - delivered}"
        seen.append((a.steps_total, a.delivered_true_nl, a.true_reservoir_nl))

    session.rig().run(session, check)


# ---------------------------------------------------------------------------- the hard limit

_HARD_LIMIT_PG = LIMITS.hard_limit_ng_per_day * 1000
"""The library's hard limit over 24 h, in picograms (1 nL at 1 ug/mL is 1 pg)."""


def _floor_steps(profile: DoseProfile, q: int, t: int) -> int:
    return profile.volume_nlms(t) // q


def _commanded_dose_pg(rig: Rig, profile: DoseProfile, t: int) -> int:
    """The dose the motor's steps carried up to ``t``: each step's nominal volume at the
    concentration the reservoir held when it was taken (steps = floor(ideal / Q), which the lag
    property pins to the pump's own count)."""
    q = quantum(rig.pump)
    step = rig.pump.config.step_volume_nl
    total = 0
    bounds = rig.concentrations
    for i, (start, conc) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else t
        if start >= t:
            break
        end = min(end, t)
        total += conc * step * (_floor_steps(profile, q, end) - _floor_steps(profile, q, start))
    return total


def _check_rolling_dose(session: Session) -> None:
    checkpoints: list[tuple[int, int]] = []

    def record(rig: Rig, _where: str) -> None:
        checkpoints.append((rig.now_ms, rig.pump.acc.steps_total))

    rig = session.rig()
    rig.run(session, record)
    profile = DoseProfile.of(rig.pieces(), rig.concentrations, rig.now_ms)
    q = quantum(rig.pump)
    for t, steps in checkpoints:  # the profile is THE ideal, and floor(ideal / Q) the pump's steps
        assert profile.volume_nlms(t) // q == steps, f"at {t} ms"
    worst_pgms, end = profile.worst_window(MS_PER_DAY)
    assert worst_pgms <= _HARD_LIMIT_PG * MS_PER_DAY, (
        f"the 24 h ending at {fmt_ms(end)} ideally delivered {worst_pgms // MS_PER_DAY} pg, "
        f"over the hard limit of {_HARD_LIMIT_PG} pg"
    )
    one_step_pg = rig.pump.config.step_volume_nl * max(c for _, c in rig.concentrations)
    ends = {t for t, _ in checkpoints} | {end}
    for t in sorted(ends):
        dose = _commanded_dose_pg(rig, profile, t) - _commanded_dose_pg(rig, profile, max(0, t - MS_PER_DAY))
        assert dose <= _HARD_LIMIT_PG + one_step_pg, (
            f"the motor delivered {dose} pg in the 24 h ending at {fmt_ms(t)}, over the hard limit "
            f"{_HARD_LIMIT_PG} pg + one step ({one_step_pg} pg)"
        )


@given(sessions(boluses=False))
def test_basal_dose_in_any_24h_stays_within_the_hard_limit(session: Session) -> None:
    """Without boluses (continuous and flex programs at clinical doses up to the limit,
    minimum rate, stops, restarts, refills with concentration changes, clock changes, stalls,
    resets, reboots): in every rolling 24 h window the ideal dose (volume * the reservoir's
    concentration when it was pumped, per concentration segment) is at most the library's hard
    limit, exactly (the window's worst position is found among the breakpoints); the dose the
    motor's steps carried, in windows ending at every checkpoint and at the worst position, is
    at most the hard limit plus one step's dose (the motor's resolution)."""
    _check_rolling_dose(session)


@given(sessions(boluses=True))
def test_dose_in_any_24h_stays_within_the_hard_limit_boluses_included(session: Session) -> None:
    """The same, with everything a therapy does: single-bolus mode, priming and bridge boluses,
    patient boluses (within their lockout and daily maximum). In every rolling 24 h window the
    dose delivered, boluses included, is at most the library's hard limit (the ideal exactly;
    the motor's steps within one step)."""
    _check_rolling_dose(session)


# ---------------------------------------------------------------------------- the bridge


@dataclasses.dataclass(frozen=True)
class _Change:
    """A pump (any tubing), an old and a new concentration, a revised catheter (or none), and a
    continuous or flex program whose doses are programmable at both concentrations."""

    config: PumpConfig
    old: int
    new: int
    catheter_nl: int | None
    program: Program
    wall_clock_ms: int
    run_ms: int

    def _repr_pretty_(self, printer: Any, _cycle: bool) -> None:
        """Hypothesis prints counterexamples with this (it would print a dataclass field by field)."""
        printer.text(repr(self))

    def __repr__(self) -> str:
        c = self.config
        catheter = "kept" if self.catheter_nl is None else f"revised to {fmt_volume(self.catheter_nl)}"
        return (
            f"_Change({fmt_volume(c.reservoir_capacity_nl)} pump, {c.step_volume_nl} nL steps, tubing "
            f"{fmt_volume(c.tubing_volume_nl)}, catheter {fmt_volume(c.catheter_volume_nl)}; fill with "
            f"{self.old} ug/mL, {describe_program(self.program)}, run {fmt_ms(self.run_ms)}, refill with "
            f"{self.new} ug/mL, catheter {catheter}; wall clock {self.wall_clock_ms} ms)"
        )


@st.composite
def _concentration_changes(draw: st.DrawFn) -> _Change:
    config = draw(configs())
    config = dataclasses.replace(config, tubing_volume_nl=draw(st.sampled_from([65_000, 0, 20_000, 100_000])))
    old, new = draw(st.lists(st.sampled_from(CONCENTRATIONS), min_size=2, max_size=2, unique=True))
    catheter = draw(st.one_of(st.none(), st.integers(10_000, 400_000)))
    lo = max(dose_bounds(old)[0], dose_bounds(new)[0])
    hi = min(dose_bounds(old)[1], dose_bounds(new)[1])
    dose = st.integers(lo, hi)
    if draw(st.booleans()):
        program = Program(TherapyMode.CONTINUOUS, old, draw(dose), 0, 0, 0, ())
    else:
        starts = sorted({0} | draw(st.sets(st.integers(1, 47).map(lambda x: x * 30 * 60_000), max_size=5)))
        steps = tuple(FlexStep(0, s, draw(dose)) for s in starts)
        program = Program(TherapyMode.FLEX, old, 0, 0, 0, 1, steps)
    wall = draw(st.integers(0, 1 << 41))
    return _Change(config, old, new, catheter, program, wall, draw(st.integers(0, 3 * MS_PER_DAY)))


def _change_concentration(data: st.DataObject) -> tuple[Rig, int, int, int]:
    """Fill at the old concentration, run the program, refill with the new one. Returns the rig,
    the basal rate and dose before the refill, and the old concentration."""
    change = data.draw(_concentration_changes())
    config = change.config
    rig = Rig(RecordingPump(config, wall_clock_ms=change.wall_clock_ms))
    assert rig.act(refill_act(config.reservoir_capacity_nl, change.old)) is None
    assert rig.act(program_act(change.program)) is None
    rig.wait(change.run_ms)
    old_rate, old_dose = rig.pump.program_rate_nl_per_day(), rig.pump.dose_now_ng_per_day()
    refill = refill_act(config.reservoir_capacity_nl, change.new, change.catheter_nl)
    assert rig.act(refill) is None, f"{refill!r} refused"
    return rig, old_rate, old_dose, change.old


@given(st.data())
def test_the_pumps_own_bridge_plan_is_accepted(data: st.DataObject) -> None:
    """After a refill that changes the concentration of a running continuous or flex program,
    bridge_plan() gives the dead volume (tubing + catheter, as revised at the refill) at the
    old basal rate, and start_bolus(BRIDGE, *plan) accepts it: the bridge delivers the old drug
    at the old dose, so it adds nothing to the dose and no bolus limit should refuse it."""
    rig, old_rate, _, old = _change_concentration(data)
    p = rig.pump
    dead = p.catheter_volume_nl + p.config.tubing_volume_nl
    plan = p.bridge_plan()
    assert plan == (dead, -(-dead * MS_PER_DAY // old_rate))
    refusal = rig.act(Act("bridge as planned", lambda r: r.pump.start_bolus(BolusKind.BRIDGE, *plan)))
    assert refusal is None, (
        f"the pump refuses its own bridge plan of {dead} nL of {old} ug/mL ({dead * old // 1000} ng): {refusal}"
    )


@given(st.data())
def test_bridge_delivers_the_old_dose_until_the_dead_volume_is_flushed(data: st.DataObject) -> None:
    """The bridge after a concentration change (where the pump accepts it: see the test above):
    at every checkpoint while it runs, what leaves the catheter tip is the old drug (the pump has
    pushed at most the dead volume ideally; the motor's steps, which carry a fraction of a step
    over from before the refill, let less than one step of new drug through), the basal is
    replaced by the bridge, and the dose the patient has had since the refill is the old dose
    for that time, within one step above
    and one step plus the bridge's rounding below (its rate r_b = V * D // duration satisfies
    r_b <= r_old and (r_old - r_b - 1) * duration < r_old: at most 1 nL/day slower for the
    default 260 uL dead volume at any programmable rate). It completes at exactly
    ceil(V * D / r_b) ms, having pushed exactly the dead volume V (logged as completed); from
    then on the program runs at the new concentration at its own dose
    (rate = dose * 1000 // new concentration)."""
    rig, old_rate, old_dose, old = _change_concentration(data)
    p = rig.pump
    plan = p.bridge_plan()
    assert plan is not None
    dead, duration = plan
    if rig.act(Act("bridge", lambda r: r.pump.start_bolus(BolusKind.BRIDGE, dead, duration))) is not None:
        assert dead * old // 1000 > LIMITS.max_bolus_ng  # the refusal reported by the test above
        return
    bolus = p.bolus
    assert bolus is not None
    r_b = bolus.rate_nl_per_day
    assert r_b <= old_rate
    assert (old_rate - r_b - 1) * duration < old_rate
    q = quantum(p)
    step = p.config.step_volume_nl
    start_ms, start_nlms, start_steps = p.now_ms, p.acc.integral_nlms, p.acc.steps_total
    column_old_nl = dead  # the FIFO: what the tubing and catheter hold of the old drug
    end_ms = -(-dead * MS_PER_DAY // r_b)  # the bridge runs at r_b until its budget is spent
    assert end_ms >= duration
    checkpoints = data.draw(st.lists(st.integers(0, end_ms - 1), max_size=8))
    for at_ms in [*sorted(checkpoints), end_ms - 1]:
        rig.wait(start_ms + at_ms - p.now_ms)
        assert p.bolus is not None, f"the bridge ended early, after {fmt_ms(at_ms)} of {fmt_ms(end_ms)}"
        pushed_nl = (p.acc.steps_total - start_steps) * step
        assert p.acc.integral_nlms - start_nlms == r_b * at_ms <= dead * MS_PER_DAY
        tip_new_nl = max(0, pushed_nl - column_old_nl)  # the FIFO: what passed the old column
        assert tip_new_nl < step, f"{tip_new_nl} nL of new drug reached the tip during the bridge"
        assert p.status().effective_rate_nl_per_day == r_b, "the bridge does not replace the basal"
        # the patient's dose since the refill against the old dose for the same time, in nlms
        # at the old concentration (steps fall when the integral, which carried a fraction of a
        # step over from before the refill, crosses a multiple of Q)
        excess_nlms = pushed_nl * MS_PER_DAY - old_rate * at_ms
        assert excess_nlms < q, f"more than the old dose + one step after {fmt_ms(at_ms)}"
        assert -excess_nlms < q + (old_rate - r_b) * at_ms, f"less than the old dose after {fmt_ms(at_ms)}"
    rig.wait(1)
    assert p.bolus is None
    done = p.log.entries(LogEventKind.BOLUS_COMPLETED)
    assert [(e.code, e.value_a) for e in done[-1:]] == [(BolusKind.BRIDGE, dead)]
    assert p.acc.integral_nlms - start_nlms == dead * MS_PER_DAY, "the dead volume was not flushed exactly"
    # the column now holds only the new drug; the program runs on at the new concentration
    dose = p.dose_now_ng_per_day()
    new_conc = p.concentration_ug_per_ml
    assert p.status().effective_rate_nl_per_day == rate_nl_per_day(dose, new_conc)
    assert old_dose > 0


# ---------------------------------------------------------------------------- patient boluses


@given(conc=st.sampled_from(CONCENTRATIONS), data=st.data())
def test_patient_bolus_lockout_and_daily_maximum_hold_across_resets(conc: int, data: st.DataObject) -> None:
    """Presses of the patient button interleaved with processor resets, low battery resets (and
    the reprogramming that ends them), reboots from non-volatile memory, motor stalls and
    recoveries: every press is answered exactly by the rules over the grants of the pump's
    whole life, whatever restarted in between: ALARM_ACTIVE during a critical alarm; BUSY while a
    bolus runs; BOLUS_LOCKOUT with retry_after_ms = what is left of the lockout from the last
    grant (a reset or reboot does not restart or forget it); BOLUS_DAILY_MAX when the maximum
    was granted in the rolling 24 h (grants before a reset count); else a grant with the rules'
    next_allowed_ms and remaining_24h."""
    settings_ = data.draw(patient_settings(conc))
    basal = data.draw(st.one_of(continuous_programs(conc, top=conc * 200), st.just(STOPPED)))
    config = PumpConfig(event_log_capacity=1 << 16)
    rig = Rig(RecordingPump(config))
    for act in (refill_act(20 * NL_PER_ML, conc), program_act(basal), patient_act(settings_)):
        assert rig.act(act) is None
    reprogram = program_act(basal)
    events = st.one_of(
        waits(),
        st.integers(0, 2 * MS_PER_HOUR),
        st.just(PRESS),
        st.just(PRESS),
        st.sampled_from(
            [
                fault_act(FaultKind.RESET),
                REBOOT,
                fault_act(FaultKind.LOW_BATTERY_RESET),
                reprogram,
                fault_act(FaultKind.MOTOR_STALL),
                fault_act(FaultKind.MOTOR_STALL_CLEAR),
            ]
        ),
    )
    for event in data.draw(st.lists(events, min_size=1, max_size=30)):
        if isinstance(event, int):
            rig.wait(event)
            continue
        if event is not PRESS:
            rig.act(event)
            continue
        p = rig.pump
        s = p.patient_bolus
        assert s == settings_, "a reset or reboot changed the patient-bolus settings"
        now = p.now_ms
        grants = rig.grants
        window = [t for t in grants if t > now - MS_PER_DAY]
        expected: tuple[ErrorCode, int, int] | None
        if p.alarms.critical_active:
            expected = (ErrorCode.ALARM_ACTIVE, 0, 0)
        elif p.bolus is not None:
            expected = (ErrorCode.BUSY, 0, 0)
        elif grants and now < grants[-1] + s.lockout_ms:
            expected = (ErrorCode.BOLUS_LOCKOUT, 0, grants[-1] + s.lockout_ms - now)
        elif len(window) >= s.max_per_24h:
            expected = (ErrorCode.BOLUS_DAILY_MAX, s.max_per_24h, 0)
        else:
            expected = None
        before = p.therapy_digest()
        grant, refusal = outcome(p.request_patient_bolus)
        if refusal is not None:
            assert expected is not None, f"refused ({refusal}) though the rules allow a bolus at {now} ms"
            assert (refusal.code, refusal.hi, refusal.retry_after_ms) == expected
            assert p.therapy_digest() == before
            continue
        assert grant is not None
        assert expected is None, f"granted at {now} ms though the rules say {expected} (grants {grants})"
        grants.append(now)
        window.append(now)
        full = len(window) >= s.max_per_24h
        assert grant.next_allowed_ms == max(now + s.lockout_ms, window[0] + MS_PER_DAY if full else 0)
        assert grant.remaining_24h == s.max_per_24h - len(window)


# ---------------------------------------------------------------------------- stroke error


def _run_to_empty(p: Pump, waits_ms: Callable[[], int], check: Callable[[], None]) -> None:
    """Advance by the given waits (and to the next event when a wait is 0) until EMPTY stands."""
    for _ in range(10_000):
        if AlarmCode.EMPTY_RESERVOIR in p.alarms.active:
            return
        wait = waits_ms()
        nxt = p.next_event_ms()
        p.advance(p.now_ms + wait if wait or nxt is None else nxt)
        check()
    raise AssertionError("the reservoir never ran empty")


def _step_time_ms(k: int, q: int, rate: int) -> int:
    """When step k (1-based) falls for a pump that started from zero at a constant rate."""
    return -(-k * q // rate)


@given(st.data())
def test_stroke_error_moves_the_low_reservoir_alarm_by_exactly_its_drift(data: st.DataObject) -> None:
    """With a plant stroke error e (true - nominal volume per step, either sign), the estimate
    drifts from the truth by exactly e per step: after n steps since a fill F, estimate = F - n*S
    and true = max(0, F - n*(S + e)). The low-reservoir alarm is raised at step
    n_low = ceil((F - T) / S), when the estimate first reads the threshold T or less; the true
    reservoir then holds exactly (estimate - n_low * e): e > 0 makes the alarm late, e < 0 early,
    by n_low * e in true volume, and by the steps between n_low and the step at which the TRUE
    reservoir crossed T, n_true = ceil((F - T) / (S + e)). Example: e = +5 nL on 250 nL steps
    moves 2 % more per step; after a 20 mL fill with a 2 mL threshold the alarm comes at step
    72,000 with 1.64 mL truly left, 360 uL below the threshold, 1,411 steps after the true
    crossing (8 h 28 min at 1 mL/day; see the worked example below)."""
    step = data.draw(st.sampled_from([250, 250, 100, 1000, 37]))
    error = data.draw(st.one_of(st.integers(-(step // 20), step // 20), st.integers(-(step - 1), step)))
    cap = data.draw(st.sampled_from([20, 40])) * NL_PER_ML
    threshold = data.draw(st.one_of(st.just(2 * NL_PER_ML), st.integers(0, cap - 1)))
    fill = data.draw(st.one_of(st.just(cap), st.integers(1, cap)))
    conc = data.draw(st.sampled_from(CONCENTRATIONS))
    config = PumpConfig(
        reservoir_capacity_nl=cap,
        step_volume_nl=step,
        stroke_error_nl_per_step=error,
        low_reservoir_threshold_nl=threshold,
        step_log_capacity=1 << 24,
    )
    _check_stroke_error(config, fill, conc, data.draw(clinical_doses(conc)), lambda: data.draw(waits()))


def _check_stroke_error(
    config: PumpConfig, fill: int, conc: int, dose: int, waits_ms: Callable[[], int]
) -> tuple[int, int, int, int]:
    """Run a fresh pump from ``fill`` to empty; check the drift and the alarm. Returns
    (n_low, true reservoir at the alarm, n_true, how late the alarm is in ms; negative: early)."""
    s, e, t_nl = config.step_volume_nl, config.stroke_error_nl_per_step, config.low_reservoir_threshold_nl
    p = Pump(config)
    p.refill(0, fill, conc)
    p.commit_program(Program(TherapyMode.CONTINUOUS, conc, dose, 0, 0, 0, ()), override_soft_limits=True)
    rate = rate_nl_per_day(dose, conc)
    q = quantum(p)

    def check() -> None:
        n = p.acc.steps_total
        assert p.acc.estimate_nl == fill - n * s
        assert p.acc.true_reservoir_nl == max(0, fill - n * (s + e))
        if fill - n * (s + e) >= 0:
            assert p.acc.estimate_nl - p.acc.true_reservoir_nl == n * e, "the drift is not e per step"

    _run_to_empty(p, waits_ms, check)
    n_low = reservoir_crossing_step(fill, t_nl, s, strict=False)
    n_empty = reservoir_crossing_step(fill, s, s, strict=True)
    raised = [x for x in p.log.entries(LogEventKind.ALARM_RAISED) if x.code == AlarmCode.LOW_RESERVOIR]
    if n_low == 0 or n_low > n_empty:  # filled at or below the threshold, or out of reach
        assert len(raised) == (n_low == 0)
        return n_low, 0, 0, 0
    assert raised, "no low-reservoir alarm"
    alarm_ms = raised[0].at_ms
    assert alarm_ms == _step_time_ms(n_low, q, rate) == p.step_times(n_low - 1, 1)[0]
    estimate_at_alarm = fill - n_low * s
    true_at_alarm = max(0, fill - n_low * (s + e))
    if fill - n_low * (s + e) >= 0:
        assert true_at_alarm == estimate_at_alarm - n_low * e, "the alarm is not off by exactly n_low * e"
    n_true = reservoir_crossing_step(fill, t_nl, s + e, strict=False)
    assert (n_true <= n_low) if e >= 0 else (n_true >= n_low)
    late_ms = alarm_ms - _step_time_ms(n_true, q, rate)
    if n_true <= p.acc.steps_total:  # the true crossing was a step the motor took
        assert p.step_times(n_true - 1, 1)[0] == _step_time_ms(n_true, q, rate)
        truly_before = fill - (n_true - 1) * (s + e)
        assert fill - n_true * (s + e) <= t_nl < truly_before or n_true == 0
    return n_low, true_at_alarm, n_true, late_ms


def test_stroke_error_worked_example() -> None:
    """The figures of the docstring above: 250 nL steps, e = +5 nL (2 % more true volume per
    step), a 20 mL fill, a 2 mL threshold, 500 ug/day at 500 ug/mL (1 mL/day nominal). The alarm
    is raised at step 72,000 (day 18) with 1.64 mL truly left: 360 uL later than the truth, the
    true reservoir having crossed 2 mL at step 70,589, 8 h 27 min 57.6 s earlier. With e = -5 nL
    the alarm comes early: 2.36 mL truly left (360 uL above), the truth crossing 1,470 steps later."""
    config = PumpConfig(stroke_error_nl_per_step=5, step_log_capacity=1 << 24)
    late = _check_stroke_error(config, 20 * NL_PER_ML, 500, 500_000, lambda: 0)
    assert late == (72_000, 1_640_000, 70_589, 30_477_600)
    assert fmt_ms(late[3]) == "8 h 27 min 57.6 s"
    assert late[1] == 2 * NL_PER_ML - 72_000 * 5
    early = _check_stroke_error(
        dataclasses.replace(config, stroke_error_nl_per_step=-5), 20 * NL_PER_ML, 500, 500_000, lambda: 0
    )
    assert early[:3] == (72_000, 2_360_000, 73_470)
    assert early[3] == -(1_470 * 21_600)
