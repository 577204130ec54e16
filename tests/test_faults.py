"""The fault-injecting link: reproducible from its seed, exactly-once under it, paced like a line.

Everything runs on a fake clock (integer nanoseconds) with a fake sleep that only moves it: no
test waits. The links wrap real registered ports: pyserial's ``loop://`` and the rig's ``pump://``
(``virtual=1``: the pump's time stands still, so the programmer's fake time is the only time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import serial

import hil.urlhandler
from firmware_model.device import Device
from hil.faults import Direction, Fault, FaultRates, FaultRecord, FaultyLink
from hil.urlhandler.protocol_pump import Serial as PumpSerial
from programmer import Programmer, ProgrammerError, PumpRefused, ReplyLost
from protocol_spec import messages as m
from protocol_spec.enums import DrugId, LogEventKind, RefillConfirmation, Role, TherapyMode
from protocol_spec.framing import Deframer, FramingError, encode_frame
from protocol_spec.security import TEST_KEY_SET

CONFIRMED = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED
PATIENT_SETTINGS = m.PatientBolusSettings(enabled=1, dose_ng=250, duration_ms=2000, lockout_ms=0, max_per_24h=255)
ADDED_NL = 20_000_000
PROGRAM = m.Program(TherapyMode.CONTINUOUS, 500, 350_000, 0, 0, 0, ())


class FakeTime:
    """A monotonic clock that only ``sleep`` moves."""

    def __init__(self) -> None:
        self.now_ns = 0
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.now_ns / 1e9

    def ms(self) -> int:
        return self.now_ns // 1_000_000

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "a sleep of nothing is a busy loop"
        self.sleeps += 1
        self.now_ns += max(1, round(seconds * 1e9))


@pytest.fixture(autouse=True, scope="module")
def pump_url_handler() -> None:
    hil.urlhandler.register()


@contextmanager
def _opened(url: str) -> Iterator[Any]:
    port = serial.serial_for_url(url, timeout=0)
    try:
        yield port
    finally:
        port.close()
    assert not port.is_open


def _bodies(n: int) -> list[bytes]:
    return [bytes([i % 7, 0, i, 0xFF]) * (1 + i % 5) for i in range(n)]


def _frames(n: int) -> list[bytes]:
    return [encode_frame(body) for body in _bodies(n)]


def _loop_run(seed: int, *, split: bool = False) -> tuple[list[FaultRecord], list[bytes | FramingError]]:
    """Send 60 frames through ``loop://`` (both directions of the link) and read back what arrives."""
    clock = FakeTime()
    with _opened("loop://") as port:
        link = FaultyLink(
            port,
            seed=seed,
            drop=0.2,
            duplicate=0.2,
            corrupt=0.2,
            delay_ms=5,
            split=split,
            clock=clock.monotonic,
            sleep=clock.sleep,
        )
        link.timeout = 0
        received: list[bytes | FramingError] = []
        deframer = Deframer()
        for frame in _frames(60):
            link.write(frame)
            clock.sleep(0.01)  # past the delays, both ways
            while link.in_waiting:
                chunk = link.read(link.in_waiting)
                if split:
                    assert 1 <= len(chunk) <= 8
                received += deframer.feed(chunk)
        link.close()
    return link.log, received


# ---------------------------------------------------------------------- (1) reproducible


def test_the_same_seed_gives_the_same_faults_and_another_seed_others() -> None:
    log, received = _loop_run(11)
    assert log == _loop_run(11)[0]
    assert log == _loop_run(11, split=True)[0], "chunking reads changes no frame's fate"
    assert log != _loop_run(12)[0]
    faults = {(r.direction, r.fault) for r in log}
    assert faults == {(d, f) for d in Direction for f in (Fault.DROP, Fault.DUPLICATE, Fault.CORRUPT)}
    # what arrives is what the log says: every corrupted copy is caught by the CRC or COBS
    survived = 60
    for direction in Direction:
        records = [r for r in log if r.direction is direction]
        survived -= sum(r.fault is Fault.DROP for r in records)
    good = [b for b in received if isinstance(b, bytes)]
    bad = [b for b in received if isinstance(b, FramingError)]
    assert bad, "corruption was seen"
    assert len(good) + len(bad) >= survived  # a flipped bit may make a 0x00: one frame turns into two bad ones
    assert set(good) <= set(_bodies(60)), "a corrupted frame never passes as a good one"


def test_rates_per_direction_and_local_misuse() -> None:
    with _opened("loop://") as port:
        link = FaultyLink(port, seed=1, to_pump=FaultRates(drop=1.0), from_pump=FaultRates())
        link.timeout = 0
        link.write(b"".join(_frames(3)))
        assert link.read(100) == b""
        assert link.frames == {Direction.TO_PUMP: 3, Direction.FROM_PUMP: 0}
        assert link.counts() == {(Direction.TO_PUMP, Fault.DROP): 3}
        link.close()
    with pytest.raises(ValueError, match="probability"):
        FaultRates(corrupt=1.5)
    with pytest.raises(ValueError, match="delay_ms"):
        FaultRates(delay_ms=-1)


# ---------------------------------------------------------------------- (2) exactly once


def _count(device: Device, kind: LogEventKind) -> int:
    return len(device.pump.log.entries(kind))


def _connect(prog: Programmer, attempts: int = 6) -> bool:
    """Connect through a faulty link (IDENTIFY and the handshake have no effect: trying again is safe)."""
    for _ in range(attempts):
        try:
            prog.connect()
        except ProgrammerError:
            continue
        return True
    return False


