"""Two-step programming: STAGE changes nothing, COMMIT applies exactly what was staged, or nothing.

Every test starts from the known state (the suite's continuous program running, nothing staged)
and stages programs of a lower dose, with the soft-limit override (as the reset does): the rolling
24 h window of the soft increase limit remembers what earlier tests ran, and these tests are
about staging, not limits.
"""

from __future__ import annotations

import pytest

from hil.conformance import SUITE_CONCENTRATION_UG_PER_ML, SUITE_DOSE_NG_PER_DAY, DeviceUnderTest, continuous, refused
from protocol_spec import messages as m
from protocol_spec.codec import encode_payload
from protocol_spec.enums import ErrorCode, ProgramSlot, Role, StageKind, TherapyMode
from protocol_spec.framing import crc32

NEW_DOSE_NG_PER_DAY = SUITE_DOSE_NG_PER_DAY * 8 // 10
"""A dose below the known state's."""
OTHER_DOSE_NG_PER_DAY = SUITE_DOSE_NG_PER_DAY * 9 // 10


def rate_nl_per_day(dose_ng_per_day: int, concentration_ug_per_ml: int = SUITE_CONCENTRATION_UG_PER_ML) -> int:
    """SPEC.md, Therapy modes: rate = dose * 1000 / concentration, in integers."""
    return dose_ng_per_day * 1000 // concentration_ug_per_ml


def unchanged(pump: DeviceUnderTest, active: m.Program, status: m.StatusReply) -> None:
    """The active program and the therapy STATUS shows are what they were."""
    now = pump.clinician.status()
    assert pump.clinician.read_program(ProgramSlot.ACTIVE) == active
    assert (now.mode, now.rate_nl_per_day) == (status.mode, status.rate_nl_per_day)


