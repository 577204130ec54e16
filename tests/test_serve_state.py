"""``pumprig serve --pty --state FILE``: every mode through the protocol with the published
test keys, then a restart, a power cut, a reset and memory corruption; the file's refusals.

Every served pump is a subprocess on a real pty, driven through ``programmer.Programmer``; every test ends
its servers and closes its ports.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import serial
from click.testing import CliRunner

import hil.urlhandler
from firmware_model.config import PumpConfig
from firmware_model.device import DeviceConfig, nv_layout
from firmware_model.nvm import COPY_OVERHEAD, boot
from hil.cli import cli
from programmer.client import Programmer
from programmer.errors import PumpRefused
from programmer.session import SessionState
from protocol_spec import messages as m
from protocol_spec.enums import (
    AlarmSet,
    BolusKind,
    DrugId,
    ErrorCode,
    FaultKind,
    LogEventKind,
    ProgramSlot,
    RefillConfirmation,
    Role,
    TherapyMode,
)
from protocol_spec.security import TEST_KEY_SET
from tests import serving

"""Longest a server may take to print its URL (a loaded CI machine)."""
HOUR_MS = 3_600_000
STEP_NL = PumpConfig().step_volume_nl
CONFIRMED = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED
REFILL = m.Refill(0, 20_000_000, DrugId.BACLOFEN, 500, 195_000, CONFIRMED)
LAYOUT = nv_layout(PumpConfig(), DeviceConfig())

STOPPED = m.Program(TherapyMode.STOPPED, 0, 0, 0, 0, 0, ())
MINIMUM_RATE = m.Program(TherapyMode.MINIMUM_RATE, 0, 0, 0, 0, 0, ())
CONTINUOUS = m.Program(TherapyMode.CONTINUOUS, 500, 300_000, 0, 0, 0, ())
SINGLE_BOLUS = m.Program(TherapyMode.SINGLE_BOLUS, 500, 0, 50_000, HOUR_MS, 0, ())
FLEX = m.Program(
    TherapyMode.FLEX,
    500,
    0,
    0,
    0,
    1,
    (m.FlexStep(0, 0, 300_000), m.FlexStep(0, 8 * HOUR_MS, 200_000), m.FlexStep(0, 20 * HOUR_MS, 250_000)),
)
PATIENT_BOLUS = m.PatientBolusSettings(1, 25_000, 600_000, HOUR_MS, 4)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test closes what it opened (ports, pipes, state files)."""
    if not Path("/proc/self/fd").is_dir():
        yield
        return
    before = set(os.listdir("/proc/self/fd"))
    yield
    leaked = set(os.listdir("/proc/self/fd")) - before
    assert not leaked, f"file descriptors left open: {sorted(leaked)}"


def served(tmp_path: Path, *args: str) -> AbstractContextManager[tuple[subprocess.Popen[bytes], str]]:
    """``pumprig serve --pty ARGS`` (see tests.serving)."""
    return serving.served(tmp_path, "--pty", *args)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


@contextmanager
def session(url: str, role: Role) -> Iterator[Programmer]:
    """A session of ``role`` with the published test key, closed (best effort) at the end."""
    with Programmer.open(url, keys=TEST_KEY_SET, role=role) as prog:
        yield prog


def _commit(link: Programmer, stage: object) -> m.StageReply:
    staged: m.StageReply = link.request(stage)
    committed: m.CommitReply = link.request(m.Commit(staged.stage_token))
    assert committed.stage_token == staged.stage_token
    return staged


def _log(link: Programmer) -> list[m.LogEntry]:
    entries: list[m.LogEntry] = []
    first = 0
    while True:
        page: m.LogPage = link.request(m.ReadLog(first, m.MAX_LOG_PAGE))
        entries.extend(page.entries)
        if not page.entries or page.entries[-1].seq + 1 >= page.next_seq:
            return entries
        first = page.entries[-1].seq + 1


