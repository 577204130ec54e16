"""The conformance suite's machinery: requirements and targets as data, traceability, the
pytest plugin's registration, and `pumprig conform` end to end on the virtual pump (in-process
and on a real pty), with its JUnit file, HTML report and exit status."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import serial

from hil.conformance.dut import SUITE_DOSE_NG_PER_DAY, DeviceUnderTest, continuous
from hil.conformance.requirements import PROFILES, RequirementError, load_requirements
from hil.conformance.runner import Selection, collect_suite, group_by_requirement, pytest_args
from hil.conformance.sharedport import SharedPort
from hil.conformance.targets import Target, TargetError, load_targets, target_for_url
from protocol_spec import messages as m
from protocol_spec.codec import Header, encode_header
from protocol_spec.enums import (
    PROTOCOL_VERSION,
    BolusKind,
    FaultKind,
    Feature,
    FrameFlags,
    MsgType,
    RefillConfirmation,
    TherapyMode,
)
from protocol_spec.framing import encode_frame

from .serving import pumprig_command, served, stop_cleanly
from .virtual_target import connected

CONFORM_TIMEOUT_S = 600


def _toml(body: str) -> list[tuple[str, str]]:
    return [("t.toml", 'area = "Test"\n' + body)]


def _req(**fields: str) -> str:
    entry = {"id": "PRT-FRM-901", "text": "x", "source": "SPEC.md#framing", "profile": "core", **fields}
    return "[[requirement]]\n" + "".join(f'{k} = "{v}"\n' for k, v in entry.items())


def test_shipped_requirements_load_with_unique_ids_in_every_profile() -> None:
    reqs = load_requirements()
    assert len(reqs) >= 60
    assert {r.profile for r in reqs.values()} == set(PROFILES)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (_req(id="FRM-001"), "AREA-GRP-NNN"),
        (_req(profile="gold"), "profile is one of"),
        (_req(source="SPEC.md#no-such-section"), "SPEC.md has no section"),
        (_req(source="a blog"), "source is"),
        (_req(text=""), "non-empty"),
        (_req() + _req(), "defined twice"),
        ("[[requirement]]\nid = 'PRT-FRM-901'\n", "needs exactly"),
    ],
)
def test_a_malformed_requirement_is_refused_with_its_reason(entry: str, message: str) -> None:
    with pytest.raises(RequirementError, match=message):
        load_requirements(_toml(entry))


def test_every_requirement_has_a_test_and_every_test_a_requirement() -> None:
    """The traceability gate: the build fails if a requirement has no conformance test."""
    tests = collect_suite()
    known = load_requirements()
    untraced = sorted(name for name, reqs in tests.items() if not reqs)
    assert not untraced, f"suite tests that name no requirement: {untraced}"
    unknown = sorted({r for reqs in tests.values() for r in reqs} - known.keys())
    assert not unknown, f"tests name requirements that do not exist: {unknown}"
    uncovered = sorted(known.keys() - group_by_requirement(tests).keys())
    assert not uncovered, f"requirements without a conformance test: {uncovered}"


def test_shipped_targets_load_and_name_features() -> None:
    targets = load_targets()
    assert targets["virtual"].url == "pump://"
    assert targets["board"].features == Feature.TEST_ROLE | Feature.VIRTUAL_TIME | Feature.FAULT_INJECTION


def test_a_target_file_with_an_unknown_feature_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[target.x]\nurl = "pump://"\nfeatures = ["teleport"]\n')
    with pytest.raises(TargetError, match="unknown feature 'teleport'"):
        load_targets(path)


def test_a_target_file_sets_the_dtr_and_rts_lines_and_the_run_passes_them_on(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[target.uno]\nurl = "/dev/ttyACM0"\ndtr = false\n\n[target.bad]\nurl = "pump://"\nrts = "low"\n')
    with pytest.raises(TargetError, match="rts is true or false"):
        load_targets(path)
    path.write_text('[target.uno]\nurl = "/dev/ttyACM0"\ndtr = false\n')
    uno = load_targets(path)["uno"]
    assert (uno.dtr, uno.rts) == (False, None)
    args = pytest_args(Selection(urls=("/dev/ttyUSB0",), dtr=False, rts=True), profile="core", seed=1)
    assert args[args.index("--pump-dtr") + 1] == "off"
    assert args[args.index("--pump-rts") + 1] == "on"
    assert "--pump-dtr" not in pytest_args(Selection(urls=("/dev/ttyUSB0",)), profile="core", seed=1)


def test_a_served_pump_is_tested_with_dtr_and_rts_held_low(tmp_path: Path) -> None:
    """A board that resets on a DTR or RTS edge is opened with both lines held low (a pty takes
    the same modem-line calls a USB serial port does)."""
    with served(tmp_path, "--pty") as (server, url):
        dut = DeviceUnderTest.connect(target_for_url(url, dtr=False, rts=False))
        try:
            port = dut._shared.port
            assert isinstance(port, serial.Serial)
            assert (port.dtr, port.rts) == (False, False)
            assert dut.clinician.status().rate_nl_per_day >= 0
        finally:
            dut.close()
        stop_cleanly(server, tmp_path)


def test_expected_failures_match_by_test_name_or_requirement() -> None:
    t = Target("b", "/dev/ttyACM0", expected_failures={"test_x.py::test_y": "bug 1", "ALM-LRS-001": "bug 2"})
    assert t.expected_failure("test_x.py::test_y", ()) == "expected to fail on target b: bug 1"
    assert t.expected_failure("test_z.py::test_w", ("ALM-LRS-001",)) == "expected to fail on target b: bug 2"
    assert t.expected_failure("test_z.py::test_w", ("PRT-FRM-001",)) is None


def test_the_pytest_plugin_is_registered_as_pumprig() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("pumprig") == "hil.conformance.plugin"


def _conform(*args: str, timeout: float = CONFORM_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pumprig_command(), "conform", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _check_full_run(proc: subprocess.CompletedProcess[str], junit: Path, report: Path) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["ok"] is True
    counts = result["counts"]
    assert counts["failed"] == counts["error"] == counts["xpassed"] == 0
    assert counts["passed"] >= 100
    # few skips on a target with every feature: each is listed with its reason
    skipped = [r for r in result["results"] if r["outcome"] == "skipped"]
    assert len(skipped) <= 3, [(r["name"], r["message"]) for r in skipped]
    status = result["requirement_status"]
    assert set(status) == set(load_requirements()), "the full profile covers every requirement"
    assert all(s == "passed" for s in status.values()), {k: v for k, v in status.items() if v != "passed"}
    cases = ET.parse(junit).getroot().iter("testcase")
    traced = [c for c in cases if any(p.get("name") == "requirements" for p in c.iter("property"))]
    assert len(traced) == counts["passed"] + counts["skipped"]
    html = (report / "report.html").read_text()
    assert f"hypothesis seed</th><td><code>{result['seed']}</code>" in html
    assert "PRT-IDN-001" in html
    assert "protocol_version" in html
    assert "<svg" in html, "the virtual pump has virtual time: the report has delivery plots"
    return result


def test_conform_passes_the_full_profile_on_the_in_process_pump(tmp_path: Path) -> None:
    junit, report = tmp_path / "results.xml", tmp_path / "report"
    proc = _conform("--url", "pump://", "--profile", "full", "--json", "--junit", str(junit), "--report", str(report))
    _check_full_run(proc, junit, report)


def test_conform_passes_the_full_profile_on_a_served_pty(tmp_path: Path) -> None:
    junit, report = tmp_path / "results.xml", tmp_path / "report"
    with served(tmp_path, "--pty") as (server, url):
        proc = _conform("--url", url, "--profile", "full", "--json", "--junit", str(junit), "--report", str(report))
        result = _check_full_run(proc, junit, report)
        assert result["targets"][0]["url"] == url
        stop_cleanly(server, tmp_path)


def test_without_the_test_role_tests_that_need_it_skip_with_the_reason(tmp_path: Path) -> None:
    proc = _conform("--url", "pump://?test_role=0", "--profile", "core", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    skipped = [r for r in result["results"] if r["outcome"] == "skipped"]
    assert skipped
    assert all("lacks test_role" in r["message"] for r in skipped), [r["message"] for r in skipped]
    assert result["counts"]["passed"] > 0


def test_an_expected_failure_that_passes_fails_the_run(tmp_path: Path) -> None:
    """Expected failures are reported, never silent: one that passes is an unexpected pass."""
    targets = tmp_path / "targets.toml"
    targets.write_text(
        '[target.v]\nurl = "pump://"\n[target.v.expected_failures]\n'
        '"test_identify.py::test_identify_answers_without_a_session" = "pretend bug"\n'
    )
    proc = _conform("--target", "v", "--targets", str(targets), "-k", "test_identify", "--json")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    outcomes = {r["name"]: (r["outcome"], r["message"]) for r in result["results"]}
    assert outcomes["test_identify.py::test_identify_answers_without_a_session"] == (
        "xpassed",
        "expected to fail on target v: pretend bug",
    )


def test_a_target_that_lists_features_it_lacks_is_refused_before_the_run(tmp_path: Path) -> None:
    targets = tmp_path / "targets.toml"
    targets.write_text('[target.v]\nurl = "pump://?test_role=0"\nfeatures = ["test_role"]\n')
    proc = _conform("--target", "v", "--targets", str(targets))
    assert proc.returncode == 3
    assert "does not announce: test_role" in proc.stderr


def test_an_unreachable_target_is_one_clear_error(tmp_path: Path) -> None:
    proc = _conform("--url", str(tmp_path / "no-such-port"))
    assert proc.returncode == 3
    assert "cannot test" in proc.stderr


def test_list_shows_every_requirement_with_its_tests() -> None:
    proc = _conform("--list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["id"] for r in rows} == set(load_requirements())
    assert all(r["tests"] for r in rows)


@pytest.fixture
def dut() -> Iterator[DeviceUnderTest]:
    with connected() as d:
        yield d


def _mess_up(d: DeviceUnderTest) -> None:
    """Leave every kind of state a test can leave: another concentration, a stall, a staged
    change, a running SINGLE_BOLUS, other limits and alarm settings."""
    c = d.clinician
    c.refill(
        aspirated_volume_nl=0,
        added_volume_nl=1_000_000,
        drug=d.baseline.limits.drug,
        concentration_ug_per_ml=2000,
        catheter_volume_nl=d.baseline.catheter_volume_nl,
        confirmations=RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED,
    )
    d.program(m.Program(TherapyMode.SINGLE_BOLUS, 2000, 0, 50_000, 3_600_000, 0, ()))
    d.advance(60_000)
    c.configure_alarms(low_reservoir_threshold_nl=900_000, critical_repeat_ms=1000, non_critical_repeat_ms=1000)
    d.test.inject_fault(FaultKind.MOTOR_STALL)
    c.stage_program(m.Program(TherapyMode.STOPPED, 0, 0, 0, 0, 0, ()))


def test_reset_reaches_the_known_state_from_any_mess(dut: DeviceUnderTest) -> None:
    _mess_up(dut)
    assert dut.clinician.status().alarms != 0
    dut.reset()
    s = dut.clinician.status()
    assert (s.mode, s.bolus_active, s.staged, s.alarms) == (TherapyMode.CONTINUOUS, BolusKind.NONE, 0, 0)
    assert s.reservoir_estimate_nl == dut.baseline.reservoir_capacity_nl
    assert dut.clinician.read_program() == continuous(SUITE_DOSE_NG_PER_DAY)
    assert dut.clinician.read_limits() == dut.baseline.limits
    assert dut.clinician.interrogate().low_reservoir_threshold_nl == dut.baseline.low_reservoir_threshold_nl
    held = dut.clinician.status().uptime_ms
    assert dut.clinician.status().uptime_ms == held, "the reset holds the clock"


class _ScriptedPort:
    """A port that returns scripted bytes, a few at a time, and records what is written."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data = bytearray(data)
        self.chunk = chunk
        self.timeout: float | None = 0.0
        self.written = bytearray()

    @property
    def in_waiting(self) -> int:
        return min(self.chunk, len(self.data))

    def read(self, size: int = 1, /) -> bytes:
        out = bytes(self.data[: min(size, self.chunk)])
        del self.data[: len(out)]
        return out

    def write(self, data: bytes, /) -> int:
        self.written += data
        return len(data)

    def close(self) -> None:
        pass