@pytest.mark.requirement("PRG-STG-001")
def test_stage_changes_nothing_but_the_stage_slot(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    active = c.read_program(ProgramSlot.ACTIVE)
    before = c.status()
    assert before.staged == 0
    program = continuous(NEW_DOSE_NG_PER_DAY)
    assert program != active
    c.stage_program(program, override_soft_limits=True)
    after = c.status()
    assert after.staged == 1
    assert (after.mode, after.rate_nl_per_day) == (before.mode, before.rate_nl_per_day)
    assert after.mode is TherapyMode.CONTINUOUS
    assert after.rate_nl_per_day == rate_nl_per_day(SUITE_DOSE_NG_PER_DAY)
    assert c.read_program(ProgramSlot.ACTIVE) == active
    assert c.read_program(ProgramSlot.STAGED) == program


@pytest.mark.requirement("PRG-STG-002")
@pytest.mark.parametrize("dose_ng_per_day", [NEW_DOSE_NG_PER_DAY, OTHER_DOSE_NG_PER_DAY + 1])
def test_stage_token_is_the_crc32_of_the_stage_payload(pump: DeviceUnderTest, dose_ng_per_day: int) -> None:
    program = continuous(dose_ng_per_day)
    reply = pump.clinician.stage_program(program, override_soft_limits=True)
    payload = encode_payload(m.StageProgram(1, program))
    assert reply.stage_token == crc32(payload)
    assert reply.kind is StageKind.PROGRAM
    assert reply.max_dose_ng_per_day == dose_ng_per_day
    assert reply.max_rate_nl_per_day == rate_nl_per_day(dose_ng_per_day)


@pytest.mark.requirement("PRG-STG-003")
def test_commit_applies_the_staged_program(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    program = continuous(NEW_DOSE_NG_PER_DAY)
    staged = c.stage_program(program, override_soft_limits=True)
    reply = c.commit(staged.stage_token)
    assert reply.stage_token == staged.stage_token
    assert reply.applied_at_ms <= c.status().uptime_ms
    status = c.status()
    assert status.staged == 0
    assert status.mode is TherapyMode.CONTINUOUS
    assert status.rate_nl_per_day == rate_nl_per_day(NEW_DOSE_NG_PER_DAY)
    assert c.read_program(ProgramSlot.ACTIVE) == program
    with refused(ErrorCode.NOTHING_STAGED):
        c.read_program(ProgramSlot.STAGED)


@pytest.mark.requirement("PRG-STG-004")
def test_commit_with_a_wrong_token_is_refused_and_changes_nothing(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    active = c.read_program(ProgramSlot.ACTIVE)
    status = c.status()
    program = continuous(NEW_DOSE_NG_PER_DAY)
    staged = c.stage_program(program, override_soft_limits=True)
    with refused(ErrorCode.STAGE_MISMATCH) as r:
        c.commit(staged.stage_token ^ 0x0000_0001)
    assert r.error is not None
    assert r.error.field == 0
    unchanged(pump, active, status)
    assert c.status().staged == 1, "the staged change stays staged"
    assert c.read_program(ProgramSlot.STAGED) == program
    c.commit(staged.stage_token)  # and the right token still commits it
    assert c.read_program(ProgramSlot.ACTIVE) == program


@pytest.mark.requirement("PRG-STG-005")
def test_commit_with_nothing_staged_is_refused(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    active = c.read_program(ProgramSlot.ACTIVE)
    status = c.status()
    assert status.staged == 0
    with refused(ErrorCode.NOTHING_STAGED):
        c.commit(crc32(encode_payload(m.StageProgram(0, continuous(NEW_DOSE_NG_PER_DAY)))))
    with refused(ErrorCode.NOTHING_STAGED):
        c.read_program(ProgramSlot.STAGED)
    unchanged(pump, active, status)
    assert c.status().staged == 0


@pytest.mark.requirement("PRG-STG-006")
def test_abort_drops_the_staged_change(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    active = c.read_program(ProgramSlot.ACTIVE)
    status = c.status()
    staged = c.stage_program(continuous(NEW_DOSE_NG_PER_DAY), override_soft_limits=True)
    assert c.status().staged == 1
    c.abort()
    assert c.status().staged == 0
    unchanged(pump, active, status)
    with refused(ErrorCode.NOTHING_STAGED):
        c.commit(staged.stage_token)
    unchanged(pump, active, status)


@pytest.mark.requirement("PRG-STG-007")
def test_a_second_stage_replaces_the_first(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    active = c.read_program(ProgramSlot.ACTIVE)
    status = c.status()
    first = c.stage_program(continuous(NEW_DOSE_NG_PER_DAY), override_soft_limits=True)
    second_program = continuous(OTHER_DOSE_NG_PER_DAY)
    second = c.stage_program(second_program, override_soft_limits=True)
    assert first.stage_token != second.stage_token
    assert c.read_program(ProgramSlot.STAGED) == second_program
    with refused(ErrorCode.STAGE_MISMATCH):
        c.commit(first.stage_token)
    unchanged(pump, active, status)
    c.commit(second.stage_token)
    assert c.read_program(ProgramSlot.ACTIVE) == second_program
    assert c.status().rate_nl_per_day == rate_nl_per_day(OTHER_DOSE_NG_PER_DAY)


@pytest.mark.requirement("PRG-STG-008")
def test_a_staged_change_is_discarded_when_its_session_closes(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    active = c.read_program(ProgramSlot.ACTIVE)
    status = c.status()
    other = pump.new_programmer(Role.CLINICIAN)
    try:
        staged = other.stage_program(continuous(NEW_DOSE_NG_PER_DAY), override_soft_limits=True)
        assert c.status().staged == 1, "the one stage slot is seen from every session"
    finally:
        other.close()
    assert c.status().staged == 0
    unchanged(pump, active, status)
    with refused(ErrorCode.NOTHING_STAGED):
        c.commit(staged.stage_token)
    unchanged(pump, active, status)
