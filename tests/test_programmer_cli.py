"""The clinician's programmer commands (``pumprig status|program|refill|...``) against ``pump://``.

A ``state=`` file keeps one virtual pump across invocations, so a declined confirmation can be
shown to change nothing. The same workflows as processes against ``pumprig serve --pty``:
tests/test_programmer_pty.py.
"""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hil.cli import cli
from programmer import UsageError, calc, client
from programmer.client import Programmer
from programmer.workflows import bridge_duration_ms, flex_program
from protocol_spec import messages as m
from protocol_spec.enums import DrugId


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def pump(tmp_path: Path) -> str:
    """The URL of one default virtual pump that keeps its state between invocations."""
    state = tmp_path / "pump.state"
    assert run("--url", f"pump://?preset=default&state={state}", "status").exit_code == 0
    return f"pump://?state={state}"


def dose_of(url: str) -> int:
    data = as_json(run("--url", url, "status", "--json"))
    dose: int = data["therapy"]["dose_ng_per_day"]
    return dose


# ---------------------------------------------------------------------- calc (pure)


def test_calc_is_exact_integer_arithmetic_both_ways() -> None:
    assert calc.parse_decimal("12.5", "x") == Fraction(25, 2)
    assert calc.parse_scaled("0.1", "x", 1000, "ng") == 100
    r = calc.rate_for_dose(300_000, 500)
    assert r.rate_nl_per_day == 600_000
    assert calc.rate_for_dose(1, 3).rate_nl_per_day == 333  # rounded down, as the pump does
    assert calc.dose_for_rate(600_000, 500).dose_ng_per_day == 300_000
    with pytest.raises(UsageError, match="finer than 1 ng"):
        calc.parse_scaled("0.0001", "--dose-ug", 1000, "ng")
    for bad in ("-3", "1e3", "3,5", "", "nan"):
        with pytest.raises(UsageError):
            calc.parse_decimal(bad, "x")
    assert calc.parse_duration_ms("1h30m") == 5_400_000
    assert calc.parse_duration_ms("90") == 90_000
    assert calc.parse_flex_step("1/08:30=12.5", per_hour=True) == m.FlexStep(1, 30_600_000, 300_000)


def test_flex_schedule_rules_and_per_hour_guard() -> None:
    limits = m.DrugLimits(DrugId.BACLOFEN, (m.Concentration(500),), 5000, 4_000_000, 2_000_000, 1_000_000, 300, 500_000)
    steps = [calc.parse_flex_step(s, per_hour=False) for s in ("00:00=14", "08:00=16")]
    program = flex_program(500, 1, steps)
    with pytest.raises(calc.UnitsError, match="per-hour"):
        calc.check_per_hour(
            program.steps, 1, concentration_ug_per_ml=500, limits=limits, running_ng_per_day=300_000,
            per_hour=False, units_confirmed=False,
        )  # fmt: skip
    calc.check_per_hour(
        program.steps, 1, concentration_ug_per_ml=500, limits=limits, running_ng_per_day=300_000,
        per_hour=False, units_confirmed=True,
    )  # fmt: skip
    with pytest.raises(UsageError, match="00:00 of day 0"):
        flex_program(500, 1, [m.FlexStep(0, 3_600_000, 300_000)])
    with pytest.raises(UsageError, match="outside a 1-day cycle"):
        flex_program(500, 1, [m.FlexStep(0, 0, 300_000), m.FlexStep(1, 0, 300_000)])
    assert calc.schedule_mean_ng_per_day(program.steps, 1) == Fraction(14_000 * 8 + 16_000 * 16, 24)
    assert bridge_duration_ms(260_000, 500, 300_000) == 260_000 * 500 // 1000 * m.MS_PER_DAY // 300_000


def test_calc_command_both_ways() -> None:
    data = as_json(run("calc", "--dose-ug-per-day", "300", "--concentration-ug-per-ml", "500", "--json"))
    assert data["rate_nl_per_day"] == 600_000
    data = as_json(run("calc", "--rate-ml-per-day", "0.6", "--concentration-ug-per-ml", "500", "--json"))
    assert data["dose_ng_per_day"] == 300_000
    result = run("calc", "--dose-ug-per-day", "300", "--concentration-ug-per-ml", "500", "--reservoir-ml", "20")
    assert result.exit_code == 0
    assert "33.33 days" in result.stdout
    bad = run("calc", "--concentration-ug-per-ml", "500")
    assert bad.exit_code == 2
    assert "exactly one" in bad.stderr


