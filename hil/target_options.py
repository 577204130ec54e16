"""The command-line options that say how to reach a target beyond its URL or name, shared by
``pumprig conform`` and ``pumprig campaign``: the targets file, the key set of a target given
by URL, and its DTR and RTS lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = ["target_options"]

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
