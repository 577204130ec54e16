"""Supplemental (priming, bridge) and patient boluses: on top of the basal, never changing it."""

from __future__ import annotations

import itertools

import pytest

from hil.conformance import SUITE_CONCENTRATION_UG_PER_ML, DeviceUnderTest, refused
from programmer.errors import PumpRefused
from protocol_spec import messages as m
from protocol_spec.enums import AlarmSet, BolusKind, ErrorCode, FaultKind, LogEventKind, StageKind, TherapyMode

MS_PER_DAY = 86_400_000
CONC = SUITE_CONCENTRATION_UG_PER_ML
BOLUS_VOLUME_NL = 100_000
"""100 uL (50 ug at the suite's 500 ug/mL)."""
BOLUS_DURATION_MS = 3_600_000
"""Over an hour: 2.4 mL/day, a rate any pump's motor runs."""
PAST_ROLLING_WINDOWS_MS = 25 * 3_600_000
"""More than the rolling 24 h (and any lockout these tests set), which a reset does not clear."""


def assert_delivered(pump: DeviceUnderTest, before: m.StatusReply, after: m.StatusReply, ideal_nl: int) -> None:
    """Delivered within one motor step of ``ideal_nl``; the reservoir estimate fell by as much."""
    step = pump.baseline.step_volume_nl
    delivered = after.delivered_nl - before.delivered_nl
    assert abs(delivered - ideal_nl) <= step, f"delivered {delivered} nL, ideal {ideal_nl} nL (step {step} nL)"
    assert before.reservoir_estimate_nl - after.reservoir_estimate_nl == delivered


def start_bolus(pump: DeviceUnderTest, kind: BolusKind = BolusKind.PRIMING) -> m.StageReply:
    staged = pump.clinician.stage_bolus(kind, BOLUS_VOLUME_NL, BOLUS_DURATION_MS)
    pump.clinician.commit(staged.stage_token)
    return staged


def log_since(pump: DeviceUnderTest, seq: int, kind: LogEventKind) -> list[m.LogEntry]:
    return [e for e in pump.clinician.read_all_log(seq) if e.kind is kind]


def next_log_seq(pump: DeviceUnderTest) -> int:
    return pump.clinician.read_log(0, 1).next_seq


# ---------------------------------------------------------------------- priming and bridge boluses


@pytest.mark.requirement("THR-BOL-001")
@pytest.mark.parametrize("kind", [BolusKind.PRIMING, BolusKind.BRIDGE], ids=["priming", "bridge"])
def test_bolus_starts_and_leaves_the_program(pump: DeviceUnderTest, kind: BolusKind) -> None:
    program = pump.clinician.read_program()
    crc = pump.clinician.interrogate().program_crc
    basal = pump.clinician.status()
    staged = pump.clinician.stage_bolus(kind, BOLUS_VOLUME_NL, BOLUS_DURATION_MS)
    assert staged.kind is StageKind.BOLUS
    assert staged.max_rate_nl_per_day == BOLUS_VOLUME_NL * MS_PER_DAY // BOLUS_DURATION_MS
    assert pump.clinician.status().bolus_active is BolusKind.NONE, "a staged bolus runs only after COMMIT"
    pump.clinician.commit(staged.stage_token)
    status = pump.clinician.status()
    assert status.bolus_active is kind
    assert status.mode is basal.mode
    assert status.rate_nl_per_day == basal.rate_nl_per_day
    assert pump.clinician.read_program() == program
    assert pump.clinician.interrogate().program_crc == crc


@pytest.mark.requirement("THR-BOL-001")
@pytest.mark.requires("test_role", "virtual_time")
def test_bolus_ends_after_its_duration(pump: DeviceUnderTest) -> None:
    program = pump.clinician.read_program()
    start_bolus(pump)
    pump.advance(BOLUS_DURATION_MS - 60_000)
    assert pump.clinician.status().bolus_active is BolusKind.PRIMING
    pump.advance(61_000)
    status = pump.clinician.status()
    assert status.bolus_active is BolusKind.NONE
    assert status.mode is TherapyMode.CONTINUOUS
    assert pump.clinician.read_program() == program


