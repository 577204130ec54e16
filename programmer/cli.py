"""``pumprig interrogate|status|program|bolus|refill|alarms|log|clock|limits|calc``: the clinician's programmer.

``mount(root)`` adds these commands to a click group and the link options (--url, --key-file,
--role, --json, --trace, --dtr/--no-dtr, --rts/--no-rts) to the group itself, so both ``pumprig --url U status`` and
``pumprig status --url U`` work (the command's own option wins). The rig mounts them on
``pumprig``; opening ``pump://`` URLs needs the rig's URL handler registered first.

Exit codes: ``programmer.errors`` (0 ok, 1 bug, 2 usage or local validation, 3 link, 4 refused,
5 no reply, 6 uncertain outcome, 7 key).
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from protocol_spec import messages as m
from protocol_spec.enums import (
    AlarmCode,
    BolusKind,
    DrugId,
    ErrorCode,
    FaultKind,
    LogEventKind,
    MsgType,
    RefillConfirmation,
    Role,
    StageKind,
    TherapyMode,
    alarms_in,
)
from protocol_spec.jsonable import to_jsonable
from protocol_spec.security import KeyFileError, KeySet

from . import calc
from .client import Programmer, PublishedKeysWarning
from .errors import ProgrammerError, PumpRefused, UsageError, exit_code_for, quantity
from .workflows import (
    Change,
    Finished,
    bridge_duration_ms,
    continuous_program,
    flex_program,
    max_daily_dose,
    minimum_rate_program,
    program_settings,
    refill_flag,
    side_by_side,
    single_bolus_program,
    stage_and_commit,
    stopped_program,
)

__all__ = ["COMMANDS", "mount"]

DEFAULT_URL = "pump://"
URL_ENV = "PUMPRIG_URL"
_META = "pumprig.programmer."
_CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------------- options and plumbing


@dataclass(frozen=True)
class Link:
    url: str
    key_file: Path | None
    role: Role
    as_json: bool
    trace: bool = False
    dtr: bool | None = None
    rts: bool | None = None


_TRISTATE = ("dtr", "rts")
"""Link options whose False is a choice (--no-dtr), not an absent flag."""


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and (value is not False or param.name in _TRISTATE):
        ctx.meta[_META + str(param.name)] = value
    return value


def _link_param_specs() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    return [
        (
            ("--url",),
            {
                "metavar": "URL",
                "help": "The pump: a device path, socket://HOST:PORT, rfc2217://..., pump://?preset=NAME. "
                f"[env {URL_ENV}; default {DEFAULT_URL}]",
            },
        ),
        (
            ("--key-file",),
            {
                "type": click.Path(dir_okay=False, path_type=Path),
                "help": "The pump's key set (pumprig keys generate). Without it: the published TEST keys.",
            },
        ),
        (
            ("--role",),
            {
                "type": click.Choice(["clinician", "patient", "test"], case_sensitive=False),
                "help": "Which key of the set opens the session.  [default: clinician]",
            },
        ),
        (("--json", "as_json"), {"is_flag": True, "help": "Print one JSON object on stdout."}),
        (("--trace",), {"is_flag": True, "help": "Show every frame sent and received, annotated, on stderr."}),
        (
            ("--dtr/--no-dtr",),
            {"default": None, "help": "Hold DTR high/low once the port is open (--no-dtr: boards that reset on DTR)."},
        ),
        (
            ("--rts/--no-rts",),
            {"default": None, "help": "Hold RTS high/low once the port is open (--no-rts: boards that reset on RTS)."},
        ),
    ]


def _with_link(func: F, default_role: Role) -> F:
    """The link options on a command; their values (the command's, else the root's) land in ``link``."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        url: str | None,
        key_file: Path | None,
        role: str | None,
        as_json: bool,
        trace: bool,
        dtr: bool | None,
        rts: bool | None,
        **kw: Any,
    ) -> Any:
        meta = click.get_current_context().meta
        link = Link(
            url=url or meta.get(_META + "url") or os.environ.get(URL_ENV) or DEFAULT_URL,
            key_file=key_file or meta.get(_META + "key_file"),
            role=Role[(role or meta.get(_META + "role") or default_role.name).upper()],
            as_json=as_json or bool(meta.get(_META + "as_json")),
            trace=trace or bool(meta.get(_META + "trace")),
            dtr=dtr if dtr is not None else meta.get(_META + "dtr"),
            rts=rts if rts is not None else meta.get(_META + "rts"),
        )
        return func(*args, link=link, **kw)

    decorated: Callable[..., Any] = wrapper
    for decls, kw in reversed(_link_param_specs()):
        decorated = click.option(*decls, **kw)(decorated)
    return decorated  # type: ignore[return-value]


def link_options(func: F) -> F:
    """--url, --key-file, --role, --json, --trace, --dtr, --rts on a command (role default: clinician)."""
    return _with_link(func, Role.CLINICIAN)


def patient_link_options(func: F) -> F:
    """The link options of a patient's command: the role defaults to patient."""
    return _with_link(func, Role.PATIENT)


def yes_option(func: F) -> F:
    return click.option("--yes", "-y", is_flag=True, help="Confirm the finish step without asking (scripts).")(func)


def fail(exc: BaseException) -> None:
    """Print why a command failed (no traceback) and exit with its documented code."""
    click.echo(f"error: {exc}", err=True)
    sys.exit(exit_code_for(exc) if isinstance(exc, ProgrammerError) else 2)


def handled(func: F) -> F:
    """Map the programmer's exceptions (and a bad key file) to a message and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return func(*args, **kw)
        except (ProgrammerError, KeyFileError) as exc:
            fail(exc)
        return None

    return wrapper  # type: ignore[return-value]


@contextmanager
def connect(link: Link) -> Iterator[Programmer]:
    keys = KeySet.load(link.key_file) if link.key_file is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PublishedKeysWarning)
        prog = Programmer.open(
            link.url,
            keys=keys,
            role=link.role,
            dtr=link.dtr,
            rts=link.rts,
            trace=trace_to_stderr if link.trace else None,
        )
    if caught and not link.url.startswith("pump://"):
        click.echo(f"warning: {caught[0].message}", err=True)
    with prog:
        yield prog


def trace_to_stderr(text: str) -> None:
    click.echo(text, err=True)


def out_console(link: Link) -> Console:
    """Tables go to stdout, or to stderr when stdout carries JSON."""
    return Console(stderr=link.as_json, highlight=False, soft_wrap=False, width=110)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def kv_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    return table


def finish(link: Link, change: Change, *, yes: bool) -> Callable[[m.StageReply], bool]:
    """The finish step: old and new side by side, the pump's own figures, then a confirmation."""

    def confirm(stage: m.StageReply) -> bool:
        console = out_console(link)
        table = Table(title=change.title, title_justify="left")
        table.add_column("setting", style="bold")
        table.add_column("now")
        table.add_column("after the change", style="cyan")
        for setting, old, new in change.rows:
            table.add_row(setting, old, new)
        if stage.kind == StageKind.PROGRAM or stage.max_dose_ng_per_day:
            table.add_row("pump: highest dose", "", calc.fmt_ug(stage.max_dose_ng_per_day, "/day"))
        table.add_row("pump: highest rate", "", calc.fmt_ml(stage.max_rate_nl_per_day, "/day"))
        if stage.soft_limit_overridden:
            table.add_row("soft limit", "", "[yellow]OVERRIDDEN (logged)[/yellow]")
        console.print(table)
        for warning in change.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}")
        return ask(link, "Send this change to the pump?", yes=yes)

    return confirm


