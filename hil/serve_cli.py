"""``pumprig serve``: the virtual pump on a pty or a TCP socket, until SIGINT or SIGTERM."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from firmware_model.config import PumpConfig
from firmware_model.device import Device, DeviceConfig
from firmware_model.nvm import BootReport
from firmware_model.presets import PRESETS, boot_device, configs_from_toml
from protocol_spec.enums import Role
from protocol_spec.security import TEST_KEY_SET, KeyFileError, KeySet

from .serve import PtyServer, Server, StateFile, StateFileError, TcpServer, open_state

__all__ = ["load_keys", "parse_host_port", "serve_command"]

_EPILOG = (
    """
\b
Presets (--preset NAME):
"""
    + "\n".join(f"  {name:<14} {text}" for name, text in PRESETS.items())
    + """

\b
Config file (--config FILE, TOML; every key is optional):
  reservoir_ml = 40                     # the 20 mL or the 40 mL pump
  step_volume_nl = 250
  stroke_error_nl_per_step = 5          # true minus nominal volume per step
  low_reservoir_threshold_nl = 2000000
  [battery]
  capacity_pc = 1750000000000000
  [device]
  serial_number = "VP0000042"
  session_timeout_ms = 300000
"""
)


@click.command(
    "serve",
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--pty", "use_pty", is_flag=True, help="Serve on a new pseudo-terminal (/dev/pts/N).")
@click.option("--tcp", metavar="HOST:PORT", help="Serve on a TCP socket (PORT 0: any free port).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Pump and device parameters from a TOML file (below).",
)
@click.option(
    "--time-scale",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Run the pump's clock N times faster than real time (session timeouts too).",
)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    help="Start in a ready-made situation (below); with --state, a new FILE only.  "
    "[default: default; a new --state FILE: factory-new]",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Keep the pump's non-volatile memory in FILE (written through, fsync'd): therapy, event log "
    "and boot counter survive a restart or a kill. A missing FILE is created (mode 0600) factory-new "
    "- an empty pump, STOPPED - or in the --preset situation; an existing FILE is booted as it is "
    "(--preset refused). The plant (true reservoir, battery charge) is not kept: a restarted pump "
    "holds what its firmware believes, on a full battery.",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The device's key set (pumprig keys generate).  [default: the published TEST keys]",
)
@click.option(
    "--no-test-role",
    is_flag=True,
    help="Start without the test role (no TEST_* messages), as a production build would.",
)
def serve_command(
    use_pty: bool,
    tcp: str | None,
    config_file: Path | None,
    time_scale: int,
    preset: str | None,
    state_file: Path | None,
    key_file: Path | None,
    no_test_role: bool,
) -> None:
    """Serve a virtual pump on a pty or a TCP socket until Ctrl-C (SIGINT) or SIGTERM.

    The first line on stdout is the URL to open, flushed at once: a /dev/pts/N path or
    socket://HOST:PORT, ready for any pyserial-based tool (serial.serial_for_url). Clients
    may come and go; the pump keeps running between them. Notes go to stderr.

    The test role is ON by default for this emulator (advance or hold time, inject faults,
    read the plant's true state): --no-test-role turns it off. With no --key-file the pump
    uses the published TEST key set, which protects nothing, and says so on stderr.

    The pump always has non-volatile memory, so resets, power cuts and memory corruption
    (pumprig test fault ...) reboot it as a real pump's; without --state that memory lives
    in the process and ends with it.

    \b
    Examples:
      pumprig serve --pty
      pumprig serve --tcp 127.0.0.1:0 --preset low-reservoir
      pumprig serve --pty --preset eri --time-scale 60 --key-file pump.keys
      pumprig serve --pty --state pump.state     # stop it, start it again: the same pump
      pumprig serve --pty > pump.url &        # in a script: the URL is pump.url's first line
      pumprig test --port "$(head -1 pump.url)" advance 30d
    In Python, with no process at all:
      import serial, hil.urlhandler; hil.urlhandler.register()
      port = serial.serial_for_url("pump://?preset=eri", timeout=1)
    """
    if use_pty == (tcp is not None):
        raise click.UsageError("give exactly one of --pty or --tcp HOST:PORT")
    test_role = not no_test_role
    try:
        pump_config, device_config = configs_from_toml(config_file) if config_file else (PumpConfig(), DeviceConfig())
        keys = load_keys(key_file)
    except (ValueError, KeyFileError) as exc:
        raise click.UsageError(str(exc)) from exc
    device_config = dataclasses.replace(device_config, test_role=test_role)
    state: StateFile | None = None
    try:
        if state_file is None:
            device, report = boot_device(preset, pump_config, device_config, keys)
            what = f"{preset or 'default'} pump"
        else:
            created = not state_file.exists()
            device, state, report = open_state(state_file, pump_config, device_config, keys, preset=preset)
            what = f"new {preset or 'factory-new'} pump in {state_file}" if created else f"the pump in {state_file}"
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except StateFileError as exc:
        raise click.BadParameter(str(exc), param_hint="'--state'") from exc
    try:
        _serve(device, report, state, what, tcp=tcp, time_scale=time_scale, key_file=key_file, test_role=test_role)
    finally:
        if state is not None:
            state.close()
    _note("stopped")


def _serve(
    device: Device,
    report: BootReport,
    state: StateFile | None,
    what: str,
    *,
    tcp: str | None,
    time_scale: int,
    key_file: Path | None,
    test_role: bool,
) -> None:
    _key_notes(device.keys, key_file, test_role)
    if state is not None:
        _boot_notes(device, report, state)
    server = _open_server(device, tcp, time_scale)
    try:
        click.echo(server.url)
        sys.stdout.flush()
        role = "test role on" if test_role else "test role off"
        speed = "real time" if time_scale == 1 else f"{time_scale}x real time"
        _note(f"{what} on {server.url} ({role}, {speed}); stop with Ctrl-C or SIGTERM")
        server.run()
    except StateFileError as exc:
        raise click.ClickException(f"{exc}: the pump has lost its non-volatile memory and stops") from exc
    finally:
        server.close()
        if server.dropped_out_bytes:
            _note(f"{server.dropped_out_bytes} bytes dropped for a client that did not read")


def _boot_notes(device: Device, report: BootReport, state: StateFile) -> None:
    _note(f"non-volatile memory in {state.path} (written through); boot {device.boot_counter}")
    if report.repaired:
        _note(f"{state.path}: a bad copy of {', '.join(report.repaired)} was repaired from the good one")
    if report.failed:
        _note(
            f"{state.path}: no good copy of {', '.join(report.failed)}: MEMORY_ERROR, "
            "minimum rate until a clinician reprograms"
        )


def _open_server(device: Device, tcp: str | None, time_scale: int) -> Server:
    try:
        if tcp is None:
            return PtyServer(device, time_scale=time_scale, note=_note)
        host, port = parse_host_port(tcp)
        return TcpServer(device, host, port, time_scale=time_scale, note=_note)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except OSError as exc:
        where = "a pty" if tcp is None else tcp
        raise click.UsageError(f"cannot serve on {where}: {exc.strerror or exc}") from exc


def parse_host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:0', 'localhost:5000', '[::1]:0' -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--tcp takes HOST:PORT such as 127.0.0.1:0 (0: any free port), not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def load_keys(key_file: Path | None) -> KeySet:
    """The key set in ``key_file``, or the published test key set."""
    return TEST_KEY_SET if key_file is None else KeySet.load(key_file)


def _key_notes(keys: KeySet, key_file: Path | None, test_role: bool) -> None:
    if keys.test_only:
        source = "no --key-file given" if key_file is None else f"{key_file} holds them"
        _note(
            f"using the published TEST key set ({source}): public, it protects nothing; "
            "for keys of your own: pumprig keys generate --out pump.keys, then --key-file pump.keys"
        )
    if test_role and keys.for_role(Role.TEST) is None:
        _note("the key set has no TEST key: TEST-role sessions will be refused (pumprig keys generate --roles ...)")


def _note(message: str) -> None:
    click.echo(f"pumprig serve: {message}", err=True)
