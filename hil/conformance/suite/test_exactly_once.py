"""Command ids and exactly-once: a command sent again under its command id is answered, not redone.

The programmer draws command ids from the callable it is given (``command_ids``): ``CommandIds``
hands out fresh random ids and, inside ``reusing(id)``, one chosen id, which is how these tests
send a command "again" exactly as a programmer's retry would (a new frame, a new counter, the
same command id and payload).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from hil.conformance import SUITE_CONCENTRATION_UG_PER_ML, SUITE_DOSE_NG_PER_DAY, DeviceUnderTest, continuous, refused
from hil.conformance.dut import SUITE_ALARM_REPEATS_MS, CommandIds
from programmer.client import Programmer, SerialPort
from programmer.errors import ProgrammerError
from protocol_spec import messages as m
from protocol_spec.enums import (
    BolusKind,
    ErrorCode,
    LogEventKind,
    MsgType,
    ProgramSlot,
    RefillConfirmation,
    Role,
)

NEW_DOSE_NG_PER_DAY = SUITE_DOSE_NG_PER_DAY * 8 // 10
OTHER_DOSE_NG_PER_DAY = SUITE_DOSE_NG_PER_DAY * 9 // 10
CONFIRMED = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED


@contextlib.contextmanager
def clinician_with(pump: DeviceUnderTest, ids: CommandIds, role: Role = Role.CLINICIAN) -> Iterator[Programmer]:
    """A programmer with a session of its own whose command ids come from ``ids``; closed after."""
    prog = pump.new_programmer(role, command_ids=ids)
    try:
        yield prog
    finally:
        with contextlib.suppress(ProgrammerError, OSError):
            prog.close()


def refill_of(pump: DeviceUnderTest, added_volume_nl: int) -> m.Refill:
    """A refill that aspirates what the pump estimates is left and adds ``added_volume_nl``."""
    b = pump.baseline
    return m.Refill(
        pump.clinician.status().reservoir_estimate_nl,
        added_volume_nl,
        b.limits.drug,
        SUITE_CONCENTRATION_UG_PER_ML,
        b.catheter_volume_nl,
        CONFIRMED,
    )


def send_refill(prog: Programmer, refill: m.Refill) -> m.RefillReply:
    return prog.refill(
        aspirated_volume_nl=refill.aspirated_volume_nl,
        added_volume_nl=refill.added_volume_nl,
        drug=refill.drug,
        concentration_ug_per_ml=refill.concentration_ug_per_ml,
        catheter_volume_nl=refill.catheter_volume_nl,
        confirmations=refill.confirmations,
    )


def outcome_of(pump: DeviceUnderTest, command_id: int) -> list[m.CommandOutcome]:
    return [o for o in pump.clinician.interrogate().outcomes if o.command_id == command_id]


def log_since(pump: DeviceUnderTest, first_seq: int, kind: LogEventKind) -> list[m.LogEntry]:
    return [e for e in pump.clinician.read_all_log(first_seq) if e.kind == kind]


# ---------------------------------------------------------------------- the stored result


@pytest.mark.requirement("PRG-EXO-001")
def test_a_commit_sent_again_returns_the_stored_reply(pump: DeviceUnderTest) -> None:
    ids = CommandIds()
    program = continuous(NEW_DOSE_NG_PER_DAY)
    with clinician_with(pump, ids) as prog:
        staged = prog.stage_program(program, override_soft_limits=True)
        first = prog.commit(staged.stage_token)
        with ids.reusing(ids.last):
            again = prog.commit(staged.stage_token)
    # carried out a second time it would have found nothing staged (NOTHING_STAGED)
    assert again == first
    assert pump.clinician.status().staged == 0
    assert pump.clinician.read_program(ProgramSlot.ACTIVE) == program
    listed = outcome_of(pump, ids.last)
    assert [(o.msg_type, o.result) for o in listed] == [(MsgType.COMMIT, ErrorCode.OK)]


@pytest.mark.requirement("PRG-EXO-001")
def test_a_stage_sent_again_returns_the_stored_reply(pump: DeviceUnderTest) -> None:
    ids = CommandIds()
    program = continuous(NEW_DOSE_NG_PER_DAY)
    with clinician_with(pump, ids) as prog:
        first = prog.stage_program(program, override_soft_limits=True)
        stage_id = ids.last
        prog.abort()
        with ids.reusing(stage_id):
            again = prog.stage_program(program, override_soft_limits=True)
    # carried out again it would have staged the program; the stored reply stages nothing
    assert again == first
    assert pump.clinician.status().staged == 0
    with refused(ErrorCode.NOTHING_STAGED):
        pump.clinician.read_program(ProgramSlot.STAGED)


@pytest.mark.requirement("PRG-EXO-001")
def test_a_refill_sent_again_is_not_carried_out_again(pump: DeviceUnderTest) -> None:
    ids = CommandIds()
    refill = refill_of(pump, pump.baseline.reservoir_capacity_nl // 2)
    assert refill.aspirated_volume_nl != refill.added_volume_nl
    before = pump.clinician.status()
    with clinician_with(pump, ids) as prog:
        first = send_refill(prog, refill)
        with ids.reusing(ids.last):
            again = send_refill(prog, refill)
    # carried out again, it would have expected the volume the first refill left, not the old one
    assert again == first
    assert first.reservoir_estimate_nl == refill.added_volume_nl
    used = before.reservoir_estimate_nl - first.expected_volume_nl  # 0 on a held clock
    assert 0 <= used <= pump.baseline.step_volume_nl
    after = pump.clinician.status()
    since = after.delivered_nl - before.delivered_nl
    assert refill.added_volume_nl - since <= after.reservoir_estimate_nl <= refill.added_volume_nl
    assert len(outcome_of(pump, ids.last)) == 1


# ---------------------------------------------------------------------- a command id used for something else


@pytest.mark.requirement("PRG-EXO-002")
def test_a_command_id_with_another_payload_is_refused(pump: DeviceUnderTest) -> None:
    ids = CommandIds()
    first_program = continuous(NEW_DOSE_NG_PER_DAY)
    with clinician_with(pump, ids) as prog:
        prog.stage_program(first_program, override_soft_limits=True)
        with ids.reusing(ids.last), refused(ErrorCode.COMMAND_ID_REUSED):
            prog.stage_program(continuous(OTHER_DOSE_NG_PER_DAY), override_soft_limits=True)
        assert pump.clinician.status().staged == 1
        assert pump.clinician.read_program(ProgramSlot.STAGED) == first_program, "nothing was done"


@pytest.mark.requirement("PRG-EXO-002")
def test_a_command_id_with_another_message_type_is_refused(pump: DeviceUnderTest) -> None:
    ids = CommandIds()
    program = continuous(NEW_DOSE_NG_PER_DAY)
    active = pump.clinician.read_program(ProgramSlot.ACTIVE)
    with clinician_with(pump, ids) as prog:
        staged = prog.stage_program(program, override_soft_limits=True)
        stage_id = ids.last
        with ids.reusing(stage_id):
            with refused(ErrorCode.COMMAND_ID_REUSED):
                prog.abort()
            with refused(ErrorCode.COMMAND_ID_REUSED):
                prog.commit(staged.stage_token)
        assert pump.clinician.status().staged == 1, "the ABORT was not done"
        assert pump.clinician.read_program(ProgramSlot.ACTIVE) == active, "the COMMIT was not done"
        listed = outcome_of(pump, stage_id)
        assert [(o.msg_type, o.result) for o in listed] == [(MsgType.STAGE_PROGRAM, ErrorCode.OK)]
        prog.commit(staged.stage_token)  # under a fresh id it is carried out
    assert pump.clinician.read_program(ProgramSlot.ACTIVE) == program


# ---------------------------------------------------------------------- outcomes


@pytest.mark.requirement("PRG-EXO-003")
def test_outcomes_list_recent_commands_newest_first_across_sessions(pump: DeviceUnderTest) -> None:
    b = pump.baseline
    ids = CommandIds()
    sent: list[tuple[int, MsgType, ErrorCode]] = []

    def configure(prog: Programmer) -> None:
        prog.configure_alarms(
            low_reservoir_threshold_nl=b.low_reservoir_threshold_nl,
            critical_repeat_ms=SUITE_ALARM_REPEATS_MS[0],
            non_critical_repeat_ms=SUITE_ALARM_REPEATS_MS[1],
        )
        sent.append((ids.last, MsgType.CONFIGURE_ALARMS, ErrorCode.OK))

    with clinician_with(pump, ids) as first_session:
        for _ in range(4):
            configure(first_session)
    with clinician_with(pump, ids) as second_session:
        with refused(ErrorCode.NOTHING_STAGED):
            second_session.commit(0x1234_5678)
        sent.append((ids.last, MsgType.COMMIT, ErrorCode.NOTHING_STAGED))
        for _ in range(4):
            configure(second_session)
    assert len(sent) == 9
    outcomes = pump.clinician.interrogate().outcomes
    assert len(outcomes) == m.MAX_OUTCOMES == 8, "at least 8 are kept; the reply lists 8"
    assert [(o.command_id, o.msg_type, o.result) for o in outcomes] == sent[::-1][:8]
    times = [o.at_ms for o in outcomes]
    assert times == sorted(times, reverse=True), "newest first"
    assert times[0] <= pump.clinician.status().uptime_ms


@pytest.mark.requirement("PRG-EXO-004")
def test_a_refusal_before_the_command_id_is_checked_is_not_recorded(pump: DeviceUnderTest) -> None:
    ids = CommandIds()
    program = continuous(NEW_DOSE_NG_PER_DAY)
    with clinician_with(pump, ids, Role.PATIENT) as patient, refused(ErrorCode.WRONG_ROLE):
        patient.stage_program(program, override_soft_limits=True)
    command_id = ids.last
    assert outcome_of(pump, command_id) == []
    assert pump.clinician.status().staged == 0
    with clinician_with(pump, ids) as prog:
        with ids.reusing(command_id):
            # evaluated afresh: staged, not refused again
            staged = prog.stage_program(program, override_soft_limits=True)
        assert pump.clinician.read_program(ProgramSlot.STAGED) == program
        listed = outcome_of(pump, command_id)
        assert [(o.msg_type, o.result) for o in listed] == [(MsgType.STAGE_PROGRAM, ErrorCode.OK)]
        prog.commit(staged.stage_token)
    assert pump.clinician.read_program(ProgramSlot.ACTIVE) == program


# ---------------------------------------------------------------------- every reply lost


class LosesReplies:
    """The shared port, except that after ``lose_replies_to_next_write`` everything that comes
    back after the next frame written is lost, until the programmer writes again."""

    def __init__(self, port: SerialPort) -> None:
        self._port = port
        self._arm = False
        self.deaf = False
        self.lost_bytes = 0

    @property
    def timeout(self) -> float | None:
        return self._port.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._port.timeout = value

    @property
    def in_waiting(self) -> int:
        self._swallow()
        return self._port.in_waiting

    def read(self, size: int = 1, /) -> bytes:
        data = self._port.read(size)
        if self.deaf:
            self.lost_bytes += len(data)
            return b""
        return data

    def write(self, data: bytes, /) -> int | None:
        self._swallow()
        self.deaf = self._arm
        self._arm = False
        return self._port.write(data)

    def close(self) -> None:
        """The shared port stays open."""

    def lose_replies_to_next_write(self) -> None:
        self._arm = True

    def _swallow(self) -> None:
        while self.deaf and self._port.in_waiting:
            self.lost_bytes += len(self._port.read(self._port.in_waiting))


@pytest.mark.requirement("PRG-EXO-005")
def test_a_command_whose_replies_are_lost_is_resolved_by_its_command_id(pump: DeviceUnderTest) -> None:
    ids = CommandIds()
    program = continuous(NEW_DOSE_NG_PER_DAY)
    link = LosesReplies(pump.port)
    with pump.programmer_on(link, reply_timeout_ms=100, retries=0, command_ids=ids) as prog:
        staged = prog.stage_program(program, override_soft_limits=True)
        link.lose_replies_to_next_write()
        # no reply: the programmer reads the outcomes, finds the command, and fetches its
        # stored reply with the same command id
        resolved = prog.commit(staged.stage_token)
        assert link.lost_bytes > 0, "the reply was lost"
    commit_id = ids.last
    assert len(ids.issued) == 2, "nothing was sent under a new command id"
    assert resolved.stage_token == staged.stage_token
    # the outcomes, read in another session, say it ran, once
    listed = outcome_of(pump, commit_id)
    assert [(o.msg_type, o.result) for o in listed] == [(MsgType.COMMIT, ErrorCode.OK)]
    assert pump.clinician.read_program(ProgramSlot.ACTIVE) == program
    assert pump.clinician.status().staged == 0
    # sent again under its command id from another session: the stored reply, nothing done again
    with clinician_with(pump, ids) as again, ids.reusing(commit_id):
        assert again.commit(staged.stage_token) == resolved
    assert pump.clinician.status().staged == 0
    assert len(outcome_of(pump, commit_id)) == 1


# ---------------------------------------------------------------------- logged once


@pytest.mark.requirement("PRG-EXO-006")
def test_effects_sent_again_are_logged_once(pump: DeviceUnderTest) -> None:
    ids = CommandIds()
    first_seq = pump.clinician.read_log(0, 1).next_seq
    program = continuous(NEW_DOSE_NG_PER_DAY)
    refill = refill_of(pump, pump.baseline.reservoir_capacity_nl // 2)
    with clinician_with(pump, ids) as prog:
        program_token = prog.stage_program(program, override_soft_limits=True).stage_token
        prog.commit(program_token)
        with ids.reusing(ids.last):
            prog.commit(program_token)
        send_refill(prog, refill)
        with ids.reusing(ids.last):
            send_refill(prog, refill)
        bolus_token = prog.stage_bolus(BolusKind.PRIMING, volume_nl=500, duration_ms=600_000).stage_token
        prog.commit(bolus_token)
        with ids.reusing(ids.last):
            prog.commit(bolus_token)
    committed = log_since(pump, first_seq, LogEventKind.PROGRAM_COMMITTED)
    assert [e.value_a for e in committed] == [program_token, bolus_token]
    assert len(log_since(pump, first_seq, LogEventKind.REFILL)) == 1
    started = log_since(pump, first_seq, LogEventKind.BOLUS_STARTED)
    assert [(e.code, e.value_a) for e in started] == [(BolusKind.PRIMING, 500)]
