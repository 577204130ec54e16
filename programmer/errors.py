"""The programmer's one exception family, the sentence for every refusal, and the exit codes.

Everything the programmer raises on purpose is a ``ProgrammerError``. A refusal carries the
wire error code and the pump's ``field``/``lo``/``hi``/``retry_after_ms``; every error has a
sentence a clinician or a rig operator understands (``str(exc)``) and an ``exit_code``.

Exit codes (``EXIT_CODES``), for the ``pumprig`` commands built on this package:

=====  ===========================================================================  ==================
code   meaning                                                                      raised as
=====  ===========================================================================  ==================
0      success                                                                      -
1      an unexpected internal error (a bug: please report it)                        anything else
2      usage or local validation: a bad option or URL, a value outside its wire      ``UsageError``
       range, a key set without a key for the role
3      the link: port missing, permission denied, port busy, connection refused,     ``LinkError``
       link lost, not a pump this programmer can talk to
4      the pump refused the command; its reason and limit are printed                ``PumpRefused``
5      no reply: the pump did not answer a request that changes nothing, or the      ``NoReply``
       reply to a command it did carry out could not be read (``ReplyLost``)
6      uncertain outcome: a command with an effect may or may not have been          ``UncertainOutcome``
       carried out, and the pump's list of outcomes could not settle it.
       Interrogate the pump before doing anything again
7      key: the pump does not hold this key (UNKNOWN_KEY, or its key                  ``KeyMismatch``
       confirmation does not match)
=====  ===========================================================================  ==================
"""

from __future__ import annotations

from typing import Any

from protocol_spec.catalog import CATALOG
from protocol_spec.enums import ErrorCode, MsgType, Role, TherapyMode
from protocol_spec.fields import field_infos
from protocol_spec.messages import CommandOutcome, StageProgram

__all__ = [
    "EXIT_CODES",
    "KeyMismatch",
    "LinkError",
    "NoReply",
    "ProgrammerError",
    "PumpRefused",
    "ReplyLost",
    "UncertainOutcome",
    "UsageError",
    "describe_refusal",
    "exit_code_for",
]

EXIT_OK = 0
EXIT_INTERNAL = 1


class ProgrammerError(Exception):
    """Root of everything the programmer raises. ``code`` is the wire error code, if any."""

    exit_code = EXIT_INTERNAL
    code: ErrorCode | None = None


class UsageError(ProgrammerError):
    """Local misuse or bad input, found before anything was sent: nothing reached the pump."""

    exit_code = 2


class LinkError(ProgrammerError):
    """The port cannot be used, or the thing at the other end is not a pump we can talk to.

    ``reason`` is one of ``missing``, ``permission``, ``busy``, ``refused`` (nothing listens at a
    socket), ``lost`` (the port failed while in use), ``incompatible`` (protocol version),
    ``protocol`` (a reply that makes no sense) or ``other``; ``os_reason`` is the system's words.
    """

    exit_code = 3

    def __init__(self, url: str, reason: str, sentence: str, os_reason: str = "") -> None:
        self.url = url
        self.reason = reason
        self.os_reason = os_reason
        super().__init__(sentence + (f" ({os_reason})" if os_reason else ""))


class PumpRefused(ProgrammerError):
    """The pump answered with an error reply: nothing it refused was carried out.

    ``authenticated`` is False for a plaintext error reply inside a session: anyone on the link
    could have forged it, so for a command with an effect it proves nothing (SPEC.md).
    """

    exit_code = 4

    def __init__(
        self,
        code: ErrorCode,
        field: int = 255,
        lo: int = 0,
        hi: int = 0,
        retry_after_ms: int = 0,
        *,
        msg_type: MsgType | None = None,
        request: object | None = None,
        authenticated: bool = True,
    ) -> None:
        self.code = code
        self.field = field
        self.lo = lo
        self.hi = hi
        self.retry_after_ms = retry_after_ms
        self.msg_type = msg_type
        self.request = request
        self.authenticated = authenticated
        self.sentence = describe_refusal(code, field, lo, hi, retry_after_ms, msg_type=msg_type, request=request)
        what = f"{msg_type.name} " if msg_type is not None else ""
        forged = "" if authenticated else " [unauthenticated error reply: it may be forged]"
        super().__init__(f"{what}{self.sentence}{forged}")


