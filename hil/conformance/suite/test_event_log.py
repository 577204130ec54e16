"""The event log: sequence numbers, times, paging, and the values of the entries the suite causes."""

from __future__ import annotations

import itertools

import pytest

from hil.conformance import DeviceUnderTest
from hil.conformance.dut import SUITE_ALARM_REPEATS_MS, SUITE_CONCENTRATION_UG_PER_ML, continuous
from programmer.client import Programmer
from protocol_spec import messages as m
from protocol_spec.enums import LogEventKind, RefillConfirmation, StageKind

CONFIRMED = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED


def next_seq(prog: Programmer) -> int:
    return prog.read_log(0, 1).next_seq


def log_since(prog: Programmer, seq: int) -> list[m.LogEntry]:
    return list(prog.read_all_log(seq))


def of_kind(log: list[m.LogEntry], kind: LogEventKind) -> list[m.LogEntry]:
    return [e for e in log if e.kind is kind]


def configure_baseline(pump: DeviceUnderTest) -> None:
    """An effectful request that changes nothing and writes one ALARM_CONFIG entry."""
    pump.clinician.configure_alarms(
        low_reservoir_threshold_nl=pump.baseline.low_reservoir_threshold_nl,
        critical_repeat_ms=SUITE_ALARM_REPEATS_MS[0],
        non_critical_repeat_ms=SUITE_ALARM_REPEATS_MS[1],
    )


@pytest.mark.requirement("LOG-SEQ-001")
def test_log_sequence_is_gapless(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    for _ in range(3):
        configure_baseline(pump)
    page = c.read_log(0, 1)
    log = log_since(c, max(page.oldest_seq, page.next_seq - 40))
    assert len(log) >= 3
    assert [e.seq for e in log] == list(range(log[0].seq, log[0].seq + len(log)))
    assert log[-1].seq == c.read_log(0, 1).next_seq - 1
    assert all(a.at_ms <= b.at_ms for a, b in itertools.pairwise(log)), "at_ms went back"
    assert all(e.count >= 1 for e in log)
    assert log[-1].at_ms <= c.status().uptime_ms


@pytest.mark.requirement("LOG-SEQ-002")
def test_entry_times_are_uptime_and_wall_clock(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    before = c.status()
    seq = next_seq(c)
    configure_baseline(pump)
    after = c.status()
    (entry,) = of_kind(log_since(c, seq), LogEventKind.ALARM_CONFIG)
    # exact when the clock is held (test role): before and after are then the same instant
    assert before.uptime_ms <= entry.at_ms <= after.uptime_ms
    assert before.wall_clock_ms <= entry.wall_clock_ms <= after.wall_clock_ms


@pytest.mark.requirement("LOG-SEQ-002")
@pytest.mark.requires("test_role", "virtual_time")
def test_entry_times_follow_advanced_time(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    seq = next_seq(c)
    pump.advance(12_345)
    status = c.status()
    configure_baseline(pump)
    (entry,) = of_kind(log_since(c, seq), LogEventKind.ALARM_CONFIG)
    assert (entry.at_ms, entry.wall_clock_ms) == (status.uptime_ms, status.wall_clock_ms)


@pytest.mark.requirement("LOG-PAG-001")
def test_read_log_pages(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    for _ in range(4):
        configure_baseline(pump)
    whole = c.read_log(0, 1)
    first = max(whole.oldest_seq, whole.next_seq - 10)
    ten = c.read_log(first, 10)
    assert (ten.oldest_seq, ten.next_seq) == (whole.oldest_seq, whole.next_seq)
    assert [e.seq for e in ten.entries] == list(range(first, first + 10))

    joined: list[m.LogEntry] = []
    for start in range(first, first + 10, 3):
        page = c.read_log(start, 3)
        assert 1 <= len(page.entries) <= 3
        assert page.entries[0].seq == start
        joined.extend(page.entries)
    assert joined[:10] == list(ten.entries)

    assert len(c.read_log(first, 1).entries) == 1
    assert len(c.read_log(whole.oldest_seq, 16).entries) == min(16, whole.next_seq - whole.oldest_seq)
    empty = c.read_log(whole.next_seq, 16)
    assert empty.entries == ()
    assert empty.next_seq == whole.next_seq
    if whole.oldest_seq > 0:  # older than the oldest held: the page starts at the oldest
        assert c.read_log(0, 2).entries[0].seq == whole.oldest_seq


@pytest.mark.requirement("LOG-VAL-001")
def test_program_commit_and_abort_logged(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    seq = next_seq(c)
    staged = c.stage_program(continuous(80_000))
    c.commit(staged.stage_token)
    dropped = c.stage_program(continuous(90_000))
    c.abort()
    log = log_since(c, seq)
    committed = of_kind(log, LogEventKind.PROGRAM_COMMITTED)
    assert [(e.code, e.value_a, e.value_b) for e in committed] == [
        (StageKind.PROGRAM, staged.stage_token, staged.max_dose_ng_per_day)
    ]
    assert staged.max_dose_ng_per_day == 80_000
    aborted = of_kind(log, LogEventKind.PROGRAM_ABORTED)
    assert [(e.code, e.value_a) for e in aborted] == [(StageKind.PROGRAM, dropped.stage_token)]


@pytest.mark.requirement("LOG-VAL-002")
@pytest.mark.parametrize("short_nl", [0, 2_000, -1_500])
def test_refill_logged_with_discrepancy(pump: DeviceUnderTest, short_nl: int) -> None:
    c = pump.clinician
    expected = c.status().reservoir_estimate_nl
    added = pump.baseline.reservoir_capacity_nl - 1_000
    seq = next_seq(c)
    reply = c.refill(
        aspirated_volume_nl=expected - short_nl,
        added_volume_nl=added,
        drug=pump.baseline.limits.drug,
        concentration_ug_per_ml=SUITE_CONCENTRATION_UG_PER_ML,
        catheter_volume_nl=pump.baseline.catheter_volume_nl,
        confirmations=CONFIRMED,
    )
    assert reply.discrepancy_nl == -short_nl
    refills = of_kind(log_since(c, seq), LogEventKind.REFILL)
    assert [(e.code, e.value_a, e.value_b) for e in refills] == [(pump.baseline.limits.drug, added, -short_nl)]