def ask(link: Link, question: str, *, yes: bool) -> bool:
    if yes:
        return True
    try:
        return click.confirm(question, default=False, err=link.as_json)
    except click.Abort:
        return False


def report_finished(link: Link, what: str, done: Finished, extra: dict[str, Any] | None = None) -> None:
    data: dict[str, Any] = {
        "committed": done.committed,
        "stage": to_jsonable(done.stage),
        "commit": to_jsonable(done.commit) if done.commit else None,
    }
    data.update(extra or {})
    if link.as_json:
        emit_json(data)
    elif done.committed:
        click.echo(f"{what}: committed (token 0x{done.stage.stage_token:08x}).")
    else:
        click.echo(f"{what}: not confirmed; aborted, nothing changed.")


# ---------------------------------------------------------------------- reading the pump


def _when(uptime_ms: int, now_uptime_ms: int, wall_ms: int) -> int:
    """A pump uptime as its wall clock (Unix ms)."""
    return wall_ms - (now_uptime_ms - uptime_ms)


def _iso(wall_ms: int) -> str:
    return dt.datetime.fromtimestamp(wall_ms / 1000, tz=dt.UTC).isoformat(timespec="seconds")


def therapy_json(reply: m.InterrogateReply, program: m.Program | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "mode": reply.mode.name,
        "concentration_ug_per_ml": reply.concentration_ug_per_ml,
        "dose_ng_per_day": reply.dose_ng_per_day,
        "rate_nl_per_day": reply.rate_nl_per_day,
    }
    if program is not None:
        data["program"] = to_jsonable(program)
    return data


def status_json(reply: m.InterrogateReply, program: m.Program | None, staged: int | None) -> dict[str, Any]:
    battery: dict[str, Any] = {
        "state": reply.battery_state.name,
        "remaining_permille": reply.battery_remaining_permille,
        "eri_at_ms": reply.eri_at_ms or None,
        "eri_wall_clock": None,
    }
    if reply.eri_at_ms:
        battery["eri_wall_clock"] = _iso(_when(reply.eri_at_ms, reply.uptime_ms, reply.wall_clock_ms))
    return {
        "serial_number": reply.serial_number,
        "uptime_ms": reply.uptime_ms,
        "wall_clock_ms": reply.wall_clock_ms,
        "reservoir_estimate_nl": reply.reservoir_estimate_nl,
        "reservoir_capacity_nl": reply.reservoir_capacity_nl,
        "low_reservoir_threshold_nl": reply.low_reservoir_threshold_nl,
        "drug": reply.drug.name,
        "alarms": [a.name for a in alarms_in(reply.alarms)],
        "silenced": [a.name for a in alarms_in(reply.silenced)],
        "therapy": therapy_json(reply, program),
        "bolus_active": reply.bolus_active.name,
        "battery": battery,
        "staged": staged,
    }


def status_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    therapy = data["therapy"]
    rows = [
        ("reservoir", f"{calc.fmt_ml(data['reservoir_estimate_nl'])} (estimate)"),
        ("drug", f"{data.get('drug', '-')} {therapy.get('concentration_ug_per_ml', '-')} ug/mL"),
        ("therapy", therapy["mode"]),
    ]
    if therapy.get("dose_ng_per_day") is not None:
        rows.append(("daily dose", calc.fmt_ug(therapy["dose_ng_per_day"], "/day")))
    rows.append(("rate", calc.fmt_ml(therapy["rate_nl_per_day"], "/day")))
    alarms = data["alarms"]
    rows.append(("alarms", "[red]" + ", ".join(alarms) + "[/red]" if alarms else "none"))
    battery = data["battery"]
    eri = f" (ERI since {battery['eri_wall_clock']})" if battery.get("eri_wall_clock") else ""
    remaining = battery.get("remaining_permille")
    rows.append(("battery", f"{battery['state']}{eri}" + (f", {remaining / 10:g} %" if remaining is not None else "")))
    rows.append(("bolus running", data["bolus_active"]))
    return rows


@click.command("interrogate", context_settings=_CTX)
@link_options
@handled
def interrogate_command(link: Link) -> None:
    """Everything the pump reports on the programmer's first screen.

    \b
    Examples:
      pumprig interrogate
      pumprig interrogate --url /dev/ttyACM0 --key-file pump-0042.keys --json
    """
    with connect(link) as prog:
        reply = prog.interrogate()
        program = prog.read_program()
    if link.as_json:
        emit_json({"interrogate": to_jsonable(reply), "program": to_jsonable(program)})
        return
    console = out_console(link)
    data = status_json(reply, program, None)
    rows = [
        ("pump", f"{reply.model} serial {reply.serial_number}"),
        ("firmware", f"{reply.firmware_major}.{reply.firmware_minor}.{reply.firmware_patch}"),
        ("pump clock", _iso(reply.wall_clock_ms)),
        ("reservoir", f"{calc.fmt_ml(reply.reservoir_estimate_nl)} of {calc.fmt_ml(reply.reservoir_capacity_nl)}"),
        ("low-reservoir alarm at", calc.fmt_ml(reply.low_reservoir_threshold_nl)),
        ("catheter + tubing", f"{calc.fmt_ml(reply.catheter_volume_nl)} + {calc.fmt_ml(reply.tubing_volume_nl)}"),
        *status_rows(data)[1:],
    ]
    console.print(kv_table("pumprig interrogate", rows))
    console.print(kv_table("active program", list(program_settings(program).items())))
    pb = reply.patient_bolus
    if pb.enabled:
        console.print(
            f"patient bolus: {calc.fmt_ug(pb.dose_ng)} over {quantity(pb.duration_ms, 'ms')}, "
            f"lockout {quantity(pb.lockout_ms, 'ms')}, at most {pb.max_per_24h} per 24 h"
        )