class NoReply(ProgrammerError):
    """No reply after every retry, to a request that changes nothing (or to the handshake)."""

    exit_code = 5

    def __init__(self, msg_type: MsgType, attempts: int, hint: str = "") -> None:
        self.msg_type = msg_type
        self.attempts = attempts
        super().__init__(
            f"no reply to {msg_type.name} after {attempts} attempt{'s' if attempts != 1 else ''}: "
            f"is the pump there, in range, and is this its port?{hint}"
        )


class ReplyLost(ProgrammerError):
    """The pump lists the command as carried out (OK), but its stored reply could not be read."""

    exit_code = 5

    def __init__(self, command_id: int, msg_type: MsgType, outcome: CommandOutcome) -> None:
        self.code = ErrorCode.OK
        self.command_id = command_id
        self.msg_type = msg_type
        self.outcome = outcome
        super().__init__(
            f"{msg_type.name} (command id 0x{command_id:016x}) was carried out: the pump lists it as OK at "
            f"uptime {outcome.at_ms} ms, but its reply could not be read. Interrogate the pump to see the result; "
            "do not send it again as a new command"
        )


class UncertainOutcome(ProgrammerError):
    """A command with an effect got no reply and the pump's outcome list could not settle it."""

    exit_code = 6

    def __init__(self, command_id: int, msg_type: MsgType, why: str = "") -> None:
        self.command_id = command_id
        self.msg_type = msg_type
        super().__init__(
            f"outcome of {msg_type.name} (command id 0x{command_id:016x}) is UNKNOWN: it may or may not have been "
            "carried out. Interrogate the pump (its list of recent command outcomes) before doing anything again; "
            f"never repeat it as a new command{': ' + why if why else ''}"
        )


class KeyMismatch(ProgrammerError):
    """The pump does not hold our key: UNKNOWN_KEY, or its key confirmation did not match."""

    exit_code = 7

    def __init__(self, role: Role, key_id: int, *, code: ErrorCode | None) -> None:
        self.code = code
        self.role = role
        self.key_id = key_id
        if code is ErrorCode.UNKNOWN_KEY:
            why = f"the pump holds no {role.name} key with id 0x{key_id:08x}"
        else:
            why = (
                f"the pump's key confirmation does not match: it holds another {role.name} key under id "
                f"0x{key_id:08x} (or the reply was altered)"
            )
        super().__init__(f"{why}: give the key file this pump was provisioned with")


EXIT_CODES: dict[type[ProgrammerError], int] = {
    UsageError: UsageError.exit_code,
    LinkError: LinkError.exit_code,
    PumpRefused: PumpRefused.exit_code,
    NoReply: NoReply.exit_code,
    ReplyLost: ReplyLost.exit_code,
    UncertainOutcome: UncertainOutcome.exit_code,
    KeyMismatch: KeyMismatch.exit_code,
}
"""Exception class -> process exit code (0 is success, 1 an unexpected error)."""


def exit_code_for(exc: BaseException | None) -> int:
    """The exit code for how a command ended: 0 for None, 1 for anything not ours."""
    if exc is None:
        return EXIT_OK
    if isinstance(exc, ProgrammerError):
        return exc.exit_code
    return EXIT_INTERNAL


# ---------------------------------------------------------------------- sentences


def _ms(ms: int) -> str:
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms // 1000
    if seconds < 120:
        return f"{ms / 1000:g} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min {seconds % 60} s" if seconds % 60 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def quantity(value: int, unit: str) -> str:
    """An integer wire value with its unit, in the unit a clinician reads (2000000 ng/day -> 2000 ug/day)."""
    if unit in ("ng/day", "ng") and value % 1000 == 0:
        return f"{value // 1000} ug{unit[2:]}"
    if unit in ("nL", "nL/day"):
        if value % 1_000_000 == 0:
            return f"{value // 1_000_000} mL{unit[2:]}"
        if value % 1000 == 0:
            return f"{value // 1000} uL{unit[2:]}"
    if unit == "ms":
        return _ms(value)
    return f"{value} {unit}" if unit else str(value)


def _limit_unit(msg_type: MsgType | None, request: object | None) -> str:
    """The unit of a HARD_LIMIT or SOFT_LIMIT value: a daily dose, or a bolus dose."""
    if msg_type in (MsgType.STAGE_BOLUS, MsgType.STAGE_PATIENT_BOLUS):
        return "ng"
    if isinstance(request, StageProgram) and request.program.mode is TherapyMode.SINGLE_BOLUS:
        return "ng"
    return "ng/day"


