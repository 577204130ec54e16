"""Refusals name the field the way SPEC.md "Errors" says: for a value inside a record, the
top-level field that holds it, with the range of the inner value."""

from __future__ import annotations

from protocol_spec import messages as m
from protocol_spec.enums import DrugId, ErrorCode, RefillConfirmation, TherapyMode
from tests.test_device_nvm import Client, _booted

CONFIRMED = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED


def _client(concentration: int) -> Client:
    client = Client(_booted())
    client.send(m.Refill(0, 20_000_000, DrugId.BACLOFEN, concentration, 195_000, CONFIRMED))
    return client


def test_a_dose_over_the_hard_limit_names_the_program_field_and_the_limit() -> None:
    refused = _client(2000).send(m.StageProgram(1, m.Program(TherapyMode.CONTINUOUS, 2000, 2_000_001, 0, 0, 0, ())))
    assert isinstance(refused, m.ErrorReply)
    assert (refused.code, refused.field, refused.hi) == (ErrorCode.HARD_LIMIT, 1, 2_000_000)


def test_an_unprogrammable_rate_gives_the_dose_range_in_the_dose_unit() -> None:
    """At 50 ug/mL the 4 mL/day maximum rate allows at most 200,000 ng/day, the 5 uL/day
    minimum at least 250 ng/day: the refusal gives that range, in ng/day."""
    refused = _client(50).send(m.StageProgram(0, m.Program(TherapyMode.CONTINUOUS, 50, 200_001, 0, 0, 0, ())))
    assert isinstance(refused, m.ErrorReply)
    assert (refused.code, refused.field, refused.lo, refused.hi) == (ErrorCode.OUT_OF_RANGE, 1, 250, 200_000)
    accepted = _client(50).send(m.StageProgram(0, m.Program(TherapyMode.CONTINUOUS, 50, 200_000, 0, 0, 0, ())))
    assert isinstance(accepted, m.StageReply)
    assert accepted.max_rate_nl_per_day == 4_000_000


def test_patient_bolus_settings_refusals_name_the_settings_field() -> None:
    refused = _client(500).send(m.StagePatientBolus(0, m.PatientBolusSettings(1, 500_001, 600_000, 3_600_000, 4)))
    assert isinstance(refused, m.ErrorReply)
    assert (refused.code, refused.field, refused.hi) == (ErrorCode.HARD_LIMIT, 1, 500_000)
