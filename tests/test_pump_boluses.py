"""Boluses: supplemental boluses never touch the basal program; the patient bolus keeps its
lockout and daily maximum; the single-bolus mode reverts to STOPPED."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_model import Pump, PumpConfig, PumpState, RefusalError
from firmware_model.config import DEFAULT_LIMITS
from firmware_model.units import MS_PER_DAY, MS_PER_HOUR, volume_nl_for_dose
from protocol_spec.enums import BolusKind, ErrorCode, LogEventKind, TherapyMode
from protocol_spec.messages import PatientBolusSettings, Program

from .pump_strategies import (
    CANCEL,
    CONCENTRATIONS,
    REQUEST,
    STOPPED,
    Action,
    Advance,
    Observer,
    bolus,
    bolus_args,
    commit,
    configs,
    continuous_programs,
    flex_programs,
    minimum_rate,
    outcome,
    patient,
    patient_settings,
    refill,
    single_bolus_programs,
)


@given(st.data())
def test_supplemental_boluses_never_change_the_basal_program(data: st.DataObject) -> None:
    """Under any basal program (continuous, flex, minimum rate, stopped), starting, completing
    and cancelling PRIMING, BRIDGE and PATIENT boluses leaves p.program exactly as committed,
    and status().basal_rate_nl_per_day is unchanged by every start and cancel and always equals
    the program's own rate (the bolus shows only in the effective rate)."""
    conc = data.draw(st.sampled_from(CONCENTRATIONS))
    program = data.draw(
        st.one_of(
            continuous_programs(conc), flex_programs(conc, max_per_day=4), st.sampled_from([STOPPED, minimum_rate()])
        )
    )
    pump = Pump(data.draw(configs()), wall_clock_ms=data.draw(st.integers(0, 1 << 40)), record_rates=True)
    obs = Observer(pump)  # checks the basal rate before and after every start and cancel
    obs.run([refill(20_000_000, conc), commit(program, True)])
    committed = pump.program
    action = st.one_of(
        bolus_args(conc).map(lambda a: bolus(*a)),
        st.builds(patient, patient_settings(conc)),
        st.just(REQUEST),
        st.just(CANCEL),
        st.builds(Advance, st.integers(0, 6 * MS_PER_HOUR)),
        st.just(Advance(-1)),
    )
    completed = 0
    for a in data.draw(st.lists(action, max_size=25)):
        obs.step(a)
        assert pump.program == committed
        completed = len(pump.log.entries(LogEventKind.BOLUS_COMPLETED))
    # finish any running bolus: the program is still the one committed
    for _ in range(10):
        if pump.bolus is None:
            break
        obs.step(Advance(-1))
    assert pump.program == committed
    assert len(pump.log.entries(LogEventKind.BOLUS_COMPLETED)) >= completed


