"""REFILL: the pocket-fill guard, the reply's figures, concentration changes, reservoir alarms."""

from __future__ import annotations

import pytest

from hil.conformance import SUITE_CONCENTRATION_UG_PER_ML, DeviceUnderTest, continuous, refused
from protocol_spec import messages as m
from protocol_spec.enums import AlarmSet, ErrorCode, Feature, RefillConfirmation

MS_PER_DAY = 86_400_000
CONFIRMATIONS_FIELD = 5
"""Refill's field index of ``confirmations``."""
BOTH = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED


def refill(
    pump: DeviceUnderTest,
    *,
    aspirated_volume_nl: int,
    added_volume_nl: int,
    concentration_ug_per_ml: int = SUITE_CONCENTRATION_UG_PER_ML,
    catheter_volume_nl: int | None = None,
    confirmations: RefillConfirmation = BOTH,
) -> m.RefillReply:
    return pump.clinician.refill(
        aspirated_volume_nl=aspirated_volume_nl,
        added_volume_nl=added_volume_nl,
        drug=pump.baseline.limits.drug,
        concentration_ug_per_ml=concentration_ug_per_ml,
        catheter_volume_nl=pump.baseline.catheter_volume_nl if catheter_volume_nl is None else catheter_volume_nl,
        confirmations=confirmations,
    )


def slack_nl(pump: DeviceUnderTest) -> int:
    """What the estimate may fall between two requests: nothing under the held clock (test role),
    a motor step where time runs."""
    return 0 if pump.has(Feature.TEST_ROLE) else pump.baseline.step_volume_nl


def unchanged_by_a_refused_refill(pump: DeviceUnderTest, before: m.InterrogateReply) -> None:
    after = pump.clinician.interrogate()
    assert before.reservoir_estimate_nl - slack_nl(pump) <= after.reservoir_estimate_nl <= before.reservoir_estimate_nl
    assert after.concentration_ug_per_ml == before.concentration_ug_per_ml
    assert after.drug == before.drug
    assert after.last_refill_ms == before.last_refill_ms
    assert after.catheter_volume_nl == before.catheter_volume_nl


@pytest.mark.requirement("REF-FIL-001")
@pytest.mark.parametrize(
    "confirmations",
    [RefillConfirmation(0), RefillConfirmation.NEEDLE_IN_RESERVOIR, RefillConfirmation.ASPIRATION_CONFIRMED],
    ids=["none", "needle-only", "aspiration-only"],
)
def test_refill_needs_both_confirmations(pump: DeviceUnderTest, confirmations: RefillConfirmation) -> None:
    before = pump.clinician.interrogate()
    with refused(ErrorCode.OUT_OF_RANGE) as r:
        refill(
            pump,
            aspirated_volume_nl=before.reservoir_estimate_nl,
            added_volume_nl=before.reservoir_capacity_nl // 2,
            concentration_ug_per_ml=1000,
            catheter_volume_nl=before.catheter_volume_nl + 10_000,
            confirmations=confirmations,
        )
    assert r.error is not None
    assert r.error.field == CONFIRMATIONS_FIELD
    unchanged_by_a_refused_refill(pump, before)


