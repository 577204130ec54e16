"""Battery life: ERI at least 90 days of delivery before end of service; EOS stops delivery.

Destructive: the battery is drained to end of service, after which the target cannot be reset to
the known state until it is restarted. The pump's time is advanced in chunks a reservoir lasts
(refilled after each), so that delivery never stops for want of drug: a few dozen advances take the
virtual pump through its battery life in well under a second in-process and over a pty.
"""

from __future__ import annotations

import pytest

from hil.conformance import DeviceUnderTest
from hil.conformance.dut import SUITE_CONCENTRATION_UG_PER_ML
from programmer.client import Programmer
from protocol_spec.enums import AlarmCode, AlarmSet, BatteryState, LogEventKind, RefillConfirmation

DAY_MS = 86_400_000
MAX_CHUNKS = 200
"""At most this many chunks (about 50 years at the suite's rate) before giving up."""
CONFIRMED = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED


def refill_full(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    c.refill(
        aspirated_volume_nl=c.status().reservoir_estimate_nl,
        added_volume_nl=pump.baseline.reservoir_capacity_nl,
        drug=pump.baseline.limits.drug,
        concentration_ug_per_ml=SUITE_CONCENTRATION_UG_PER_ML,
        catheter_volume_nl=pump.baseline.catheter_volume_nl,
        confirmations=CONFIRMED,
    )


def raised_at(prog: Programmer, seq: int, code: AlarmCode) -> list[int]:
    return [e.at_ms for e in prog.read_all_log(seq) if e.kind is LogEventKind.ALARM_RAISED and e.code == code]


@pytest.mark.requirement("ALM-BAT-001", "ALM-BAT-002")
@pytest.mark.requires("test_role", "virtual_time")
@pytest.mark.destructive
def test_eri_at_least_ninety_days_before_end_of_service(pump: DeviceUnderTest) -> None:
    c = pump.clinician
    rate = c.status().rate_nl_per_day
    assert rate > 0
    # a chunk delivers 90 % of a reservoir: delivery never stops for want of drug
    chunk_ms = pump.baseline.reservoir_capacity_nl * 9 // 10 * DAY_MS // rate
    seq = c.read_log(0, 1).next_seq

    status = c.status()
    for _ in range(MAX_CHUNKS):
        if status.battery_state is not BatteryState.OK:
            break
        refill_full(pump)
        pump.advance(chunk_ms)
        status = c.status()
        assert AlarmSet.EMPTY_RESERVOIR not in AlarmSet(status.alarms)
    else:
        pytest.fail(f"no ERI after {MAX_CHUNKS * chunk_ms // DAY_MS} days")
    assert status.battery_state is BatteryState.ERI, "end of service came without an ERI first"
    assert AlarmSet.ERI in AlarmSet(status.alarms)
    eri_at_ms = c.interrogate().eri_at_ms
    assert 0 < eri_at_ms <= status.uptime_ms

    assert raised_at(c, seq, AlarmCode.ERI) == [eri_at_ms]
    since = status
    for _ in range(MAX_CHUNKS):
        refill_full(pump)
        pump.advance(chunk_ms)
        status = c.status()
        if status.battery_state is BatteryState.EOS:
            break
        assert status.battery_state is BatteryState.ERI
        assert AlarmSet.EMPTY_RESERVOIR not in AlarmSet(status.alarms)
    else:
        pytest.fail(f"no end of service {MAX_CHUNKS * chunk_ms // DAY_MS} days after ERI")

    eos = raised_at(c, seq, AlarmCode.EOS)
    assert len(eos) == 1
    days_left = (eos[0] - eri_at_ms) / DAY_MS
    assert eos[0] - eri_at_ms >= 90 * DAY_MS, f"ERI only {days_left:.1f} days before end of service"
    # and the pump delivered at its rate until then
    ideal_nl = rate * (eos[0] - since.uptime_ms) // DAY_MS
    assert status.delivered_nl - since.delivered_nl >= ideal_nl - pump.baseline.step_volume_nl

    assert AlarmSet.EOS in AlarmSet(status.alarms)
    stopped = status.delivered_nl
    pump.advance(DAY_MS)
    after = c.status()
    assert after.delivered_nl == stopped, "delivery went on after end of service"
    assert after.battery_state is BatteryState.EOS
    assert AlarmSet.EOS in AlarmSet(after.alarms)
