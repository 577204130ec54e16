"""``pumprig conform``: the conformance suite against a target, with a summary, JUnit and an HTML report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .conformance.report import group_summary, write_report
from .conformance.requirements import PROFILES, RequirementError, load_requirements
from .conformance.runner import (
    RunResult,
    Selection,
    TestResult,
    collect_suite,
    dump_json,
    group_by_requirement,
    run_conformance,
)
from .conformance.targets import Target, target_for_url
from .target_options import connect_or_exit, named_targets, target_options

__all__ = ["conform_command"]

DEFAULT_URL = "pump://"

_EPILOG = """
\b
Examples:
  pumprig conform                                   the built-in virtual pump, core profile
  pumprig conform --url /dev/pts/5 --profile full   a pump served with `pumprig serve --pty`
  pumprig conform --url /dev/ttyACM0 --report out/  a dev board; out/report.html
  pumprig conform --url rfc2217://lab-host:7000     a board behind ser2net (docs/boards.md)
  pumprig conform --target board --targets lab.toml a target by name, with its expected failures
  pumprig conform --list                            requirements and the tests that show them

\b
Profiles: core (what any device speaking the protocol must do), board (what a microcontroller
port is expected to do), full (everything the virtual pump does). A board team starts with core.
Tests that need a feature the target lacks (IDENTIFY's features: test_role, virtual_time,
fault_injection, step_log, ...) are skipped, with the reason; they are not required.

\b
Exit status: 0 every required test passed; 1 a test failed (or passed while expected to fail);
2 usage; 3 the target cannot be reached or identified.
The same suite runs under pytest: pytest --pump-url URL --pump-profile core (plugin "pumprig").
"""


@click.command(
    "conform",
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--url", "urls", multiple=True, metavar="URL", help="A pump by URL (repeatable). Default: pump://.")
@click.option(
    "--target", "names", multiple=True, metavar="NAME", help="A pump by name in the targets file (repeatable)."
)
@target_options
@click.option("--profile", type=click.Choice(PROFILES), default="core", show_default=True, help="Conformance profile.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write JUnit XML results here.")
@click.option(
    "--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), help="Write DIR/report.html here."
)
@click.option("-k", "keyword", metavar="EXPR", help="Only tests matching this pytest -k expression.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), help="Hypothesis seed (default: random, reported).")
@click.option("--json", "as_json", is_flag=True, help="The results as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="pytest's own output as well.")
@click.option("--list", "list_only", is_flag=True, help="List the requirements and their tests; run nothing.")
def conform_command(
    urls: tuple[str, ...],
    names: tuple[str, ...],
    targets_file: Path | None,
    key_file: Path | None,
    dtr: bool | None,
    rts: bool | None,
    profile: str,
    junit: Path | None,
    report_dir: Path | None,
    keyword: str | None,
    seed: int | None,
    as_json: bool,
    verbose: bool,
    list_only: bool,
) -> None:
    """Run the protocol conformance suite against a pump: a virtual one, a pty, a board, a lab port.

    Every test shows numbered requirements (hil/conformance/requirements/*.toml); the summary
    counts them per group, the report traces each to its tests and results.
    """
    console = Console(stderr=True, soft_wrap=True)
    if list_only:
        _list(profile, as_json)
        return
    if not urls and not names:
        urls = (DEFAULT_URL,)
        console.print(f"no --url or --target: testing the built-in virtual pump ({DEFAULT_URL})")
    selection = Selection(urls=urls, names=names, targets_file=targets_file, key_file=key_file, dtr=dtr, rts=rts)
    targets = _resolve(selection)
    for target in targets:
        _preflight(target, console)
    command = shlex.join(["pumprig", "conform", *sys.argv[2:]]) if len(sys.argv) > 1 else "pumprig conform"
    result = _run(selection, profile, seed, junit, keyword, verbose, command, show_progress=not verbose)
    if report_dir is not None:
        path = write_report(result, report_dir)
    if as_json:
        click.echo(dump_json(result))
    else:
        _summary(result, Console())
    if junit is not None:
        console.print(f"JUnit XML: {junit}")
    if report_dir is not None:
        console.print(f"report: {path}")
    sys.exit(0 if result.ok else 1)


def _resolve(selection: Selection) -> list[Target]:
    urls = [target_for_url(u, selection.key_file, dtr=selection.dtr, rts=selection.rts) for u in selection.urls]
    return urls + named_targets(selection.names, selection.targets_file)


def _preflight(target: Target, console: Console) -> None:
    """Connect once before the run, so an unreachable target is one clear error, not N failed tests."""
    connect_or_exit(target, console, verb="test").close()


def _run(
    selection: Selection,
    profile: str,
    seed: int | None,
    junit: Path | None,
    keyword: str | None,
    verbose: bool,
    command: str,
    *,
    show_progress: bool,
) -> RunResult:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress) as progress:
        task = progress.add_task(f"conformance ({profile})", total=None, failed=0)
        failed = 0

        def on_result(result: TestResult, total: int) -> None:
            nonlocal failed
            failed += result.outcome in ("failed", "error", "xpassed")
            progress.update(task, total=total, advance=1, failed=failed)

        return run_conformance(
            selection,
            profile=profile,
            seed=seed,
            junit=junit,
            keyword=keyword,
            verbose=verbose,
            on_result=on_result,
            command=command,
        )


def _summary(result: RunResult, console: Console) -> None:
    table = Table(title=f"conformance, profile {result.profile}: requirements per group")
    for column in ("group", "reqs", "passed", "failed", "xfail", "skipped", "not run"):
        table.add_column(column, justify="left" if column == "group" else "right")
    table.add_column("area", no_wrap=True, overflow="ellipsis")
    for group, area, counts in group_summary(result):
        cells = [str(counts[k]) for k in ("passed", "failed", "xfailed", "skipped", "not run")]
        failed = counts["failed"] > 0
        table.add_row(group, str(sum(counts.values())), *cells, area, style="red" if failed else None)
    console.print(table)
    for err in result.collection_errors:
        console.print(f"[red]suite error[/red]: {err}")
    for t in result.results:
        if t.outcome in ("failed", "error", "xpassed"):
            console.print(
                f"[red]{t.outcome.upper()}[/red] {t.name} [{t.target}] ({' '.join(t.requirements)}): {t.message}"
            )
    c = result.counts
    verdict = "[green]PASS[/green]" if result.ok else "[red]FAIL[/red]"
    console.print(
        f"{verdict}: {c['passed']} passed, {c['failed'] + c['error']} failed, {c['xfailed']} expected failures, "
        f"{c['xpassed']} unexpected passes, {c['skipped']} skipped in {result.duration_s:.1f} s "
        f"(seed {result.seed})"
    )


def _list(profile: str, as_json: bool) -> None:
    try:
        requirements = load_requirements()
    except RequirementError as exc:
        raise click.ClickException(str(exc)) from exc
    tests = group_by_requirement(collect_suite())
    if as_json:
        import json  # noqa: PLC0415

        rows = [
            {"id": r.id, "profile": r.profile, "text": r.text, "source": r.source, "tests": tests.get(r.id, [])}
            for r in requirements.values()
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="requirements (profile: core < board < full)")
    for column in ("id", "profile", "requirement", "tests"):
        table.add_column(column)
    for r in requirements.values():
        if PROFILES.index(r.profile) <= PROFILES.index(profile) or profile == "full":
            table.add_row(r.id, r.profile, r.text, "\n".join(tests.get(r.id, ["(none)"])))
    Console().print(table)
