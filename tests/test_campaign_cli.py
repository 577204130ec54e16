"""``pumprig campaign`` over a link: the target, the campaigns that can run over one, the skips
and the exit codes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from click.testing import CliRunner

from hil.campaign_cli import campaign_command
from hil.campaigns import REGISTRY, Budget, Outcome, load_all
from hil.conformance import DeviceUnderTest


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(campaign_command, list(args))
    return result.exit_code, result.output


def _json(*args: str) -> dict[str, Any]:
    """The JSON document on stdout (progress goes to stderr)."""
    result = CliRunner().invoke(campaign_command, [*args, "--json"])
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_a_campaign_over_a_link_names_its_target_in_the_figures() -> None:
    doc = _json("lost-replies", "--url", "pump://")
    assert doc["target"] == {"name": "pump://", "url": "pump://"}
    (entry,) = doc["campaigns"]
    assert entry["name"] == "lost-replies"
    assert entry["url"] == "pump://"
    assert entry["device"].startswith("pumprig-virtual")
    assert entry["size"] == load_all()["lost-replies"].size("ci", over_link=True)
    assert entry["ok"] is True


def _needs_test_role(size: int, budget: Budget, seed: int, pump: DeviceUnderTest) -> Outcome:
    del budget, seed, pump
    return Outcome(size, {"units": size}, ok=True)


def test_a_campaign_whose_feature_the_target_lacks_is_skipped_and_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    load_all()
    base = REGISTRY["lost-replies"]
    fake = dataclasses.replace(base, name="needs-test", link=_needs_test_role, link_needs=("test_role",))
    monkeypatch.setitem(REGISTRY, "needs-test", fake)
    doc = _json("needs-test", "--url", "pump://?test_role=0")
    assert doc["campaigns"] == []
    assert doc["skipped"] == [{"name": "needs-test", "why": "the target lacks test_role"}]
    doc = _json("needs-test", "--url", "pump://")
    assert doc["campaigns"][0]["done"] == fake.link_sizes[0]


def test_an_in_process_campaign_over_a_link_is_a_usage_error() -> None:
    code, out = _run("power-loss", "--url", "pump://")
    assert code == 2
    assert "run in-process only" in out
    assert "lost-replies" in out  # the ones that can are listed


def test_the_readme_is_rendered_from_in_process_figures_only() -> None:
    code, out = _run("--url", "pump://", "--readme", "README.md")
    assert code == 2
    assert "--readme" in out


def test_an_unreachable_target_exits_3() -> None:
    code, out = _run("lost-replies", "--url", "/dev/no-such-pump-port")
    assert code == 3, out
    assert "cannot reach" in out
