"""``pumprig test``: the test role by hand - time, faults, the plant's true state, the step log.

Each command talks to the pump through ``programmer.Programmer`` with the TEST role: requests
are sent again on a missing reply (an effectful one under the same command id), and the outcome
of an unanswered command is resolved from the pump's list of outcomes. A ``ProgrammerError``
ends the command with its sentence (a refusal also names the wire error code) and the exit code
every ``pumprig`` command uses for it (3 link, 4 refused, 5 no reply, 6 uncertain, 7 key);
usage errors (a bad duration, a key set without a TEST key) end it with exit code 2. (No name
here starts with ``test``: this is a command, not a test module.)
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import NoReturn

import click

from programmer.client import Programmer, open_port
from programmer.errors import KeyMismatch, ProgrammerError, PumpRefused, exit_code_for
from protocol_spec import messages as m
from protocol_spec.enums import ErrorCode, FaultKind, Role
from protocol_spec.jsonable import to_jsonable
from protocol_spec.security import TEST_KEY_SET, KeyFileError, KeySet
from protocol_spec.timing import REPLY_TIMEOUT_MS

from . import urlhandler

__all__ = ["parse_duration_ms", "testrole_group"]

_MS_PER_UNIT = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


# ---------------------------------------------------------------------- the command


def parse_duration_ms(text: str) -> int:
    """'90d', '12h', '1d12h', '1.5d', '30m', '45s', '250ms' -> whole milliseconds."""
    compact = text.replace(" ", "").lower()
    pos = 0
    total = Fraction(0)
    for match in _DURATION_PART.finditer(compact):
        if match.start() != pos:
            break
        total += Fraction(match.group(1)) * _MS_PER_UNIT[match.group(2)]
        pos = match.end()
    if pos != len(compact) or not compact:
        raise ValueError(f"a duration is a number with a unit (ms, s, m, h, d), such as 90d, 1d12h or 250ms: {text!r}")
    if total < 1 or total.denominator != 1:
        raise ValueError(f"{text}: must be at least 1 ms and a whole number of milliseconds")
    return int(total)


@dataclasses.dataclass(frozen=True)
class _Target:
    url: str | None
    key_file: Path | None
    timeout_ms: int


_FAULTS = {kind.name.lower().replace("_", "-"): kind for kind in FaultKind}


@click.group(
    "test",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--port",
    "url",
    envvar="PUMPRIG_PORT",
    metavar="URL",
    help="The pump: /dev/pts/N, socket://HOST:PORT, pump://?preset=NAME, ...  [env: PUMPRIG_PORT]",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Key set holding the pump's TEST key.  [default: the published TEST keys]",
)
@click.option(
    "--timeout-ms",
    type=click.IntRange(min=1),
    default=REPLY_TIMEOUT_MS,
    show_default=True,
    help="Wait this long for each reply before sending again.",
)
@click.pass_context
def testrole_group(ctx: click.Context, url: str | None, key_file: Path | None, timeout_ms: int) -> None:
    """Drive a scenario by hand with the test role: time, faults, the plant's true state.

    Each command opens a TEST-role session on the pump at --port, sends one request (or a
    few, for a long step log), prints the answer and closes the session. The pump must have
    been started with the test role (pumprig serve has it unless --no-test-role).

    \b
    Examples:
      pumprig serve --tcp 127.0.0.1:5000 --preset low-reservoir &
      pumprig test --port socket://127.0.0.1:5000 advance 30d
      pumprig test --port socket://127.0.0.1:5000 hold
      pumprig test --port socket://127.0.0.1:5000 fault motor-stall
      pumprig test --port socket://127.0.0.1:5000 plant --json
      pumprig test --port socket://127.0.0.1:5000 step-log --count 10
    --port pump://... opens a fresh in-process pump for this one command.
    """
    ctx.obj = _Target(url, key_file, timeout_ms)


def _fail(message: str, cause: ProgrammerError) -> NoReturn:
    """End the command: one line on stderr and the programmer's exit code for ``cause``."""
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(exit_code_for(cause)) from cause


