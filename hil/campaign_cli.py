"""``pumprig campaign``: the reliability and security campaigns, with figures for the README."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from programmer.calc import parse_duration_ms
from programmer.errors import UsageError

from .campaigns import SIZES, load_all, render_table, run_campaign, update_readme

__all__ = ["campaign_command"]

_EPILOG = """
\b
Examples:
  pumprig campaign --list                         the campaigns, their rows and sizes
  pumprig campaign replay forgery                 two campaigns at CI size
  pumprig campaign --size full --budget 10m       every campaign, 10 minutes each at most
  pumprig campaign --size full --out bench/campaign.json --readme README.md   (make campaign)

Exit status: 0 every campaign met its target; 1 one did not; 2 usage.
"""


@click.command(
    "campaign",
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("names", nargs=-1)
@click.option("--size", type=click.Choice(SIZES), default="ci", show_default=True, help="CI size or full size.")
@click.option("--budget", metavar="DURATION", help="Time budget per campaign (90s, 10m, 2h); it stops early, cleanly.")
@click.option(
    "--seed", type=click.IntRange(0), default=0, show_default=True, help="The seed: the same seed, the same run."
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures as JSON here.")
@click.option(
    "--readme",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Render the table into this README, between its campaign markers.",
)
@click.option("--list", "list_only", is_flag=True, help="List the campaigns; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="The figures as JSON on stdout.")
def campaign_command(
    names: tuple[str, ...],
    size: str,
    budget: str | None,
    seed: int,
    out: Path | None,
    readme: Path | None,
    list_only: bool,
    as_json: bool,
) -> None:
    """Reliability and security campaigns: malformed frames, line noise, replay, forgery, wrong
    roles, eavesdropping, lost replies, power loss, memory corruption, overload, denial of service.

    Each drives the real device, codec, programmer and memory with one kind of fault or attack,
    counts what happened and says whether the target of its row in the safety table was met.
    """
    registry = load_all()
    if list_only:
        table = Table(title="campaigns")
        for column in ("name", "fault or threat", "target", "CI size", "full size"):
            table.add_column(column)
        for c in registry.values():
            table.add_row(c.name, c.row, c.target, f"{c.sizes[0]:,} {c.unit}", f"{c.sizes[1]:,} {c.unit}")
        Console().print(table)
        return
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise click.UsageError(f"no campaign {', '.join(unknown)}; there are: {', '.join(registry)}")
    try:
        budget_s = None if budget is None else parse_duration_ms(budget) / 1000
    except UsageError as exc:
        raise click.BadParameter(str(exc), param_hint="--budget") from exc
    console = Console(stderr=True, soft_wrap=True)
    entries: list[dict[str, Any]] = []
    for name in names or tuple(registry):
        c = registry[name]
        console.print(f"campaign {c.name}: {c.size(size):,} {c.unit} ({c.row}) ...")
        entry = run_campaign(c, c.size(size), budget_s, seed)
        entries.append(entry)
        verdict = "[green]met[/green]" if entry["ok"] else "[red]NOT MET[/red]"
        console.print(f"  {verdict}: {entry['done']:,} {c.unit} in {entry['wall_s']} s; {entry['figures']}")
    doc = {"format": "pumprig-campaign/1", "size": size, "seed": seed, "campaigns": entries}
    if out is not None:
        out.write_text(json.dumps(doc, indent=2) + "\n")
        console.print(f"figures: {out}")
    if readme is not None:
        readme.write_text(update_readme(readme.read_text(), render_table(entries)))
        console.print(f"table rendered into {readme}")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    sys.exit(0 if all(e["ok"] for e in entries) else 1)
