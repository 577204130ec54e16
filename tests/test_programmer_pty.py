"""Every programmer workflow from the command line against ``pumprig serve --pty``, no key options.

One served pump for the whole module (a second, at LOW_RESERVOIR, for silencing an alarm); each
command is a separate ``pumprig --url /dev/pts/N ...`` process, as a clinician's script would
run it. The tests run in file order and share the pump: each leaves it ready for the next.
The documented programming errors end with their exit code and one ``error:`` line, no traceback.
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol_spec.security import generate_key_set
from tests.serving import pumprig_command, served, stop_cleanly

RUN_S = 60.0


def _serve(tmp: Path, *args: str) -> Iterator[str]:
    """Start ``pumprig serve --pty ARGS``, yield its URL; stop it and check it ended cleanly."""
    with served(tmp, "--pty", *args) as (proc, url):
        assert url.startswith("/dev/"), url
        yield url
        stop_cleanly(proc, tmp)


@pytest.fixture(scope="module")
def pty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of one default pump (filled, 500 ug/mL, 300 ug/day continuous) for the module."""
    yield from _serve(tmp_path_factory.mktemp("pty"))


@pytest.fixture(scope="module")
def low_pty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A served pump with LOW_RESERVOIR active."""
    yield from _serve(tmp_path_factory.mktemp("low"), "--preset", "low-reservoir")


def pumprig(url: str, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """``pumprig --url URL ARGS`` as a process: check its exit code and that no traceback escaped."""
    done = subprocess.run(
        [*pumprig_command(), "--url", url, *args], capture_output=True, text=True, timeout=RUN_S, check=False
    )
    assert done.returncode == code, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


def as_json(url: str, *args: str) -> Any:
    return json.loads(pumprig(url, *args, "--json").stdout)


def refused(url: str, *args: str, code: int) -> str:
    """Run a command that must fail: its one ``error:`` line (the test keys' warning aside)."""
    done = pumprig(url, *args, code=code)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert done.stdout == "", done.stdout
    return errors[0]


def committed(data: Any) -> Any:
    assert data["committed"] is True, data
    assert data["commit"]["stage_token"] == data["stage"]["stage_token"]
    return data


# ---------------------------------------------------------------------- the workflows, in order


def test_status_json_with_the_trace_on_stderr(pty: str) -> None:
    done = pumprig(pty, "--trace", "status", "--json")
    data = json.loads(done.stdout)  # stdout stays one clean JSON object
    assert data["therapy"]["mode"] == "CONTINUOUS"
    assert data["therapy"]["dose_ng_per_day"] == 300_000
    assert data["alarms"] == []
    assert data["battery"]["state"] == "OK"
    trace = done.stderr
    for expected in (
        "programmer -> pump IDENTIFY request [plaintext]",
        "programmer -> pump SESSION_OPEN request [plaintext]",
        "pump -> programmer SESSION_OPEN reply",
        "keys derived (clinician key",
        "programmer -> pump STATUS request [secured]",
        "pump -> programmer STATUS reply [secured]",
        "StatusReply",
        "reservoir_estimate_nl = ",
    ):
        assert expected in trace, expected
    assert "REJECTED" not in trace


def test_refill(pty: str) -> None:
    data = as_json(pty, "refill", "--aspirated-ml", "19.9", "--added-ml", "20", "--concentration-ug-per-ml", "500",
                   "--needle-in-reservoir", "--aspiration-confirmed", "--yes")  # fmt: skip
    assert data["refilled"] is True
    assert data["reply"]["reservoir_estimate_nl"] == 20_000_000
    assert data["flag"] is None
    assert data["bridge_offered"] is False


def test_program_continuous(pty: str) -> None:
    committed(as_json(pty, "program", "continuous", "--dose-ug-per-day", "350", "--yes"))
    therapy = as_json(pty, "status")["therapy"]
    assert (therapy["mode"], therapy["dose_ng_per_day"]) == ("CONTINUOUS", 350_000)


def test_program_flex(pty: str) -> None:
    data = committed(as_json(pty, "program", "flex", "--step", "00:00=300", "--step", "08:00=380",
                             "--step", "20:00=300", "--yes"))  # fmt: skip
    assert [s["dose_ng_per_day"] for s in data["program"]["steps"]] == [300_000, 380_000, 300_000]
    assert data["stage"]["max_dose_ng_per_day"] == 380_000
    assert as_json(pty, "status")["therapy"]["mode"] == "FLEX"


def test_program_minimum_rate_single_bolus_and_stop(pty: str) -> None:
    committed(as_json(pty, "program", "minimum-rate", "--yes"))
    data = committed(as_json(pty, "program", "single-bolus", "--dose-ug", "50", "--duration", "10m", "--yes"))
    assert data["program"]["bolus_dose_ng"] == 50_000
    committed(as_json(pty, "program", "stop", "--yes"))
    assert as_json(pty, "status")["therapy"]["mode"] == "STOPPED"


def test_bolus_priming_then_cancel(pty: str) -> None:
    committed(as_json(pty, "program", "continuous", "--dose-ug-per-day", "300", "--yes"))
    committed(as_json(pty, "bolus", "priming", "--volume-ul", "200", "--duration", "15m", "--yes"))
    assert as_json(pty, "bolus", "cancel") == {"was_running": "PRIMING", "running": "NONE"}


def test_bolus_patient_settings_then_the_patient_asks(pty: str) -> None:
    committed(as_json(pty, "bolus", "patient", "--dose-ug", "25", "--duration", "5m", "--lockout", "4h",
                      "--max-per-day", "3", "--yes"))  # fmt: skip
    grant = as_json(pty, "bolus", "request")  # the patient's key, by default
    assert grant["granted"] is True
    assert grant["grant"]["dose_ng"] == 25_000
    assert grant["grant"]["remaining_24h"] == 2
    assert "busy" in refused(pty, "bolus", "request", code=4)  # while the bolus runs
    assert as_json(pty, "bolus", "cancel") == {"was_running": "PATIENT", "running": "NONE"}
    line = refused(pty, "bolus", "request", code=4)
    assert "locked out" in line
    assert "granted in 3 h 59 min" in line or "granted in 4 h" in line


def test_alarms_configure(pty: str) -> None:
    data = as_json(pty, "alarms", "configure", "--low-reservoir-ml", "4", "--critical-repeat", "10m",
                   "--non-critical-repeat", "1h", "--yes")  # fmt: skip
    assert data["configured"] is True
    assert data["config"]["low_reservoir_threshold_nl"] == 4_000_000


def test_alarms_silence_an_active_alarm(low_pty: str) -> None:
    assert "LOW_RESERVOIR" in as_json(low_pty, "status")["alarms"]
    assert as_json(low_pty, "alarms", "silence", "LOW_RESERVOIR", "--for", "1h") == {
        "silenced": "LOW_RESERVOIR",
        "duration_ms": 3_600_000,
    }
    assert as_json(low_pty, "status")["silenced"] == ["LOW_RESERVOIR"]


def test_log_json_and_csv(pty: str, tmp_path: Path) -> None:
    entries = as_json(pty, "log")["entries"]
    kinds = {e["kind"] for e in entries}
    assert {"REFILL", "PROGRAM_COMMITTED", "BOLUS_STARTED", "BOLUS_INTERRUPTED", "SESSION_OPENED"} <= kinds
    out = tmp_path / "refills.csv"
    done = pumprig(pty, "log", "--kind", "REFILL", "--csv", str(out))
    assert "written to" in done.stdout
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert rows
    assert {r["kind"] for r in rows} == {"REFILL"}


def test_clock_limits_and_interrogate(pty: str) -> None:
    clock = as_json(pty, "clock", "--set", "now", "--yes")
    assert clock["set"] is not None
    assert abs(as_json(pty, "clock")["drift_ms"]) < 60_000
    assert as_json(pty, "limits")["hard_limit_ng_per_day"] == 2_000_000
    data = as_json(pty, "interrogate")
    assert data["interrogate"]["patient_bolus"]["enabled"] == 1
    assert data["program"]["mode"] == "CONTINUOUS"


# ---------------------------------------------------------------------- the documented errors


def test_hard_limit_is_stopped_before_anything_is_staged(pty: str) -> None:
    done = pumprig(pty, "--trace", "program", "continuous", "--dose-ug-per-day", "2500", "--override", "--yes", code=4)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "hard limit of 2000 ug/day" in errors[0]
    assert "READ_LIMITS request" in done.stderr  # the trace is on ...
    assert "STAGE_PROGRAM request" not in done.stderr  # ... and nothing was staged


def test_per_hour_flex_guard_sends_nothing(pty: str) -> None:
    done = pumprig(pty, "--trace", "program", "flex", "--step", "00:00=14", "--step", "08:00=16", "--yes", code=2)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "--per-hour" in errors[0]
    assert "READ_LIMITS request" in done.stderr
    assert "STAGE_PROGRAM request" not in done.stderr


def test_wrong_concentration_is_refused(pty: str) -> None:
    line = refused(pty, "program", "continuous", "--dose-ug-per-day", "300", "--concentration-ug-per-ml", "2000",
                   "--yes", code=2)  # fmt: skip
    assert "holds 500 ug/mL" in line


def test_missing_port_is_a_link_error() -> None:
    line = refused("/dev/does-not-exist", "status", code=3)
    assert "/dev/does-not-exist does not exist" in line


def test_wrong_key_file_is_a_key_error(pty: str, tmp_path: Path) -> None:
    key_file = tmp_path / "other.keys"
    key_file.write_text(generate_key_set().to_json(), encoding="utf-8")
    line = refused(pty, "--key-file", str(key_file), "status", code=7)
    assert "give the key file this pump was provisioned with" in line
    assert as_json(pty, "status")["therapy"]["mode"] == "CONTINUOUS"  # the pump serves on