@click.command("status", context_settings=_CTX)
@link_options
@handled
def status_command(link: Link) -> None:
    """Reservoir, alarms, therapy and battery at a glance.

    `--json` prints one object with reservoir_estimate_nl, alarms (names), therapy (mode and
    parameters) and battery (state and, once raised, the ERI time). A patient key gets the
    short STATUS only.

    \b
    Examples:
      pumprig status
      PUMPRIG_URL=/dev/pts/5 pumprig status --json | jq .reservoir_estimate_nl
    """
    with connect(link) as prog:
        if link.role is Role.PATIENT:
            short = prog.status()
            data: dict[str, Any] = {
                "reservoir_estimate_nl": short.reservoir_estimate_nl,
                "alarms": [a.name for a in alarms_in(short.alarms)],
                "therapy": {"mode": short.mode.name, "rate_nl_per_day": short.rate_nl_per_day},
                "battery": {"state": short.battery_state.name, "eri_at_ms": None, "eri_wall_clock": None},
                "bolus_active": short.bolus_active.name,
                "staged": short.staged,
            }
        else:
            reply = prog.interrogate()
            program = prog.read_program()
            data = status_json(reply, program, prog.status().staged)
    if link.as_json:
        emit_json(data)
    else:
        out_console(link).print(kv_table("pumprig status", status_rows(data)))


# ---------------------------------------------------------------------- program


@click.group("program", context_settings=_CTX)
def program_group() -> None:
    """Change the basal therapy: one subcommand per mode, each ending in the finish step.

    The new program is checked here first (drug library limits, concentration, units), then
    staged; the pump's own figures are shown beside the old settings, and only a confirmed
    change is committed. A declined one is aborted: the running program continues.

    \b
    Examples:
      pumprig program continuous --dose-ug-per-day 350
      pumprig program continuous --dose-ug-per-day 1200 --override --yes
      pumprig program flex --step 00:00=300 --step 08:00=400 --step 20:00=300
      pumprig program flex --cycle-days 2 --step 00:00=300 --step 1/00:00=350
      pumprig program flex --per-hour --step 00:00=12.5 --step 08:00=15
      pumprig program single-bolus --dose-ug 50 --duration 10m
      pumprig program minimum-rate --yes
      pumprig program stop
    """


def _conc_option(func: F) -> F:
    return click.option(
        "--concentration-ug-per-ml",
        "concentration",
        type=int,
        help="The concentration you believe is in the reservoir; checked against the pump's "
        "before sending.  [default: the pump's]",
    )(func)


def _run_program(
    link: Link,
    prog: Programmer,
    new: m.Program,
    *,
    override: bool,
    yes: bool,
    warnings_: list[str] | None = None,
) -> None:
    old = prog.read_program()
    change = Change(
        f"program {new.mode.name}",
        side_by_side(program_settings(old), program_settings(new)),
        warnings_ or [],
    )
    expect = max_daily_dose(new) if new.mode in (TherapyMode.CONTINUOUS, TherapyMode.FLEX) else None
    done = stage_and_commit(
        prog,
        lambda: prog.stage_program(new, override_soft_limits=override),
        finish(link, change, yes=yes),
        expect_kind=StageKind.PROGRAM,
        expect_max_dose_ng_per_day=expect,
    )
    report_finished(link, f"program {new.mode.name.lower()}", done, {"program": to_jsonable(new)})


def _checked_concentration(prog: Programmer, limits: m.DrugLimits, given: int | None) -> tuple[int, m.InterrogateReply]:
    pump = prog.interrogate()
    if pump.concentration_ug_per_ml == 0:
        raise UsageError("the pump's reservoir holds no drug: refill it first (pumprig refill)")
    conc = given if given is not None else pump.concentration_ug_per_ml
    calc.check_concentration(conc, limits, pump.concentration_ug_per_ml)
    return conc, pump


@program_group.command("continuous", context_settings=_CTX)
@click.option(
    "--dose-ug-per-day", "dose", required=True, help="The daily dose in ug/day, decimals allowed (350, 12.5)."
)
@_conc_option
@click.option("--override", is_flag=True, help="Accept crossing a soft limit (confirmed by the clinician; logged).")
@yes_option
@link_options
@handled
def program_continuous(link: Link, dose: str, concentration: int | None, override: bool, yes: bool) -> None:
    """A constant daily dose.

    \b
    Examples:
      pumprig program continuous --dose-ug-per-day 350
      pumprig program continuous --dose-ug-per-day 350 --concentration-ug-per-ml 500 --yes --json
    """
    dose_ng = calc.parse_scaled(dose, "--dose-ug-per-day", 1000, "ng/day")
    with connect(link) as prog:
        limits = prog.read_limits()
        conc, pump = _checked_concentration(prog, limits, concentration)
        running = pump.dose_ng_per_day if pump.mode in (TherapyMode.CONTINUOUS, TherapyMode.FLEX) else 0
        crossed = calc.check_daily_dose(dose_ng, limits, override=override, running_ng_per_day=running)
        calc.check_rate(calc.rate_for_dose(dose_ng, conc), limits)
        warn = ["a soft limit is crossed under override (logged)"] if crossed else []
        _run_program(link, prog, continuous_program(conc, dose_ng), override=override, yes=yes, warnings_=warn)


@program_group.command("flex", context_settings=_CTX)
@click.option(
    "--step",
    "steps",
    multiple=True,
    required=True,
    metavar="[DAY/]HH:MM=DOSE",
    help="A dose change: from HH:MM (pump clock) of DAY (0-based, default 0), DOSE ug/day. Repeat it.",
)
@click.option("--cycle-days", type=int, default=1, show_default=True, help="Length of the repeating cycle, 1 to 7.")
@click.option("--per-hour", is_flag=True, help="The step doses are ug per HOUR: multiply them by 24.")
@click.option("--confirm-daily-units", is_flag=True, help="The doses really are per day, even if they look hourly.")
@_conc_option
@click.option("--override", is_flag=True, help="Accept crossing a soft limit (confirmed by the clinician; logged).")
@yes_option
@link_options
@handled
def program_flex(
    link: Link,
    steps: tuple[str, ...],
    cycle_days: int,
    per_hour: bool,
    confirm_daily_units: bool,
    concentration: int | None,
    override: bool,
    yes: bool,
) -> None:
    """A schedule of up to 13 dose changes a day over a 1-7 day cycle.

    A step's dose is a DAILY rate (ug/day) whatever the step's length: 60 ug per hour is
    1440 ug/day. A schedule that looks like hourly figures is refused unless you say which
    unit you mean (--per-hour or --confirm-daily-units).

    \b
    Examples:
      pumprig program flex --step 00:00=300 --step 08:00=400 --step 20:00=300
      pumprig program flex --per-hour --step 00:00=12.5 --step 08:00=16.5
      pumprig program flex --cycle-days 7 --step 00:00=300 --step 5/00:00=250
    """
    parsed = [calc.parse_flex_step(s, per_hour=per_hour) for s in steps]
    with connect(link) as prog:
        limits = prog.read_limits()
        conc, pump = _checked_concentration(prog, limits, concentration)
        new = flex_program(conc, cycle_days, parsed)
        running = pump.dose_ng_per_day if pump.mode in (TherapyMode.CONTINUOUS, TherapyMode.FLEX) else 0
        calc.check_per_hour(
            new.steps,
            cycle_days,
            concentration_ug_per_ml=conc,
            limits=limits,
            running_ng_per_day=running,
            per_hour=per_hour,
            units_confirmed=confirm_daily_units,
        )
        crossed = calc.check_daily_dose(max_daily_dose(new), limits, override=override, running_ng_per_day=running)
        for step in new.steps:
            calc.check_rate(calc.rate_for_dose(step.dose_ng_per_day, conc), limits)
        warn = ["a soft limit is crossed under override (logged)"] if crossed else []
        if per_hour:
            warn.append("the step doses were given per hour and multiplied by 24")
        _run_program(link, prog, new, override=override, yes=yes, warnings_=warn)


