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
from protocol_spec.enums import Feature

from .campaigns import SIZES, load_all, render_table, run_campaign, update_readme
from .conformance import DeviceUnderTest
from .conformance.targets import target_for_url
from .target_options import connect_or_exit, named_targets, target_options

__all__ = ["campaign_command"]

_EPILOG = """
\b
Examples:
  pumprig campaign --list                         the campaigns, their rows and sizes
  pumprig campaign replay forgery                 two campaigns at CI size
  pumprig campaign --size full --budget 10m       every campaign, 10 minutes each at most
  pumprig campaign --size full --out bench/campaign.json --readme README.md   (make campaign)
  pumprig campaign --url /dev/pts/5               the campaigns over a link, on a served pump
  pumprig campaign replay --url /dev/ttyACM0 --key-file board-keys.toml --budget 10m
  pumprig campaign --target board --targets lab.toml --size full

\b
Without --url or --target, each campaign drives the built-in virtual pump in this process,
white-box, at its full speed: these are the README's figures. With a target, the campaigns
that can (--list shows them) run black-box over the link, through the protocol alone, at
the sizes a real link carries; a campaign whose features the target lacks is skipped, and
said so.

Exit status: 0 every campaign met its target; 1 one did not; 2 usage; 3 the target cannot be
reached or identified.
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
@click.option(
    "--url", metavar="URL", help="Run over a link to this pump (a serial URL: /dev/..., rfc2217://, pump://)."
)
@click.option("--target", "target_name", metavar="NAME", help="Run over a link to this pump of the targets file.")
@target_options
@click.option("--list", "list_only", is_flag=True, help="List the campaigns; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="The figures as JSON on stdout.")
def campaign_command(
    names: tuple[str, ...],
    size: str,
    budget: str | None,
    seed: int,
    out: Path | None,
    readme: Path | None,
    url: str | None,
    target_name: str | None,
    targets_file: Path | None,
    key_file: Path | None,
    dtr: bool | None,
    rts: bool | None,
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
        for column in ("name", "fault or threat", "target", "CI size", "full size", "over a link (CI, full)"):
            table.add_column(column)
        for c in registry.values():
            link = "-"
            if c.link is not None:
                needs = f"; needs {', '.join(c.link_needs)}" if c.link_needs else ""
                link = f"{c.link_sizes[0]:,}, {c.link_sizes[1]:,}{needs}"
            table.add_row(c.name, c.row, c.target, f"{c.sizes[0]:,} {c.unit}", f"{c.sizes[1]:,} {c.unit}", link)
        Console().print(table)
        return
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise click.UsageError(f"no campaign {', '.join(unknown)}; there are: {', '.join(registry)}")
    if url is not None and target_name is not None:
        raise click.UsageError("give --url or --target, not both")
    over_link = url is not None or target_name is not None
    if over_link:
        no_link = [n for n in names if registry[n].link is None]
        if no_link:
            able = ", ".join(n for n, c in registry.items() if c.link is not None)
            raise click.UsageError(f"{', '.join(no_link)} run in-process only; over a link there are: {able}")
        if readme is not None:
            raise click.UsageError("--readme renders the in-process figures; it does not take a target")
    try:
        budget_s = None if budget is None else parse_duration_ms(budget) / 1000
    except UsageError as exc:
        raise click.BadParameter(str(exc), param_hint="--budget") from exc
    console = Console(stderr=True, soft_wrap=True)
    pump = _connect(url, target_name, targets_file, key_file, (dtr, rts), console) if over_link else None
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    try:
        chosen = [registry[n] for n in names] if names else [c for c in registry.values() if not over_link or c.link]
        for c in chosen:
            if pump is not None:
                missing = [f for f in c.link_needs if not pump.has(Feature[f.upper()])]
                if missing:
                    skipped.append({"name": c.name, "why": f"the target lacks {', '.join(missing)}"})
                    console.print(f"campaign {c.name}: [yellow]skipped[/yellow], the target lacks {', '.join(missing)}")
                    continue
            n = c.size(size, over_link=over_link)
            console.print(f"campaign {c.name}: {n:,} {c.unit} ({c.row}) ...")
            entry = run_campaign(c, n, budget_s, seed, pump)
            entries.append(entry)
            verdict = "[green]met[/green]" if entry["ok"] else "[red]NOT MET[/red]"
            console.print(f"  {verdict}: {entry['done']:,} {c.unit} in {entry['wall_s']} s; {entry['figures']}")
    finally:
        if pump is not None:
            pump.close()
    doc: dict[str, Any] = {"format": "pumprig-campaign/1", "size": size, "seed": seed, "campaigns": entries}
    if pump is not None:
        doc["target"] = {"name": pump.target.name, "url": pump.target.url}
        doc["skipped"] = skipped
    if out is not None:
        out.write_text(json.dumps(doc, indent=2) + "\n")
        console.print(f"figures: {out}")
    if readme is not None:
        readme.write_text(update_readme(readme.read_text(), render_table(entries)))
        console.print(f"table rendered into {readme}")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    sys.exit(0 if all(e["ok"] for e in entries) else 1)


def _connect(
    url: str | None,
    name: str | None,
    targets_file: Path | None,
    key_file: Path | None,
    lines: tuple[bool | None, bool | None],
    console: Console,
) -> DeviceUnderTest:
    """The target, connected and identified; exit 3 if it cannot be reached. ``lines``: DTR
    and RTS of a target given by URL (a target of the file says its own)."""
    if url is not None:
        target = target_for_url(url, key_file, dtr=lines[0], rts=lines[1])
    else:
        assert name is not None
        (target,) = named_targets((name,), targets_file)
    return connect_or_exit(target, console, verb="reach")
