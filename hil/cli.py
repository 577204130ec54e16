"""The ``pumprig`` command: the root group, mounting the commands each package contributes."""

from __future__ import annotations

import click

from programmer.cli import mount as mount_programmer
from protocol_spec import __version__
from protocol_spec.cli import decode

from . import urlhandler
from .campaign_cli import campaign_command
from .conform_cli import conform_command
from .demo import demo
from .keys_cli import keys_group
from .serve_cli import serve_command
from .simulate_cli import simulate_command
from .testrole_cli import testrole_group

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
      pumprig conform --help            the protocol conformance suite against a pump, a board, a lab port
      pumprig campaign --help           reliability and security campaigns: fuzzing, noise, replay, power loss
      pumprig keys --help               generate a device key set, show its key ids

    \b
    The clinician's programmer (--url URL, or PUMPRIG_URL; default pump://, a virtual pump):
      pumprig status --json             reservoir, alarms, therapy, battery
      pumprig interrogate               everything the pump reports
      pumprig program --help            continuous, flex, stop, minimum-rate, single-bolus
      pumprig refill --help             aspirated vs expected, pocket-fill guard, bridge bolus
      pumprig bolus --help              priming, bridge, patient settings; request, cancel (patient role)
      pumprig alarms --help             configure, silence, acknowledge
      pumprig log --csv log.csv         the event log, filtered, as CSV or JSON
      pumprig clock | limits            the pump's clock, its drug library
      pumprig calc --dose-ug-per-day 300 --concentration-ug-per-ml 500
      --trace                           annotated frames (decrypted) on stderr, on any command
    Exit codes: 0 ok, 1 bug, 2 usage or local check (nothing sent), 3 link, 4 refused,
    5 no reply, 6 uncertain outcome (interrogate before anything else), 7 wrong key.

    Protocol: protocol_spec/SPEC.md; golden vectors: protocol_spec/vectors/.
    """


cli.add_command(decode)
cli.add_command(demo)
cli.add_command(simulate_command)
cli.add_command(serve_command)
cli.add_command(conform_command)
cli.add_command(campaign_command)
cli.add_command(testrole_group)
cli.add_command(keys_group)
mount_programmer(cli)
urlhandler.register()  # pump:// URLs for the programmer's commands


def main() -> None:
    cli()