@program_group.command("stop", context_settings=_CTX)
@yes_option
@link_options
@handled
def program_stop(link: Link, yes: bool) -> None:
    """Stop basal delivery. Abrupt baclofen withdrawal is dangerous: stop only with a plan.

    \b
    Example:
      pumprig program stop
    """
    with connect(link) as prog:
        _run_program(
            link,
            prog,
            stopped_program(),
            override=False,
            yes=yes,
            warnings_=["stopping intrathecal baclofen abruptly risks withdrawal (boxed warning)"],
        )


@program_group.command("minimum-rate", context_settings=_CTX)
@yes_option
@link_options
@handled
def program_minimum_rate(link: Link, yes: bool) -> None:
    """Deliver the drug library's lowest rate (needs no concentration; keeps the catheter open).

    \b
    Example:
      pumprig program minimum-rate --yes
    """
    with connect(link) as prog:
        _run_program(link, prog, minimum_rate_program(), override=False, yes=yes)


@program_group.command("single-bolus", context_settings=_CTX)
@click.option("--dose-ug", "dose", required=True, help="The bolus dose in ug (e.g. 50).")
@click.option("--duration", required=True, help="Over this time: 90s, 30m, 1h.")
@_conc_option
@yes_option
@link_options
@handled
def program_single_bolus(link: Link, dose: str, duration: str, concentration: int | None, yes: bool) -> None:
    """One bolus, then the pump stops (screening doses: 50, 75, 100 ug).

    \b
    Example:
      pumprig program single-bolus --dose-ug 50 --duration 10m
    """
    dose_ng = calc.parse_scaled(dose, "--dose-ug", 1000, "ng")
    duration_ms = calc.parse_duration_ms(duration, "--duration")
    with connect(link) as prog:
        limits = prog.read_limits()
        conc, _ = _checked_concentration(prog, limits, concentration)
        calc.check_bolus_dose(dose_ng, limits, MsgType.STAGE_PROGRAM)
        try:
            _run_program(link, prog, single_bolus_program(conc, dose_ng, duration_ms), override=False, yes=yes)
        except PumpRefused as exc:
            if exc.code is ErrorCode.OUT_OF_RANGE and exc.lo > duration_ms:
                exc.args = (
                    f"STAGE_PROGRAM refused: {calc.fmt_ug(dose_ng)} over {quantity(duration_ms, 'ms')} is faster than "
                    f"the pump's fastest bolus: give --duration {quantity(exc.lo, 'ms')} or more",
                )
            raise


# ---------------------------------------------------------------------- boluses


@click.group("bolus", context_settings=_CTX)
def bolus_group() -> None:
    """Supplemental boluses on top of the basal program (which they never change).

    \b
    Examples:
      pumprig bolus priming --volume-ul 200 --duration 10m
      pumprig bolus bridge --old-concentration-ug-per-ml 500
      pumprig bolus patient --dose-ug 25 --duration 5m --lockout 4h --max-per-day 3
      pumprig bolus patient --disable
      pumprig bolus request             the patient's button (patient key)
      pumprig bolus cancel              stop the running supplemental bolus
    """