# ---------------------------------------------------------------------- reading


def test_status_json_has_the_documented_fields() -> None:
    data = as_json(run("status", "--json"))
    assert data["reservoir_estimate_nl"] == 20_000_000
    assert data["alarms"] == []
    assert data["therapy"]["mode"] == "CONTINUOUS"
    assert data["therapy"]["dose_ng_per_day"] == 300_000
    assert data["therapy"]["program"]["concentration_ug_per_ml"] == 500
    assert data["battery"]["state"] == "OK"
    assert data["battery"]["eri_at_ms"] is None


def test_status_at_eri_from_the_environment_url() -> None:
    data = as_json(run("status", "--json", env={"PUMPRIG_URL": "pump://?preset=eri"}))
    assert data["alarms"] == ["ERI"]
    assert data["battery"]["state"] == "ERI"
    assert data["battery"]["eri_at_ms"] > 0
    assert data["battery"]["eri_wall_clock"]


def test_reading_commands_print_tables_and_json() -> None:
    result = run("interrogate")
    assert result.exit_code == 0
    assert "VP0000001" in result.stdout
    assert "active program" in result.stdout
    assert as_json(run("interrogate", "--json"))["interrogate"]["concentration_ug_per_ml"] == 500
    assert as_json(run("limits", "--json"))["hard_limit_ng_per_day"] == 2_000_000
    assert "hard limit" in run("limits").stdout
    assert "drift_ms" in as_json(run("clock", "--json"))
    assert as_json(run("status", "--json", "--role", "patient"))["therapy"]["mode"] == "CONTINUOUS"


# ---------------------------------------------------------------------- programming and its guards


def test_hard_limit_is_refused_locally_with_the_limit_and_exit_4(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: object, **__: object) -> None:
        raise AssertionError("staged although refused locally")

    monkeypatch.setattr(Programmer, "stage_program", never)
    result = run("program", "continuous", "--dose-ug-per-day", "2500", "--override", "--yes")
    assert result.exit_code == 4
    assert "hard limit of 2000 ug/day" in result.stderr
    assert "Traceback" not in result.stderr
    soft = run("program", "continuous", "--dose-ug-per-day", "1200", "--yes")
    assert soft.exit_code == 4
    assert "--override" in soft.stderr


def test_soft_limit_with_override_is_committed(pump: str) -> None:
    data = as_json(
        run("--url", pump, "program", "continuous", "--dose-ug-per-day", "1200", "--override", "--yes", "--json")
    )
    assert data["committed"]
    assert data["stage"]["soft_limit_overridden"] == 1
    assert dose_of(pump) == 1_200_000


def test_per_hour_flex_is_refused_before_anything_is_sent(pump: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[object] = []
    original = Programmer.stage_program

    def spy(self: Programmer, *args: Any, **kwargs: Any) -> m.StageReply:
        sent.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Programmer, "stage_program", spy)
    refused = run("--url", pump, "program", "flex", "--step", "00:00=14", "--step", "08:00=16", "--yes")
    assert refused.exit_code == 2
    assert "per hour" in refused.stderr
    assert "--per-hour" in refused.stderr
    assert not sent
    data = as_json(run("--url", pump, "program", "flex", "--per-hour", "--step", "00:00=14", "--step", "08:00=16",
                       "--yes", "--json"))  # fmt: skip
    assert data["committed"]
    assert [s["dose_ng_per_day"] for s in data["program"]["steps"]] == [336_000, 384_000]
    assert len(sent) == 1


def test_declined_confirmation_changes_nothing_and_yes_commits(pump: str) -> None:
    declined = run("--url", pump, "program", "continuous", "--dose-ug-per-day", "350", input="n\n")
    assert declined.exit_code == 0
    assert "nothing changed" in declined.stdout
    assert "300 ug/day" in declined.stdout
    assert "350 ug/day" in declined.stdout
    assert dose_of(pump) == 300_000
    assert as_json(run("--url", pump, "status", "--json"))["staged"] == 0
    accepted = run("--url", pump, "program", "continuous", "--dose-ug-per-day", "350", input="y\n")
    assert accepted.exit_code == 0
    assert "committed" in accepted.stdout
    assert dose_of(pump) == 350_000