@pytest.mark.requirement("THR-BOL-002")
@pytest.mark.requires("test_role", "virtual_time")
def test_a_supplemental_bolus_takes_the_basals_place(pump: DeviceUnderTest) -> None:
    basal_rate = pump.clinician.status().rate_nl_per_day
    program = pump.clinician.read_program()
    before = pump.clinician.status()
    start_bolus(pump)
    pump.advance(BOLUS_DURATION_MS)
    during = pump.clinician.status()
    assert during.bolus_active is BolusKind.NONE
    assert_delivered(pump, before, during, BOLUS_VOLUME_NL)
    pump.advance(60_000)
    after = pump.clinician.status()
    assert after.mode is TherapyMode.CONTINUOUS
    assert after.rate_nl_per_day == basal_rate
    assert pump.clinician.read_program() == program
    assert_delivered(pump, before, after, BOLUS_VOLUME_NL + basal_rate * 60_000 // MS_PER_DAY)


@pytest.mark.requirement("THR-BOL-003")
@pytest.mark.requires("test_role", "virtual_time")
def test_cancel_bolus_stops_it(pump: DeviceUnderTest) -> None:
    basal_rate = pump.clinician.status().rate_nl_per_day
    seq = next_log_seq(pump)
    start_bolus(pump)
    pump.advance(BOLUS_DURATION_MS // 2)
    pump.clinician.cancel_bolus()
    cancelled = pump.clinician.status()
    assert cancelled.bolus_active is BolusKind.NONE
    assert cancelled.mode is TherapyMode.CONTINUOUS
    pump.advance(BOLUS_DURATION_MS // 2)
    after = pump.clinician.status()
    assert_delivered(pump, cancelled, after, basal_rate * (BOLUS_DURATION_MS // 2) // MS_PER_DAY)
    interrupted = log_since(pump, seq, LogEventKind.BOLUS_INTERRUPTED)
    assert len(interrupted) == 1
    entry = interrupted[0]
    assert entry.code == BolusKind.PRIMING
    assert entry.value_a + entry.value_b == BOLUS_VOLUME_NL
    assert abs(entry.value_a - BOLUS_VOLUME_NL // 2) <= pump.baseline.step_volume_nl


@pytest.mark.requirement("THR-BOL-004")
@pytest.mark.requires("test_role", "fault_injection")
@pytest.mark.parametrize("what", ["stage-bolus", "single-bolus-program"])
def test_no_bolus_during_a_motor_stall(pump: DeviceUnderTest, what: str) -> None:
    pump.test.inject_fault(FaultKind.MOTOR_STALL)
    assert AlarmSet.MOTOR_STALL in AlarmSet(pump.clinician.status().alarms)
    with refused(ErrorCode.ALARM_ACTIVE):
        if what == "stage-bolus":
            pump.clinician.stage_bolus(BolusKind.PRIMING, BOLUS_VOLUME_NL, BOLUS_DURATION_MS)
        else:
            program = m.Program(TherapyMode.SINGLE_BOLUS, CONC, 0, 10_000, BOLUS_DURATION_MS, 0, ())
            pump.clinician.stage_program(program)
    status = pump.clinician.status()
    assert status.bolus_active is BolusKind.NONE
    assert status.staged == 0
    assert status.mode is TherapyMode.CONTINUOUS


@pytest.mark.requirement("THR-BOL-004")
@pytest.mark.requires("test_role", "fault_injection", "patient_bolus")
def test_no_patient_bolus_during_a_motor_stall(pump: DeviceUnderTest) -> None:
    enable_patient_boluses(pump, m.PatientBolusSettings(1, 10_000, 600_000, 3_600_000, 4))
    pump.test.inject_fault(FaultKind.MOTOR_STALL)
    with refused(ErrorCode.ALARM_ACTIVE):
        pump.patient.patient_bolus_request()
    assert pump.clinician.status().bolus_active is BolusKind.NONE


# ---------------------------------------------------------------------- patient boluses


def enable_patient_boluses(pump: DeviceUnderTest, settings: m.PatientBolusSettings) -> None:
    staged = pump.clinician.stage_patient_bolus(settings)
    assert staged.kind is StageKind.PATIENT_BOLUS_SETTINGS
    pump.clinician.commit(staged.stage_token)


SETTINGS = m.PatientBolusSettings(enabled=1, dose_ng=25_000, duration_ms=1_800_000, lockout_ms=7_200_000, max_per_24h=4)
"""25 ug (50 uL at 500 ug/mL) over 30 min, at most every 2 h, 4 a day."""


@pytest.mark.requirement("THR-PTB-001")
@pytest.mark.requires("patient_bolus")
def test_patient_bolus_settings_are_staged_and_committed(pump: DeviceUnderTest) -> None:
    staged = pump.clinician.stage_patient_bolus(SETTINGS)
    assert staged.kind is StageKind.PATIENT_BOLUS_SETTINGS
    assert pump.clinician.interrogate().patient_bolus.enabled == 0, "nothing changes before COMMIT"
    pump.clinician.commit(staged.stage_token)
    assert pump.clinician.interrogate().patient_bolus == SETTINGS
    assert pump.clinician.read_program().mode is TherapyMode.CONTINUOUS


@pytest.mark.requirement("THR-PTB-001")
@pytest.mark.requires("patient_bolus", "test_role", "virtual_time")
def test_patient_bolus_granted_and_delivered_on_top(pump: DeviceUnderTest) -> None:
    pump.advance(PAST_ROLLING_WINDOWS_MS)
    enable_patient_boluses(pump, SETTINGS)
    basal_rate = pump.clinician.status().rate_nl_per_day
    before = pump.clinician.status()
    grant = pump.patient.patient_bolus_request()
    assert grant.dose_ng == SETTINGS.dose_ng
    assert grant.duration_ms == SETTINGS.duration_ms
    assert grant.next_allowed_ms == before.uptime_ms + SETTINGS.lockout_ms
    assert grant.remaining_24h == SETTINGS.max_per_24h - 1
    assert pump.clinician.status().bolus_active is BolusKind.PATIENT
    window_ms = SETTINGS.duration_ms + 60_000
    pump.advance(window_ms)
    after = pump.clinician.status()
    assert after.bolus_active is BolusKind.NONE
    assert after.mode is TherapyMode.CONTINUOUS
    volume_nl = SETTINGS.dose_ng * 1000 // CONC
    assert_delivered(pump, before, after, basal_rate * window_ms // MS_PER_DAY + volume_nl)


@pytest.mark.requirement("THR-PTB-002")
@pytest.mark.requires("patient_bolus", "test_role", "virtual_time")
def test_patient_bolus_lockout(pump: DeviceUnderTest) -> None:
    pump.advance(PAST_ROLLING_WINDOWS_MS)
    enable_patient_boluses(pump, SETTINGS)
    first = pump.patient.patient_bolus_request()
    pump.advance(SETTINGS.duration_ms + 600_000)
    with refused(ErrorCode.BOLUS_LOCKOUT) as r:
        pump.patient.patient_bolus_request()
    assert r.error is not None
    left_ms = SETTINGS.lockout_ms - SETTINGS.duration_ms - 600_000
    assert r.error.retry_after_ms == left_ms
    assert pump.clinician.status().bolus_active is BolusKind.NONE
    pump.advance(left_ms - 1)
    with refused(ErrorCode.BOLUS_LOCKOUT) as r:
        pump.patient.patient_bolus_request()
    assert r.error is not None
    assert r.error.retry_after_ms == 1
    pump.advance(1)
    assert pump.clinician.status().uptime_ms == first.next_allowed_ms
    second = pump.patient.patient_bolus_request()
    assert second.remaining_24h == SETTINGS.max_per_24h - 2


@pytest.mark.requirement("THR-PTB-003")
@pytest.mark.requires("patient_bolus", "test_role", "virtual_time")
def test_patient_bolus_daily_maximum(pump: DeviceUnderTest) -> None:
    settings = m.PatientBolusSettings(
        enabled=1, dose_ng=5_000, duration_ms=600_000, lockout_ms=3_600_000, max_per_24h=2
    )
    pump.advance(PAST_ROLLING_WINDOWS_MS)
    enable_patient_boluses(pump, settings)
    t0 = pump.clinician.status().uptime_ms
    assert pump.patient.patient_bolus_request().remaining_24h == 1
    pump.advance(settings.lockout_ms)
    last = pump.patient.patient_bolus_request()
    assert last.remaining_24h == 0
    assert last.next_allowed_ms == t0 + MS_PER_DAY
    pump.advance(settings.lockout_ms)
    with refused(ErrorCode.BOLUS_DAILY_MAX) as r:
        pump.patient.patient_bolus_request()
    assert r.error is not None
    assert r.error.hi == settings.max_per_24h
    pump.advance(last.next_allowed_ms - pump.clinician.status().uptime_ms - 1)
    with refused(ErrorCode.BOLUS_DAILY_MAX):
        pump.patient.patient_bolus_request()
    pump.advance(1)
    again = pump.patient.patient_bolus_request()
    assert again.remaining_24h == 0
    assert pump.clinician.status().bolus_active is BolusKind.PATIENT


@pytest.mark.requirement("THR-PTB-004")
@pytest.mark.requires("patient_bolus")
def test_patient_bolus_refused_while_disabled(pump: DeviceUnderTest) -> None:
    assert pump.clinician.interrogate().patient_bolus.enabled == 0
    before = pump.clinician.status()
    with pytest.raises(PumpRefused) as refused:
        pump.patient.patient_bolus_request()
    assert refused.value.code is ErrorCode.NOT_SUPPORTED  # SPEC.md, Therapy modes
    after = pump.clinician.status()
    assert after.bolus_active is BolusKind.NONE
    assert after.delivered_nl - before.delivered_nl <= pump.baseline.step_volume_nl  # the basal alone, if time runs
    # enabled, then disabled again
    enable_patient_boluses(pump, SETTINGS)
    enable_patient_boluses(pump, m.PatientBolusSettings(0, 0, 0, 0, 0))
    with pytest.raises(PumpRefused):
        pump.patient.patient_bolus_request()
    assert pump.clinician.status().bolus_active is BolusKind.NONE


# ---------------------------------------------------------------------- step by step (step log)


@pytest.mark.requirement("THR-DLV-002")
@pytest.mark.requires("patient_bolus", "test_role", "virtual_time", "step_log")
def test_patient_bolus_steps_at_the_combined_rate(pump: DeviceUnderTest) -> None:
    settings = m.PatientBolusSettings(
        enabled=1, dose_ng=5_000, duration_ms=600_000, lockout_ms=3_600_000, max_per_24h=4
    )
    pump.advance(PAST_ROLLING_WINDOWS_MS)
    enable_patient_boluses(pump, settings)
    basal_rate = pump.clinician.status().rate_nl_per_day
    volume_nl = settings.dose_ng * 1000 // CONC
    rate = basal_rate + volume_nl * MS_PER_DAY // settings.duration_ms
    quantum = pump.baseline.step_volume_nl * MS_PER_DAY
    gap_lo, gap_hi = quantum // rate, -(-quantum // rate)
    t0 = pump.clinician.status().uptime_ms
    first = pump.test.read_step_log(0, 1).steps_total
    pump.patient.patient_bolus_request()
    pump.advance(settings.duration_ms)
    count = pump.test.read_step_log(0, 1).steps_total - first
    assert count <= m.MAX_STEP_LOG_PAGE
    page = pump.test.read_step_log(first, count)
    times = [s.at_ms for s in page.steps]
    assert len(times) == count
    assert all(t0 < t <= t0 + settings.duration_ms for t in times)
    assert times[0] - t0 <= gap_hi
    gaps = {b - a for a, b in itertools.pairwise(times)}
    assert gaps <= {gap_lo, gap_hi}, f"step gaps {sorted(gaps)}, expected {gap_lo} or {gap_hi} ms"