def _stage_supplemental(
    link: Link, prog: Programmer, kind: BolusKind, volume_nl: int, duration_ms: int, yes: bool
) -> None:
    pump = prog.interrogate()
    conc = pump.concentration_ug_per_ml
    new = {
        "kind": kind.name,
        "volume": calc.fmt_ml(volume_nl),
        "duration": quantity(duration_ms, "ms"),
        "drug in it": calc.fmt_ug(volume_nl * conc // 1000) + f" at {conc} ug/mL",
    }
    old = {"kind": pump.bolus_active.name, "volume": "-", "duration": "-", "drug in it": "-"}
    change = Change(f"{kind.name.lower()} bolus", side_by_side(old, new))
    done = stage_and_commit(
        prog,
        lambda: prog.stage_bolus(kind, volume_nl, duration_ms),
        finish(link, change, yes=yes),
        expect_kind=StageKind.BOLUS,
    )
    report_finished(link, f"{kind.name.lower()} bolus", done)


@bolus_group.command("priming", context_settings=_CTX)
@click.option("--volume-ul", required=True, help="Volume to push through, in uL (e.g. 200).")
@click.option("--duration", required=True, help="Over this time: 90s, 30m, 1h.")
@yes_option
@link_options
@handled
def bolus_priming(link: Link, volume_ul: str, duration: str, yes: bool) -> None:
    """Prime the catheter (after implant or a catheter revision).

    \b
    Example:
      pumprig bolus priming --volume-ul 200 --duration 10m
    """
    volume = calc.parse_scaled(volume_ul, "--volume-ul", 1000, "nL")
    duration_ms = calc.parse_duration_ms(duration, "--duration")
    with connect(link) as prog:
        _stage_supplemental(link, prog, BolusKind.PRIMING, volume, duration_ms, yes)


@bolus_group.command("bridge", context_settings=_CTX)
@click.option("--volume-ul", help="Dead volume holding the old drug.  [default: the pump's tubing + catheter]")
@click.option("--duration", help="Over this time (90s, 30m, 1h).  [default: the old drug at the running dose]")
@click.option("--old-concentration-ug-per-ml", "old_conc", type=int, help="The concentration before the refill.")
@yes_option
@link_options
@handled
def bolus_bridge(link: Link, volume_ul: str | None, duration: str | None, old_conc: int | None, yes: bool) -> None:
    """After a concentration change: push the old drug out of tubing and catheter at the old dose.

    \b
    Example:
      pumprig bolus bridge --old-concentration-ug-per-ml 500
    """
    with connect(link) as prog:
        pump = prog.interrogate()
        volume = (
            calc.parse_scaled(volume_ul, "--volume-ul", 1000, "nL")
            if volume_ul is not None
            else pump.catheter_volume_nl + pump.tubing_volume_nl
        )
        if duration is not None:
            duration_ms = calc.parse_duration_ms(duration, "--duration")
        elif old_conc is not None:
            duration_ms = bridge_duration_ms(volume, old_conc, pump.dose_ng_per_day)
        else:
            raise UsageError("give --duration, or --old-concentration-ug-per-ml to deliver it at the running dose")
        _stage_supplemental(link, prog, BolusKind.BRIDGE, volume, duration_ms, yes)


@bolus_group.command("patient", context_settings=_CTX)
@click.option("--dose-ug", help="Dose of one patient bolus, ug.")
@click.option("--duration", help="Over this time: 90s, 30m.")
@click.option("--lockout", help="Minimum time from one bolus to the next: 4h.")
@click.option("--max-per-day", type=int, help="At most this many in a rolling 24 h.")
@click.option("--disable", is_flag=True, help="Turn patient boluses off.")
@yes_option
@link_options
@handled
def bolus_patient(
    link: Link,
    dose_ug: str | None,
    duration: str | None,
    lockout: str | None,
    max_per_day: int | None,
    disable: bool,
    yes: bool,
) -> None:
    """Set what the patient may request (dose, lockout, maximum per day), or turn it off.

    \b
    Examples:
      pumprig bolus patient --dose-ug 25 --duration 5m --lockout 4h --max-per-day 3
      pumprig bolus patient --disable --yes
    """
    if disable:
        settings = m.PatientBolusSettings(0, 0, 0, 0, 0)
    else:
        if dose_ug is None or duration is None or lockout is None or max_per_day is None:
            raise click.UsageError("give --dose-ug, --duration, --lockout and --max-per-day (or --disable)")
        if not 1 <= max_per_day <= 255:
            raise click.UsageError("--max-per-day is 1 to 255")
        settings = m.PatientBolusSettings(
            1,
            calc.parse_scaled(dose_ug, "--dose-ug", 1000, "ng"),
            calc.parse_duration_ms(duration, "--duration"),
            calc.parse_duration_ms(lockout, "--lockout"),
            max_per_day,
        )
    with connect(link) as prog:
        limits = prog.read_limits()
        calc.check_bolus_dose(settings.dose_ng, limits, MsgType.STAGE_PATIENT_BOLUS)
        old = prog.interrogate().patient_bolus

        def show(s: m.PatientBolusSettings) -> dict[str, str]:
            if not s.enabled:
                return {"patient bolus": "off"}
            return {
                "patient bolus": "on",
                "dose": calc.fmt_ug(s.dose_ng),
                "duration": quantity(s.duration_ms, "ms"),
                "lockout": quantity(s.lockout_ms, "ms"),
                "max per 24 h": str(s.max_per_24h),
            }

        change = Change("patient bolus settings", side_by_side(show(old), show(settings)))
        done = stage_and_commit(
            prog,
            lambda: prog.stage_patient_bolus(settings),
            finish(link, change, yes=yes),
            expect_kind=StageKind.PATIENT_BOLUS_SETTINGS,
        )
        report_finished(link, "patient bolus settings", done)


@bolus_group.command("request", context_settings=_CTX)
@patient_link_options
@handled
def bolus_request(link: Link) -> None:
    """The patient's bolus button: one bolus under the settings the clinician committed.

    Opens a patient session (--role defaults to patient here). Prints the grant (dose,
    duration, when the next may be granted, how many remain in 24 h), or the pump's refusal:
    locked out (with the time to wait) or the daily maximum reached, exit code 4.

    \b
    Examples:
      pumprig bolus request
      pumprig bolus request --key-file pump-0042.keys --json
    """
    with connect(link) as prog:
        before = prog.status()
        try:
            grant = prog.patient_bolus_request()
        except PumpRefused as exc:
            if exc.code is ErrorCode.NOT_SUPPORTED:
                exc.args = (f"{exc}: patient boluses are off until a clinician sets them (pumprig bolus patient)",)
            if link.as_json:
                emit_json(
                    {
                        "granted": False,
                        "refusal": exc.code.name if exc.code is not None else None,
                        "retry_after_ms": exc.retry_after_ms or None,
                        "max_per_24h": exc.hi if exc.code is ErrorCode.BOLUS_DAILY_MAX else None,
                        "reason": exc.sentence,
                    }
                )
            raise
    wait_ms = max(0, grant.next_allowed_ms - before.uptime_ms)
    if link.as_json:
        emit_json({"granted": True, "grant": to_jsonable(grant), "next_allowed_in_ms": wait_ms})
        return
    click.echo(
        f"patient bolus granted: {calc.fmt_ug(grant.dose_ng)} over {quantity(grant.duration_ms, 'ms')}; "
        f"the next may be granted in {quantity(wait_ms, 'ms')}; {grant.remaining_24h} left in the present 24 h."
    )


@bolus_group.command("cancel", context_settings=_CTX)
@link_options
@handled
def bolus_cancel(link: Link) -> None:
    """Stop the running supplemental bolus (priming, bridge or patient); the basal program continues.

    \b
    Example:
      pumprig bolus cancel
    """
    with connect(link) as prog:
        running = prog.status().bolus_active
        prog.cancel_bolus()
        after = prog.status().bolus_active
    if link.as_json:
        emit_json({"was_running": running.name, "running": after.name})
    elif running is BolusKind.NONE:
        click.echo("bolus cancel: no bolus was running.")
    else:
        click.echo(
            f"{running.name} bolus cancelled" + (f" ({after.name} still running)." if after != BolusKind.NONE else ".")
        )


# ---------------------------------------------------------------------- refill


@click.command("refill", context_settings=_CTX)
@click.option("--aspirated-ml", required=True, help="Volume withdrawn from the reservoir, mL (e.g. 2.1).")
@click.option("--added-ml", required=True, help="Volume injected, mL (e.g. 20).")
@click.option("--concentration-ug-per-ml", "concentration", type=int, required=True, help="As on the vial's label.")
@click.option(
    "--drug", type=click.Choice(["baclofen", "saline"], case_sensitive=False), default="baclofen", show_default=True
)
@click.option("--needle-in-reservoir", is_flag=True, help="Confirm: the needle is in the reservoir (not the pocket).")
@click.option("--aspiration-confirmed", is_flag=True, help="Confirm: drug was aspirated before injecting.")
@click.option("--tolerance-ml", help="Flag a discrepancy beyond this.  [default: 1 mL or 10 % of expected]")
@click.option("--bridge/--no-bridge", default=None, help="After a concentration change, stage the bridge bolus.")
@yes_option
@link_options
@handled
def refill_command(
    link: Link,
    aspirated_ml: str,
    added_ml: str,
    concentration: int,
    drug: str,
    needle_in_reservoir: bool,
    aspiration_confirmed: bool,
    tolerance_ml: str | None,
    bridge: bool | None,
    yes: bool,
) -> None:
    """Record a refill: aspirated vs expected volume, the new drug, the pocket-fill guard.

    The aspirated volume is compared with the pump's calculated expectation: less than
    expected suggests OVER-infusion, more suggests UNDER-infusion. Both pocket-fill
    confirmations are required (asked for if not given; --yes does not give them). A new
    concentration offers the bridge bolus.

    \b
    Examples:
      pumprig refill --aspirated-ml 2.1 --added-ml 20 --concentration-ug-per-ml 500 \\
                     --needle-in-reservoir --aspiration-confirmed
      pumprig refill --aspirated-ml 3 --added-ml 20 --concentration-ug-per-ml 1000 \\
                     --needle-in-reservoir --aspiration-confirmed --bridge --yes --json
    """
    aspirated = calc.parse_scaled(aspirated_ml, "--aspirated-ml", 1_000_000, "nL")
    added = calc.parse_scaled(added_ml, "--added-ml", 1_000_000, "nL")
    tolerance = calc.parse_scaled(tolerance_ml, "--tolerance-ml", 1_000_000, "nL") if tolerance_ml else None
    drug_id = DrugId[drug.upper()]
    for given, text in (
        (needle_in_reservoir, "Is the needle in the reservoir (needle-position check done, not in the pocket)?"),
        (aspiration_confirmed, "Was drug aspirated from the reservoir before injecting?"),
    ):
        if not given and (yes or not ask(link, text, yes=False)):
            raise UsageError(
                "the pocket-fill guard needs both confirmations: --needle-in-reservoir and --aspiration-confirmed "
                "(an injection into the pocket instead of the reservoir can be a fatal overdose)"
            )
    confirmations = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED
    with connect(link) as prog:
        limits = prog.read_limits()
        if drug_id is DrugId.BACLOFEN:
            calc.check_concentration(concentration, limits, None)
        pump = prog.interrogate()
        if added > pump.reservoir_capacity_nl:
            raise UsageError(f"{calc.fmt_ml(added)} does not fit a {calc.fmt_ml(pump.reservoir_capacity_nl)} reservoir")
        changed = concentration != pump.concentration_ug_per_ml
        old = {
            "reservoir (estimate)": calc.fmt_ml(pump.reservoir_estimate_nl),
            "drug": f"{pump.drug.name} {pump.concentration_ug_per_ml} ug/mL",
        }
        new = {"reservoir (estimate)": calc.fmt_ml(added), "drug": f"{drug_id.name} {concentration} ug/mL"}
        rows = [*side_by_side(old, new), ("aspirated", "", calc.fmt_ml(aspirated))]
        warns = []
        if changed and pump.concentration_ug_per_ml:
            warns.append(
                f"the CONCENTRATION CHANGES from {pump.concentration_ug_per_ml} to {concentration} ug/mL: "
                "check the vial; the tubing and catheter still hold the old drug (a bridge bolus is offered)"
            )
        console = out_console(link)
        table = Table(title="refill", title_justify="left")
        for col in ("setting", "now", "after the refill"):
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        for w in warns:
            console.print(f"[yellow]warning:[/yellow] {w}")
        if not ask(link, "Record this refill in the pump?", yes=yes):
            if link.as_json:
                emit_json({"refilled": False})
            else:
                click.echo("refill: not confirmed; nothing was sent.")
            return
        reply = prog.refill(
            aspirated_volume_nl=aspirated,
            added_volume_nl=added,
            drug=drug_id,
            concentration_ug_per_ml=concentration,
            catheter_volume_nl=pump.catheter_volume_nl,
            confirmations=confirmations,
        )
        flag = refill_flag(reply, tolerance)
        result: dict[str, Any] = {"refilled": True, "reply": to_jsonable(reply), "flag": flag}
        result["bridge_offered"] = bool(reply.concentration_changed and pump.concentration_ug_per_ml)
        result["bridge"] = None
        if not link.as_json:
            console.print(
                kv_table(
                    "refill recorded",
                    [
                        ("expected", calc.fmt_ml(reply.expected_volume_nl)),
                        ("aspirated", calc.fmt_ml(reply.aspirated_volume_nl)),
                        ("discrepancy", calc.fmt_ml(reply.discrepancy_nl)),
                        ("reservoir now", calc.fmt_ml(reply.reservoir_estimate_nl)),
                    ],
                )
            )
        if flag:
            click.echo(f"FLAG: {flag}", err=True)
        if result["bridge_offered"]:
            click.echo(
                f"the concentration changed: {calc.fmt_ml(reply.bridge_volume_nl)} of the old "
                f"{pump.concentration_ug_per_ml} ug/mL drug remains in tubing and catheter; a bridge bolus "
                "delivers it at the running dose",
                err=True,
            )
            want = bridge if bridge is not None else (False if yes else ask(link, "Stage the bridge bolus?", yes=False))
            if want and pump.dose_ng_per_day:
                duration_ms = bridge_duration_ms(
                    reply.bridge_volume_nl, pump.concentration_ug_per_ml, pump.dose_ng_per_day
                )
                stage = prog.stage_bolus(BolusKind.BRIDGE, reply.bridge_volume_nl, duration_ms)
                committed = prog.commit(stage.stage_token)
                result["bridge"] = {
                    "volume_nl": reply.bridge_volume_nl,
                    "duration_ms": duration_ms,
                    "commit": to_jsonable(committed),
                }
                if not link.as_json:
                    click.echo(
                        f"bridge bolus: {calc.fmt_ml(reply.bridge_volume_nl)} over "
                        f"{quantity(duration_ms, 'ms')}, started."
                    )
    if link.as_json:
        emit_json(result)


# ---------------------------------------------------------------------- alarms


_ALARM = click.Choice([a.name for a in AlarmCode], case_sensitive=False)


@click.group("alarms", context_settings=_CTX)
def alarms_group() -> None:
    """Alarm settings, silencing and acknowledging.

    \b
    Examples:
      pumprig alarms configure --low-reservoir-ml 4 --critical-repeat 10m --non-critical-repeat 1h
      pumprig alarms silence LOW_RESERVOIR --for 1h
      pumprig alarms acknowledge MOTOR_STALL
    """


@alarms_group.command("configure", context_settings=_CTX)
@click.option("--low-reservoir-ml", help="Raise LOW_RESERVOIR below this.  [default: as now]")
@click.option("--critical-repeat", required=True, help="Repeat critical alarm tones this often: 10m.")
@click.option("--non-critical-repeat", required=True, help="Repeat non-critical tones this often: 1h.")
@yes_option
@link_options
@handled
def alarms_configure(
    link: Link, low_reservoir_ml: str | None, critical_repeat: str, non_critical_repeat: str, yes: bool
) -> None:
    """Set the low-reservoir threshold and the tone repeat intervals.

    \b
    Example:
      pumprig alarms configure --low-reservoir-ml 4 --critical-repeat 10m --non-critical-repeat 1h
    """
    crit = calc.parse_duration_ms(critical_repeat, "--critical-repeat")
    noncrit = calc.parse_duration_ms(non_critical_repeat, "--non-critical-repeat")
    for value, name in ((crit, "--critical-repeat"), (noncrit, "--non-critical-repeat")):
        if not 1000 <= value <= m.MAX_DURATION_MS:
            raise UsageError(f"{name} is 1 s to {quantity(m.MAX_DURATION_MS, 'ms')}")
    with connect(link) as prog:
        pump = prog.interrogate()
        threshold = (
            calc.parse_scaled(low_reservoir_ml, "--low-reservoir-ml", 1_000_000, "nL")
            if low_reservoir_ml
            else pump.low_reservoir_threshold_nl
        )
        if threshold > pump.reservoir_capacity_nl:
            raise UsageError(f"--low-reservoir-ml is above the reservoir's {calc.fmt_ml(pump.reservoir_capacity_nl)}")
        console = out_console(link)
        console.print(
            kv_table(
                "alarm settings",
                [
                    ("low reservoir", f"{calc.fmt_ml(pump.low_reservoir_threshold_nl)} -> {calc.fmt_ml(threshold)}"),
                    ("critical repeat", quantity(crit, "ms")),
                    ("non-critical repeat", quantity(noncrit, "ms")),
                ],
            )
        )
        if not ask(link, "Send these alarm settings?", yes=yes):
            click.echo("alarms configure: not confirmed; nothing was sent.", err=link.as_json)
            if link.as_json:
                emit_json({"configured": False})
            return
        reply = prog.configure_alarms(
            low_reservoir_threshold_nl=threshold, critical_repeat_ms=crit, non_critical_repeat_ms=noncrit
        )
    if link.as_json:
        emit_json({"configured": True, "config": to_jsonable(reply)})
    else:
        click.echo("alarm settings sent.")


@alarms_group.command("silence", context_settings=_CTX)
@click.argument("alarm", type=_ALARM)
@click.option("--for", "duration", default="1h", show_default=True, help="Silence its tone this long.")
@link_options
@handled
def alarms_silence(link: Link, alarm: str, duration: str) -> None:
    """Silence one alarm's tone for a while (the alarm stays active).

    \b
    Example:
      pumprig alarms silence LOW_RESERVOIR --for 2h
    """
    duration_ms = calc.parse_duration_ms(duration, "--for")
    if not 1 <= duration_ms <= m.MAX_DURATION_MS:
        raise UsageError(f"--for is at most {quantity(m.MAX_DURATION_MS, 'ms')}")
    with connect(link) as prog:
        prog.silence_alarm(AlarmCode[alarm.upper()], duration_ms)
    if link.as_json:
        emit_json({"silenced": alarm.upper(), "duration_ms": duration_ms})
    else:
        click.echo(f"{alarm.upper()} silenced for {quantity(duration_ms, 'ms')}.")


@alarms_group.command("acknowledge", context_settings=_CTX)
@click.argument("alarm", type=_ALARM)
@link_options
@handled
def alarms_acknowledge(link: Link, alarm: str) -> None:
    """Acknowledge an alarm (logged).

    \b
    Example:
      pumprig alarms acknowledge MOTOR_STALL
    """
    with connect(link) as prog:
        prog.acknowledge_alarm(AlarmCode[alarm.upper()])
    if link.as_json:
        emit_json({"acknowledged": alarm.upper()})
    else:
        click.echo(f"{alarm.upper()} acknowledged.")


# ---------------------------------------------------------------------- log


_KIND = click.Choice([k.name for k in LogEventKind], case_sensitive=False)
_LOG_COLUMNS = (
    "seq",
    "at_ms",
    "wall_clock_ms",
    "wall_clock",
    "kind",
    "code",
    "code_name",
    "count",
    "value_a",
    "value_b",
)


def code_name(entry: m.LogEntry) -> str:
    """The name behind a log entry's ``code``, by kind (SPEC.md "Event log"), where there is one."""
    tables: dict[LogEventKind, type[Any]] = {
        LogEventKind.ALARM_RAISED: AlarmCode,
        LogEventKind.ALARM_ACKNOWLEDGED: AlarmCode,
        LogEventKind.ALARM_SILENCED: AlarmCode,
        LogEventKind.ALARM_CLEARED: AlarmCode,
        LogEventKind.PROGRAM_COMMITTED: TherapyMode,
        LogEventKind.FAULT_INJECTED: FaultKind,
        LogEventKind.SECURITY: ErrorCode,
        LogEventKind.REFILL: DrugId,
        LogEventKind.BOLUS_STARTED: BolusKind,
        LogEventKind.BOLUS_COMPLETED: BolusKind,
        LogEventKind.BOLUS_INTERRUPTED: BolusKind,
        LogEventKind.SESSION_OPENED: Role,
        LogEventKind.SESSION_CLOSED: Role,
    }
    table = tables.get(entry.kind)
    if table is None:
        return ""
    try:
        return str(table(entry.code).name)
    except ValueError:
        return ""


def log_row(entry: m.LogEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at_ms": entry.at_ms,
        "wall_clock_ms": entry.wall_clock_ms,
        "wall_clock": _iso(entry.wall_clock_ms),
        "kind": entry.kind.name,
        "code": entry.code,
        "code_name": code_name(entry),
        "count": entry.count,
        "value_a": entry.value_a,
        "value_b": entry.value_b,
    }


@click.command("log", context_settings=_CTX)
@click.option("--kind", "kinds", type=_KIND, multiple=True, help="Only entries of this kind (repeatable).")
@click.option("--since-seq", type=int, default=0, help="From this sequence number on.")
@click.option("--last", type=int, help="Only the newest N entries (after filtering).")
@click.option(
    "--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), help="Also write them to FILE as CSV."
)
@link_options
@handled
def log_command(link: Link, kinds: tuple[str, ...], since_seq: int, last: int | None, csv_file: Path | None) -> None:
    """Review the pump's event log: filter it, export it as CSV or JSON.

    \b
    Examples:
      pumprig log
      pumprig log --kind ALARM_RAISED --kind ALARM_CLEARED --last 20
      pumprig log --kind REFILL --csv refills.csv
      pumprig log --json > log.json
    """
    if since_seq < 0 or (last is not None and last < 1):
        raise UsageError("--since-seq is at least 0 and --last at least 1")
    wanted = {LogEventKind[k.upper()] for k in kinds}
    with connect(link) as prog:
        entries = [e for e in prog.read_all_log(since_seq) if not wanted or e.kind in wanted]
    if last is not None:
        entries = entries[-last:]
    rows = [log_row(e) for e in entries]
    if csv_file is not None:
        with csv_file.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=_LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    if link.as_json:
        emit_json({"entries": rows})
        return
    table = Table(title=f"pump event log ({len(rows)} entries)", title_justify="left")
    for col in ("seq", "wall clock", "kind", "code", "count", "value_a", "value_b"):
        table.add_column(col, justify="right" if col in ("seq", "count", "value_a", "value_b") else "left")
    for r in rows:
        table.add_row(
            str(r["seq"]), r["wall_clock"], r["kind"], r["code_name"] or str(r["code"]), str(r["count"]),
            str(r["value_a"]), str(r["value_b"]),
        )  # fmt: skip
    out_console(link).print(table)
    if csv_file is not None:
        click.echo(f"{len(rows)} entries written to {csv_file}")


# ---------------------------------------------------------------------- clock, limits, calc


def _parse_when(text: str) -> int:
    if text == "now":
        return int(dt.datetime.now(tz=dt.UTC).timestamp() * 1000)
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(
            f"--set takes now, an ISO 8601 time (2025-03-01T08:00:00+00:00) or epoch ms, not {text!r}"
        ) from exc
    if when.tzinfo is None:
        raise UsageError("give the time zone in --set (e.g. 2025-03-01T08:00:00+01:00): flex steps follow it")
    return int(when.timestamp() * 1000)


@click.command("clock", context_settings=_CTX)
@click.option("--set", "set_to", metavar="WHEN", help="Set the pump's clock: now, ISO 8601 with zone, or epoch ms.")
@yes_option
@link_options
@handled
def clock_command(link: Link, set_to: str | None, yes: bool) -> None:
    """Show the pump's wall clock (and its drift from this computer's), or set it.

    Flex steps follow the pump clock's time of day.

    \b
    Examples:
      pumprig clock
      pumprig clock --set now --yes
    """
    target = _parse_when(set_to) if set_to is not None else None
    with connect(link) as prog:
        status = prog.status()
        host = int(dt.datetime.now(tz=dt.UTC).timestamp() * 1000)
        data: dict[str, Any] = {
            "wall_clock_ms": status.wall_clock_ms,
            "wall_clock": _iso(status.wall_clock_ms),
            "host_clock_ms": host,
            "drift_ms": status.wall_clock_ms - host,
        }
        if target is not None:
            change = f"pump clock {_iso(status.wall_clock_ms)} -> {_iso(target)}"
            out_console(link).print(change)
            if ask(link, "Set the pump's clock?", yes=yes):
                reply = prog.set_clock(target)
                data["set"] = to_jsonable(reply)
            else:
                data["set"] = None
    if link.as_json:
        emit_json(data)
        return
    click.echo(f"pump clock {data['wall_clock']} (drift {data['drift_ms'] / 1000:+.1f} s from this computer)")
    if target is not None:
        click.echo("clock set." if data["set"] else "clock: not confirmed; nothing was sent.")


@click.command("limits", context_settings=_CTX)
@link_options
@handled
def limits_command(link: Link) -> None:
    """Show the pump's drug library: concentrations, rates, hard and soft dose limits.

    \b
    Example:
      pumprig limits --json
    """
    with connect(link) as prog:
        limits = prog.read_limits()
    if link.as_json:
        emit_json(to_jsonable(limits))
        return
    rows = [
        ("drug", limits.drug.name),
        ("concentrations", ", ".join(f"{c.ug_per_ml}" for c in limits.concentrations) + " ug/mL"),
        ("rates", f"{calc.fmt_ml(limits.min_rate_nl_per_day)} to {calc.fmt_ml(limits.max_rate_nl_per_day, '/day')}"),
        ("hard limit", calc.fmt_ug(limits.hard_limit_ng_per_day, "/day") + " (refused)"),
        ("soft limit", calc.fmt_ug(limits.soft_limit_ng_per_day, "/day") + " (needs --override)"),
        ("rise per 24 h", f"{limits.soft_increase_permille_per_24h / 10:g} % (more needs --override)"),
        ("largest bolus", calc.fmt_ug(limits.max_bolus_ng)),
    ]
    out_console(link).print(kv_table("drug library", rows))


@click.command("calc", context_settings=_CTX)
@click.option("--dose-ug-per-day", "dose", help="A daily dose, ug/day: gives the rate.")
@click.option("--rate-ml-per-day", "rate", help="A rate, mL/day: gives the daily dose.")
@click.option("--concentration-ug-per-ml", "concentration", type=int, required=True, help="The drug's concentration.")
@click.option("--reservoir-ml", help="Also: how many days this volume lasts at that rate.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handled
def calc_command(
    dose: str | None, rate: str | None, concentration: int, reservoir_ml: str | None, as_json: bool
) -> None:
    """The dose calculator: daily dose <-> rate at a concentration (no pump needed).

    Integer units as the pump computes them: rate_nl_per_day = dose_ng_per_day * 1000 //
    concentration, rounded down.

    \b
    Examples:
      pumprig calc --dose-ug-per-day 300 --concentration-ug-per-ml 500
      pumprig calc --rate-ml-per-day 0.6 --concentration-ug-per-ml 500 --json
      pumprig calc --dose-ug-per-day 300 --concentration-ug-per-ml 500 --reservoir-ml 20
    """
    if (dose is None) == (rate is None):
        raise UsageError("give exactly one of --dose-ug-per-day and --rate-ml-per-day")
    if dose is not None:
        result = calc.rate_for_dose(calc.parse_scaled(dose, "--dose-ug-per-day", 1000, "ng/day"), concentration)
    else:
        result = calc.dose_for_rate(
            calc.parse_scaled(rate or "", "--rate-ml-per-day", 1_000_000, "nL/day"), concentration
        )
    reservoir = calc.parse_scaled(reservoir_ml, "--reservoir-ml", 1_000_000, "nL") if reservoir_ml else None
    data: dict[str, Any] = {
        "dose_ng_per_day": result.dose_ng_per_day,
        "concentration_ug_per_ml": result.concentration_ug_per_ml,
        "rate_nl_per_day": result.rate_nl_per_day,
        "dose_ug_per_day": calc.fmt_ug(result.dose_ng_per_day).removesuffix(" ug"),
        "rate_ml_per_day": calc.fmt_ml(result.rate_nl_per_day).removesuffix(" mL"),
    }
    if reservoir is not None:
        data["reservoir_days"] = round(reservoir / result.rate_nl_per_day, 2) if result.rate_nl_per_day else None
    if as_json:
        emit_json(data)
        return
    rows = [
        ("daily dose", calc.fmt_ug(result.dose_ng_per_day, "/day")),
        ("concentration", f"{concentration} ug/mL"),
        ("rate", f"{calc.fmt_ml(result.rate_nl_per_day, '/day')} ({result.rate_nl_per_day} nL/day)"),
        ("per hour", f"{calc.fmt_ug(result.dose_ng_per_day * 1000 // 24 // 1000)}/h (NOT the flex step unit)"),
    ]
    if "reservoir_days" in data:
        rows.append(("reservoir lasts", f"{data['reservoir_days']} days"))
    Console(highlight=False).print(kv_table("dose calculator", rows))


# ---------------------------------------------------------------------- mounting


COMMANDS: list[click.Command] = [
    interrogate_command,
    status_command,
    program_group,
    bolus_group,
    refill_command,
    alarms_group,
    log_command,
    clock_command,
    limits_command,
    calc_command,
]


def mount(root: click.Group) -> None:
    """Add the programmer's commands to ``root`` and the link options to ``root`` itself."""
    for command in COMMANDS:
        root.add_command(command)
    for decls, kw in _link_param_specs():
        root.params.append(click.Option(list(decls), expose_value=False, callback=_remember, **kw))