def test_concentration_entry_mistake_is_refused(pump: str) -> None:
    result = run("--url", pump, "program", "continuous", "--dose-ug-per-day", "300",
                 "--concentration-ug-per-ml", "2000", "--yes")  # fmt: skip
    assert result.exit_code == 2
    assert "holds 500 ug/mL" in result.stderr
    result = run("--url", pump, "program", "continuous", "--dose-ug-per-day", "300",
                 "--concentration-ug-per-ml", "750", "--yes")  # fmt: skip
    assert result.exit_code == 2
    assert "not a concentration of the drug library" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["program", "stop"],
        ["program", "minimum-rate"],
        ["program", "single-bolus", "--dose-ug", "50", "--duration", "1h"],
        ["bolus", "priming", "--volume-ul", "200", "--duration", "15m"],
        ["bolus", "bridge", "--old-concentration-ug-per-ml", "500"],
        ["bolus", "patient", "--dose-ug", "25", "--duration", "5m", "--lockout", "4h", "--max-per-day", "3"],
    ],
)
def test_each_staged_command_commits_with_yes(args: list[str]) -> None:
    data = as_json(run(*args, "--yes", "--json"))
    assert data["committed"] is True
    assert data["commit"]["stage_token"] == data["stage"]["stage_token"]


def test_alarm_commands(pump: str) -> None:
    data = as_json(run("--url", pump, "alarms", "configure", "--low-reservoir-ml", "4", "--critical-repeat", "10m",
                       "--non-critical-repeat", "1h", "--yes", "--json"))  # fmt: skip
    assert data["config"]["low_reservoir_threshold_nl"] == 4_000_000
    low = "pump://?preset=low-reservoir"
    assert (
        as_json(run("--url", low, "alarms", "silence", "low_reservoir", "--for", "2h", "--json"))["duration_ms"]
        == 7_200_000
    )
    assert run("--url", low, "alarms", "acknowledge", "LOW_RESERVOIR").exit_code == 0
    bad = run("alarms", "silence", "LOW_RESERVOIR", "--for", "soon")
    assert bad.exit_code == 2
    assert "90s, 30m" in bad.stderr


# ---------------------------------------------------------------------- refill and log


def test_refill_flags_the_discrepancy_and_offers_the_bridge(pump: str) -> None:
    data = as_json(run("--url", pump, "refill", "--aspirated-ml", "2", "--added-ml", "20",
                       "--concentration-ug-per-ml", "1000", "--needle-in-reservoir", "--aspiration-confirmed",
                       "--bridge", "--yes", "--json"))  # fmt: skip
    assert data["reply"]["discrepancy_nl"] == -18_000_000
    assert "OVER-infusion" in data["flag"]
    assert data["bridge_offered"] is True
    assert data["bridge"]["volume_nl"] == data["reply"]["bridge_volume_nl"] > 0
    started = as_json(run("--url", pump, "log", "--kind", "BOLUS_STARTED", "--json"))["entries"]
    assert [e["code_name"] for e in started] == ["BRIDGE"]


def test_refill_without_the_pocket_fill_confirmations_sends_nothing() -> None:
    result = run("refill", "--aspirated-ml", "19", "--added-ml", "20", "--concentration-ug-per-ml", "500", "--yes")
    assert result.exit_code == 2
    assert "pocket" in result.stderr
    asked = run("refill", "--aspirated-ml", "19", "--added-ml", "20", "--concentration-ug-per-ml", "500",
                "--aspiration-confirmed", input="n\n")  # fmt: skip
    assert asked.exit_code == 2
    assert "needle" in asked.stdout.lower()


def test_log_filters_and_exports_csv(pump: str, tmp_path: Path) -> None:
    run("--url", pump, "refill", "--aspirated-ml", "19.5", "--added-ml", "20", "--concentration-ug-per-ml", "500",
        "--needle-in-reservoir", "--aspiration-confirmed", "--yes")  # fmt: skip
    out = tmp_path / "refills.csv"
    result = run("--url", pump, "log", "--kind", "refill", "--csv", str(out))
    assert result.exit_code == 0
    assert "written to" in result.stdout
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 2
    assert {r["kind"] for r in rows} == {"REFILL"}
    assert rows[-1]["code_name"] == "BACLOFEN"
    entries = as_json(run("--url", pump, "log", "--json", "--last", "1"))["entries"]
    assert len(entries) == 1


# ---------------------------------------------------------------------- errors