def _say(exc: ProgrammerError) -> str:
    """The error's sentence; a refusal also names the wire error code (NOT_SUPPORTED, ...)."""
    if isinstance(exc, PumpRefused) and exc.code is not None:
        return f"{exc} [{exc.code.name}]"
    return str(exc)


@contextmanager
def _test_session(target: _Target) -> Iterator[Programmer]:
    if target.url is None:
        raise click.UsageError("give the pump's URL: pumprig test --port URL ... (or set PUMPRIG_PORT)")
    keys = _keys(target.key_file)
    if keys.for_role(Role.TEST) is None:
        raise click.UsageError(f"{target.key_file} holds no TEST key: give the key set the pump was started with")
    urlhandler.register()
    try:
        port = open_port(target.url)
    except ProgrammerError as exc:
        _fail(f"cannot open {target.url}: {exc} (is `pumprig serve` running, and is this the URL it printed?)", exc)
    try:
        prog = Programmer(
            port, keys=keys, role=Role.TEST, reply_timeout_ms=target.timeout_ms, url=target.url, owns_port=True
        )
    except BaseException:
        port.close()
        raise
    try:
        try:
            prog.connect()
        except (KeyMismatch, PumpRefused) as exc:
            if exc.code in (ErrorCode.UNKNOWN_KEY, ErrorCode.NOT_SUPPORTED):
                _fail(
                    f"{_say(exc)}: the pump has no test role, or holds another TEST key "
                    "(pumprig serve has the test role unless --no-test-role; give its --key-file here too)",
                    exc,
                )
            _fail(_say(exc), exc)
        except ProgrammerError as exc:
            _fail(_say(exc), exc)
        try:
            yield prog
        except ProgrammerError as exc:
            _fail(_say(exc), exc)
    finally:
        prog.close()


def _keys(key_file: Path | None) -> KeySet:
    if key_file is None:
        return TEST_KEY_SET
    try:
        return KeySet.load(key_file)
    except KeyFileError as exc:
        raise click.UsageError(str(exc)) from exc


def _target(ctx: click.Context) -> _Target:
    target = ctx.find_object(_Target)
    assert target is not None
    return target


def _uptime(ms: int) -> str:
    days, rest = divmod(ms, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{days} d {hours:02}:{minutes:02}:{seconds:02}.{millis:03}"


def _print_clock(reply: m.ClockReply, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"uptime_ms": reply.uptime_ms, "held": bool(reply.held)}))
    else:
        state = "held (only `advance` moves it)" if reply.held else "running"
        click.echo(f"pump uptime {_uptime(reply.uptime_ms)} ({reply.uptime_ms} ms); clock {state}")


_JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


@testrole_group.command("advance")
@click.argument("duration")
@_JSON
@click.pass_context
def advance_command(ctx: click.Context, duration: str, as_json: bool) -> None:
    """Move the pump's clock forward by DURATION (90d, 12h, 1d12h, 30m, 45s, 250ms).

    Therapy, alarms and the battery run through the whole interval, event by event, as if
    it had passed: years take a fraction of a second.
    """
    try:
        delta_ms = parse_duration_ms(duration)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    with _test_session(_target(ctx)) as prog:
        _print_clock(prog.advance_time(delta_ms), as_json)


@testrole_group.command("hold")
@_JSON
@click.pass_context
def hold_command(ctx: click.Context, as_json: bool) -> None:
    """Freeze the pump's clock: from now only `advance` moves it."""
    with _test_session(_target(ctx)) as prog:
        _print_clock(prog.hold_clock(True), as_json)


@testrole_group.command("release")
@_JSON
@click.pass_context
def release_command(ctx: click.Context, as_json: bool) -> None:
    """Let the pump's clock run with real time again (from where it stands)."""
    with _test_session(_target(ctx)) as prog:
        _print_clock(prog.hold_clock(False), as_json)


