"""Units, drug-library limits (hard, soft, soft increase per 24 h) and the state diagram."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_model import Pump, RefusalError
from firmware_model.machine import DIAGRAM_PATH, diagram_document
from firmware_model.units import (
    MS_PER_DAY,
    MS_PER_HOUR,
    NL_PER_UL,
    dose_ng_for_volume,
    rate_nl_per_day,
    volume_nl_for_dose,
)
from protocol_spec.enums import ErrorCode, LogEventKind, StageKind, TherapyMode
from protocol_spec.messages import MAX_DOSE_NG_PER_DAY, FlexStep, Program

from .pump_strategies import CONCENTRATIONS, LIMITS, STOPPED, dose_bounds, minimum_rate

_F_DOSE, _F_STEPS = 2, 6  # Program's wire field indices named in refusals
SOFT, HARD = LIMITS.soft_limit_ng_per_day, LIMITS.hard_limit_ng_per_day


def test_state_diagram_is_current() -> None:
    """docs/pump_states.md is exactly the diagram generated from the transition table."""
    assert DIAGRAM_PATH.read_text(encoding="utf-8") == diagram_document()


# ---------------------------------------------------------------------------- units


@given(st.integers(0, 10**12), st.integers(1, 10**6))
def test_rate_rounds_down(dose: int, conc: int) -> None:
    """rate_nl_per_day(dose, conc) is the largest whole rate not above dose * 1000 / conc: the
    pump never programs more than the dose (and never a whole nL/day less)."""
    rate = rate_nl_per_day(dose, conc)
    assert rate * conc <= dose * NL_PER_UL < (rate + 1) * conc
    assert volume_nl_for_dose(dose, conc) == rate
    volume = rate
    assert dose_ng_for_volume(volume, conc) * NL_PER_UL <= volume * conc < (dose_ng_for_volume(volume, conc) + 1) * 1000
    assert dose_ng_for_volume(volume, conc) <= dose


@pytest.mark.parametrize("conc", [0, -1, -500])
def test_rate_needs_a_concentration(conc: int) -> None:
    """A dose at no (or a negative) concentration has no rate: ValueError, not a division."""
    with pytest.raises(ValueError, match="concentration"):
        rate_nl_per_day(1000, conc)


# ---------------------------------------------------------------------------- limits


def _pump(conc: int) -> Pump:
    pump = Pump()
    pump.refill(0, 20_000_000, conc)
    return pump


def _refused(pump: Pump, program: Program, override: bool = False) -> RefusalError:
    before = pump.therapy_digest()
    with pytest.raises(RefusalError) as info:
        pump.commit_program(program, override)
    assert pump.therapy_digest() == before
    return info.value


def _continuous(conc: int, dose: int) -> Program:
    return Program(TherapyMode.CONTINUOUS, conc, dose, 0, 0, 0, ())


def _flex(conc: int, doses: list[int]) -> Program:
    steps = tuple(FlexStep(0, i * MS_PER_DAY // len(doses), d) for i, d in enumerate(doses))
    return Program(TherapyMode.FLEX, conc, 0, 0, 0, 1, steps)


def _overrides(pump: Pump) -> list[tuple[int, int, int]]:
    return [(e.code, e.value_a, e.value_b) for e in pump.log.entries(LogEventKind.SOFT_LIMIT_OVERRIDE)]


@st.composite
def _soft_range_doses(draw: st.DrawFn) -> tuple[int, int, bool]:
    """A concentration, a programmable dose above the soft limit (up to the hard limit), flex?"""
    conc = draw(st.sampled_from([c for c in CONCENTRATIONS if dose_bounds(c)[1] > SOFT]))
    return conc, draw(st.integers(SOFT + 1, dose_bounds(conc)[1])), draw(st.booleans())


@given(_soft_range_doses(), st.data())
def test_soft_limit_needs_an_override_and_is_logged(case: tuple[int, int, bool], data: st.DataObject) -> None:
    """From a stopped pump, a dose above the soft limit (continuous, or any flex step) is
    refused with SOFT_LIMIT_NEEDS_OVERRIDE (hi = the soft limit) and changes nothing; with
    the override it is accepted, reported overridden and logged SOFT_LIMIT_OVERRIDE (mode,
    dose). A dose at or below the soft limit needs no override and logs none."""
    conc, dose, flex = case
    lo = dose_bounds(conc)[0]
    others = data.draw(st.lists(st.integers(lo, SOFT), max_size=4))
    program = _flex(conc, [*others, dose]) if flex else _continuous(conc, dose)
    pump = _pump(conc)
    refusal = _refused(pump, program)
    assert (refusal.code, refusal.hi, refusal.field) == (
        ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE,
        SOFT,
        _F_STEPS if flex else _F_DOSE,
    )
    check = pump.commit_program(program, override_soft_limits=True)
    assert check.soft_limit_overridden
    assert check.max_dose_ng_per_day == dose
    assert pump.program == program
    assert _overrides(pump) == [(StageKind.PROGRAM, dose, SOFT)]  # SPEC.md event log: kind, value, limit
    below = _pump(conc)
    below_dose = data.draw(st.integers(lo, SOFT))
    check = below.commit_program(_continuous(conc, below_dose))
    assert not check.soft_limit_overridden
    assert _overrides(below) == []


@given(
    conc=st.sampled_from(CONCENTRATIONS),
    dose=st.one_of(st.just(HARD + 1), st.integers(HARD + 1, MAX_DOSE_NG_PER_DAY)),
    flex=st.booleans(),
    override=st.booleans(),
    data=st.data(),
)
def test_hard_limit_is_refused_even_with_override(
    conc: int, dose: int, flex: bool, override: bool, data: st.DataObject
) -> None:
    """A daily dose above the hard limit is refused with HARD_LIMIT and hi = the hard limit,
    override or not, whatever the running therapy; nothing changes."""
    pump = _pump(conc)
    lo, hi = dose_bounds(conc)
    pump.commit_program(_continuous(conc, data.draw(st.integers(lo, min(hi, SOFT)))))
    others = data.draw(st.lists(st.integers(lo, min(hi, SOFT)), max_size=4))
    program = _flex(conc, [*others, dose]) if flex else _continuous(conc, dose)
    refusal = _refused(pump, program, override)
    assert (refusal.code, refusal.hi) == (ErrorCode.HARD_LIMIT, HARD)


@st.composite
def _increase(draw: st.DrawFn) -> tuple[int, int, int]:
    """A concentration, a running dose and a higher new dose, both within the soft limit."""
    conc = draw(st.sampled_from(CONCENTRATIONS))
    lo, hi = dose_bounds(conc)
    top = min(hi, SOFT)
    old = draw(st.integers(lo, top * 1000 // (1000 + LIMITS.soft_increase_permille_per_24h)))
    new = draw(st.integers(old, top))
    return conc, old, new


@given(_increase(), st.integers(0, MS_PER_DAY - 1))
def test_soft_increase_per_24h_from_a_running_therapy(case: tuple[int, int, int], after: int) -> None:
    """Within 24 h of a running dose D, raising it above D * (1000 + 300) / 1000 needs the
    override (SOFT_LIMIT_NEEDS_OVERRIDE, hi = that allowance, nothing changed) and is logged
    when overridden; a raise within the allowance needs none and logs none."""
    conc, old, new = case
    pump = _pump(conc)
    pump.commit_program(_continuous(conc, old))
    pump.advance(after)
    allowed = old * (1000 + LIMITS.soft_increase_permille_per_24h) // 1000
    if new > allowed:
        refusal = _refused(pump, _continuous(conc, new))
        assert (refusal.code, refusal.hi) == (ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE, allowed)
        assert pump.commit_program(_continuous(conc, new), override_soft_limits=True).soft_limit_overridden
        assert _overrides(pump) == [(StageKind.PROGRAM, new, min(allowed, SOFT) if new > SOFT else allowed)]
    else:
        assert not pump.commit_program(_continuous(conc, new)).soft_limit_overridden
        assert _overrides(pump) == []


@given(_increase(), st.sampled_from([STOPPED, minimum_rate()]), st.integers(0, 3 * MS_PER_DAY))
def test_soft_increase_rule_counts_running_therapy_only(case: tuple[int, int, int], rest: Program, gap: int) -> None:
    """The increase rule measures from running therapy (continuous or flex) in the last 24 h,
    never from a stopped pump or the minimum rate: a fresh pump takes any dose up to the soft
    limit without override; after D ran and the pump was stopped (or at minimum rate), a dose
    above D's allowance needs the override only while D ran less than 24 h ago."""
    conc, old, new = case
    fresh = _pump(conc)
    fresh.commit_program(rest)
    fresh.advance(gap)
    assert not fresh.commit_program(_continuous(conc, new)).soft_limit_overridden
    pump = _pump(conc)
    pump.commit_program(_continuous(conc, old))
    pump.advance(MS_PER_HOUR)
    pump.commit_program(rest)
    stopped_at = pump.now_ms
    pump.advance(stopped_at + gap)
    allowed = old * (1000 + LIMITS.soft_increase_permille_per_24h) // 1000
    if new > allowed and gap < MS_PER_DAY:
        refusal = _refused(pump, _continuous(conc, new))
        assert (refusal.code, refusal.hi) == (ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE, allowed)
    else:
        assert not pump.commit_program(_continuous(conc, new)).soft_limit_overridden