def _once(action: Callable[[], object], effect: Callable[[], int], reply_type: type) -> tuple[str, bool]:
    """Run one effectful command: it acts at most once. Returns the outcome's name and whether the
    programmer and the pump agree on it (a reply: it acted; an authenticated refusal: it did not)."""
    before = effect()
    try:
        result: object = action()
    except ProgrammerError as exc:
        result = exc
    acted = effect() - before
    assert acted in (0, 1), f"{acted} effects of one command: {result!r}"
    if isinstance(result, (reply_type, ReplyLost)):
        agree = acted == 1
    elif isinstance(result, PumpRefused) and result.authenticated:
        agree = acted == 0
    else:
        assert isinstance(result, ProgrammerError), result  # NoReply, UncertainOutcome, LinkError: at most once
        agree = True
    return (type(result).__name__ if agree else f"{type(result).__name__} DISAGREES: {result}"), agree


def _refill(prog: Programmer) -> m.RefillReply:
    return prog.refill(
        aspirated_volume_nl=0,
        added_volume_nl=ADDED_NL,
        drug=DrugId.BACLOFEN,
        concentration_ug_per_ml=500,
        catheter_volume_nl=195_000,
        confirmations=CONFIRMED,
    )


def _stage_commit(prog: Programmer) -> m.CommitReply:
    staged = prog.stage_program(PROGRAM)
    return prog.commit(staged.stage_token)


def _scenario(seed: int) -> list[tuple[str, bool]]:
    clock = FakeTime()
    with _opened("pump://?virtual=1") as port:
        assert isinstance(port, PumpSerial)
        device = port.device
        assert device is not None
        setup = Programmer(port, keys=TEST_KEY_SET, role=Role.CLINICIAN, clock=clock.ms, sleep=clock.sleep)
        setup.connect()
        setup.commit(setup.stage_patient_bolus(PATIENT_SETTINGS).stage_token)
        setup.close()

        rates = FaultRates(drop=0.2, duplicate=0.2, corrupt=0.2, delay_ms=3)
        link = FaultyLink(
            port, seed=seed, to_pump=rates, from_pump=rates, baud=115_200, clock=clock.monotonic, sleep=clock.sleep
        )
        link.timeout = 0.02
        outcomes: list[tuple[str, bool]] = []
        clinician = Programmer(link, keys=TEST_KEY_SET, role=Role.CLINICIAN, clock=clock.ms, sleep=clock.sleep)
        if _connect(clinician):
            pump = device.pump
            outcomes.append(
                _once(lambda: _refill(clinician), lambda: pump.acc.filled_total_nl // ADDED_NL, m.RefillReply)
            )
            outcomes.append(
                _once(
                    lambda: _stage_commit(clinician),
                    lambda: _count(device, LogEventKind.PROGRAM_COMMITTED),
                    m.CommitReply,
                )
            )
            if outcomes[-1][0] == "CommitReply":
                assert device.pump.program == PROGRAM
            clinician.close()
        patient = Programmer(link, keys=TEST_KEY_SET, role=Role.PATIENT, clock=clock.ms, sleep=clock.sleep)
        if _connect(patient):
            outcomes.append(
                _once(
                    patient.patient_bolus_request,
                    lambda: _count(device, LogEventKind.BOLUS_STARTED),
                    m.PatientBolusGrant,
                )
            )
            patient.close()
        assert link.log, "faults were done"
        link.close()
    return outcomes


SEEDS = range(8)


@pytest.mark.parametrize("seed", SEEDS)
def test_effects_happen_at_most_once_under_drops_duplicates_and_corruption(seed: int) -> None:
    outcomes = _scenario(seed)
    names = [name for name, _ in outcomes]
    assert {"RefillReply", "CommitReply", "PatientBolusGrant"} & set(names), names
    assert all(agree for _, agree in outcomes), names


def test_programmer_and_pump_agree_afterwards() -> None:
    """A duplicated request whose first copy ran and whose reply was lost gets its second copy
    refused REPLAYED_COUNTER: the programmer must resolve that by command id, not report that
    nothing was done. Across every seed, what it reports is what the pump did."""
    disagreements = [name for seed in SEEDS for name, agree in _scenario(seed) if not agree]
    assert not disagreements


# ---------------------------------------------------------------------- (3) a paced line


def test_baud_paces_writes_and_reads_like_an_8n1_line() -> None:
    clock = FakeTime()
    data = b"".join(_frames(40))
    n = len(data)
    line_s = n * 10 / 115_200
    with _opened("loop://") as port:
        link = FaultyLink(port, seed=0, baud=115_200, clock=clock.monotonic, sleep=clock.sleep)
        link.timeout = 0
        assert link.write(data) == n
        assert clock.monotonic() == pytest.approx(line_s, abs=1e-8)
        assert link.in_waiting == 0, "the echo has not crossed the line yet"
        clock.sleep(line_s / 2)
        assert link.in_waiting == pytest.approx(n / 2, abs=2)
        link.timeout = 10.0
        sleeps = clock.sleeps
        assert link.read(n) == data
        assert clock.monotonic() == pytest.approx(2 * line_s, abs=1e-6)
        assert clock.sleeps - sleeps == 1, "one sleep, until the last byte is due: no busy loop"
        link.close()


def test_a_read_with_nothing_coming_waits_its_timeout_on_the_injected_clock() -> None:
    clock = FakeTime()
    with _opened("pump://?virtual=1") as port:
        link = FaultyLink(port, seed=0, clock=clock.monotonic, sleep=clock.sleep)
        link.timeout = 0.5
        assert link.read(1) == b""
        assert clock.monotonic() == pytest.approx(0.5, abs=1e-6)
        assert clock.sleeps == 25, "in polls of 20 ms"
        link.close()
