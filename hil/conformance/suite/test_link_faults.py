"""Programming over a bad link: frames dropped, duplicated, corrupted, delayed and split.

The programmer talks through ``hil.faults.FaultyLink`` wrapped around the target's port; the
checks go through the suite's own programmer on the clean port. The fault schedule is
reproducible from its seed (a fate per frame), so each seed is one fixed scenario. A command
the programmer cannot settle is sent again under the same command id, as SPEC.md allows: that
is always safe, and it is how a command is carried out exactly once however the link behaves.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from functools import partial
from typing import TypeVar

import pytest

from hil.conformance import SUITE_CONCENTRATION_UG_PER_ML, SUITE_DOSE_NG_PER_DAY, DeviceUnderTest, continuous
from hil.conformance.dut import CommandIds
from hil.faults import Fault, FaultyLink
from programmer.client import Programmer
from programmer.errors import ProgrammerError, PumpRefused
from protocol_spec import messages as m
from protocol_spec import timing
from protocol_spec.enums import ErrorCode, LogEventKind, MsgType, ProgramSlot, RefillConfirmation

T = TypeVar("T")

FAST_REPLY_TIMEOUT_MS = 150
"""Short, to keep the test fast, and still many times a round trip of the largest frame used."""
RETRIES = 4
ATTEMPTS = 4
"""How often a command the programmer could not settle is sent again under its command id."""
PROGRAMS = (continuous(SUITE_DOSE_NG_PER_DAY * 9 // 10), continuous(SUITE_DOSE_NG_PER_DAY * 8 // 10))
"""Decreasing doses (staged with the soft-limit override, as the reset does: the rolling 24 h
window remembers earlier tests)."""


@contextlib.contextmanager
def faulty_programmer(
    pump: DeviceUnderTest,
    link: FaultyLink,
    ids: CommandIds,
    *,
    reply_timeout_ms: int = timing.REPLY_TIMEOUT_MS,
    retries: int = timing.RETRIES,
) -> Iterator[Programmer]:
    """A clinician programmer over ``link`` (by default with the recommended timeout and
    retries); the shared port's read timeout is restored after (the link sets it while it waits)."""
    timeout = pump.port.timeout
    try:
        with pump.programmer_on(link, command_ids=ids, reply_timeout_ms=reply_timeout_ms, retries=retries) as prog:
            yield prog
    finally:
        pump.port.timeout = timeout
        pump.raw.drain()
        pump.refresh_sessions()


def carried_out(ids: CommandIds, send: Callable[[], T]) -> T:
    """``send()``'s reply; if the programmer could not settle it, the same command id again."""
    try:
        return send()
    except PumpRefused:
        raise
    except ProgrammerError:
        command_id = ids.last
    for attempt in range(ATTEMPTS):
        with ids.reusing(command_id):
            try:
                return send()
            except PumpRefused:
                raise
            except ProgrammerError:
                if attempt == ATTEMPTS - 1:
                    raise
    raise AssertionError("unreachable")


def fields(program: m.Program) -> dict[str, object]:
    return {f.name: getattr(program, f.name) for f in dataclasses.fields(program)}


def old_or_new(pump: DeviceUnderTest, old: m.Program, new: m.Program) -> m.Program:
    """The active program, which must be ``old`` or ``new`` whole (compared field by field)."""
    active = pump.clinician.read_program(ProgramSlot.ACTIVE)
    assert fields(active) in (fields(old), fields(new)), f"a partly applied program: {active}"
    return active


@pytest.mark.requirement("FLT-LNK-001", "FLT-LNK-002")
@pytest.mark.parametrize("seed", [16, 26])
def test_programming_over_a_faulty_link_happens_exactly_once(pump: DeviceUnderTest, seed: int) -> None:
    c = pump.clinician
    first_seq = c.read_log(0, 1).next_seq
    old = c.read_program(ProgramSlot.ACTIVE)
    link = FaultyLink(pump.port, seed=seed, drop=0.06, duplicate=0.2, corrupt=0.06, delay_ms=2, split=True)
    ids = CommandIds()
    tokens: list[int] = []
    command_ids: list[tuple[int, MsgType]] = []
    with faulty_programmer(pump, link, ids, reply_timeout_ms=FAST_REPLY_TIMEOUT_MS, retries=RETRIES) as prog:
        for program in PROGRAMS:
            token = carried_out(ids, partial(prog.stage_program, program, override_soft_limits=True)).stage_token
            command_ids.append((ids.last, MsgType.STAGE_PROGRAM))
            assert old_or_new(pump, old, program) == old, "staging changed the active program"
            reply = carried_out(ids, partial(prog.commit, token))
            command_ids.append((ids.last, MsgType.COMMIT))
            assert reply.stage_token == token
            assert old_or_new(pump, old, program) == program
            tokens.append(token)
            old = program
        estimate = c.status().reservoir_estimate_nl
        added = pump.baseline.reservoir_capacity_nl - 1000
        refill = carried_out(
            ids,
            lambda: prog.refill(
                aspirated_volume_nl=estimate,
                added_volume_nl=added,
                drug=pump.baseline.limits.drug,
                concentration_ug_per_ml=SUITE_CONCENTRATION_UG_PER_ML,
                catheter_volume_nl=pump.baseline.catheter_volume_nl,
                confirmations=RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED,
            ),
        )
        command_ids.append((ids.last, MsgType.REFILL))
    faults = link.counts()
    assert any(fault in (Fault.DROP, Fault.CORRUPT) for _, fault in faults), f"no frame was lost: {faults}"
    assert 0 <= estimate - refill.expected_volume_nl <= pump.baseline.step_volume_nl  # 0 on a held clock
    assert refill.reservoir_estimate_nl == added
    # once each in the event log ...
    entries = list(c.read_all_log(first_seq))
    assert [e.value_a for e in entries if e.kind == LogEventKind.PROGRAM_COMMITTED] == tokens
    assert [e.value_a for e in entries if e.kind == LogEventKind.REFILL] == [added]
    assert c.read_program(ProgramSlot.ACTIVE) == PROGRAMS[-1]
    assert c.status().staged == 0
    # ... and once each in the outcomes, newest first, every one OK
    outcomes = c.interrogate().outcomes
    listed = [(o.command_id, o.msg_type) for o in outcomes if o.command_id in dict(command_ids)]
    assert listed == command_ids[::-1]
    assert all(o.result == ErrorCode.OK for o in outcomes if o.command_id in dict(command_ids))


@pytest.mark.requirement("FLT-LNK-003")
def test_a_session_over_a_paced_115200_baud_link_works(pump: DeviceUnderTest) -> None:
    link = FaultyLink(pump.port, seed=0, baud=115_200)
    program = PROGRAMS[0]
    with faulty_programmer(pump, link, CommandIds()) as prog:  # the recommended timeout and retries
        assert prog.identify() == pump.identity
        staged = prog.stage_program(program, override_soft_limits=True)
        assert prog.commit(staged.stage_token).stage_token == staged.stage_token
        status = prog.status()
    assert not link.log, "a paced link does no harm"
    assert all(n >= 5 for n in link.frames.values()), link.frames
    assert status.staged == 0
    assert status.rate_nl_per_day == program.dose_ng_per_day * 1000 // program.concentration_ug_per_ml
    assert pump.clinician.read_program(ProgramSlot.ACTIVE) == program
