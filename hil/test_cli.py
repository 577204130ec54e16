"""``pumprig test``: the test role by hand - time, faults, the plant's true state, the step log.

Also ``PumpLink``, the rig's small synchronous request/reply helper over any pyserial port:

    port = serial.serial_for_url(url, timeout=0.5)
    link = PumpLink(port)
    link.open_session(TEST_KEY_SET.for_role(Role.TEST))
    status = link.request(m.Status())
    link.close_session()

A request is sent, and sent again (a new counter, the same command id) if no reply echoing
one of its counters arrives within ``protocol_spec.timing.REPLY_TIMEOUT_MS``, up to RETRIES
more times; the pump's exactly-once rule makes the repeats of an effectful request safe.
A refusal raises ``Refused`` with the wire error code. (Module and function names avoid
pytest's ``test_*`` collection on purpose: this is a command, not a test module.)
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import click
import serial
from serial.serialutil import SerialException

from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG, request_type_of
from protocol_spec.channel import Channel, client_finish, client_hello, new_command_id
from protocol_spec.codec import DecodeError, Packet, decode_header
from protocol_spec.enums import ErrorCode, FaultKind, MsgType, Role
from protocol_spec.framing import Deframer
from protocol_spec.jsonable import to_jsonable
from protocol_spec.security import TEST_KEY_SET, KeyFileError, KeySet, RoleKey
from protocol_spec.timing import REPLY_TIMEOUT_MS, RETRIES

from . import urlhandler

__all__ = ["LinkError", "PumpLink", "Refused", "SerialPort", "parse_duration_ms", "testrole_group"]

_MS_PER_UNIT = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_POLL_S = 0.05
"""The port's read timeout while a reply is awaited: the deadline is checked this often."""
_IDLE_S = 0.005
"""A read that returned early and empty (an in-process port with nothing queued) waits this long."""


class SerialPort(Protocol):
    """What PumpLink needs of a pyserial port (``serial.serial_for_url`` returns one)."""

    @property
    def timeout(self) -> float | None: ...
    @timeout.setter
    def timeout(self, value: float | None) -> None: ...
    @property
    def in_waiting(self) -> int: ...
    def read(self, size: int = 1, /) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...


class LinkError(Exception):
    """No reply, or a reply that makes no sense: the link or the target is at fault."""


class Refused(LinkError):
    """The pump answered with an error reply."""

    def __init__(self, msg_type: MsgType, reply: m.ErrorReply) -> None:
        self.msg_type = msg_type
        self.reply = reply
        self.code = reply.code
        detail = ""
        if reply.field != 255:
            detail += f" field {reply.field}"
        if reply.lo or reply.hi:
            detail += f" (allowed {reply.lo}..{reply.hi})"
        if reply.retry_after_ms:
            detail += f", retry after {reply.retry_after_ms} ms"
        super().__init__(f"the pump refused {msg_type.name}: {reply.code.name}{detail}")


class PumpLink:
    """Requests and their replies over a pyserial port, one at a time."""

    def __init__(self, port: SerialPort, *, reply_timeout_ms: int = REPLY_TIMEOUT_MS, retries: int = RETRIES) -> None:
        self.port = port
        self.reply_timeout_ms = reply_timeout_ms
        self.retries = retries
        self._deframer = Deframer()
        self._plain = Channel(from_pump=False)
        self._session: Channel | None = None
        self.notifications: list[m.AlarmNotify] = []
        """ALARM_NOTIFY messages received while waiting for replies, oldest first."""

    @property
    def in_session(self) -> bool:
        return self._session is not None

    def identify(self) -> m.IdentifyReply:
        reply: m.IdentifyReply = self.request(m.Identify())
        return reply

    def open_session(self, role_key: RoleKey) -> None:
        """The handshake: SESSION_OPEN, then the session keys from the pump's reply."""
        hello = client_hello(role_key, secrets.token_bytes(m.NONCE_BYTES))
        packet = self._exchange(hello)
        keys = client_finish(role_key, hello, packet.header, packet.message)
        if keys is None:
            raise LinkError(
                f"the pump's key confirmation does not match: it holds another {role_key.role.name} key "
                f"under id 0x{role_key.key_id:08x}"
            )
        self._session = Channel(from_pump=False, keys=keys)

    def close_session(self) -> None:
        """SESSION_CLOSE, best effort: a pump that does not answer forgets the session by itself."""
        if self._session is None:
            return
        try:
            self._exchange(m.SessionClose(), retries=0)
        except (LinkError, SerialException):
            pass
        finally:
            self._session = None

    def request(self, message: object) -> Any:
        """Send a request and return the reply's payload; raise Refused or LinkError."""
        return self._exchange(message).message

    def _exchange(self, message: object, *, retries: int | None = None) -> Packet:
        msg_type = request_type_of(message)
        d = CATALOG[msg_type]
        channel = self._plain if d.pre_session else self._session
        if channel is None:
            raise LinkError(f"{msg_type.name} needs a session: open_session() first")
        command_id = new_command_id() if d.effectful else 0
        counters: set[int] = set()
        tries = 1 + (self.retries if retries is None else retries)
        for _ in range(tries):
            out = channel.request(message, command_id)
            counters.add(out.header.counter)
            self.port.write(out.data)
            packet = self._await(msg_type, counters, time.monotonic() + self.reply_timeout_ms / 1000)
            if packet is not None:
                if packet.header.is_error:
                    raise Refused(msg_type, packet.message)
                return packet
        raise LinkError(
            f"no reply to {msg_type.name} after {tries} tries of {self.reply_timeout_ms} ms: "
            "is the pump there, and is this its port?"
        )

    def _await(self, msg_type: MsgType, counters: set[int], deadline: float) -> Packet | None:
        """The reply to one of ``counters`` (of ``msg_type``), or None at the deadline."""
        saved = self.port.timeout
        self.port.timeout = _POLL_S
        try:
            while time.monotonic() < deadline:
                chunk = self.port.read(1)
                if not chunk:
                    if deadline - time.monotonic() > _IDLE_S:
                        time.sleep(_IDLE_S)  # an in-process port returns at once when nothing is queued
                    continue
                waiting = self.port.in_waiting
                if waiting:
                    chunk += self.port.read(waiting)
                for item in self._deframer.feed(chunk):
                    if not isinstance(item, bytes):
                        continue  # line noise: dropped, as the spec says
                    packet = self._decode(item)
                    if packet is None:
                        continue
                    if packet.header.echo_counter in counters and packet.header.msg_type == msg_type:
                        return packet
                    if isinstance(packet.message, m.AlarmNotify):
                        self.notifications.append(packet.message)
            return None
        finally:
            self.port.timeout = saved

    def _decode(self, body: bytes) -> Packet | None:
        header = decode_header(body)
        if header is None or not header.from_pump:
            return None
        if header.secured:
            session = self._session
            if session is None or header.session_id != session.session_id:
                return None  # another client's session
            result = session.accept(body)
        else:
            result = self._plain.accept(body)
        return None if isinstance(result, DecodeError) else result


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


