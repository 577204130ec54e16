"""Alarms: thresholds, the reservoir, motor stall, low-battery reset, configuration, silence,
acknowledgement and ALARM_NOTIFY.

ALARM_NOTIFY goes into every open session; each programmer of the suite collects its own session's
(``notifications``), whichever programmer happened to read them off the shared port
(``hil.conformance.sharedport``). ``pump.clear_notifications(prog)`` takes in what was sent so far
and forgets it, so that what ``prog.notifications`` holds afterwards was sent afterwards.
"""

from __future__ import annotations

import pytest

from hil.conformance import DeviceUnderTest, refused
from hil.conformance.dut import SUITE_ALARM_REPEATS_MS, SUITE_CONCENTRATION_UG_PER_ML, SUITE_DOSE_NG_PER_DAY, continuous
from programmer.client import Programmer
from programmer.errors import PumpRefused
from protocol_spec import messages as m
from protocol_spec.enums import (
    AlarmCode,
    AlarmEvent,
    AlarmPriority,
    AlarmSet,
    ErrorCode,
    FaultKind,
    LogEventKind,
    RefillConfirmation,
    Role,
    TherapyMode,
    TonePattern,
)

DAY_MS = 86_400_000
MAX_REPEAT_MS = 24 * 3_600_000
CONFIRMED = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED


# ---------------------------------------------------------------------- helpers


def refill(pump: DeviceUnderTest, added_volume_nl: int) -> m.RefillReply:
    """Aspirate what the pump expects and fill ``added_volume_nl`` of the suite's drug."""
    c = pump.clinician
    return c.refill(
        aspirated_volume_nl=c.status().reservoir_estimate_nl,
        added_volume_nl=added_volume_nl,
        drug=pump.baseline.limits.drug,
        concentration_ug_per_ml=SUITE_CONCENTRATION_UG_PER_ML,
        catheter_volume_nl=pump.baseline.catheter_volume_nl,
        confirmations=CONFIRMED,
    )


def configure(pump: DeviceUnderTest, threshold_nl: int, repeats_ms: tuple[int, int] = SUITE_ALARM_REPEATS_MS) -> None:
    pump.clinician.configure_alarms(
        low_reservoir_threshold_nl=threshold_nl, critical_repeat_ms=repeats_ms[0], non_critical_repeat_ms=repeats_ms[1]
    )


def next_seq(prog: Programmer) -> int:
    return prog.read_log(0, 1).next_seq


def log_since(prog: Programmer, seq: int) -> list[m.LogEntry]:
    return list(prog.read_all_log(seq))


def entries(log: list[m.LogEntry], kind: LogEventKind, code: int | None = None) -> list[m.LogEntry]:
    return [e for e in log if e.kind is kind and (code is None or e.code == code)]


def alarms(prog: Programmer) -> AlarmSet:
    return AlarmSet(prog.status().alarms)


def flag(code: AlarmCode) -> AlarmSet:
    return AlarmSet(1 << (code - 1))