def _frame(session_id: int, counter: int) -> bytes:
    header = Header(PROTOCOL_VERSION, MsgType.STATUS, FrameFlags.FROM_PUMP, session_id, counter, 0, 0)
    return encode_frame(encode_header(header) + bytes(8))


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_the_shared_port_gives_each_session_its_own_frames(chunk: int) -> None:
    """Frames go to the view holding their session, in order; plaintext frames, unknown sessions
    and garbage go to the view that wrote last; in any chunking."""
    a1, b1, plain, unknown, a2 = _frame(1, 1), _frame(2, 1), _frame(0, 9), _frame(77, 1), _frame(1, 2)
    garbage = b"\x00\x13\x37\x00"
    port = _ScriptedPort(a1 + b1 + plain + garbage + unknown + a2, chunk)
    shared = SharedPort(port)
    a, b, raw = shared.view(), shared.view(), shared.view()
    a.session_id, b.session_id = (lambda: 1), (lambda: 2)
    raw.write(b"\x00")
    a.timeout = 0.05
    got_a = a.read(10_000)
    assert got_a == a1 + a2
    assert b.read(10_000) == b1
    assert raw.read(10_000) == plain + garbage + unknown
    assert port.written == b"\x00"


_USER_TESTS = """
import pytest
from protocol_spec.enums import AlarmSet, TherapyMode


def test_status_after_the_known_state(programmer):
    assert programmer.status().mode is TherapyMode.CONTINUOUS


@pytest.mark.requires("test_role", "virtual_time")
def test_ninety_days_later(pump):
    pump.advance(90 * 86_400_000)
    assert AlarmSet.LOW_RESERVOIR in AlarmSet(pump.clinician.status().alarms)
"""


@pytest.mark.parametrize(
    ("url", "expected"),
    [("pump://", "2 passed"), ("pump://?test_role=0", "1 passed, 1 skipped")],
)
def test_users_write_their_own_hil_tests_with_the_plugin(tmp_path: Path, url: str, expected: str) -> None:
    """The plugin is found through its entry point by any pytest run: a user's file, a URL."""
    (tmp_path / "test_mine.py").write_text(_USER_TESTS)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "--pump-url", url, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert expected in proc.stdout
    if "skipped" in expected:
        assert "lacks test_role" in proc.stdout, "a skip says why"
