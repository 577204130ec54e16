"""``pumprig simulate``: a therapy on the virtual pump, from a fill to a date or to EOS."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from firmware_model.errors import RefusalError
from firmware_model.simulate import (
    SimulationResult,
    SimulationSpec,
    SpecError,
    continuous_program,
    parse_days,
    parse_dose_ug,
    simulate,
    spec_from_toml,
)
from firmware_model.units import MS_PER_DAY, MS_PER_YEAR, NL_PER_ML

__all__ = ["simulate_command"]

_TOML_EXAMPLE = """
\b
TOML format (flags given on the command line override the file):
  reservoir_ml = 20
  concentration_ug_per_ml = 500
  until = "eos"                # or: days = 30
  auto_refill = true
  stroke_error_nl_per_step = 0
  [program]
  mode = "flex"                # or "continuous" with dose_ug_per_day = 300
  cycle_days = 1
  [[program.steps]]
  day = 0
  start = "00:00"
  dose_ug_per_day = 250
"""


@click.command(
    "simulate",
    epilog=_TOML_EXAMPLE,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="Therapy from a TOML file."
)
@click.option("--reservoir-ml", type=click.Choice(["20", "40"]), help="Reservoir profile.  [default: 20]")
@click.option("--concentration-ug-per-ml", type=int, help="Drug concentration.  [default: 500]")
@click.option("--dose-ug-per-day", help="Simple continuous dose, decimals allowed (e.g. 300 or 12.5).")
@click.option("--days", help="Simulated days, decimals allowed (e.g. 30 or 1.5).  [default: 30]")
@click.option("--until", type=click.Choice(["eos"]), help="Run until the battery's end of service.")
@click.option("--auto-refill", is_flag=True, default=None, help="Refill to full whenever LOW_RESERVOIR is raised.")
@click.option("--stroke-error-nl-per-step", type=int, help="True minus nominal volume per step (over-/under-infusion).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (times in seconds from the start).")
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), help="Draw reservoir, battery and rate to FILE."
)
def simulate_command(
    config_file: Path | None,
    reservoir_ml: str | None,
    concentration_ug_per_ml: int | None,
    dose_ug_per_day: str | None,
    days: str | None,
    until: str | None,
    auto_refill: bool | None,
    stroke_error_nl_per_step: int | None,
    as_json: bool,
    plot: Path | None,
) -> None:
    """Run a therapy on the virtual pump from a fill until a duration or until EOS.

    The pump is filled, the program committed (soft-limit crossings are reported as
    warnings, hard limits refused), and virtual time runs from event to event: a
    seven-year life takes well under a second.

    \b
    Examples:
      pumprig simulate --dose-ug-per-day 300 --days 30
      pumprig simulate --dose-ug-per-day 300 --until eos --auto-refill --json
      pumprig simulate --config flex.toml --until eos --auto-refill --plot life.png
    """
    try:
        spec = _spec(
            config_file, reservoir_ml, concentration_ug_per_ml, dose_ug_per_day, days, until, auto_refill,
            stroke_error_nl_per_step, plot is not None,
        )  # fmt: skip
        result = _run(spec, show_progress=not as_json and sys.stderr.isatty())
    except (SpecError, RefusalError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_summary(spec, result)
    if plot is not None:
        _plot(result, plot)
        if not as_json:
            click.echo(f"plot written to {plot}")


def _spec(
    config_file: Path | None,
    reservoir_ml: str | None,
    concentration: int | None,
    dose: str | None,
    days: str | None,
    until: str | None,
    auto_refill: bool | None,
    stroke_error: int | None,
    keep_samples: bool,
) -> SimulationSpec:
    if days is not None and until is not None:
        raise SpecError("give --days or --until eos, not both")
    if config_file is not None:
        spec = spec_from_toml(config_file)
        if concentration is not None:
            spec = dataclasses.replace(
                spec,
                concentration_ug_per_ml=concentration,
                program=dataclasses.replace(spec.program, concentration_ug_per_ml=concentration),
            )
        if dose is not None:
            spec = dataclasses.replace(
                spec, program=continuous_program(parse_dose_ug(dose, "--dose-ug-per-day"), spec.concentration_ug_per_ml)
            )
    else:
        if dose is None:
            raise SpecError("give --dose-ug-per-day (a simple continuous therapy) or --config FILE (any therapy)")
        conc = concentration if concentration is not None else 500
        spec = SimulationSpec(program=continuous_program(parse_dose_ug(dose, "--dose-ug-per-day"), conc))
        spec = dataclasses.replace(spec, concentration_ug_per_ml=conc, duration_ms=30 * MS_PER_DAY)
    changes: dict[str, Any] = {"keep_samples": keep_samples}
    if reservoir_ml is not None:
        changes["reservoir_ml"] = int(reservoir_ml)
    if days is not None:
        changes["duration_ms"] = parse_days(days)
    if until is not None:
        changes["duration_ms"] = None
    if auto_refill is not None:
        changes["auto_refill"] = auto_refill
    if stroke_error is not None:
        changes["stroke_error_nl_per_step"] = stroke_error
    return dataclasses.replace(spec, **changes)


def _run(spec: SimulationSpec, *, show_progress: bool) -> SimulationResult:
    if not show_progress:
        return simulate(spec)
    horizon = spec.duration_ms if spec.duration_ms is not None else 7 * MS_PER_YEAR
    columns = (TextColumn("simulating"), BarColumn(), TextColumn("{task.fields[day]:>8.1f} days"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("run", total=horizon, day=0.0)
        return simulate(spec, lambda now_ms: progress.update(task, completed=now_ms, day=now_ms / MS_PER_DAY))


def _print_summary(spec: SimulationSpec, r: SimulationResult) -> None:
    console = Console()
    table = Table(title="pumprig simulate", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("simulated", f"{r.end_ms / MS_PER_DAY:,.2f} days ({r.end_ms / MS_PER_YEAR:.2f} years)")
    table.add_row("reservoir", f"{spec.reservoir_ml} mL at {spec.concentration_ug_per_ml} ug/mL")
    table.add_row("motor step", f"{r.step_nl} nL; {r.steps:,} steps")
    table.add_row("commanded", f"{r.commanded_nl / NL_PER_ML:,.3f} mL")
    table.add_row("delivered (true)", f"{r.delivered_nl / NL_PER_ML:,.3f} mL")
    table.add_row("refills", str(r.refills))
    table.add_row("ERI", _when(r.eri_at_ms))
    table.add_row("EOS", _when(r.eos_at_ms))
    if r.eri_at_ms is not None and r.eos_at_ms is not None:
        table.add_row("ERI to EOS", f"{(r.eos_at_ms - r.eri_at_ms) / MS_PER_DAY:.1f} days")
    counts: dict[str, int] = {}
    for code, _ in r.alarms:
        counts[code.name] = counts.get(code.name, 0) + 1
    table.add_row("alarms raised", ", ".join(f"{n} x {c}" for c, n in counts.items()) or "none")
    table.add_row("events", f"{r.events:,}")
    console.print(table)
    for w in r.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


def _when(ms: int | None) -> str:
    if ms is None:
        return "not reached"
    return f"day {ms / MS_PER_DAY:,.1f} ({ms / MS_PER_YEAR:.2f} years)"


def _plot(r: SimulationResult, path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - only when a plot is asked for

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    days = [s.at_ms / MS_PER_DAY for s in r.samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, sharex=True, figsize=(10, 8))
    ax1.step(days, [s.estimate_nl / NL_PER_ML for s in r.samples], where="post", label="firmware estimate")
    ax1.step(days, [s.true_nl / NL_PER_ML for s in r.samples], where="post", label="true volume", linestyle="--")
    ax1.set_ylabel("reservoir (mL)")
    ax1.legend(loc="upper right")
    ax2.plot(days, [s.battery_permille / 10 for s in r.samples])
    ax2.set_ylabel("battery (%)")
    for ms, label in ((r.eri_at_ms, "ERI"), (r.eos_at_ms, "EOS")):
        if ms is not None:
            for ax in (ax1, ax2, ax3):
                ax.axvline(ms / MS_PER_DAY, color="red", linewidth=0.8)
            ax2.annotate(label, (ms / MS_PER_DAY, 50))
    ax3.step(days, [s.rate_nl_per_day / NL_PER_ML for s in r.samples], where="post")
    ax3.set_ylabel("rate (mL/day)")
    ax3.set_xlabel("days since the fill")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
