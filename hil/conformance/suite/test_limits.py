"""The drug library: hard and soft limits, the rolling 24 h increase, rates, boluses, SET_LIMITS.

Every test sets the library it needs (a reset restores the one the device started with), and
stays within the starting library with what it leaves running, so that the reset can restore it.
"""

from __future__ import annotations

import dataclasses

import pytest

from hil.conformance import SUITE_CONCENTRATION_UG_PER_ML, DeviceUnderTest, continuous, refused
from programmer.errors import PumpRefused
from protocol_spec import messages as m
from protocol_spec.enums import (
    BolusKind,
    DrugId,
    ErrorCode,
    Feature,
    LogEventKind,
    RefillConfirmation,
    StageKind,
    TherapyMode,
)

MS_PER_DAY = 86_400_000
CONC = SUITE_CONCENTRATION_UG_PER_ML
PROGRAM_FIELD = 1
"""StageProgram's field index of the Program: a refused value inside it names this field."""
PAST_ROLLING_WINDOWS_MS = MS_PER_DAY + 60_000
"""More than the rolling 24 h, which a reset does not clear."""
BOTH_CONFIRMATIONS = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED


def library(pump: DeviceUnderTest, **changes: int) -> m.DrugLimits:
    """The starting library with ``changes``, set on the pump (and checked to be what it holds)."""
    limits = dataclasses.replace(pump.baseline.limits, **changes)  # type: ignore[arg-type]
    assert pump.clinician.set_limits(limits) == limits
    return limits


def assert_program_unchanged(pump: DeviceUnderTest, before: m.Program) -> None:
    assert pump.clinician.read_program() == before
    assert pump.clinician.status().staged == 0


# ---------------------------------------------------------------------- hard limit


@pytest.mark.requirement("LIM-HRD-001")
def test_hard_limit_refused_even_with_override(pump: DeviceUnderTest) -> None:
    lim = library(pump, hard_limit_ng_per_day=180_000, soft_limit_ng_per_day=150_000)
    before = pump.clinician.read_program()
    for override in (False, True):
        with refused(ErrorCode.HARD_LIMIT) as r:
            pump.clinician.stage_program(continuous(lim.hard_limit_ng_per_day + 2), override_soft_limits=override)
        assert r.error is not None
        assert r.error.field == PROGRAM_FIELD
        assert r.error.lo == 0
        assert r.error.hi == lim.hard_limit_ng_per_day
    assert_program_unchanged(pump, before)


@pytest.mark.requirement("LIM-HRD-001")
@pytest.mark.requires("test_role", "virtual_time")
def test_the_hard_limit_itself_is_accepted(pump: DeviceUnderTest) -> None:
    """Up to the limit, with 24 h free of boluses: the limit bounds any 24 h, boluses included."""
    pump.advance(PAST_ROLLING_WINDOWS_MS)
    lim = library(pump, hard_limit_ng_per_day=180_000, soft_limit_ng_per_day=150_000)
    staged = pump.clinician.stage_program(continuous(lim.hard_limit_ng_per_day), override_soft_limits=True)
    assert staged.max_dose_ng_per_day == lim.hard_limit_ng_per_day
    pump.clinician.commit(staged.stage_token)
    assert pump.clinician.interrogate().dose_ng_per_day == lim.hard_limit_ng_per_day


@pytest.mark.requirement("LIM-HRD-001")
@pytest.mark.requires("flex")
def test_hard_limit_applies_to_every_flex_step(pump: DeviceUnderTest) -> None:
    lim = library(pump, hard_limit_ng_per_day=180_000, soft_limit_ng_per_day=150_000)
    steps = (m.FlexStep(0, 0, 50_000), m.FlexStep(0, 3_600_000, lim.hard_limit_ng_per_day + 2))
    with refused(ErrorCode.HARD_LIMIT) as r:
        pump.clinician.stage_program(m.Program(TherapyMode.FLEX, CONC, 0, 0, 0, 1, steps), override_soft_limits=True)
    assert r.error is not None
    assert r.error.hi == lim.hard_limit_ng_per_day