@contextmanager
def _test_session(target: _Target) -> Iterator[PumpLink]:
    if target.url is None:
        raise click.UsageError("give the pump's URL: pumprig test --port URL ... (or set PUMPRIG_PORT)")
    keys = _keys(target.key_file)
    role_key = keys.for_role(Role.TEST)
    if role_key is None:
        raise click.UsageError(f"{target.key_file} holds no TEST key: give the key set the pump was started with")
    urlhandler.register()
    try:
        port = serial.serial_for_url(target.url, timeout=target.timeout_ms / 1000)
    except (SerialException, ValueError) as exc:
        raise click.ClickException(
            f"cannot open {target.url}: {exc} (is `pumprig serve` running, and is this the URL it printed?)"
        ) from exc
    try:
        link = PumpLink(port, reply_timeout_ms=target.timeout_ms)
        try:
            link.open_session(role_key)
        except Refused as exc:
            if exc.code in (ErrorCode.UNKNOWN_KEY, ErrorCode.NOT_SUPPORTED):
                raise click.ClickException(
                    f"{exc}: the pump has no test role, or holds another TEST key "
                    "(pumprig serve has the test role unless --no-test-role; give its --key-file here too)"
                ) from exc
            raise click.ClickException(str(exc)) from exc
        except LinkError as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            yield link
        except LinkError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            link.close_session()
    finally:
        port.close()


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
    with _test_session(_target(ctx)) as link:
        _print_clock(link.request(m.AdvanceTime(delta_ms)), as_json)


@testrole_group.command("hold")
@_JSON
@click.pass_context
def hold_command(ctx: click.Context, as_json: bool) -> None:
    """Freeze the pump's clock: from now only `advance` moves it."""
    with _test_session(_target(ctx)) as link:
        _print_clock(link.request(m.HoldClock(1)), as_json)


@testrole_group.command("release")
@_JSON
@click.pass_context
def release_command(ctx: click.Context, as_json: bool) -> None:
    """Let the pump's clock run with real time again (from where it stands)."""
    with _test_session(_target(ctx)) as link:
        _print_clock(link.request(m.HoldClock(0)), as_json)


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
    with _test_session(_target(ctx)) as link:
        link.request(m.InjectFault(fault, param))
    if as_json:
        click.echo(json.dumps({"fault": fault.name, "param": param, "injected": True}))
    else:
        click.echo(f"injected {fault.name} (param {param})")


@testrole_group.command("plant")
@_JSON
@click.pass_context
def plant_command(ctx: click.Context, as_json: bool) -> None:
    """Show the plant's true state, which the firmware itself cannot see."""
    with _test_session(_target(ctx)) as link:
        reply: m.PlantReply = link.request(m.ReadPlant())
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
    with _test_session(_target(ctx)) as link:
        probe: m.StepLogReply = link.request(m.ReadStepLog(first if first is not None else 0, 1))
        start = max(probe.oldest_step, first if first is not None else probe.steps_total - count)
        times: list[int] = []
        index = start
        while len(times) < count and index < probe.steps_total:
            page: m.StepLogReply = link.request(m.ReadStepLog(index, min(m.MAX_STEP_LOG_PAGE, count - len(times))))
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
