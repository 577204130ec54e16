"""Targets on the command line, shared by ``pumprig conform`` and ``pumprig campaign``: the
options that say how to reach a target beyond its URL or name (the targets file, the key set of
a target given by URL, its DTR and RTS lines), targets by name, and the first connection, where
an unreachable target is one clear error and exit status 3."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from programmer.errors import ProgrammerError

from .conformance import DeviceUnderTest
from .conformance.targets import Target, TargetError, feature_names, load_targets

__all__ = ["connect_or_exit", "named_targets", "target_options"]

F = TypeVar("F", bound=Callable[..., Any])


def target_options(f: F) -> F:
    """Add ``--targets``, ``--key-file``, ``--dtr/--no-dtr`` and ``--rts/--no-rts`` (parameters
    ``targets_file``, ``key_file``, ``dtr``, ``rts``)."""
    options = (
        click.option(
            "--targets",
            "targets_file",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            help="Targets file (TOML; default: the shipped hil/conformance/targets.toml).",
        ),
        click.option(
            "--key-file",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            help="The key set of a pump given by --url (default: the published TEST keys).",
        ),
        click.option(
            "--dtr/--no-dtr",
            default=None,
            help="DTR of a pump given by --url once the port is open (default: asserted; --no-dtr: a board "
            "that resets on DTR).",
        ),
        click.option("--rts/--no-rts", default=None, help="RTS of a pump given by --url, likewise."),
    )
    for option in reversed(options):
        f = option(f)
    return f


def named_targets(names: tuple[str, ...], targets_file: Path | None) -> list[Target]:
    """The targets of these names in ``targets_file`` (or the shipped one); a usage error says
    what is wrong."""
    if not names:
        return []
    try:
        known = load_targets(targets_file)
    except TargetError as exc:
        raise click.UsageError(str(exc)) from exc
    missing = [n for n in names if n not in known]
    if missing:
        raise click.UsageError(f"no target {missing[0]!r}; defined: {', '.join(known)}")
    return [known[n] for n in names]


def connect_or_exit(target: Target, console: Console, *, verb: str) -> DeviceUnderTest:
    """The target connected and identified, its identity printed; if it cannot be reached,
    "cannot VERB NAME: why" and exit status 3."""
    from . import urlhandler  # noqa: PLC0415 - pump:// before the first open

    urlhandler.register()
    try:
        dut = DeviceUnderTest.connect(target)
    except (ProgrammerError, TargetError, OSError) as exc:
        console.print(f"[red]cannot {verb} {target.name}[/red]: {exc}")
        sys.exit(3)
    i, info = dut.identity, dut.interrogate_at_start
    console.print(
        f"target {target.name}: {info.model} {info.serial_number}, protocol {i.min_protocol_version}.."
        f"{i.protocol_version}, firmware {i.firmware_major}.{i.firmware_minor}.{i.firmware_patch}, "
        f"features: {', '.join(feature_names(dut.features))}"
    )
    return dut
