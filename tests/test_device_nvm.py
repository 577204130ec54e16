"""The device's memory across resets, power cuts and corruption (SAFETY.md's targets).

A power cut at every numbered write point of a scenario recovers to the old or the new state
with the accounting off by at most one step (and only ever under-counted); corruption of one
copy is repaired, of both gives MEMORY_ERROR and the safe state; a retried command acts once
even across a reboot.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from firmware_model.config import PumpConfig
from firmware_model.device import Device, DeviceConfig
from firmware_model.nvm import PowerCutError, corrupt
from firmware_model.pump import Pump
from firmware_model.units import MS_PER_DAY, MS_PER_HOUR
from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG
from protocol_spec.channel import Channel, client_finish, client_hello
from protocol_spec.codec import Packet
from protocol_spec.enums import (
    AlarmCode,
    BolusKind,
    DrugId,
    ErrorCode,
    FaultKind,
    LogEventKind,
    MsgType,
    RefillConfirmation,
    Role,
    TherapyMode,
)
from protocol_spec.framing import Deframer
from protocol_spec.security import TEST_KEY_SET

CONFIG = PumpConfig()
STEP_GAP_MS = 40_000
"""Host time between the scenario's commands: steps run, and the session stays open."""
STEP_NL = CONFIG.step_volume_nl
CONFIRMED = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED


class Client:
    """A minimal clinician programmer over the device's three calls."""

    def __init__(self, device: Device, role: Role = Role.CLINICIAN, seed: int = 1) -> None:
        self.device = device
        self.rng = random.Random(seed)
        self.now_ms = device._host_ms
        plain = Channel(from_pump=False)
        role_key = TEST_KEY_SET.for_role(role)
        assert role_key is not None
        hello = client_hello(role_key, self.rng.randbytes(16))
        reply = self._exchange(plain, plain.request(hello).data)
        keys = client_finish(role_key, hello, reply.header, reply.message)
        assert keys is not None
        self.channel = Channel(from_pump=False, keys=keys)

    def _exchange(self, channel: Channel, data: bytes) -> Packet:
        self.device.receive_data(data, self.now_ms)
        for body in Deframer().feed(self.device.data_to_send()):
            assert isinstance(body, bytes)
            got = channel.accept(body)
            if isinstance(got, Packet) and got.header.msg_type != MsgType.ALARM_NOTIFY:
                return got
        raise AssertionError("no reply")

    def send(self, message: Any, command_id: int | None = None) -> Any:
        t = next(t for t, d in CATALOG.items() if d.request is type(message))
        cid = command_id if command_id is not None else (self.rng.getrandbits(63) + 1 if CATALOG[t].effectful else 0)
        return self._exchange(self.channel, self.channel.request(message, cid).data).message

    def commit(self, stage: Any) -> Any:
        staged = self.send(stage)
        assert isinstance(staged, m.StageReply), staged
        return self.send(m.Commit(staged.stage_token))


def _booted(image: bytes | None = None, pump: Pump | None = None, host_ms: int = 0) -> Device:
    device, _ = Device.boot(
        CONFIG,
        TEST_KEY_SET,
        config=DeviceConfig(test_role=True),
        image=image,
        plant=None if pump is None else pump.plant(),
        host_ms=host_ms,
        entropy=random.Random(7).randbytes,
    )
    return device


CONTINUOUS = m.Program(TherapyMode.CONTINUOUS, 500, 300_000, 0, 0, 0, ())
FLEX = m.Program(
    TherapyMode.FLEX, 500, 0, 0, 0, 1, (m.FlexStep(0, 0, 200_000), m.FlexStep(0, 12 * MS_PER_HOUR, 400_000))
)

Scenario = list[Callable[[Client], Any]]
SCENARIO: Scenario = [
    lambda c: c.send(m.Refill(0, 20_000_000, DrugId.BACLOFEN, 500, 195_000, CONFIRMED)),
    lambda c: c.commit(m.StageProgram(0, CONTINUOUS)),
    lambda c: c.send(m.ConfigureAlarms(3_000_000, 600_000, 3_600_000)),
    lambda c: c.commit(m.StagePatientBolus(0, m.PatientBolusSettings(1, 25_000, 600_000, 3_600_000, 4))),
    lambda c: c.commit(m.StageBolus(BolusKind.PRIMING, 0, 100_000, 600_000)),
    lambda c: c.commit(m.StageProgram(1, FLEX)),  # +33 % in 24 h: a soft limit, overridden
    lambda c: c.send(m.SetClock(1_795_000_000_000)),
]


