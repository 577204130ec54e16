"""``pumprig demo``: the main job, shown end to end.

Until the virtual pump is served, the demo shows the protocol itself: a clinician session's
frames as they cross the wire, split, checked, decrypted and annotated by the same decoder
``pumprig decode`` uses, with line noise injected to show resynchronisation.
"""

from __future__ import annotations

import click

from protocol_spec import TEST_KEY_SET, MsgType
from protocol_spec.codec import Packet
from protocol_spec.examples import ScriptedFrame, example_session
from protocol_spec.framing import FramingError
from protocol_spec.inspect import CaptureDecoder, describe

__all__ = ["demo"]

_HIGHLIGHTS = (
    "IDENTIFY request",
    "IDENTIFY reply",
    "SESSION_OPEN request (clinician)",
    "SESSION_OPEN reply (clinician)",
    "INTERROGATE request",
    "STAGE_PROGRAM request",
    "STAGE_PROGRAM reply",
    "COMMIT request",
    "COMMIT reply",
    "ALARM_NOTIFY",
    "HARD_LIMIT error reply",
)


def _wire(data: bytes, limit: int = 48) -> str:
    text = data.hex(" ")
    return text if len(data) <= limit else text[: limit * 3] + f"... ({len(data)} bytes)"


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Annotate every frame of the session, not a selection.")
@click.option("--no-noise", is_flag=True, help="Do not inject line noise between frames.")
def demo(show_all: bool, no_noise: bool) -> None:
    """Show one session's frames: encoded, sent through a noisy line, decoded and annotated.

    The session sends every message type of the protocol once (identify, the handshake,
    interrogate, two-step programming, refill, alarms, log, clock, limits, the test role)
    and one refusal for every error code. Keys are the published TEST keys.
    """
    frames: list[ScriptedFrame] = example_session()
    decoder = CaptureDecoder(TEST_KEY_SET)
    shown = accepted = 0
    noise_frames = 0
    click.secho("pumprig demo: one session over a 115200-baud line, decoded as a receiver sees it", bold=True)
    click.echo("Keys: the published TEST key set (public; never for a real device).\n")
    for n, frame in enumerate(frames):
        data = frame.data
        if not no_noise and n in (5, 9):
            # Line noise before a frame: a burst of garbage, then a corrupted copy of it.
            corrupted = bytearray(frame.data)
            corrupted[len(corrupted) // 2] ^= 0x10
            data = b"\x13\x37\xff" + bytes(corrupted) + frame.data
            noise_frames += 1
        results = decoder.feed(data)
        for r in results:
            if isinstance(r.result, Packet):
                accepted += 1
            highlight = show_all or frame.name in _HIGHLIGHTS or not isinstance(r.result, Packet)
            if not highlight:
                continue
            shown += 1
            if isinstance(r.result, FramingError):
                click.secho(f"line noise -> {describe(r)} (dropped silently, counted)", fg="yellow")
                continue
            click.secho(f"{frame.name}", fg="cyan", bold=True)
            click.echo(f"  wire: {_wire(frame.data)}")
            click.echo(describe(r))
            click.echo("")
    types = {f.header.msg_type for f in frames if not f.header.is_error}
    errors = {f.message.code for f in frames if f.header.is_error}
    click.secho("Summary", bold=True)
    click.echo(
        f"  {len(frames)} frames sent, {accepted} accepted, {decoder.dropped} noisy frames dropped "
        f"({noise_frames} noise bursts injected); {len(types)} message types "
        f"(of {len(MsgType)}), {len(errors)} error codes."
    )
    if not show_all:
        click.echo("  Shown: a selection. `pumprig demo --all` annotates every frame; SPEC.md defines them.")
    if accepted != len(frames):
        raise click.ClickException(f"only {accepted} of {len(frames)} frames were accepted")