@pytest.mark.requirement("REF-FIL-002")
@pytest.mark.parametrize("discrepancy_nl", [-150_000, 80_000])
def test_refill_reply_figures(pump: DeviceUnderTest, discrepancy_nl: int) -> None:
    capacity = pump.baseline.reservoir_capacity_nl
    estimate = pump.clinician.status().reservoir_estimate_nl
    first = refill(pump, aspirated_volume_nl=estimate, added_volume_nl=capacity // 2)
    assert first.reservoir_estimate_nl == capacity // 2
    before = pump.clinician.status()
    assert capacity // 2 - slack_nl(pump) <= before.reservoir_estimate_nl <= capacity // 2
    aspirated = before.reservoir_estimate_nl + discrepancy_nl
    added = capacity * 9 // 10
    reply = refill(pump, aspirated_volume_nl=aspirated, added_volume_nl=added)
    expected = reply.expected_volume_nl
    assert before.reservoir_estimate_nl - slack_nl(pump) <= expected <= before.reservoir_estimate_nl
    assert reply.aspirated_volume_nl == aspirated
    assert reply.discrepancy_nl == aspirated - expected
    assert reply.reservoir_estimate_nl == added
    assert reply.concentration_changed == 0
    info = pump.clinician.interrogate()
    assert added - slack_nl(pump) <= info.reservoir_estimate_nl <= added
    assert before.uptime_ms <= info.last_refill_ms <= info.uptime_ms


@pytest.mark.requirement("REF-FIL-002")
@pytest.mark.requires("test_role", "virtual_time")
def test_refill_expects_the_estimate_after_delivery(pump: DeviceUnderTest) -> None:
    pump.advance(5 * MS_PER_DAY)
    estimate = pump.clinician.status().reservoir_estimate_nl
    assert estimate < pump.baseline.reservoir_capacity_nl
    reply = refill(pump, aspirated_volume_nl=estimate - 40_000, added_volume_nl=pump.baseline.reservoir_capacity_nl)
    assert reply.expected_volume_nl == estimate
    assert reply.discrepancy_nl == -40_000


@pytest.mark.requirement("REF-FIL-003")
def test_refill_reports_a_concentration_change(pump: DeviceUnderTest) -> None:
    before = pump.clinician.interrogate()
    others = [c.ug_per_ml for c in pump.baseline.limits.concentrations if c.ug_per_ml != SUITE_CONCENTRATION_UG_PER_ML]
    if not others:
        pytest.skip("the drug library holds one concentration only")
    new_conc = others[0]
    catheter = before.catheter_volume_nl + 15_000
    reply = refill(
        pump,
        aspirated_volume_nl=before.reservoir_estimate_nl,
        added_volume_nl=before.reservoir_capacity_nl,
        concentration_ug_per_ml=new_conc,
        catheter_volume_nl=catheter,
    )
    assert reply.concentration_changed == 1
    assert reply.bridge_volume_nl == before.tubing_volume_nl + catheter
    after = pump.clinician.interrogate()
    assert after.concentration_ug_per_ml == new_conc
    assert after.catheter_volume_nl == catheter
    # programs now name the new concentration
    with refused(ErrorCode.CONCENTRATION_MISMATCH) as r:
        pump.clinician.stage_program(continuous(50_000), override_soft_limits=True)
    assert r.error is not None
    assert r.error.lo == r.error.hi == new_conc
    pump.clinician.stage_program(continuous(50_000, new_conc), override_soft_limits=True)
    pump.clinician.abort()


@pytest.mark.requirement("REF-FIL-004")
def test_refill_clears_low_reservoir(pump: DeviceUnderTest) -> None:
    threshold = pump.baseline.low_reservoir_threshold_nl
    low = refill(pump, aspirated_volume_nl=pump.clinician.status().reservoir_estimate_nl, added_volume_nl=threshold)
    assert low.reservoir_estimate_nl == threshold
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(pump.clinician.status().alarms)
    refill(pump, aspirated_volume_nl=threshold, added_volume_nl=pump.baseline.reservoir_capacity_nl)
    assert AlarmSet.LOW_RESERVOIR not in AlarmSet(pump.clinician.status().alarms)


@pytest.mark.requirement("REF-FIL-004")
@pytest.mark.requires("test_role", "virtual_time")
def test_refill_clears_empty_reservoir(pump: DeviceUnderTest) -> None:
    rate = pump.clinician.status().rate_nl_per_day
    added = 100_000
    refill(pump, aspirated_volume_nl=pump.clinician.status().reservoir_estimate_nl, added_volume_nl=added)
    pump.advance(added * MS_PER_DAY // rate + 3_600_000)
    status = pump.clinician.status()
    assert AlarmSet.EMPTY_RESERVOIR in AlarmSet(status.alarms)
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(status.alarms)
    refill(pump, aspirated_volume_nl=status.reservoir_estimate_nl, added_volume_nl=pump.baseline.reservoir_capacity_nl)
    alarms = AlarmSet(pump.clinician.status().alarms)
    assert AlarmSet.EMPTY_RESERVOIR not in alarms
    assert AlarmSet.LOW_RESERVOIR not in alarms


@pytest.mark.requirement("REF-FIL-005")
def test_refill_over_capacity_refused(pump: DeviceUnderTest) -> None:
    before = pump.clinician.interrogate()
    with refused(ErrorCode.OUT_OF_RANGE) as r:
        refill(pump, aspirated_volume_nl=before.reservoir_estimate_nl, added_volume_nl=before.reservoir_capacity_nl + 1)
    assert r.error is not None
    assert r.error.field == 1
    assert r.error.hi == before.reservoir_capacity_nl
    unchanged_by_a_refused_refill(pump, before)
    reply = refill(pump, aspirated_volume_nl=before.reservoir_estimate_nl, added_volume_nl=before.reservoir_capacity_nl)
    assert reply.reservoir_estimate_nl == before.reservoir_capacity_nl