@testrole_group.command("fault")
@click.argument("kind", type=click.Choice(list(_FAULTS), case_sensitive=False))
@click.option("--param", type=click.IntRange(0, 0xFFFFFFFF), default=0, show_default=True, help="Fault parameter.")
@_JSON
@click.pass_context
def fault_command(ctx: click.Context, kind: str, param: int, as_json: bool) -> None:
    """Inject a fault: the pump reacts as its firmware would (alarms, safe state, reset).

    \b
    motor-stall          the motor stops; MOTOR_STALL is raised and delivery held
    motor-stall-clear    the motor moves again; MOTOR_STALL clears
    low-battery-reset    a reset from a battery dip: minimum rate and LOW_BATTERY_RESET
    reset                a processor reset: a running bolus is lost, therapy resumes
    memory-corruption    flip bit --param in non-volatile memory (where the pump has it)
    power-cut            lose power mid-write (where the pump has non-volatile memory)
    """
    fault = _FAULTS[kind.lower()]
    with _test_session(_target(ctx)) as prog:
        prog.inject_fault(fault, param)
    if as_json:
        click.echo(json.dumps({"fault": fault.name, "param": param, "injected": True}))
    else:
        click.echo(f"injected {fault.name} (param {param})")


@testrole_group.command("plant")
@_JSON
@click.pass_context
def plant_command(ctx: click.Context, as_json: bool) -> None:
    """Show the plant's true state, which the firmware itself cannot see."""
    with _test_session(_target(ctx)) as prog:
        reply = prog.read_plant()
    if as_json:
        click.echo(json.dumps(to_jsonable(reply)))
        return
    rows = [
        ("true reservoir", f"{reply.true_reservoir_nl:,} nL ({reply.true_reservoir_nl / 1e6:.3f} mL)"),
        ("delivered (true)", f"{reply.delivered_true_nl:,} nL ({reply.delivered_true_nl / 1e6:.3f} mL)"),
        ("motor steps", f"{reply.steps_total:,}"),
        ("stroke error", f"{reply.stroke_error_nl_per_step:+} nL per step"),
        ("battery charge", f"{reply.battery_charge_uc:,} uC ({reply.battery_charge_uc / 1e6:,.1f} C)"),
        ("motor", "STALLED" if reply.motor_stalled else "turning freely"),
    ]
    for name, value in rows:
        click.echo(f"{name:<18} {value}")


@testrole_group.command("step-log")
@click.option("--first", type=click.IntRange(min=0), help="Index of the first step (0-based).  [default: the latest]")
@click.option("--count", type=click.IntRange(min=1), default=16, show_default=True, help="How many steps.")
@_JSON
@click.pass_context
def step_log_command(ctx: click.Context, first: int | None, count: int, as_json: bool) -> None:
    """Show when the motor's steps were taken (pump uptime), from the pump's step ring."""
    with _test_session(_target(ctx)) as prog:
        probe = prog.read_step_log(first if first is not None else 0, 1)
        start = max(probe.oldest_step, first if first is not None else probe.steps_total - count)
        times: list[int] = []
        index = start
        while len(times) < count and index < probe.steps_total:
            page = prog.read_step_log(index, min(m.MAX_STEP_LOG_PAGE, count - len(times)))
            if not page.steps:
                break
            if not times:
                start = page.first_step
            times.extend(s.at_ms for s in page.steps)
            index = page.first_step + len(page.steps)
    if as_json:
        doc = {
            "steps_total": probe.steps_total,
            "oldest_step": probe.oldest_step,
            "steps": [{"index": start + i, "at_ms": t} for i, t in enumerate(times)],
        }
        click.echo(json.dumps(doc))
        return
    click.echo(f"{probe.steps_total:,} steps since manufacture; the ring holds from step {probe.oldest_step:,}")
    previous: int | None = None
    for i, t in enumerate(times):
        gap = "" if previous is None else f"  (+{t - previous:,} ms)"
        click.echo(f"step {start + i:>10,}  at {_uptime(t)}{gap}")
        previous = t