def _estimate_at_boot(link: Programmer) -> int:
    """The reservoir estimate the pump booted with (a TEST session): the estimate now plus the
    steps taken since the boot (the step ring starts empty at a boot), whatever time passed."""
    status: m.StatusReply = link.request(m.Status())
    steps: m.StepLogReply = link.request(m.ReadStepLog(0, 1))
    return status.reservoir_estimate_nl + (steps.steps_total - steps.oldest_step) * STEP_NL


def _check_mode(link: Programmer, program: m.Program, rate_nl_per_day: int, bolus: BolusKind) -> None:
    status: m.StatusReply = link.request(m.Status())
    assert (status.mode, status.rate_nl_per_day, status.bolus_active) == (program.mode, rate_nl_per_day, bolus)
    assert status.alarms == AlarmSet(0)
    assert link.request(m.ReadProgram(ProgramSlot.ACTIVE)) == program


def _program_every_mode(url: str) -> None:
    """A clinician refills and runs each basal mode, a priming bolus and the patient-bolus
    settings; the patient takes a bolus (which is still running at the end)."""
    with session(url, Role.CLINICIAN) as link:
        before: m.InterrogateReply = link.request(m.Interrogate())
        assert (before.reservoir_estimate_nl, before.concentration_ug_per_ml) == (0, 0)  # factory-new
        assert before.mode is TherapyMode.STOPPED
        refill: m.RefillReply = link.request(REFILL)
        assert refill.reservoir_estimate_nl == 20_000_000
        _commit(link, m.StageProgram(0, STOPPED))
        _check_mode(link, STOPPED, 0, BolusKind.NONE)
        _commit(link, m.StageProgram(0, MINIMUM_RATE))
        _check_mode(link, MINIMUM_RATE, 5_000, BolusKind.NONE)
        _commit(link, m.StageProgram(0, CONTINUOUS))
        _check_mode(link, CONTINUOUS, 600_000, BolusKind.NONE)  # 300 ug/day at 500 ug/mL
        _commit(link, m.StageProgram(0, SINGLE_BOLUS))
        _check_mode(link, SINGLE_BOLUS, 0, BolusKind.SINGLE)
        _commit(link, m.StageProgram(0, FLEX))  # ends the single bolus; day 0, 00:00 on the pump's clock
        _check_mode(link, FLEX, 600_000, BolusKind.NONE)
        _commit(link, m.StageBolus(BolusKind.PRIMING, 0, 1_000, 60_000))
        _check_mode(link, FLEX, 600_000, BolusKind.PRIMING)
        link.request(m.CancelBolus())
        _check_mode(link, FLEX, 600_000, BolusKind.NONE)
        _commit(link, m.StagePatientBolus(0, PATIENT_BOLUS))
        after: m.InterrogateReply = link.request(m.Interrogate())
        assert (after.concentration_ug_per_ml, after.patient_bolus, after.mode) == (
            500,
            PATIENT_BOLUS,
            TherapyMode.FLEX,
        )
    with session(url, Role.PATIENT) as link:
        grant: m.PatientBolusGrant = link.request(m.PatientBolusRequest())
        assert (grant.dose_ng, grant.duration_ms, grant.remaining_24h) == (25_000, 600_000, 3)
        status: m.StatusReply = link.request(m.Status())
        assert (status.mode, status.bolus_active) == (TherapyMode.FLEX, BolusKind.PATIENT)
        with pytest.raises(PumpRefused) as refused:
            link.request(m.PatientBolusRequest())  # the lockout
        assert refused.value.code in (ErrorCode.BOLUS_LOCKOUT, ErrorCode.BUSY)


# ---------------------------------------------------------------------- (a) and (b)