def _field(msg_type: MsgType | None, field: int) -> tuple[str, str]:
    """(name, unit) of a top-level integer field of the request, or ('', '') if not one."""
    if msg_type is None or field == 255:
        return "", ""
    cls: type[Any] | None = CATALOG[msg_type].request if msg_type in CATALOG else None
    if cls is None:
        return "", ""
    infos = field_infos(cls)
    if not 0 <= field < len(infos) or infos[field].kind != "int":
        return "", ""
    return infos[field].name, infos[field].unit


def describe_refusal(
    code: ErrorCode,
    field: int = 255,
    lo: int = 0,
    hi: int = 0,
    retry_after_ms: int = 0,
    *,
    msg_type: MsgType | None = None,
    request: object | None = None,
) -> str:
    """One sentence saying why the pump refused, with its limit in a clinician's units."""
    name, unit = _field(msg_type, field)
    wait = f"; try again in {_ms(retry_after_ms)}" if retry_after_ms else ""
    if code is ErrorCode.HARD_LIMIT:
        return f"refused: above the hard limit of {quantity(hi, _limit_unit(msg_type, request))}; no override"
    if code is ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE:
        return (
            f"refused: above the soft limit of {quantity(hi, _limit_unit(msg_type, request))}; "
            "repeat with the soft-limit override once the clinician has confirmed it"
        )
    if code is ErrorCode.OUT_OF_RANGE:
        what = f"{name} is" if name else "a value is"
        if lo or hi:
            return f"refused: {what} out of range (allowed {quantity(lo, unit)} to {quantity(hi, unit)})"
        return f"refused: {what} out of range"
    if code is ErrorCode.VERSION_MISMATCH:
        return f"refused: the pump speaks protocol versions {lo} to {hi}, this programmer speaks 1"
    if code is ErrorCode.BOLUS_LOCKOUT:
        return f"refused: locked out; the next patient bolus may be granted in {_ms(retry_after_ms)}"
    if code is ErrorCode.BOLUS_DAILY_MAX:
        return f"refused: the maximum of {hi} patient boluses in a rolling 24 h has been reached"
    if code is ErrorCode.CONCENTRATION_MISMATCH:
        held = f", which holds {hi} ug/mL" if hi else ", which holds no drug"
        return f"refused: the concentration does not match the pump's reservoir{held}"
    if code is ErrorCode.BAD_TAG:
        return f"refused: the pump could not authenticate the frame (corrupted, or another key){wait}"
    if code is ErrorCode.BUSY:
        return f"refused: the pump is busy (a bolus running, or a memory write){wait}"
    return _SENTENCES.get(code, f"refused: {code.name}") + wait


_SENTENCES: dict[ErrorCode, str] = {
    ErrorCode.OK: "carried out",
    ErrorCode.REPLAYED_COUNTER: "refused: the frame's counter was used before (a replayed frame); nothing was done",
    ErrorCode.WRONG_ROLE: "refused: this session's role may not send this message",
    ErrorCode.NO_SESSION: "refused: the pump holds no such session (closed, timed out or lost in a reset)",
    ErrorCode.UNKNOWN_MESSAGE: "refused: the pump does not know this message type",
    ErrorCode.NOT_SUPPORTED: "refused: this pump does not support it (a feature it lacks, or not enabled)",
    ErrorCode.ALARM_ACTIVE: "refused: an active alarm forbids it (see the pump's alarms)",
    ErrorCode.STORAGE_FAULT: "refused: the pump could not record the command in its memory, so it did nothing",
    ErrorCode.MALFORMED: "refused: the pump could not parse the frame",
    ErrorCode.UNKNOWN_KEY: "refused: the pump holds no such key",
    ErrorCode.NOTHING_STAGED: "refused: nothing is staged (a staged change is dropped when its session ends)",
    ErrorCode.STAGE_MISMATCH: (
        "refused: the staged change is not the one confirmed (another change was staged since); nothing was applied"
    ),
    ErrorCode.COMMAND_ID_REUSED: "refused: this command id was used for another request; nothing was done",
    ErrorCode.MISSING_COMMAND_ID: "refused: the command carried no command id; nothing was done",
}