@given(
    conc=st.sampled_from(CONCENTRATIONS),
    data=st.data(),
    waits=st.lists(
        st.one_of(
            st.integers(0, 2 * MS_PER_HOUR), st.integers(MS_PER_DAY, 2 * MS_PER_DAY), st.integers(0, 3 * MS_PER_DAY)
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_patient_bolus_lockout_and_daily_maximum(conc: int, data: st.DataObject, waits: list[int]) -> None:
    """Every press of the patient button is answered exactly by the rules: ALARM_ACTIVE during a
    critical alarm; BUSY while a bolus runs; BOLUS_LOCKOUT (retry_after_ms = what is left of it)
    before the lockout from the last granted bolus has passed, however long it is (lockouts
    beyond 24 h included);
    BOLUS_DAILY_MAX (hi = the maximum) when the maximum has been granted in the rolling 24 h;
    otherwise a grant whose next_allowed_ms and remaining_24h are the rules' values."""
    settings = data.draw(patient_settings(conc))
    basal = data.draw(st.one_of(continuous_programs(conc, top=conc * 200), st.just(STOPPED)))  # <= 0.2 mL/day
    pump = Pump(PumpConfig(event_log_capacity=1 << 16), record_rates=True)
    obs = Observer(pump)
    obs.run([refill(20_000_000, conc), commit(basal), patient(settings)])
    grants: list[int] = []
    for wait in waits:
        obs.step(Advance(wait))
        now = pump.now_ms
        window = [t for t in grants if t > now - MS_PER_DAY]
        if pump.alarms.critical_active:  # the reservoir ran empty
            expected: tuple[ErrorCode, int, int, int] | None = (ErrorCode.ALARM_ACTIVE, 0, 0, 0)
        elif pump.bolus is not None:
            expected = (ErrorCode.BUSY, 0, 0, 0)
        elif grants and now < grants[-1] + settings.lockout_ms:
            # SPEC.md: BOLUS_LOCKOUT says in retry_after_ms when a request may be granted
            expected = (ErrorCode.BOLUS_LOCKOUT, 0, 0, grants[-1] + settings.lockout_ms - now)
        elif len(window) >= settings.max_per_24h:
            expected = (ErrorCode.BOLUS_DAILY_MAX, 0, settings.max_per_24h, 0)
        else:
            expected = None
        before = pump.therapy_digest()
        grant, refusal = outcome(pump.request_patient_bolus)
        if refusal is not None:
            assert expected is not None, f"refused ({refusal}) though the rules allow a bolus"
            assert (refusal.code, refusal.lo, refusal.hi, refusal.retry_after_ms) == expected
            assert pump.therapy_digest() == before
        else:
            assert grant is not None
            assert expected is None, f"granted though the rules say {expected}"
            window.append(now)
            grants.append(now)
            full = len(window) >= settings.max_per_24h
            assert grant.next_allowed_ms == max(now + settings.lockout_ms, window[0] + MS_PER_DAY if full else 0)
            assert grant.remaining_24h == settings.max_per_24h - len(window)
            assert grant.dose_ng == settings.dose_ng
        obs.check()


def test_a_lockout_longer_than_a_day_still_holds_after_a_day() -> None:
    """A 48 h lockout refuses a second patient bolus 25 h after the first (retry_after_ms = the
    23 h left of the lockout) and grants it at 48 h."""
    pump = Pump()
    pump.refill(0, 20_000_000, 500)
    pump.set_patient_bolus(PatientBolusSettings(1, 50_000, MS_PER_HOUR, 48 * MS_PER_HOUR, 5))
    pump.request_patient_bolus()
    pump.advance(25 * MS_PER_HOUR)
    before = pump.therapy_digest()
    with pytest.raises(RefusalError) as refused:
        pump.request_patient_bolus()
    assert (refused.value.code, refused.value.retry_after_ms) == (ErrorCode.BOLUS_LOCKOUT, 23 * MS_PER_HOUR)
    assert pump.therapy_digest() == before
    pump.advance(48 * MS_PER_HOUR)
    assert pump.request_patient_bolus().next_allowed_ms == 96 * MS_PER_HOUR


@given(st.data())
def test_single_bolus_mode_delivers_its_bolus_then_reverts_to_stopped(data: st.DataObject) -> None:
    """Committing a SINGLE_BOLUS program from any mode delivers exactly the bolus volume (the
    dose at the reservoir's concentration, rounded down) instead of the basal, logs
    BOLUS_COMPLETED with that volume, then the pump is STOPPED with the STOPPED program and
    delivers nothing more."""
    conc = data.draw(st.sampled_from(CONCENTRATIONS))
    top = DEFAULT_LIMITS.hard_limit_ng_per_day - DEFAULT_LIMITS.max_bolus_ng  # room for any bolus in the 24 h
    before_mode = data.draw(
        st.one_of(
            continuous_programs(conc, top=top),
            flex_programs(conc, max_per_day=3, top=top),
            st.sampled_from([STOPPED, minimum_rate()]),
        )
    )
    program = data.draw(single_bolus_programs(conc))
    pump = Pump(PumpConfig(event_log_capacity=1 << 16), record_rates=True)
    obs = Observer(pump)
    obs.run([refill(20_000_000, conc), commit(before_mode, True), Advance(data.draw(st.integers(0, MS_PER_DAY)))])
    start = pump.acc.integral_nlms
    assert obs.step(commit(program)) is None
    assert pump.status().state is PumpState.SINGLE_BOLUS
    volume = volume_nl_for_dose(program.bolus_dose_ng, conc)
    for _ in range(100):
        if pump.state is not PumpState.SINGLE_BOLUS:
            break
        obs.step(Advance(-1))
    assert pump.state is PumpState.STOPPED
    assert pump.program == STOPPED
    assert pump.acc.integral_nlms - start == volume * MS_PER_DAY
    done = pump.log.entries(LogEventKind.BOLUS_COMPLETED)
    assert [(e.code, e.value_a) for e in done] == [(BolusKind.SINGLE, volume)]
    end = pump.acc.integral_nlms
    obs.step(Advance(30 * MS_PER_DAY))
    assert pump.acc.integral_nlms == end


@given(conc=st.sampled_from(CONCENTRATIONS), data=st.data())
def test_single_bolus_program_waits_for_a_running_supplemental_bolus(conc: int, data: st.DataObject) -> None:
    """A SINGLE_BOLUS program committed while a PRIMING, BRIDGE or PATIENT bolus runs is refused
    (BUSY) and changes nothing: the running bolus is neither dropped unlogged nor replaced."""
    pump = Pump(record_rates=True)
    obs = Observer(pump)
    room = DEFAULT_LIMITS.hard_limit_ng_per_day - DEFAULT_LIMITS.max_bolus_ng  # a bolus fits in the 24 h
    obs.run([refill(20_000_000, conc), commit(data.draw(continuous_programs(conc, top=room)), True)])
    kind = data.draw(st.sampled_from([BolusKind.PRIMING, BolusKind.BRIDGE, BolusKind.PATIENT]))
    starts: list[Action]
    if kind is BolusKind.PATIENT:
        starts = [patient(PatientBolusSettings(1, 2 * conc, MS_PER_DAY, 0, 4)), REQUEST]
    else:
        starts = [bolus(kind, 2_000, MS_PER_DAY)]
    for a in starts:
        assert obs.step(a) is None
    obs.step(Advance(data.draw(st.integers(0, MS_PER_HOUR))))
    refusal = obs.step(commit(data.draw(single_bolus_programs(conc))))
    assert refusal is not None
    assert refusal.code is ErrorCode.BUSY
    assert pump.bolus is not None
    assert pump.bolus.kind is kind
    assert pump.program.mode is TherapyMode.CONTINUOUS
    assert isinstance(pump.program, Program)