def test_link_errors_have_a_sentence_and_exit_3() -> None:
    result = run("--url", "/dev/does-not-exist-pumprig", "status")
    assert result.exit_code == 3
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    bad = run("--url", "pump://?preset=nope", "status")
    assert bad.exit_code in (2, 3)
    assert "nope" in bad.stderr


# ---------------------------------------------------------------------- the patient's commands


def test_patient_bolus_request_is_granted_then_locked_out(pump: str) -> None:
    off = run("--url", pump, "bolus", "request")
    assert off.exit_code == 4
    assert "pumprig bolus patient" in off.stderr
    assert as_json(run("--url", pump, "bolus", "patient", "--dose-ug", "25", "--duration", "5m", "--lockout", "4h",
                       "--max-per-day", "2", "--yes", "--json"))["committed"]  # fmt: skip
    granted = run("--url", pump, "bolus", "request")  # a patient session by default
    assert granted.exit_code == 0, granted.stderr
    assert "granted: 25 ug over 5 min" in granted.stdout
    assert "next may be granted in 4 h" in granted.stdout
    assert "1 left" in granted.stdout
    locked = run("--url", pump, "bolus", "request", "--json")
    assert locked.exit_code == 4
    data = json.loads(locked.stdout)
    assert data["granted"] is False
    assert data["refusal"] == "BOLUS_LOCKOUT"
    assert 0 < data["retry_after_ms"] <= 4 * 3_600_000
    assert "locked out; the next patient bolus may be granted in" in locked.stderr
    assert "Traceback" not in locked.stderr
    wrong_role = run("--url", pump, "bolus", "request", "--role", "clinician")
    assert wrong_role.exit_code == 4
    assert "role" in wrong_role.stderr


def test_patient_bolus_daily_maximum_is_refused(pump: str) -> None:
    assert as_json(run("--url", pump, "bolus", "patient", "--dose-ug", "25", "--duration", "5m", "--lockout", "1s",
                       "--max-per-day", "1", "--yes", "--json"))["committed"]  # fmt: skip
    assert "0 left in the present 24 h" in run("--url", pump, "bolus", "request").stdout
    assert run("test", "--port", pump, "advance", "10m").exit_code == 0  # past the lockout, within 24 h
    refused = run("--url", pump, "bolus", "request", "--json")
    assert refused.exit_code == 4
    assert json.loads(refused.stdout)["refusal"] == "BOLUS_DAILY_MAX"
    assert "the maximum of 1 patient boluses in a rolling 24 h has been reached" in refused.stderr


def test_bolus_cancel(pump: str) -> None:
    result = run("--url", pump, "bolus", "cancel")
    assert result.exit_code == 0
    assert "no bolus was running" in result.stdout
    assert as_json(run("--url", pump, "bolus", "cancel", "--json")) == {"was_running": "NONE", "running": "NONE"}


# ---------------------------------------------------------------------- --trace, --dtr, --rts


def test_trace_annotates_every_frame_on_stderr_and_stdout_stays_json(pump: str) -> None:
    result = run("--url", pump, "--trace", "status", "--json", "--role", "patient")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["therapy"]["mode"] == "CONTINUOUS"
    trace = result.stderr
    assert "#1 programmer -> pump IDENTIFY request [plaintext]" in trace
    assert "SESSION_OPEN request [plaintext]" in trace
    assert "keys derived (patient key 0x" in trace
    assert "programmer -> pump STATUS request [secured]" in trace
    assert "pump -> programmer STATUS reply [secured]" in trace
    assert "reservoir_estimate_nl = 20000000 nL" in trace
    assert "SESSION_CLOSE request [secured]" in trace
    assert "REJECTED" not in trace
    quiet = run("--url", pump, "status", "--json", "--role", "patient")
    assert quiet.stderr == ""


def test_dtr_and_rts_reach_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bool | None, bool | None]] = []
    original = client.open_port

    def spy(url: str, **kw: Any) -> Any:
        seen.append((kw.get("dtr"), kw.get("rts")))
        return original(url, **kw)

    monkeypatch.setattr(client, "open_port", spy)
    assert run("status").exit_code == 0
    assert run("--no-dtr", "--no-rts", "status").exit_code == 0
    assert run("--no-dtr", "status", "--rts").exit_code == 0
    assert run("status", "--dtr").exit_code == 0
    assert seen == [(None, None), (False, False), (False, True), (True, None)]
    help_text = run("status", "--help").stdout
    assert "--dtr / --no-dtr" in help_text
    assert "boards that reset on DTR" in help_text
