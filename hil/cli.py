"""The ``pumprig`` command: the root group, mounting the commands each package contributes."""

from __future__ import annotations

import click

from protocol_spec import __version__
from protocol_spec.cli import decode

from .demo import demo
from .keys_cli import keys_group
from .serve_cli import serve_command
from .simulate_cli import simulate_command
from .test_cli import testrole_group

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="pumprig")
def cli() -> None:
    """pumprig: a virtual implanted ITB pump, its telemetry protocol and a test rig.

    \b
    Start here:
      pumprig demo                      a session's frames, encoded, decoded and annotated
      pumprig decode --help             annotate frames from a capture or a board
      pumprig simulate --help           a therapy on the virtual pump, up to seven years
      pumprig serve --pty               the virtual pump on a pty (or --tcp 127.0.0.1:0); prints its URL
      pumprig test --help               drive a served pump by hand: time, faults, the plant's true state
      pumprig keys --help               generate a device key set, show its key ids

    Protocol: protocol_spec/SPEC.md; golden vectors: protocol_spec/vectors/.
    """


cli.add_command(decode)
cli.add_command(demo)
cli.add_command(simulate_command)
cli.add_command(serve_command)
cli.add_command(testrole_group)
cli.add_command(keys_group)


def main() -> None:
    cli()
