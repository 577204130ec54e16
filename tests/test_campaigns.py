"""The campaign framework: every row of the safety table has a campaign, budgets stop a
campaign cleanly, and the README's table is the one rendered from bench/campaign.json."""

from __future__ import annotations

import json
from pathlib import Path

from hil.campaigns import (
    README_BEGIN,
    README_END,
    Budget,
    Campaign,
    Outcome,
    load_all,
    render_table,
    run_campaign,
    update_readme,
)

ROOT = Path(__file__).resolve().parent.parent
ROWS = {
    "malformed frames",
    "line noise",
    "replay",
    "forgery",
    "wrong role / no session",
    "eavesdropping",
    "lost replies and duplicates",
    "power loss during an NVM write",
    "memory corruption",
    "over-limit programming",
    "denial of service",
}


def test_every_row_of_the_safety_table_has_a_campaign() -> None:
    rows = {c.row for c in load_all().values()}
    assert rows >= ROWS, f"rows without a campaign: {sorted(ROWS - rows)}"
    for c in load_all().values():
        assert 0 < c.sizes[0] <= c.sizes[1], c.name


def _counting(size: int, budget: Budget, _seed: int) -> Outcome:
    done = 0
    while done < size and not budget.expired():
        done += 1
    return Outcome(done, {"units": done}, ok=True)


def test_a_budget_stops_a_campaign_cleanly_and_the_table_says_so() -> None:
    c = Campaign("count", "counting", "all counted", "units", (10, 10**12), _counting)
    stopped = run_campaign(c, 10**12, 0.05, seed=1)
    assert 0 < stopped["done"] < 10**12
    assert stopped["complete"] is False
    whole = run_campaign(c, 10, None, seed=1)
    assert (whole["done"], whole["complete"]) == (10, True)
    table = render_table([stopped, whole])
    assert "(stopped by the budget of 0.05 s)" in table.splitlines()[2]
    assert "10 of 10 units" in table.splitlines()[3]


def test_the_readme_table_is_replaced_between_its_markers() -> None:
    readme = f"intro\n{README_BEGIN}\nold\n{README_END}\nrest\n"
    new = update_readme(readme, "| a |")
    assert new == f"intro\n{README_BEGIN}\n| a |\n{README_END}\nrest\n"


def test_the_readme_shows_the_figures_of_bench_campaign_json() -> None:
    doc = json.loads((ROOT / "bench" / "campaign.json").read_text())
    assert doc["format"] == "pumprig-campaign/1"
    assert {e["row"] for e in doc["campaigns"]} >= ROWS, "the last full run covers every row"
    readme = (ROOT / "README.md").read_text()
    assert update_readme(readme, render_table(doc["campaigns"])) == readme, (
        "README.md's table is not the one bench/campaign.json renders: run `pumprig campaign --readme`"
    )