# ---------------------------------------------------------------------- soft limit


def soft_limit_above_the_running_dose(pump: DeviceUnderTest) -> tuple[int, int]:
    """(soft limit, a dose above it) crossing the soft limit alone: only the known state's dose ran
    in the last 24 h, and the library allows doubling it."""
    pump.advance(PAST_ROLLING_WINDOWS_MS)
    running = pump.clinician.interrogate().dose_ng_per_day
    soft = running + 20_000
    library(pump, soft_limit_ng_per_day=soft, hard_limit_ng_per_day=soft * 2, soft_increase_permille_per_24h=1000)
    return soft, soft + 10_000


@pytest.mark.requirement("LIM-SFT-001")
@pytest.mark.requires("test_role", "virtual_time")
def test_soft_limit_needs_override(pump: DeviceUnderTest) -> None:
    soft, dose = soft_limit_above_the_running_dose(pump)
    with refused(ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE) as r:
        pump.clinician.stage_program(continuous(dose))
    assert r.error is not None
    assert r.error.field == PROGRAM_FIELD
    assert r.error.lo == 0
    assert r.error.hi == soft
    assert pump.clinician.stage_program(continuous(soft)).soft_limit_overridden == 0
    staged = pump.clinician.stage_program(continuous(dose), override_soft_limits=True)
    assert staged.soft_limit_overridden == 1
    assert staged.max_dose_ng_per_day == dose
    pump.clinician.commit(staged.stage_token)
    assert pump.clinician.interrogate().dose_ng_per_day == dose


@pytest.mark.requirement("LIM-SFT-002")
@pytest.mark.requires("test_role", "virtual_time")
def test_soft_limit_override_is_logged(pump: DeviceUnderTest) -> None:
    soft, dose = soft_limit_above_the_running_dose(pump)
    seq = pump.clinician.read_log(0, 1).next_seq
    pump.program(continuous(dose), override_soft_limits=True)
    overrides = [e for e in pump.clinician.read_all_log(seq) if e.kind is LogEventKind.SOFT_LIMIT_OVERRIDE]
    assert len(overrides) == 1
    assert overrides[0].code == StageKind.PROGRAM
    assert overrides[0].value_a == dose
    assert overrides[0].value_b == soft


@pytest.mark.requirement("LIM-SFT-001")
def test_soft_limit_override_accepted_without_virtual_time(pump: DeviceUnderTest) -> None:
    # whatever ran in the last 24 h, with override nothing but a hard limit refuses (the library's
    # own hard limit: earlier tests' boluses of the last 24 h count against it)
    running = pump.clinician.interrogate().dose_ng_per_day
    library(pump, soft_limit_ng_per_day=running - 10_000)
    with refused(ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE):
        pump.clinician.stage_program(continuous(running))
    staged = pump.clinician.stage_program(continuous(running), override_soft_limits=True)
    assert staged.soft_limit_overridden == 1


@pytest.mark.requirement("LIM-SFT-003")
@pytest.mark.requires("test_role", "virtual_time")
def test_soft_increase_per_rolling_24_h(pump: DeviceUnderTest) -> None:
    pump.advance(PAST_ROLLING_WINDOWS_MS)  # only the known state's dose ran in the last 24 h
    running = pump.clinician.interrogate().dose_ng_per_day
    lim = library(pump, soft_increase_permille_per_24h=300)
    allowed = running * (1000 + lim.soft_increase_permille_per_24h) // 1000
    assert allowed + 2 <= lim.soft_limit_ng_per_day, "the increase rule alone must be crossed"
    with refused(ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE) as r:
        pump.clinician.stage_program(continuous(allowed + 2))
    assert r.error is not None
    assert r.error.hi == allowed
    assert pump.clinician.stage_program(continuous(allowed + 2), override_soft_limits=True).soft_limit_overridden == 1
    staged = pump.clinician.stage_program(continuous(allowed))
    assert staged.soft_limit_overridden == 0
    pump.clinician.commit(staged.stage_token)
    # the earlier, lower dose is still within the rolling 24 h: a further raise needs an override
    raised = allowed * (1000 + lim.soft_increase_permille_per_24h) // 1000
    with refused(ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE) as r:
        pump.clinician.stage_program(continuous(raised))
    assert r.error is not None
    assert r.error.hi == allowed
    # 24 h on, the dose committed then is the reference
    pump.advance(PAST_ROLLING_WINDOWS_MS)
    assert pump.clinician.stage_program(continuous(raised)).soft_limit_overridden == 0