@dataclass(frozen=True)
class Firmware:
    """What the firmware believes, to compare across a reboot."""

    program: m.Program
    concentration: int
    threshold_nl: int
    patient: m.PatientBolusSettings
    outcomes: frozenset[int]
    estimate_nl: int
    steps: int


def _firmware(device: Device) -> Firmware:
    p = device.pump
    return Firmware(
        p.program,
        p.concentration_ug_per_ml,
        p.low_reservoir_threshold_nl,
        p.patient_bolus,
        frozenset(device._outcomes),
        p.acc.estimate_nl,
        p.acc.steps_total,
    )


def _same_therapy(a: Firmware, b: Firmware) -> bool:
    return (a.program, a.concentration, a.threshold_nl, a.patient) == (
        b.program,
        b.concentration,
        b.threshold_nl,
        b.patient,
    )


def _write_points_of_scenario() -> int:
    device = _booted()
    client = Client(device)
    for command in SCENARIO:
        client.now_ms += STEP_GAP_MS
        device.advance(client.now_ms)
        command(client)
    assert device.store is not None
    return device.store.write_points


def test_a_power_cut_at_every_write_point_recovers_the_old_or_the_new_state() -> None:
    """Each operation (time passing, or a command) writes; cut power at each write of the
    scenario: the rebooted firmware holds the state from before that operation or after it,
    and its reservoir estimate is at most one step below what the firmware believed then,
    never above (a reset only under-counts)."""
    total = _write_points_of_scenario()
    assert total >= 2 * len(SCENARIO)
    factory = _booted().store
    assert factory is not None
    first = factory.write_points  # the factory boot's own writes
    for cut in range(first, total):
        device = _booted()
        assert device.store is not None
        device.store.cut_power_at(cut)
        client = Client(device)
        old = _firmware(device)
        try:
            for command in SCENARIO:
                client.now_ms += STEP_GAP_MS
                old = _firmware(device)
                device.advance(client.now_ms)
                old = _firmware(device)
                command(client)
        except PowerCutError:
            pass
        else:
            raise AssertionError(f"write point {cut} never came")
        new = _firmware(device)  # the operation cut short had been applied in memory
        got = _firmware(_booted(device.store.image, device.pump, client.now_ms))
        matches = [s for s in (old, new) if _same_therapy(got, s)]
        assert matches, f"cut {cut}: neither the old nor the new therapy"
        assert old.outcomes <= got.outcomes <= new.outcomes, f"cut {cut}"
        assert any(s.estimate_nl - STEP_NL <= got.estimate_nl <= s.estimate_nl for s in matches), f"cut {cut}"


def test_a_restart_resumes_the_same_therapy_and_accounting() -> None:
    device = _booted()
    client = Client(device)
    client.send(m.Refill(0, 20_000_000, DrugId.BACLOFEN, 500, 195_000, CONFIRMED))
    client.commit(m.StageProgram(0, CONTINUOUS))
    tester = Client(device, Role.TEST, seed=4)
    tester.send(m.AdvanceTime(3 * MS_PER_DAY))
    before = device.pump
    rebooted = _booted(device.store.image if device.store else None, before, client.now_ms)
    after = rebooted.pump
    assert after.program == before.program
    assert after.mode is TherapyMode.CONTINUOUS
    assert after.now_ms == before.now_ms
    assert before.acc.steps_total <= after.acc.steps_total <= before.acc.steps_total + 1
    assert after.acc.true_reservoir_nl == before.acc.true_reservoir_nl  # the plant did not reset
    assert rebooted.boot_counter == device.boot_counter + 1
    assert after.log.next_seq > before.log.next_seq
    assert after.log.entries()[-1].kind is LogEventKind.RESET
    # therapy continues at the same rate after the reboot
    steps = after.acc.steps_total
    rebooted.advance(client.now_ms + MS_PER_DAY)
    assert after.acc.steps_total - steps in (2399, 2400)  # 600,000 nL/day in 250 nL steps