def test_every_mode_then_the_pump_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.bin"
    with served(tmp_path, "--state", str(state)) as (proc, url):
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert state.stat().st_size == LAYOUT.size
        _program_every_mode(url)
        with session(url, Role.TEST) as link:
            link.request(m.AdvanceTime(5 * 60_000))  # half the patient bolus: 100 steps, and the basal's
            link.request(m.HoldClock(1))  # nothing moves from here to the end of the process
            before: m.InterrogateReply = link.request(m.Interrogate())
            status: m.StatusReply = link.request(m.Status())
            log_before = _log(link)
        _stop(proc)
    assert before.boot_counter == 1
    assert status.bolus_active is BolusKind.PATIENT
    assert status.reservoir_estimate_nl <= 20_000_000 - 100 * STEP_NL
    assert "boot 1" in (tmp_path / "serve.stderr").read_text()

    with served(tmp_path, "--state", str(state)) as (proc, url), session(url, Role.TEST) as link:
        after: m.InterrogateReply = link.request(m.Interrogate())
        assert after.boot_counter == before.boot_counter + 1
        assert link.request(m.ReadProgram(ProgramSlot.ACTIVE)) == FLEX
        assert (after.mode, after.concentration_ug_per_ml, after.drug) == (TherapyMode.FLEX, 500, DrugId.BACLOFEN)
        assert (after.patient_bolus, after.program_crc, after.last_refill_ms) == (
            PATIENT_BOLUS,
            before.program_crc,
            before.last_refill_ms,
        )
        assert after.alarms == AlarmSet(0)
        assert after.uptime_ms >= before.uptime_ms  # the pump's clock, too
        booted_with = _estimate_at_boot(link)
        assert status.reservoir_estimate_nl - STEP_NL <= booted_with <= status.reservoir_estimate_nl
        assert after.bolus_active is BolusKind.NONE  # the patient bolus did not survive the restart...
        log_after = _log(link)
        assert log_after[: len(log_before)] == log_before
        new = log_after[len(log_before) :]
        kinds = [e.kind for e in new]
        assert LogEventKind.BOLUS_INTERRUPTED in kinds  # ...and says so
        resets = [e for e in new if e.kind is LogEventKind.RESET]
        assert [e.value_a for e in resets] == [2]
        _stop(proc)
    assert "boot 2" in (tmp_path / "serve.stderr").read_text()


# ---------------------------------------------------------------------- (c)


def _therapy(link: Programmer) -> tuple[object, ...]:
    i: m.InterrogateReply = link.request(m.Interrogate())
    program = link.request(m.ReadProgram(ProgramSlot.ACTIVE))
    return (program, i.mode, i.concentration_ug_per_ml, i.patient_bolus, i.alarms, i.last_refill_ms)


def _inject(url: str, fault: FaultKind, param: int = 0) -> tuple[int, int]:
    """Inject ``fault`` in a TEST session (clock held before) and check that the session ended
    with the reboot; returns the reservoir estimate and the boot counter before it."""
    with session(url, Role.TEST) as link:
        link.request(m.AdvanceTime(HOUR_MS))  # 100 steps of the flex program's first dose
        link.request(m.HoldClock(1))
        estimate = link.request(m.Status()).reservoir_estimate_nl
        boot_before = link.request(m.Interrogate()).boot_counter
        link.request(m.InjectFault(fault, param))  # acknowledged, then the pump reboots
        ended = link.session
        link.request(m.Status())  # refused with NO_SESSION: the programmer opens a new session for it
        assert ended.state is SessionState.LOST  # what NO_SESSION (and only that, here) does to it
        assert link.session is not ended
    return estimate, boot_before