# ---------------------------------------------------------------------- rates


@pytest.mark.requirement("LIM-RNG-001")
def test_rate_outside_the_library_refused(pump: DeviceUnderTest) -> None:
    lim = library(pump, min_rate_nl_per_day=20_000, max_rate_nl_per_day=400_000)
    before = pump.clinician.read_program()
    too_fast = (lim.max_rate_nl_per_day + 2) * CONC // 1000
    too_slow = (lim.min_rate_nl_per_day - 2) * CONC // 1000
    for dose in (too_fast, too_slow):
        with pytest.raises(PumpRefused) as caught:
            pump.clinician.stage_program(continuous(dose), override_soft_limits=True)
        assert caught.value.code is ErrorCode.OUT_OF_RANGE, caught.value  # SPEC.md, Therapy modes
        assert caught.value.field == PROGRAM_FIELD
        lo, hi = caught.value.lo, caught.value.hi  # the doses whose rates fit at the concentration
        assert lo * 1000 // CONC >= lim.min_rate_nl_per_day > (lo - 1) * 1000 // CONC
        assert hi * 1000 // CONC <= lim.max_rate_nl_per_day < (hi + 1) * 1000 // CONC
    assert_program_unchanged(pump, before)
    for rate in (lim.max_rate_nl_per_day, lim.min_rate_nl_per_day):
        staged = pump.clinician.stage_program(continuous(rate * CONC // 1000), override_soft_limits=True)
        assert staged.max_rate_nl_per_day == rate
    pump.clinician.abort()


# ---------------------------------------------------------------------- boluses


def _stage_bolus_of(pump: DeviceUnderTest, dose_ng: int) -> m.StageReply:
    volume_nl = dose_ng * 1000 // CONC
    return pump.clinician.stage_bolus(BolusKind.PRIMING, volume_nl, 3_600_000)


def _stage_single_bolus_of(pump: DeviceUnderTest, dose_ng: int) -> m.StageReply:
    return pump.clinician.stage_program(m.Program(TherapyMode.SINGLE_BOLUS, CONC, 0, dose_ng, 3_600_000, 0, ()))


def _stage_patient_bolus_of(pump: DeviceUnderTest, dose_ng: int) -> m.StageReply:
    if not pump.has(Feature.PATIENT_BOLUS):
        pytest.skip(f"target {pump.target.name} lacks patient_bolus")
    return pump.clinician.stage_patient_bolus(m.PatientBolusSettings(1, dose_ng, 3_600_000, 7_200_000, 4))


BOLUS_STAGERS = {
    "stage-bolus": (_stage_bolus_of, 2),
    "single-bolus-program": (_stage_single_bolus_of, PROGRAM_FIELD),
    "patient-bolus-settings": (_stage_patient_bolus_of, 1),
}


@pytest.mark.requirement("LIM-BOL-001")
@pytest.mark.parametrize("how", BOLUS_STAGERS.keys())
def test_bolus_above_max_bolus_refused(pump: DeviceUnderTest, how: str) -> None:
    stage, field = BOLUS_STAGERS[how]
    lim = library(pump, max_bolus_ng=40_000)
    with refused(ErrorCode.HARD_LIMIT) as r:
        stage(pump, lim.max_bolus_ng + 2)
    assert r.error is not None
    assert r.error.field == field
    assert r.error.hi == lim.max_bolus_ng
    status = pump.clinician.status()
    assert status.staged == 0
    assert status.bolus_active is BolusKind.NONE
    stage(pump, lim.max_bolus_ng)  # a bolus of max_bolus_ng is accepted
    assert pump.clinician.status().staged == 1
    pump.clinician.abort()


# ---------------------------------------------------------------------- concentrations


@pytest.mark.requirement("LIM-CON-001")
@pytest.mark.parametrize(("drug", "concentration_ug_per_ml"), [(DrugId.BACLOFEN, 750), (DrugId.SALINE, CONC)])
def test_refill_outside_the_library_refused(pump: DeviceUnderTest, drug: DrugId, concentration_ug_per_ml: int) -> None:
    lim = pump.baseline.limits
    assert concentration_ug_per_ml not in {c.ug_per_ml for c in lim.concentrations} or drug is not lim.drug
    before = pump.clinician.interrogate()
    with refused(ErrorCode.OUT_OF_RANGE):
        pump.clinician.refill(
            aspirated_volume_nl=before.reservoir_estimate_nl,
            added_volume_nl=before.reservoir_capacity_nl // 2,
            drug=drug,
            concentration_ug_per_ml=concentration_ug_per_ml,
            catheter_volume_nl=before.catheter_volume_nl,
            confirmations=BOTH_CONFIRMATIONS,
        )
    after = pump.clinician.interrogate()
    assert (after.drug, after.concentration_ug_per_ml) == (before.drug, before.concentration_ug_per_ml)
    slack_nl = 0 if pump.has(Feature.TEST_ROLE) else pump.baseline.step_volume_nl  # time runs without the test role
    assert before.reservoir_estimate_nl - slack_nl <= after.reservoir_estimate_nl <= before.reservoir_estimate_nl
    assert after.last_refill_ms == before.last_refill_ms


# ---------------------------------------------------------------------- SET_LIMITS / READ_LIMITS


@pytest.mark.requirement("LIM-SET-001")
def test_set_limits_replaces_the_library(pump: DeviceUnderTest) -> None:
    base = pump.baseline.limits
    new = dataclasses.replace(
        base,
        concentrations=(m.Concentration(500), m.Concentration(1000)),
        hard_limit_ng_per_day=400_000,
        soft_limit_ng_per_day=300_000,
        soft_increase_permille_per_24h=250,
        max_bolus_ng=60_000,
    )
    assert pump.clinician.set_limits(new) == new
    assert pump.clinician.read_limits() == new
    assert pump.patient.read_limits() == new
    with refused(ErrorCode.HARD_LIMIT) as r:
        pump.clinician.stage_program(continuous(400_002), override_soft_limits=True)
    assert r.error is not None
    assert r.error.hi == 400_000


@pytest.mark.requirement("LIM-SET-002")
@pytest.mark.parametrize("change", ["hard-limit-below-the-dose", "max-rate-below-the-rate"])
def test_set_limits_the_running_program_violates_refused(pump: DeviceUnderTest, change: str) -> None:
    status = pump.clinician.status()
    dose = pump.clinician.interrogate().dose_ng_per_day
    base = pump.baseline.limits
    if change == "hard-limit-below-the-dose":
        bad = dataclasses.replace(base, hard_limit_ng_per_day=dose - 2, soft_limit_ng_per_day=dose - 4)
    else:
        bad = dataclasses.replace(base, max_rate_nl_per_day=status.rate_nl_per_day - 2)
    with pytest.raises(PumpRefused):
        pump.clinician.set_limits(bad)
    assert pump.clinician.read_limits() == base
    assert pump.clinician.status().rate_nl_per_day == status.rate_nl_per_day