def test_a_retried_command_acts_once_even_across_a_reboot() -> None:
    device = _booted()
    client = Client(device)
    refill = m.Refill(0, 20_000_000, DrugId.BACLOFEN, 500, 195_000, CONFIRMED)
    first = client.send(refill, command_id=0xABCDEF)
    filled = device.pump.acc.filled_total_nl
    rebooted = _booted(device.store.image if device.store else None, device.pump, client.now_ms)
    again = Client(rebooted, seed=2)
    assert again.send(refill, command_id=0xABCDEF) == first
    assert rebooted.pump.acc.filled_total_nl == filled
    other = again.send(m.Refill(0, 10_000_000, DrugId.BACLOFEN, 500, 195_000, CONFIRMED), command_id=0xABCDEF)
    assert isinstance(other, m.ErrorReply)
    assert other.code is ErrorCode.COMMAND_ID_REUSED


def test_one_bad_copy_is_repaired_and_logged() -> None:
    device = _booted()
    client = Client(device)
    client.send(m.Refill(0, 20_000_000, DrugId.BACLOFEN, 500, 195_000, CONFIRMED))
    client.commit(m.StageProgram(0, CONTINUOUS))
    assert device.store is not None
    a, b = device.store.layout.copy_offsets("state")
    rng = random.Random(5)
    for offset in (a, b):
        image = bytearray(device.store.image)
        corrupt(image, (offset + rng.randrange(16, 400)) * 8 + rng.randrange(8))
        rebooted, report = Device.boot(CONFIG, TEST_KEY_SET, image=bytes(image), plant=device.pump.plant())
        assert "state" in report.repaired or report.failed == ()
        assert rebooted.pump.program == CONTINUOUS
        assert not rebooted.pump.alarms.is_active(AlarmCode.MEMORY_ERROR)


def test_both_copies_bad_gives_memory_error_and_the_safe_state_until_reprogrammed() -> None:
    device = _booted()
    client = Client(device)
    client.send(m.Refill(0, 20_000_000, DrugId.BACLOFEN, 500, 195_000, CONFIRMED))
    client.commit(m.StageProgram(0, CONTINUOUS))
    assert device.store is not None
    image = bytearray(device.store.image)
    for offset in device.store.layout.copy_offsets("state"):
        corrupt(image, (offset + 30) * 8)
    rebooted, report = Device.boot(CONFIG, TEST_KEY_SET, image=bytes(image), plant=device.pump.plant())
    assert report.failed == ("state",)
    pump = rebooted.pump
    assert pump.alarms.is_active(AlarmCode.MEMORY_ERROR)
    assert pump.mode is TherapyMode.MINIMUM_RATE  # needs no concentration
    assert pump.program_rate_nl_per_day() == pump.limits.min_rate_nl_per_day
    # no delivery from corrupt parameters: the clinician refills and reprograms; the alarm clears
    again = Client(rebooted, seed=3)
    again.send(m.Refill(0, 20_000_000, DrugId.BACLOFEN, 500, 195_000, CONFIRMED))
    assert isinstance(again.commit(m.StageProgram(0, CONTINUOUS)), m.CommitReply)
    assert not pump.alarms.is_active(AlarmCode.MEMORY_ERROR)


@pytest.mark.parametrize("bit", [0, 8 * 100 + 3, 8 * 5000, 8 * 40_000 + 7])
def test_the_memory_corruption_fault_is_detected_through_the_protocol(bit: int) -> None:
    device = _booted()
    client = Client(device)
    client.send(m.Refill(0, 20_000_000, DrugId.BACLOFEN, 500, 195_000, CONFIRMED))
    client.commit(m.StageProgram(0, CONTINUOUS))
    tester = Client(device, Role.TEST, seed=9)
    assert isinstance(tester.send(m.InjectFault(FaultKind.MEMORY_CORRUPTION, bit)), m.Ack)
    kinds = [e.kind for e in device.pump.log.entries()]
    assert LogEventKind.RESET in kinds[-3:]
    # either the flip hit a copy (repaired, therapy unchanged) or padding / the boot record
    assert device.pump.program == CONTINUOUS
    assert not device.pump.alarms.is_active(AlarmCode.MEMORY_ERROR)