def test_power_cut_reset_and_memory_corruption_reboot_the_served_pump(tmp_path: Path) -> None:
    state = tmp_path / "state.bin"
    header_bytes = COPY_OVERHEAD - 4  # magic, record id, seq, length; the CRC-32 closes the copy
    payload_bit = (LAYOUT.copy_offsets("state")[0] + header_bytes + 40) * 8 + 3  # in copy A's payload
    faults = ((FaultKind.POWER_CUT, 0), (FaultKind.RESET, 0), (FaultKind.MEMORY_CORRUPTION, payload_bit))
    with served(tmp_path, "--state", str(state)) as (proc, url):
        with session(url, Role.CLINICIAN) as link:
            link.request(REFILL)
            _commit(link, m.StageProgram(0, FLEX))
            _commit(link, m.StagePatientBolus(0, PATIENT_BOLUS))
            therapy = _therapy(link)
        for fault, param in faults:
            estimate, boot_before = _inject(url, fault, param)
            with session(url, Role.TEST) as link:  # a new session works
                assert link.request(m.Interrogate()).boot_counter == boot_before + 1
                assert _therapy(link) == therapy
                booted_with = _estimate_at_boot(link)
                assert estimate - STEP_NL <= booted_with <= estimate
                log = _log(link)
                assert any(e.kind is LogEventKind.FAULT_INJECTED and e.code == fault for e in log)
                repaired = [e for e in log if e.kind is LogEventKind.MEMORY_REPAIRED]
                assert len(repaired) == (1 if fault is FaultKind.MEMORY_CORRUPTION else 0)
                assert not link.request(m.Status()).alarms & AlarmSet.MEMORY_ERROR
        _stop(proc)
    store, report = boot(LAYOUT, state.read_bytes())  # the file mirrors every write, the repair too
    assert (report.repaired, report.failed) == ((), ())
    raw_boot = store.read("boot")
    assert raw_boot is not None
    assert int.from_bytes(raw_boot, "little") == 1 + len(faults)


# ---------------------------------------------------------------------- the file's edges


def test_state_file_refusals_and_a_preset_on_a_new_file(tmp_path: Path) -> None:
    runner = CliRunner()
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"\xff" * 100)
    refused = runner.invoke(cli, ["serve", "--pty", "--state", str(wrong)])
    assert refused.exit_code == 2
    assert f"holds 100 bytes, not the {LAYOUT.size}" in refused.output
    assert "Traceback" not in refused.output
    assert wrong.read_bytes() == b"\xff" * 100  # untouched
    nowhere = runner.invoke(cli, ["serve", "--pty", "--state", str(tmp_path / "no" / "such" / "dir")])
    assert nowhere.exit_code == 2
    assert "cannot create" in nowhere.output

    state = tmp_path / "low.bin"
    with served(tmp_path, "--state", str(state), "--preset", "low-reservoir") as (proc, url):
        busy = runner.invoke(cli, ["serve", "--pty", "--state", str(state)])  # the file is locked
        assert busy.exit_code == 2
        assert "in use" in busy.output
        with session(url, Role.TEST) as link:
            status: m.StatusReply = link.request(m.Status())
            assert status.alarms & AlarmSet.LOW_RESERVOIR
            assert status.reservoir_estimate_nl == 2_000_000
            assert link.request(m.Interrogate()).boot_counter == 1
        _stop(proc)
    assert "new low-reservoir pump" in (tmp_path / "serve.stderr").read_text()
    again = runner.invoke(cli, ["serve", "--pty", "--state", str(state), "--preset", "eri"])
    assert again.exit_code == 2
    assert "a new state file only" in again.output
    assert "--state FILE" in runner.invoke(cli, ["serve", "--help"]).output


def test_pump_url_state_option(tmp_path: Path) -> None:
    hil.urlhandler.register()
    state = tmp_path / "pump.state"
    url = f"pump://?virtual=1&state={state}"
    port = serial.serial_for_url(url, timeout=0.2)
    try:
        with pytest.raises(serial.SerialException, match="in use"):
            serial.serial_for_url(url)
        with Programmer(port, keys=TEST_KEY_SET) as link:  # the CLINICIAN role
            link.connect()
            link.request(REFILL)
            _commit(link, m.StageProgram(0, CONTINUOUS))
    finally:
        port.close()
    assert os.stat(state).st_size == LAYOUT.size
    port = serial.serial_for_url(url, timeout=0.2)
    try:
        with Programmer(port, keys=TEST_KEY_SET) as link:
            link.connect()
            reply: m.InterrogateReply = link.request(m.Interrogate())
            assert (reply.boot_counter, reply.mode, reply.concentration_ug_per_ml) == (2, TherapyMode.CONTINUOUS, 500)
    finally:
        port.close()
