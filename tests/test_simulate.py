"""``pumprig simulate`` and the runner behind it: the rules hold at the user's command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from firmware_model.simulate import SimulationSpec, SpecError, continuous_program, parse_days, parse_dose_ug, simulate
from firmware_model.units import MS_PER_DAY, MS_PER_YEAR, NL_PER_ML
from hil.cli import cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["simulate", *args])
    return result.exit_code, result.output


def test_until_eos_with_auto_refill_reports_eri_and_eos_by_the_rules() -> None:
    """ERI at least 90 days before EOS; EOS no later than 7 years; one refill per LOW_RESERVOIR."""
    code, out = _run("--dose-ug-per-day", "300", "--until", "eos", "--auto-refill", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["step_nl"] == 250
    eri_s, eos_s = doc["eri_at_s"], doc["eos_at_s"]
    assert eos_s - eri_s >= 90 * 86_400
    assert eos_s <= 7 * MS_PER_YEAR // 1000
    assert doc["duration_s"] == eos_s
    names = [a["code"] for a in doc["alarms"]]
    assert names.count("LOW_RESERVOIR") == doc["refills"] > 0
    assert {"code": "ERI", "at_s": eri_s} in doc["alarms"]
    assert {"code": "EOS", "at_s": eos_s} in doc["alarms"]
    # 300 ug/day at 500 ug/mL is 0.6 mL/day: the commanded volume is the steps taken
    assert doc["commanded_nl"] == doc["steps"] * 250
    assert doc["delivered_nl"] == doc["commanded_nl"]  # no stroke error: truth equals the estimate


def test_a_fixed_duration_delivers_the_dose_exactly() -> None:
    """30 days at 300 ug/day and 500 ug/mL: 600,000 nL/day, 18 mL, to the step."""
    code, out = _run("--dose-ug-per-day", "300", "--days", "30", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["duration_s"] == 30 * 86_400
    assert doc["commanded_nl"] == 18 * NL_PER_ML
    assert doc["eos_at_s"] is None
    assert doc["eri_at_s"] is None


def test_over_infusion_drifts_the_truth_from_the_estimate() -> None:
    """A stroke error of +25 nL per 250 nL step delivers 10 % more than the firmware believes."""
    result = simulate(
        SimulationSpec(continuous_program(300_000, 500), duration_ms=10 * MS_PER_DAY, stroke_error_nl_per_step=25)
    )
    assert result.commanded_nl == 6 * NL_PER_ML
    assert result.delivered_nl == result.commanded_nl * 11 // 10


def test_decimal_days_and_doses_are_exact() -> None:
    assert parse_days("1.5") == 129_600_000
    assert parse_days("0.001") == 86_400
    assert parse_dose_ug("12.5") == 12_500
    for bad in ("x", "-1", "0", "1e-9"):
        with pytest.raises(SpecError):
            parse_days(bad)
    with pytest.raises(SpecError, match="whole number of nanograms"):
        parse_dose_ug("0.0001")


def test_hard_limit_is_refused_with_the_limit_and_soft_limit_warns() -> None:
    code, out = _run("--dose-ug-per-day", "2500", "--days", "1")
    assert code == 2
    assert "HARD_LIMIT" in out
    code, out = _run("--dose-ug-per-day", "1200", "--days", "1", "--json")
    assert code == 0, out
    assert "soft limit" in json.loads(out)["warnings"][0]


def test_flex_toml_example_runs_exactly() -> None:
    """Two days of the 13-step example: the commanded volume is the whole steps of the exact
    integral of its rates (each rate rounded down from its dose)."""
    code, out = _run("--config", str(EXAMPLES / "flex13.toml"), "--days", "2", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["duration_s"] == 2 * 86_400
    starts_h = [0, 2, 4, 6, 7, 8, 10, 12, 14, 16, 18, 20, 22, 24]
    doses_ug = [250, 250, 300, 350, 400, 400, 350, 300, 300, 350, 400, 300, 250]
    integral_nlms = 2 * sum(
        (dose * 1000 * 1000 // 500) * (starts_h[i + 1] - starts_h[i]) * 3_600_000 for i, dose in enumerate(doses_ug)
    )
    assert doc["commanded_nl"] == integral_nlms // (250 * MS_PER_DAY) * 250
    assert doc["events"] == 2 * 13


def test_bad_input_says_what_to_do(tmp_path: Path) -> None:
    code, out = _run("--days", "2")
    assert code == 2
    assert "--dose-ug-per-day" in out
    code, out = _run("--dose-ug-per-day", "3", "--days", "2", "--until", "eos")
    assert code == 2
    assert "not both" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("[program]\nmode = 'weekly'\n")
    code, out = _run("--config", str(bad))
    assert code == 2
    assert "continuous" in out
    bad.write_text("[program\n")
    code, out = _run("--config", str(bad))
    assert code == 2


def test_plot_is_written(tmp_path: Path) -> None:
    target = tmp_path / "life.png"
    code, out = _run("--dose-ug-per-day", "300", "--days", "40", "--auto-refill", "--plot", str(target))
    assert code == 0, out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