def step_window_ms(steps: int, step_nl: int, rate_nl_per_day: int) -> tuple[int, int]:
    """(latest time at which fewer than ``steps`` steps can have been taken, earliest time at which
    ``steps`` have been), from a reading of the pump: whatever part of a step was already under way."""
    before = (steps - 1) * step_nl * DAY_MS // rate_nl_per_day
    after = -(-steps * step_nl * DAY_MS // rate_nl_per_day)
    return before, after


def raise_low_reservoir(pump: DeviceUnderTest) -> int:
    """LOW_RESERVOIR active through the protocol alone: half a reservoir, threshold at that volume."""
    volume = pump.baseline.reservoir_capacity_nl // 2
    refill(pump, volume)
    configure(pump, volume)
    assert AlarmSet.LOW_RESERVOIR in alarms(pump.clinician)
    return volume


def notes(prog: Programmer, code: AlarmCode, event: AlarmEvent | None = None) -> list[m.AlarmNotify]:
    """The notifications ``prog`` collected for ``code`` (after one more exchange, so that a
    notification sent after the last reply has been read)."""
    prog.status()
    return [n for n in prog.notifications if n.alarm is code and (event is None or n.event is event)]


def assert_low_consistent(info: m.InterrogateReply) -> None:
    active = AlarmSet.LOW_RESERVOIR in AlarmSet(info.alarms)
    at_or_below = info.reservoir_estimate_nl <= info.low_reservoir_threshold_nl
    assert active == at_or_below, (
        f"LOW_RESERVOIR {'active' if active else 'inactive'} with estimate {info.reservoir_estimate_nl} nL "
        f"and threshold {info.low_reservoir_threshold_nl} nL"
    )


# ---------------------------------------------------------------------- the alarm set


@pytest.mark.requirement("ALM-SET-001")
def test_status_and_interrogate_agree_on_alarms(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    for stage in ("known state", "low reservoir", "silenced"):
        if stage == "low reservoir":
            raise_low_reservoir(pump)
        elif stage == "silenced":
            c.silence_alarm(AlarmCode.LOW_RESERVOIR, 600_000)
        status = c.status()
        info = c.interrogate()
        after = c.status()
        assert status.alarms == info.alarms == after.alarms, stage
        assert AlarmSet(info.silenced) & ~AlarmSet(info.alarms) == AlarmSet(0), stage
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(info.silenced)


# ---------------------------------------------------------------------- low and empty reservoir


@pytest.mark.requirement("ALM-LRS-001")
def test_low_reservoir_follows_threshold_and_refill(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    cap = pump.baseline.reservoir_capacity_nl
    refill(pump, cap // 2)
    configure(pump, 0)
    info = c.interrogate()
    assert_low_consistent(info)
    assert AlarmSet.LOW_RESERVOIR not in AlarmSet(info.alarms)

    configure(pump, info.reservoir_estimate_nl)  # at the threshold: active
    info = c.interrogate()
    assert_low_consistent(info)
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(info.alarms)

    configure(pump, info.reservoir_estimate_nl - 1)  # just below the estimate (unless a step came between)
    assert_low_consistent(c.interrogate())

    configure(pump, cap - 1)
    info = c.interrogate()
    assert_low_consistent(info)
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(info.alarms)

    refill(pump, cap)  # the estimate rises above the threshold: cleared
    info = c.interrogate()
    assert_low_consistent(info)
    assert AlarmSet.LOW_RESERVOIR not in AlarmSet(info.alarms)


@pytest.mark.requirement("ALM-LRS-002", "ALM-NTF-002")
@pytest.mark.requires("test_role", "virtual_time")
def test_low_reservoir_raised_at_the_step_that_reaches_the_threshold(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    step = pump.baseline.step_volume_nl
    status = c.status()
    start_ms, estimate, rate = status.uptime_ms, status.reservoir_estimate_nl, status.rate_nl_per_day
    delivered_nl = status.delivered_nl
    steps = 10
    threshold = estimate - steps * step + step // 2  # reached by the 10th step, not the 9th
    configure(pump, threshold)
    assert AlarmSet.LOW_RESERVOIR not in alarms(c)
    before_ms, after_ms = step_window_ms(steps, step, rate)
    seq = next_seq(c)
    pump.clear_notifications(pump.test)

    pump.advance(before_ms)
    status = c.status()
    assert status.reservoir_estimate_nl > threshold
    assert AlarmSet.LOW_RESERVOIR not in AlarmSet(status.alarms), f"raised before the {steps}th step"

    pump.advance(after_ms - before_ms)
    status = c.status()
    assert status.reservoir_estimate_nl <= threshold
    assert estimate - status.reservoir_estimate_nl == status.delivered_nl - delivered_nl  # filled minus commanded
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(status.alarms), f"not raised after the {steps}th step"

    raised = entries(log_since(c, seq), LogEventKind.ALARM_RAISED, AlarmCode.LOW_RESERVOIR)
    assert len(raised) == 1
    assert start_ms + before_ms < raised[0].at_ms <= start_ms + after_ms
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(raised[0].value_a)
    notified = [n for n in pump.test.notifications if n.alarm is AlarmCode.LOW_RESERVOIR]
    assert [n.event for n in notified] == [AlarmEvent.RAISED]
    assert notified[0].at_ms == raised[0].at_ms
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(notified[0].alarms)
    assert (notified[0].priority, notified[0].tone) == (AlarmPriority.NON_CRITICAL, TonePattern.SINGLE_TONE_1S)


@pytest.mark.requirement("ALM-LRS-003")
@pytest.mark.requires("test_role", "virtual_time", "step_log")
def test_low_reservoir_entry_has_the_step_time(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    step = pump.baseline.step_volume_nl
    status = c.status()
    steps = 3
    threshold = status.reservoir_estimate_nl - steps * step
    configure(pump, threshold)
    first = pump.test.read_step_log(0, 1).steps_total
    seq = next_seq(c)
    pump.advance(step_window_ms(steps, step, status.rate_nl_per_day)[1])
    raised = entries(log_since(c, seq), LogEventKind.ALARM_RAISED, AlarmCode.LOW_RESERVOIR)
    assert len(raised) == 1
    page = pump.test.read_step_log(first + steps - 1, 1)
    assert page.first_step == first + steps - 1
    assert raised[0].at_ms == page.steps[0].at_ms


@pytest.mark.requirement("ALM-EMP-001")
@pytest.mark.requires("test_role", "virtual_time")
def test_empty_reservoir_stops_delivery(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    step = pump.baseline.step_volume_nl
    steps = 8
    refill(pump, steps * step)
    status = c.status()
    before_ms, after_ms = step_window_ms(steps, step, status.rate_nl_per_day)
    pump.clear_notifications(pump.test)

    pump.advance(before_ms)
    status = c.status()
    assert status.reservoir_estimate_nl > 0
    assert AlarmSet.EMPTY_RESERVOIR not in AlarmSet(status.alarms), "raised before the reservoir was empty"

    pump.advance(after_ms - before_ms)
    status = c.status()
    assert status.reservoir_estimate_nl == 0
    assert AlarmSet.EMPTY_RESERVOIR in AlarmSet(status.alarms)
    notified = [n for n in pump.test.notifications if n.alarm is AlarmCode.EMPTY_RESERVOIR]
    assert [n.event for n in notified] == [AlarmEvent.RAISED]
    assert (notified[0].priority, notified[0].tone) == (AlarmPriority.CRITICAL, TonePattern.TWO_TONE_3S)

    pump.advance(DAY_MS)
    later = c.status()
    assert later.delivered_nl == status.delivered_nl, "delivery went on with an empty reservoir"
    assert later.reservoir_estimate_nl == 0
    assert AlarmSet.EMPTY_RESERVOIR in AlarmSet(later.alarms)


@pytest.mark.requirement("ALM-EMP-002")
@pytest.mark.requires("test_role", "virtual_time")
def test_refill_clears_reservoir_alarms(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    step = pump.baseline.step_volume_nl
    refill(pump, 4 * step)
    configure(pump, 2 * step)
    pump.advance(DAY_MS)
    assert alarms(c) >= AlarmSet.LOW_RESERVOIR | AlarmSet.EMPTY_RESERVOIR

    seq = next_seq(c)
    refill(pump, pump.baseline.reservoir_capacity_nl)
    status = c.status()
    assert not AlarmSet(status.alarms) & (AlarmSet.LOW_RESERVOIR | AlarmSet.EMPTY_RESERVOIR)
    cleared = {e.code for e in entries(log_since(c, seq), LogEventKind.ALARM_CLEARED)}
    assert {AlarmCode.LOW_RESERVOIR, AlarmCode.EMPTY_RESERVOIR} <= cleared

    pump.advance(step_window_ms(2, step, status.rate_nl_per_day)[1])
    assert c.status().delivered_nl >= status.delivered_nl + 2 * step, "delivery did not resume after the refill"


# ---------------------------------------------------------------------- motor stall


@pytest.mark.requirement("ALM-STL-001")
@pytest.mark.requires("test_role", "virtual_time", "fault_injection")
def test_motor_stall_interrupts_delivery(pump: DeviceUnderTest) -> None:
    c, t = pump.clinician, pump.test
    pump.clear_notifications(t)
    t.inject_fault(FaultKind.MOTOR_STALL)
    status = c.status()
    assert AlarmSet.MOTOR_STALL in AlarmSet(status.alarms)
    plant = t.read_plant()
    assert plant.motor_stalled == 1
    raised = [n for n in t.notifications if n.alarm is AlarmCode.MOTOR_STALL and n.event is AlarmEvent.RAISED]
    assert len(raised) == 1
    assert (raised[0].priority, raised[0].tone) == (AlarmPriority.CRITICAL, TonePattern.TWO_TONE_3S)

    pump.advance(DAY_MS)
    later = c.status()
    assert later.delivered_nl == status.delivered_nl, "volume commanded during a stall"
    assert t.read_plant().steps_total == plant.steps_total, "motor steps during a stall"
    assert AlarmSet.MOTOR_STALL in AlarmSet(later.alarms)


@pytest.mark.requirement("ALM-STL-002")
@pytest.mark.requires("test_role", "virtual_time", "fault_injection")
def test_stall_recovery_is_logged_and_delivery_resumes(pump: DeviceUnderTest) -> None:
    c, t = pump.clinician, pump.test
    stall_ms = 3_600_000
    seq = next_seq(c)
    t.inject_fault(FaultKind.MOTOR_STALL)
    pump.advance(stall_ms)
    t.inject_fault(FaultKind.MOTOR_STALL_CLEAR)
    status = c.status()
    assert AlarmSet.MOTOR_STALL not in AlarmSet(status.alarms)
    assert t.read_plant().motor_stalled == 0

    log = log_since(c, seq)
    faults = entries(log, LogEventKind.FAULT_INJECTED)
    assert [(e.code, e.value_a) for e in faults] == [(FaultKind.MOTOR_STALL, 0), (FaultKind.MOTOR_STALL_CLEAR, 0)]
    cleared = entries(log, LogEventKind.ALARM_CLEARED, AlarmCode.MOTOR_STALL)
    recovered = entries(log, LogEventKind.STALL_RECOVERED)
    assert len(cleared) == len(recovered) == 1
    assert cleared[0].seq < recovered[0].seq
    assert AlarmSet.MOTOR_STALL not in AlarmSet(cleared[0].value_a)
    assert recovered[0].code == AlarmCode.MOTOR_STALL
    assert recovered[0].value_a == stall_ms
    assert recovered[0].at_ms == status.uptime_ms

    pump.advance(step_window_ms(2, pump.baseline.step_volume_nl, status.rate_nl_per_day)[1])
    assert c.status().delivered_nl >= status.delivered_nl + 2 * pump.baseline.step_volume_nl


# ---------------------------------------------------------------------- low-battery reset


def low_battery_reset(pump: DeviceUnderTest) -> None:
    """Inject the fault; the pump reboots (sessions end, a held clock may be released): hold it again."""
    pump.test.inject_fault(FaultKind.LOW_BATTERY_RESET)
    pump.test.hold_clock(True)


@pytest.mark.requirement("ALM-LBR-001")
@pytest.mark.requires("test_role", "fault_injection")
def test_low_battery_reset_runs_minimum_rate(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    seq = next_seq(c)
    low_battery_reset(pump)
    status = c.status()
    assert status.mode is TherapyMode.MINIMUM_RATE
    assert status.rate_nl_per_day == pump.baseline.limits.min_rate_nl_per_day
    assert AlarmSet.LOW_BATTERY_RESET in AlarmSet(status.alarms)
    info = c.interrogate()
    assert (info.mode, info.rate_nl_per_day) == (TherapyMode.MINIMUM_RATE, pump.baseline.limits.min_rate_nl_per_day)
    assert c.read_program().mode is TherapyMode.MINIMUM_RATE
    assert len(entries(log_since(c, seq), LogEventKind.ALARM_RAISED, AlarmCode.LOW_BATTERY_RESET)) == 1


@pytest.mark.requirement("ALM-LBR-002", "ALM-ACK-003")
@pytest.mark.requires("test_role", "fault_injection")
def test_low_battery_reset_clears_when_reprogrammed(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    low_battery_reset(pump)
    c.silence_alarm(AlarmCode.LOW_BATTERY_RESET, 600_000)
    c.acknowledge_alarm(AlarmCode.LOW_BATTERY_RESET)
    assert AlarmSet.LOW_BATTERY_RESET in alarms(c), "cleared by a message"
    seq = next_seq(c)
    pump.program(continuous(SUITE_DOSE_NG_PER_DAY), override_soft_limits=True)
    status = c.status()
    assert AlarmSet.LOW_BATTERY_RESET not in AlarmSet(status.alarms)
    assert status.mode is TherapyMode.CONTINUOUS
    assert len(entries(log_since(c, seq), LogEventKind.ALARM_CLEARED, AlarmCode.LOW_BATTERY_RESET)) == 1


# ---------------------------------------------------------------------- CONFIGURE_ALARMS


@pytest.mark.requirement("ALM-CFG-001")
def test_configure_alarms_applies_and_logs(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    threshold = pump.baseline.reservoir_capacity_nl // 4
    seq = next_seq(c)
    reply = c.configure_alarms(
        low_reservoir_threshold_nl=threshold, critical_repeat_ms=120_000, non_critical_repeat_ms=1_800_000
    )
    assert reply == m.AlarmConfig(threshold, 120_000, 1_800_000)
    assert c.interrogate().low_reservoir_threshold_nl == threshold
    logged = entries(log_since(c, seq), LogEventKind.ALARM_CONFIG)
    assert [(e.value_a, e.value_b) for e in logged] == [(threshold, 120_000)]


@pytest.mark.requirement("ALM-CFG-002")
@pytest.mark.parametrize("over", [0, 1, 1_000_000])
def test_threshold_at_or_above_capacity_refused(pump: DeviceUnderTest, over: int) -> None:
    c = pump.clinician
    cap = pump.baseline.reservoir_capacity_nl
    before = c.interrogate().low_reservoir_threshold_nl
    seq = next_seq(c)
    with refused(ErrorCode.OUT_OF_RANGE) as r:
        configure(pump, cap + over)
    assert r.error is not None
    assert (r.error.field, r.error.hi) == (0, cap - 1)
    assert c.interrogate().low_reservoir_threshold_nl == before
    assert not entries(log_since(c, seq), LogEventKind.ALARM_CONFIG)
    configure(pump, cap - 1)  # the highest threshold is accepted
    assert c.interrogate().low_reservoir_threshold_nl == cap - 1


@pytest.mark.requirement("ALM-CFG-003")
@pytest.mark.parametrize("repeat_ms", [1000, MAX_REPEAT_MS])
def test_repeat_interval_range_ends_accepted(pump: DeviceUnderTest, repeat_ms: int) -> None:
    threshold = pump.baseline.low_reservoir_threshold_nl
    reply = pump.clinician.configure_alarms(
        low_reservoir_threshold_nl=threshold, critical_repeat_ms=repeat_ms, non_critical_repeat_ms=repeat_ms
    )
    assert reply == m.AlarmConfig(threshold, repeat_ms, repeat_ms)


@pytest.mark.requirement("ALM-CFG-004")
@pytest.mark.parametrize("field", [1, 2])
def test_repeat_interval_over_a_day_refused(pump: DeviceUnderTest, field: int) -> None:
    c = pump.clinician
    repeats = [SUITE_ALARM_REPEATS_MS[0], SUITE_ALARM_REPEATS_MS[1]]
    repeats[field - 1] = MAX_REPEAT_MS + 1
    seq = next_seq(c)
    with refused(ErrorCode.OUT_OF_RANGE) as r:
        configure(pump, pump.baseline.low_reservoir_threshold_nl, (repeats[0], repeats[1]))
    assert r.error is not None
    assert (r.error.field, r.error.lo, r.error.hi) == (field, 1000, MAX_REPEAT_MS)
    assert not entries(log_since(c, seq), LogEventKind.ALARM_CONFIG)


# ---------------------------------------------------------------------- silence and acknowledge


@pytest.mark.requirement("ALM-SIL-001")
def test_silence_keeps_alarm_active(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    raise_low_reservoir(pump)
    seq = next_seq(c)
    c.silence_alarm(AlarmCode.LOW_RESERVOIR, 600_000)
    info = c.interrogate()
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(info.alarms)
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(info.silenced)
    pump.patient.silence_alarm(AlarmCode.LOW_RESERVOIR, 300_000)
    assert AlarmSet.LOW_RESERVOIR in alarms(c)
    silenced = entries(log_since(c, seq), LogEventKind.ALARM_SILENCED, AlarmCode.LOW_RESERVOIR)
    assert [(e.value_a, e.value_b) for e in silenced] == [(600_000, Role.CLINICIAN), (300_000, Role.PATIENT)]


@pytest.mark.requirement("ALM-SIL-002")
@pytest.mark.requires("test_role", "virtual_time")
def test_silence_lasts_its_duration(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    raise_low_reservoir(pump)
    duration_ms = 90_000
    c.silence_alarm(AlarmCode.LOW_RESERVOIR, duration_ms)
    pump.advance(duration_ms - 1)
    info = c.interrogate()
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(info.silenced), "the silence ended early"
    pump.advance(1)
    info = c.interrogate()
    assert AlarmSet.LOW_RESERVOIR not in AlarmSet(info.silenced), "the silence outlasted its duration"
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(info.alarms)


@pytest.mark.requirement("ALM-ACK-001")
def test_acknowledge_keeps_alarm_active_and_is_logged(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    raise_low_reservoir(pump)
    seq = next_seq(c)
    c.acknowledge_alarm(AlarmCode.LOW_RESERVOIR)
    assert AlarmSet.LOW_RESERVOIR in alarms(c)
    acked = entries(log_since(c, seq), LogEventKind.ALARM_ACKNOWLEDGED, AlarmCode.LOW_RESERVOIR)
    assert [e.value_a for e in acked] == [Role.CLINICIAN]


def silence_or_acknowledge(prog: Programmer, action: str, code: AlarmCode) -> m.Ack:
    if action == "silence":
        return prog.silence_alarm(code, 600_000)
    return prog.acknowledge_alarm(code)


@pytest.mark.requirement("ALM-ACK-002")
@pytest.mark.parametrize("action", ["silence", "acknowledge"])
@pytest.mark.parametrize("code", [AlarmCode.LOW_RESERVOIR, AlarmCode.MOTOR_STALL, AlarmCode.EMPTY_RESERVOIR])
def test_inactive_alarm_cannot_be_silenced_or_acknowledged(pump: DeviceUnderTest, action: str, code: AlarmCode) -> None:
    c = pump.clinician
    assert flag(code) not in alarms(c)
    seq = next_seq(c)
    with pytest.raises(PumpRefused):
        silence_or_acknowledge(c, action, code)
    assert next_seq(c) == seq, "a refused silence or acknowledgement was logged"
    assert AlarmSet(c.interrogate().silenced) == AlarmSet(0)


@pytest.mark.requirement("ALM-ACK-003")
def test_alarm_does_not_clear_by_a_message(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    volume = raise_low_reservoir(pump)
    c.silence_alarm(AlarmCode.LOW_RESERVOIR, 600_000)
    assert AlarmSet.LOW_RESERVOIR in alarms(c)
    c.acknowledge_alarm(AlarmCode.LOW_RESERVOIR)
    assert AlarmSet.LOW_RESERVOIR in alarms(c)
    configure(pump, volume)  # the same settings again
    pump.patient.silence_alarm(AlarmCode.LOW_RESERVOIR, 1000)
    assert AlarmSet.LOW_RESERVOIR in alarms(c)
    refill(pump, pump.baseline.reservoir_capacity_nl)  # the cause is gone
    assert AlarmSet.LOW_RESERVOIR not in alarms(c)


# ---------------------------------------------------------------------- ALARM_NOTIFY


@pytest.mark.requirement("ALM-NTF-001")
def test_request_raising_and_clearing_an_alarm_is_notified(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    cap = pump.baseline.reservoir_capacity_nl
    configure(pump, cap // 2)
    seq = next_seq(c)
    pump.clear_notifications(c)
    refill(pump, cap // 4)
    raised = notes(c, AlarmCode.LOW_RESERVOIR)
    assert [n.event for n in raised] == [AlarmEvent.RAISED]
    assert (raised[0].priority, raised[0].tone) == (AlarmPriority.NON_CRITICAL, TonePattern.SINGLE_TONE_1S)
    assert raised[0].alarms == c.status().alarms
    logged = entries(log_since(c, seq), LogEventKind.ALARM_RAISED, AlarmCode.LOW_RESERVOIR)
    assert [e.at_ms for e in logged] == [raised[0].at_ms]

    pump.clear_notifications(c)
    refill(pump, cap)
    cleared = notes(c, AlarmCode.LOW_RESERVOIR)
    assert [n.event for n in cleared] == [AlarmEvent.CLEARED]
    assert AlarmSet.LOW_RESERVOIR not in AlarmSet(cleared[0].alarms)
    assert cleared[0].alarms == c.status().alarms
    logged = entries(log_since(c, seq), LogEventKind.ALARM_CLEARED, AlarmCode.LOW_RESERVOIR)
    assert [e.at_ms for e in logged] == [cleared[0].at_ms]


@pytest.mark.requirement("ALM-NTF-002")
def test_silence_and_acknowledge_are_notified(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    raise_low_reservoir(pump)
    pump.clear_notifications(c)
    c.silence_alarm(AlarmCode.LOW_RESERVOIR, 600_000)
    assert [n.event for n in notes(c, AlarmCode.LOW_RESERVOIR)] == [AlarmEvent.SILENCED]
    pump.clear_notifications(c)
    c.acknowledge_alarm(AlarmCode.LOW_RESERVOIR)
    acked = notes(c, AlarmCode.LOW_RESERVOIR)
    assert [n.event for n in acked] == [AlarmEvent.ACKNOWLEDGED]
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(acked[0].alarms)


@pytest.mark.requirement("ALM-NTF-003")
@pytest.mark.requires("test_role", "virtual_time")
def test_non_critical_alarm_repeats_at_its_interval(pump: DeviceUnderTest) -> None:
    c, t = pump.clinician, pump.test
    cap = pump.baseline.reservoir_capacity_nl
    repeat_ms = 90_000
    configure(pump, cap // 2, (SUITE_ALARM_REPEATS_MS[0], repeat_ms))
    raised_ms = c.status().uptime_ms
    refill(pump, cap // 4)
    pump.clear_notifications(t)
    pump.advance(5 * repeat_ms)
    repeats = [n for n in t.notifications if n.alarm is AlarmCode.LOW_RESERVOIR]
    assert [(n.event, n.at_ms) for n in repeats] == [
        (AlarmEvent.REPEATED, raised_ms + k * repeat_ms) for k in range(1, 6)
    ]
    assert all(n.tone is TonePattern.SINGLE_TONE_1S for n in repeats)

    refill(pump, cap)
    pump.clear_notifications(t)
    pump.advance(3 * repeat_ms)
    assert not [n for n in t.notifications if n.alarm is AlarmCode.LOW_RESERVOIR], "repeated after clearing"


@pytest.mark.requirement("ALM-NTF-003")
@pytest.mark.requires("test_role", "virtual_time", "fault_injection")
def test_critical_alarm_repeats_at_its_interval(pump: DeviceUnderTest) -> None:
    c, t = pump.clinician, pump.test
    repeat_ms = 45_000
    configure(pump, pump.baseline.low_reservoir_threshold_nl, (repeat_ms, SUITE_ALARM_REPEATS_MS[1]))
    raised_ms = c.status().uptime_ms
    t.inject_fault(FaultKind.MOTOR_STALL)
    pump.clear_notifications(t)
    pump.advance(4 * repeat_ms)
    repeats = [n for n in t.notifications if n.alarm is AlarmCode.MOTOR_STALL]
    assert [(n.event, n.at_ms) for n in repeats] == [
        (AlarmEvent.REPEATED, raised_ms + k * repeat_ms) for k in range(1, 5)
    ]
    assert all((n.priority, n.tone) == (AlarmPriority.CRITICAL, TonePattern.TWO_TONE_3S) for n in repeats)
