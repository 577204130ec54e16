"""SPEC.md: generated from the protocol definitions and the prose template, or checked.

The prose lives in ``spec_template.md`` (beside this file), with ``{{NAME}}`` placeholders
that this module fills with tables and worked examples computed from the definitions:
the header, every message of the catalogue, every record, enum and error code, the access
matrix, the handshake with every intermediate value. The output is deterministic (no
timestamps, stable order), so ``--check`` can compare it with the committed file.

    python -m protocol_spec.specgen            # print to stdout
    python -m protocol_spec.specgen --write    # regenerate SPEC.md (make spec)
    python -m protocol_spec.specgen --check    # exit 1 if SPEC.md is stale
"""

from __future__ import annotations

import argparse
import ast
import enum
import functools
import hashlib
import hmac
import inspect
import itertools
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from . import codec, enums, examples, messages, vectorgen
from .catalog import CATALOG, MessageDef
from .codec import HEADER_BYTES, Header, encode_body, encode_payload
from .enums import (
    PROTOCOL_VERSION,
    AlarmCode,
    AlarmEvent,
    AlarmPriority,
    AlarmSet,
    BatteryState,
    BolusKind,
    DeviceClass,
    Direction,
    DrugId,
    ErrorCode,
    FaultKind,
    Feature,
    FrameFlags,
    LogEventKind,
    MsgType,
    ProgramSlot,
    RefillConfirmation,
    Role,
    StageKind,
    TherapyMode,
    TonePattern,
    alarm_priority,
)
from .fields import FieldInfo, field_infos, wire_size_range
from .framing import CRC_BYTES, MAX_BODY_BYTES, MAX_ENCODED_BYTES, MAX_FRAME_BYTES, crc32
from .messages import ErrorReply, Program
from .security import (
    PUMP_NONCE_LABEL,
    SESSION_INFO_LABEL,
    TAG_BYTES,
    TEST_KEY_LABEL,
    TEST_KEY_SET,
    aead_nonce,
    hkdf_info,
)
from .timing import BAD_TAG_FIRST_MS, BAD_TAG_MAX_MS, BITS_PER_BYTE, LINK_BAUD, REPLY_TIMEOUT_MS, RETRIES

__all__ = ["SPEC_PATH", "SPEC_VERSION", "main", "render"]

SPEC_VERSION = "1.0"
SPEC_PATH = Path(__file__).with_name("SPEC.md")
TEMPLATE_NAME = "spec_template.md"
STALE_MESSAGE = "SPEC.md is stale: run `make spec`"


_HEX_LINE_BYTES = 32

# --------------------------------------------------------------------------- meanings written here
# The enums carry names; what each value means to an implementer is written here, next to the
# generator, so that a new value without a meaning fails generation (see _check_meanings).

_ERRORS: dict[ErrorCode, tuple[str, str]] = {
    # code: (meaning, what the ErrorReply fields carry)
    ErrorCode.OK: (
        "Success. Appears only as a command outcome (`CommandOutcome.result`), never in an error reply.",
        "-",
    ),
    ErrorCode.BAD_TAG: (
        "A SECURED frame's tag does not verify (wrong key, corruption the CRC missed, forgery), or fewer than 16 "
        "bytes follow the header. Nothing was done.",
        "`retry_after_ms`: backoff before sending again",
    ),
    ErrorCode.REPLAYED_COUNTER: (
        "An authentic frame whose counter is at or below the highest accepted in its direction: a replay, or a "
        "retry that reused a counter. Nothing was done. Send again with a new counter.",
        "-",
    ),
    ErrorCode.WRONG_ROLE: (
        "The session's role may not send this message type (access matrix), or a pre-session type was sent "
        "inside a session.",
        "-",
    ),
    ErrorCode.NO_SESSION: (
        "A SECURED frame names a session the pump does not hold (never opened, closed, timed out, lost in a "
        "reset, or id 0), or a session-only message was sent in plaintext. Open a new session.",
        "-",
    ),
    ErrorCode.UNKNOWN_MESSAGE: (
        "`msg_type` is not defined, or the programmer sent a type only the pump sends (ALARM_NOTIFY).",
        "-",
    ),
    ErrorCode.NOT_SUPPORTED: (
        "The type is defined but this device lacks the feature it needs (IdentifyReply `features`), e.g. a FLEX "
        "program without FLEX.",
        "-",
    ),
    ErrorCode.VERSION_MISMATCH: (
        "Header byte 0 is not a protocol version the receiver speaks. The payload was not read.",
        "`lo`, `hi`: oldest and newest version spoken",
    ),
    ErrorCode.OUT_OF_RANGE: (
        "A field is outside its wire range (undefined enum value, undefined flag bit, bad text, array too long), "
        "or outside the device's range for it, or a field the therapy mode does not use is not 0.",
        "`field`; `lo`, `hi`: the allowed range",
    ),
    ErrorCode.HARD_LIMIT: (
        "The request exceeds a hard limit of the drug library (daily dose, rate, bolus). Refused; no override.",
        "`field`; `lo` 0; `hi`: the limit",
    ),
    ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE: (
        "The request crosses a soft limit (daily dose, or increase per rolling 24 h) and `override_soft_limits` "
        "is 0. Repeat with override 1 (logged) after the clinician confirms, under a new command id.",
        "`field`; `lo` 0; `hi`: the limit",
    ),
    ErrorCode.ALARM_ACTIVE: ("An active alarm forbids the request (e.g. no bolus starts during an alarm).", "-"),
    ErrorCode.BUSY: (
        "The pump cannot take the request now (e.g. a non-volatile write in progress). Nothing was recorded or "
        "done; retry with the same command id.",
        "`retry_after_ms`: minimum wait",
    ),
    ErrorCode.STORAGE_FAULT: (
        "The pump could not record the command in non-volatile memory, so it did not act.",
        "-",
    ),
    ErrorCode.MALFORMED: (
        "The frame cannot be parsed: a payload of the wrong length for its type, undefined header flags, or ERROR "
        "without FROM_PUMP. (A body shorter than a header is also MALFORMED, but is dropped: there is nothing to "
        "echo.)",
        "-",
    ),
    ErrorCode.UNKNOWN_KEY: (
        "SESSION_OPEN names a (role, key id) for which the device holds no key.",
        "`field` 1 (`key_id`)",
    ),
    ErrorCode.NOTHING_STAGED: (
        "The request needs a staged change and none is staged (COMMIT, or READ_PROGRAM of slot STAGED).",
        "-",
    ),
    ErrorCode.STAGE_MISMATCH: (
        "COMMIT's `stage_token` is not the token of the staged change. Nothing was applied.",
        "`field` 0 (`stage_token`)",
    ),
    ErrorCode.COMMAND_ID_REUSED: (
        "The command id is already recorded with another message type or payload. Nothing was done.",
        "-",
    ),
    ErrorCode.BOLUS_LOCKOUT: (
        "A patient bolus was requested before the lockout since the last one elapsed.",
        "`retry_after_ms`: time until a request may be granted",
    ),
    ErrorCode.BOLUS_DAILY_MAX: (
        "The maximum number of patient boluses in the rolling 24 h has been reached.",
        "`hi`: the maximum per 24 h",
    ),
    ErrorCode.CONCENTRATION_MISMATCH: (
        "The program's concentration differs from the concentration the pump holds for its reservoir.",
        "`field`; `lo` = `hi` = the pump's concentration (ug/mL)",
    ),
    ErrorCode.MISSING_COMMAND_ID: ("An effectful request has `command_id` 0. Nothing was done.", "-"),
}

_ALARMS: dict[AlarmCode, str] = {
    AlarmCode.LOW_RESERVOIR: (
        "The reservoir estimate is at or below the low-reservoir threshold. The estimate is calculated from "
        "commanded delivery, not measured."
    ),
    AlarmCode.EMPTY_RESERVOIR: "The reservoir estimate has reached empty.",
    AlarmCode.ERI: "Elective replacement indicator: the battery is near its end; at least 90 days of delivery remain.",
    AlarmCode.EOS: "End of service: the battery is exhausted and delivery has stopped.",
    AlarmCode.MOTOR_STALL: "The motor stalled (e.g. in an MRI field); delivery is interrupted. Recovery is logged.",
    AlarmCode.LOW_BATTERY_RESET: "The pump reset on a low battery; delivery continues at a very low rate.",
    AlarmCode.MEMORY_ERROR: (
        "Non-volatile memory is corrupt beyond repair; the pump is in its safe state (minimum rate)."
    ),
}

_TONES: dict[AlarmPriority, TonePattern] = {
    AlarmPriority.CRITICAL: TonePattern.TWO_TONE_3S,
    AlarmPriority.NON_CRITICAL: TonePattern.SINGLE_TONE_1S,
}

_MODES: dict[TherapyMode, str] = {
    TherapyMode.STOPPED: "No basal delivery.",
    TherapyMode.MINIMUM_RATE: (
        "Delivers the drug library's `min_rate_nl_per_day`; needs no concentration. Also the safe state after "
        "an unrecoverable memory error."
    ),
    TherapyMode.CONTINUOUS: "A constant daily dose.",
    TherapyMode.FLEX: "A schedule of dose steps over a cycle of 1 to 7 days, repeated.",
    TherapyMode.SINGLE_BOLUS: "One bolus of `bolus_dose_ng` over `bolus_duration_ms`, then STOPPED.",
}

_ENUM_MEANINGS: dict[type[enum.Enum], dict[str, str]] = {
    Direction: {
        "PROGRAMMER_TO_PUMP": "Frames sent by the programmer (FROM_PUMP clear).",
        "PUMP_TO_PROGRAMMER": "Frames sent by the pump (FROM_PUMP set).",
    },
    Role: {
        "CLINICIAN": "Programs therapy, refills, configures alarms and limits, reads everything.",
        "PATIENT": "Requests a patient bolus within its limits, reads status and limits, silences alarms.",
        "TEST": "Controls virtual time, injects faults, reads the plant. Emulators and test builds only.",
    },
    DeviceClass: {
        "ITB_PUMP": "Implanted intrathecal (baclofen) infusion pump.",
    },
    Feature: {
        "TEST_ROLE": "Accepts TEST sessions and the TEST_* messages (emulators and test builds only).",
        "VIRTUAL_TIME": "Time can be held and advanced (TEST_HOLD_CLOCK, TEST_ADVANCE_TIME).",
        "FAULT_INJECTION": "Faults can be injected (TEST_INJECT_FAULT).",
        "STEP_LOG": "Keeps a log of motor step times (TEST_READ_STEP_LOG).",
        "FLEX": "The FLEX therapy mode.",
        "PATIENT_BOLUS": "Patient-activated boluses (STAGE_PATIENT_BOLUS, PATIENT_BOLUS_REQUEST).",
        "PERSISTENT_STATE": "State is kept in non-volatile memory across resets and power cuts.",
    },
    AlarmEvent: {
        "RAISED": "The alarm became active.",
        "REPEATED": "Reminder at the alarm's repeat interval; still active.",
        "ACKNOWLEDGED": "A clinician acknowledged it.",
        "SILENCED": "Its tone was silenced; still active.",
        "CLEARED": "Its cause is gone; no longer active.",
    },
    AlarmPriority: {
        "NON_CRITICAL": "Warns; delivery continues.",
        "CRITICAL": "Delivery is stopped or limited.",
    },
    TonePattern: {
        "SINGLE_TONE_1S": "A 1-second single tone (non-critical alarms).",
        "TWO_TONE_3S": "A 3-second two-tone pattern (critical alarms).",
    },
    BolusKind: {
        "NONE": "No bolus.",
        "PRIMING": "Fills the catheter (after implant or a catheter revision).",
        "BRIDGE": "After a concentration change, pushes the old drug out of tubing and catheter at the old dose.",
        "PATIENT": "Patient-activated bolus.",
        "SINGLE": "The bolus of the SINGLE_BOLUS therapy mode (the pump stops when it ends).",
    },
    StageKind: {
        "PROGRAM": "A basal program (STAGE_PROGRAM).",
        "BOLUS": "A supplemental bolus (STAGE_BOLUS).",
        "PATIENT_BOLUS_SETTINGS": "Patient-bolus settings (STAGE_PATIENT_BOLUS).",
    },
    ProgramSlot: {
        "ACTIVE": "The program running now.",
        "STAGED": "The program staged, awaiting COMMIT.",
    },
    BatteryState: {
        "OK": "Normal.",
        "ERI": "Elective replacement indicator reached.",
        "EOS": "End of service: delivery stopped.",
    },
    DrugId: {
        "NONE": "No drug (empty reservoir).",
        "BACLOFEN": "Baclofen.",
        "SALINE": "Preservative-free saline (no drug).",
    },
    RefillConfirmation: {
        "NEEDLE_IN_RESERVOIR": "The clinician confirmed the needle is in the reservoir port.",
        "ASPIRATION_CONFIRMED": "The clinician confirmed the reservoir was aspirated before filling.",
    },
    FaultKind: {
        "MOTOR_STALL": "Stall the motor.",
        "MOTOR_STALL_CLEAR": "End an injected stall.",
        "LOW_BATTERY_RESET": "A reset on a low battery.",
        "MEMORY_CORRUPTION": "Flip bit `param` of the non-volatile memory image.",
        "RESET": "A firmware reset; state is reloaded from non-volatile memory.",
        "POWER_CUT": "Cut power, then restore it.",
    },
}

# Event log: (meaning, code, value_a, value_b) per kind. "-" means 0.
_LOG_FIELDS: dict[LogEventKind, tuple[str, str, str, str]] = {
    LogEventKind.ALARM_RAISED: ("An alarm became active.", "AlarmCode", "AlarmSet after the event", "-"),
    LogEventKind.ALARM_ACKNOWLEDGED: ("An alarm was acknowledged.", "AlarmCode", "Role of the session", "-"),
    LogEventKind.ALARM_SILENCED: ("An alarm's tone was silenced.", "AlarmCode", "silence duration (ms)", "Role"),
    LogEventKind.ALARM_CLEARED: ("An alarm's cause is gone.", "AlarmCode", "AlarmSet after the event", "-"),
    LogEventKind.PROGRAM_COMMITTED: (
        "A staged change was committed.",
        "StageKind",
        "stage_token",
        "highest daily dose (ng/day)",
    ),
    LogEventKind.PROGRAM_ABORTED: ("A staged change was aborted or discarded.", "StageKind", "stage_token", "-"),
    LogEventKind.REFILL: ("A refill was recorded.", "DrugId", "added volume (nL)", "aspirated minus expected (nL)"),
    LogEventKind.BOLUS_STARTED: ("A bolus started.", "BolusKind", "volume to deliver (nL)", "duration (ms)"),
    LogEventKind.BOLUS_COMPLETED: ("A bolus completed.", "BolusKind", "volume delivered (nL)", "-"),
    LogEventKind.BOLUS_INTERRUPTED: (
        "A bolus was cancelled or interrupted.",
        "BolusKind",
        "volume delivered (nL)",
        "volume not delivered (nL)",
    ),
    LogEventKind.RESET: ("The pump booted.", "-", "boot counter", "-"),
    LogEventKind.FAULT_INJECTED: ("The test role injected a fault.", "FaultKind", "fault parameter", "-"),
    LogEventKind.SECURITY: (
        "Refused frames (authentication or access); a burst is one entry.",
        "ErrorCode",
        "session id (0: none)",
        "msg_type of the last refused frame",
    ),
    LogEventKind.CLOCK_SET: ("The wall clock was set.", "-", "previous wall clock (ms)", "new wall clock (ms)"),
    LogEventKind.LIMITS_SET: ("The drug library was replaced.", "DrugId", "hard limit (ng/day)", "soft limit (ng/day)"),
    LogEventKind.SOFT_LIMIT_OVERRIDE: (
        "A soft limit was crossed under override.",
        "StageKind",
        "value staged",
        "soft limit crossed",
    ),
    LogEventKind.SESSION_OPENED: (
        "A session was opened and its programmer proved its key (its first sealed frame verified).",
        "Role",
        "session id",
        "key id",
    ),
    LogEventKind.SESSION_CLOSED: ("A session ended (closed or timed out).", "Role", "session id", "-"),
    LogEventKind.MEMORY_REPAIRED: (
        "One copy of the non-volatile state was corrupt and was rewritten from the other.",
        "-",
        "-",
        "-",
    ),
    LogEventKind.ALARM_CONFIG: (
        "Alarm settings were changed.",
        "-",
        "low-reservoir threshold (nL)",
        "critical repeat interval (ms)",
    ),
    LogEventKind.STALL_RECOVERED: (
        "The motor recovered from a stall.",
        "AlarmCode MOTOR_STALL",
        "stall duration (ms)",
        "-",
    ),
}

_ROLE_ORDER: tuple[Role, ...] = tuple(sorted(Role, key=int))

# --------------------------------------------------------------------------- markdown helpers


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(out)


def _hex_lines(data: bytes, indent: int) -> str:
    """Hex, 32 bytes per line; continuation lines indented by ``indent`` spaces."""
    if not data:
        return "(empty)"
    h = data.hex()
    step = _HEX_LINE_BYTES * 2
    chunks = [h[i : i + step] for i in range(0, len(h), step)]
    return ("\n" + " " * indent).join(chunks)


def _kv_block(rows: Sequence[tuple[str, str | bytes]]) -> str:
    """A fenced block of ``label  value`` lines, labels aligned; bytes shown as wrapped hex."""
    width = max(len(label) for label, _ in rows) + 2
    lines = []
    for label, value in rows:
        text = _hex_lines(value, width) if isinstance(value, bytes) else value.replace("\n", "\n" + " " * width)
        lines.append(f"{label.ljust(width)}{text}".rstrip())
    return "```\n" + "\n".join(lines) + "\n```"


def _slug(title: str) -> str:
    """GitHub's heading anchor."""
    s = title.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _link(name: str, anchor: str | None = None) -> str:
    return f"[{name}](#{anchor if anchor is not None else _slug(name)})"


def _msg_heading(t: MsgType) -> str:
    return f"0x{int(t):02X} {t.name}"


def _msg_link(t: MsgType) -> str:
    return _link(t.name, _slug(_msg_heading(t)))


# --------------------------------------------------------------------------- docstrings from source


def _source_docs(module: ModuleType) -> dict[str, str]:
    """Class docstrings (``Name``) and attribute docstrings (``Name.attr``) of a module, from its source.

    Read from the source, not ``__doc__``: dataclasses and enums synthesize docstrings that
    differ between Python versions, and attribute docstrings exist only in the source.
    """
    tree = ast.parse(inspect.getsource(module))
    docs: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        doc = ast.get_docstring(node)
        if doc:
            docs[node.name] = " ".join(doc.split())
        body = node.body
        for prev, cur in itertools.pairwise(body):
            if (
                isinstance(cur, ast.Expr)
                and isinstance(cur.value, ast.Constant)
                and isinstance(cur.value.value, str)
                and isinstance(prev, ast.Assign | ast.AnnAssign)
            ):
                target = prev.targets[0] if isinstance(prev, ast.Assign) else prev.target
                if isinstance(target, ast.Name):
                    docs[f"{node.name}.{target.id}"] = " ".join(cur.value.value.split())
    return docs


@functools.cache
def _docs() -> dict[str, str]:
    docs: dict[str, str] = {}
    for module in (enums, messages, codec):
        docs.update(_source_docs(module))
    return docs


_SOURCE_REFERENCE = re.compile(r"\s*\((?:SPEC|DOMAIN)\.md[^)]*\)")


def _clean(doc: str) -> str:
    """A docstring as SPEC.md prints it: Markdown code spans, no references to repository files."""
    doc = _SOURCE_REFERENCE.sub("", doc).replace("``", "`")
    return doc.replace(": see SPEC.md", ": see the event log").replace("see SPEC.md", "see this document")


def _class_doc(cls: type[Any]) -> str:
    return _clean(_docs().get(cls.__name__, ""))


def _member_doc(member: enum.Enum) -> str:
    cls = type(member)
    doc = _docs().get(f"{cls.__name__}.{member.name}", "") or _ENUM_MEANINGS.get(cls, {}).get(member.name, "")
    return _clean(doc)


# --------------------------------------------------------------------------- field tables


_RECORD_ORDER = (
    "Program",
    "FlexStep",
    "PatientBolusSettings",
    "CommandOutcome",
    "LogEntry",
    "DrugLimits",
    "Concentration",
    "StepTime",
)
"""Order of the Records section; a record not listed here follows, in first-use order."""


def _records() -> list[type[Any]]:
    """Every class laid out inside a payload (struct field or array item)."""
    found: list[type[Any]] = []

    def visit(cls: type[Any]) -> None:
        for info in field_infos(cls):
            if info.item is not None:
                if info.item not in found:
                    found.append(info.item)
                visit(info.item)

    for d in CATALOG.values():
        for cls in (d.request, d.reply):
            if cls is not None:
                visit(cls)

    def rank(cls: type[Any]) -> int:
        name = cls.__name__
        return _RECORD_ORDER.index(name) if name in _RECORD_ORDER else len(_RECORD_ORDER) + found.index(cls)

    return sorted(found, key=rank)


def _fixed_size(cls: type[Any]) -> int:
    """The size of a fixed-size record; 0 if its size varies."""
    lo, hi = wire_size_range(cls)
    return lo if lo == hi else 0


def _field_size(info: FieldInfo) -> tuple[int | None, str]:
    """(fixed size or None, size as printed)."""
    if info.kind == "struct":
        assert info.item is not None
        lo, hi = wire_size_range(info.item)
        return (lo, str(lo)) if lo == hi else (None, f"{lo}..{hi}")
    if info.kind == "array":
        assert info.item is not None
        ilo, ihi = wire_size_range(info.item)
        per = str(ihi) if ilo == ihi else f"({ilo}..{ihi})"
        return None, f"1 + {per}*n_{info.name}"
    return info.width_bytes, str(info.width_bytes)


def _type_cell(info: FieldInfo) -> str:
    if info.kind == "struct":
        assert info.item is not None
        return _link(info.item.__name__)
    if info.kind == "array":
        assert info.item is not None
        return f"u8 count + count x {_link(info.item.__name__)}"
    return f"`{info.wire_type}`"


def _full_range(info: FieldInfo) -> tuple[int, int]:
    bits = info.width_bytes * 8
    if info.signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _num(value: int) -> str:
    if value == (1 << 63) - 1:
        return "2^63-1"
    if value == (1 << 64) - 1:
        return "2^64-1"
    if value == (1 << 32) - 1:
        return "2^32-1"
    return str(value)


def _range_cell(info: FieldInfo) -> str:
    if info.kind == "int":
        if info.enum is not None:
            members = [m for m in info.enum if info.lo <= int(m) <= info.hi]
            link = _link(info.enum.__name__)
            if len(members) == len(info.enum):
                return link
            return f"{link}: " + ", ".join(m.name for m in members)
        if info.flags is not None:
            return f"{_link(info.flags.__name__)} (mask 0x{info.hi:0{info.width_bytes * 2}x})"
        if (info.lo, info.hi) == _full_range(info):
            return "any"
        return f"{_num(info.lo)}..{_num(info.hi)}"
    if info.kind == "raw":
        return "any"
    if info.kind == "text":
        return f"0..{info.width_bytes} chars, NUL-padded"
    if info.kind == "array":
        return f"count 0..{info.max_items}"
    return "-"


def _field_table(cls: type[Any]) -> str:
    infos = field_infos(cls)
    if not infos:
        return "Empty payload (0 bytes)."
    rows = []
    offset: int | None = 0  # the constant part; None once a variable-size record came before
    terms: list[str] = []  # per-item sizes of the arrays before, as "4*n_concentrations"
    for i, info in enumerate(infos):
        size, size_text = _field_size(info)
        if offset is None:
            offset_text = "var."
        elif terms:
            offset_text = " + ".join([str(offset), *terms])
        else:
            offset_text = str(offset)
        rows.append(
            [
                str(i),
                offset_text,
                size_text,
                f"`{info.name}`",
                _type_cell(info),
                info.unit or "-",
                _range_cell(info),
                _clean(info.doc),
            ]
        )
        if offset is not None and size is not None:
            offset += size
        elif offset is not None and info.kind == "array" and info.item is not None and _fixed_size(info.item):
            offset += 1
            terms.append(f"{_fixed_size(info.item)}*n_{info.name}")
        else:
            offset = None
    return _table(["#", "offset", "size", "field", "type", "unit", "range", "meaning"], rows)


def _size_text(cls: type[Any]) -> str:
    lo, hi = wire_size_range(cls)
    if lo == hi:
        return "1 byte" if lo == 1 else f"{lo} bytes"
    return f"{lo} to {hi} bytes"


def _payload_block(label: str, cls: type[Any], records: Sequence[type[Any]]) -> str:
    doc = _class_doc(cls)
    if not field_infos(cls):
        return f"**{label}: `{cls.__name__}`**, empty (0 bytes)." + (f" {doc}" if doc else "")
    head = f"**{label}: `{cls.__name__}`**, {_size_text(cls)}." + (f" {doc}" if doc else "")
    if cls in records:
        return f"{head} Layout: the {_link(cls.__name__)} record."
    return f"{head}\n\n{_field_table(cls)}"


# --------------------------------------------------------------------------- generated sections


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _roles_text(d: MessageDef) -> str:
    if d.pre_session:
        return "anyone, without a session (plaintext; no role)"
    return ", ".join(r.name for r in _ROLE_ORDER if r in d.roles)


def _message_section(d: MessageDef, records: Sequence[type[Any]]) -> str:
    t = d.msg_type
    lines = [f"### {_msg_heading(t)}", "", d.summary, ""]
    if d.request is None:
        sender = f"the pump, into sessions of: {_roles_text(d)}; unsolicited, `echo_counter` 0, `command_id` 0"
    else:
        sender = _roles_text(d)
    lines += [
        f"- type code: `0x{int(t):02x}`",
        f"- sent by: {sender}",
        f"- effectful (needs a command id): {_yes(d.effectful)}",
        f"- pre-session: {_yes(d.pre_session)}",
        f"- test only: {_yes(d.test_only)}",
        "",
    ]
    if d.request is None:
        lines += ["**Request**: none; the pump sends this type only.", ""]
        lines += [_payload_block("Notification", d.reply, records), ""]
    else:
        lines += [_payload_block("Request", d.request, records), ""]
        lines += [_payload_block("Reply", d.reply, records), ""]
    return "\n".join(lines).rstrip()


def _messages() -> str:
    records = _records()
    return "\n\n".join(_message_section(d, records) for d in sorted(CATALOG.values(), key=lambda d: d.msg_type))


def _message_index() -> str:
    rows = []
    for d in sorted(CATALOG.values(), key=lambda d: d.msg_type):
        req = d.request.__name__ if d.request is not None else "-"
        rows.append([f"`0x{int(d.msg_type):02x}`", _msg_link(d.msg_type), req, d.reply.__name__, d.summary])
    return _table(["type", "name", "request", "reply", "summary"], rows)


def _records_section() -> str:
    parts = []
    for cls in _records():
        doc = _class_doc(cls)
        text = f"### {cls.__name__}\n\n" + (f"{doc} " if doc else "") + f"{_size_text(cls)}.\n\n{_field_table(cls)}"
        parts.append(text)
    return "\n\n".join(parts)


def _access_matrix() -> str:
    headers = ["type", "message", "no session", *[r.name for r in _ROLE_ORDER], "effectful", "test only"]
    rows = []
    for d in sorted(CATALOG.values(), key=lambda d: d.msg_type):
        mark = "rx" if d.request is None else "yes"
        cells = [mark if r in d.roles else "-" for r in _ROLE_ORDER]
        rows.append(
            [
                f"`0x{int(d.msg_type):02x}`",
                _msg_link(d.msg_type),
                "yes" if d.pre_session else "-",
                *cells,
                "yes" if d.effectful else "-",
                "yes" if d.test_only else "-",
            ]
        )
    legend = (
        '"yes": may send it; "rx": the pump sends it into sessions of this role; "-": refused '
        "(WRONG_ROLE; NO_SESSION in plaintext)."
    )
    return _table(headers, rows) + "\n\n" + legend


def _enum_value(member: enum.Enum) -> str:
    value = int(member.value)
    if isinstance(member, enum.IntFlag | MsgType):
        return f"0x{value:02x}"
    return str(value)


def _all_classes() -> list[type[Any]]:
    out: list[type[Any]] = [Header, ErrorReply]
    for d in sorted(CATALOG.values(), key=lambda d: d.msg_type):
        for cls in (d.request, d.reply):
            if cls is not None and cls not in out:
                out.append(cls)
    out.extend(r for r in _records() if r not in out)
    return out


def _enum_uses() -> dict[type[Any], list[str]]:
    uses: dict[type[Any], list[str]] = {}
    for cls in _all_classes():
        for info in field_infos(cls):
            kind = info.enum if info.enum is not None else info.flags
            if kind is not None:
                uses.setdefault(kind, []).append(f"`{cls.__name__}.{info.name}` ({info.wire_type})")
    uses.setdefault(MsgType, []).insert(0, "`Header.msg_type` (u8; any value, unknown ones refused)")
    return uses


def _enum_classes() -> list[type[enum.Enum]]:
    return [
        obj
        for obj in vars(enums).values()
        if isinstance(obj, type) and issubclass(obj, enum.Enum) and obj.__module__ == enums.__name__
    ]


_ENUM_ELSEWHERE: dict[type[enum.Enum], tuple[str, str]] = {
    MsgType: ("message index", "messages"),
    ErrorCode: ("error table", "errors"),
    AlarmCode: ("alarm table", "alarms"),
    AlarmSet: ("alarm table", "alarms"),
    TherapyMode: ("mode table", "therapy-modes"),
    LogEventKind: ("event log table", "event-log"),
}


def _enums_section() -> str:
    uses = _enum_uses()
    parts = []
    for cls in _enum_classes():
        doc = _class_doc(cls)
        kind = "Flag set" if issubclass(cls, enum.IntFlag) else "Enum"
        where = uses.get(cls)
        head = [f"### {cls.__name__}", ""]
        intro = f"{kind}." + (f" {doc}" if doc else "")
        head.append(intro)
        if where:
            head += ["", "Fields: " + ", ".join(where) + "."]
        elif cls is Direction:
            head += ["", "Not a header field: it is the first 4 bytes (u32le) of every AEAD nonce."]
        head.append("")
        elsewhere = _ENUM_ELSEWHERE.get(cls)
        if elsewhere is not None:
            label, anchor = elsewhere
            names = ", ".join(f"{m.name} = {_enum_value(m)}" for m in cls)
            head.append(f"Values: {names}. Meanings: the {_link(label, anchor)}.")
        else:
            rows = [[f"`{m.name}`", _enum_value(m), _member_doc(m)] for m in cls]
            head.append(_table(["name", "value", "meaning"], rows))
        parts.append("\n".join(head))
    return "\n\n".join(parts)


def _flags_table() -> str:
    return _table(
        ["flag", "bit value", "meaning"], [[f"`{f.name}`", _enum_value(f), _member_doc(f)] for f in FrameFlags]
    )


def _error_table() -> str:
    rows = []
    for code in ErrorCode:
        meaning, fields = _ERRORS[code]
        rows.append([f"`{code.name}`", str(int(code)), meaning, fields])
    return _table(["code", "value", "meaning", "ErrorReply fields"], rows)


def _alarm_table() -> str:
    rows = []
    for code in AlarmCode:
        prio = alarm_priority(code)
        bit = int(code) - 1
        rows.append(
            [
                f"`{code.name}`",
                str(int(code)),
                f"{bit} (0x{1 << bit:04x})",
                prio.name,
                _TONES[prio].name,
                _ALARMS[code],
            ]
        )
    return _table(["alarm", "code", "AlarmSet bit (mask)", "priority", "tone", "meaning"], rows)


def _mode_fields() -> dict[TherapyMode, list[str]]:
    """Program fields each mode uses, from the "MODE:" prefix of the field docs; concentration by its rule."""
    used: dict[TherapyMode, list[str]] = {m: [] for m in TherapyMode}
    for info in field_infos(Program):
        if info.name == "mode":
            continue
        if info.name == "concentration_ug_per_ml":
            for m in TherapyMode:
                if m not in (TherapyMode.STOPPED, TherapyMode.MINIMUM_RATE):
                    used[m].append(info.name)
            continue
        prefix = info.doc.split(":", 1)[0]
        if prefix not in TherapyMode.__members__:
            raise AssertionError(f"Program.{info.name}: its doc must start with the mode that uses it")
        used[TherapyMode[prefix]].append(info.name)
    return used


def _mode_table() -> str:
    used = _mode_fields()
    rows = []
    for mode in TherapyMode:
        fields = ", ".join(f"`{f}`" for f in used[mode]) or "none"
        rows.append([f"`{mode.name}`", str(int(mode)), fields, _MODES[mode]])
    return _table(["mode", "value", "fields used (all others 0)", "meaning"], rows)


def _log_table() -> str:
    rows = []
    for kind in LogEventKind:
        meaning, code, a, b = _LOG_FIELDS[kind]
        rows.append([f"`{kind.name}`", str(int(kind)), meaning, code, a, b])
    return _table(["kind", "value", "event", "code", "value_a", "value_b"], rows)


def _role_table() -> str:
    return _table(["role", "value", "may"], [[f"`{r.name}`", str(int(r)), _member_doc(r)] for r in _ROLE_ORDER])


def _test_key_table() -> str:
    rows = [[f"`{k.role.name}`", f"`0x{k.key_id:08x}`", f"`{k.key.hex()}`"] for k in TEST_KEY_SET.keys]
    return _table(["role", "key id", "key (32 bytes, hex)"], rows)


def _vector_table() -> str:
    docs = vectorgen.generate()
    rows = []
    for name, doc in docs.items():
        vectors = doc["vectors"]
        keys: list[str] = []
        for v in vectors:
            keys.extend(k for k in v if k not in keys)
        rows.append(
            [f"`{name}`", str(len(vectors)), str(doc.get("description", "")), ", ".join(f"`{k}`" for k in keys)]
        )
    return _table(["file", "vectors", "content", "keys of each vector"], rows)


# --------------------------------------------------------------------------- worked example


def _header_fields(h: Header) -> str:
    flags = "|".join(f"{f.name}" for f in FrameFlags if f & h.flags) or "none"
    name = h.known_type.name if h.known_type is not None else "?"
    return (
        f"version {h.version}, msg_type 0x{h.msg_type:02x} ({name}), flags 0x{int(h.flags):02x} ({flags}),\n"
        f"session_id 0x{h.session_id:08x}, counter {h.counter}, echo_counter {h.echo_counter},\n"
        f"command_id 0x{h.command_id:016x}"
    )


def _header_by_field(header: bytes) -> str:
    """The header's bytes in hex, one group per field."""
    groups = []
    pos = 0
    for info in field_infos(Header):
        groups.append(header[pos : pos + info.width_bytes].hex())
        pos += info.width_bytes
    return " ".join(groups)


def _handshake_example() -> str:
    hs = examples.HANDSHAKE
    rk = hs.role_key
    preimage = (
        PUMP_NONCE_LABEL
        + hs.boot_counter.to_bytes(8, "little")
        + hs.session_serial.to_bytes(4, "little")
        + hs.pump_entropy
    )
    pump_nonce = hs.pump_nonce
    assert hashlib.sha256(preimage).digest()[:16] == pump_nonce
    salt = hs.client_nonce + pump_nonce
    info = hkdf_info(rk.role, rk.key_id, hs.session_id)
    prk = hmac.new(salt, rk.key, hashlib.sha256).digest()
    keys = hs.keys
    okm = keys.key_c2p + keys.key_p2c + keys.confirm
    rows: list[tuple[str, str | bytes]] = [
        ("role", f"{rk.role.name} ({int(rk.role)})"),
        ("key_id", f"0x{rk.key_id:08x} (u32le: {rk.key_id.to_bytes(4, 'little').hex()})"),
        ("role key", rk.key),
        ("client_nonce", hs.client_nonce),
        ("pump entropy", hs.pump_entropy),
        ("boot_counter", f"{hs.boot_counter} (u64le: {hs.boot_counter.to_bytes(8, 'little').hex()})"),
        ("session_serial", f"{hs.session_serial} (u32le: {hs.session_serial.to_bytes(4, 'little').hex()})"),
        ("session_id", f"0x{hs.session_id:08x} (u32le: {hs.session_id.to_bytes(4, 'little').hex()})"),
        ("nonce label", f'"{PUMP_NONCE_LABEL.decode()}" = {PUMP_NONCE_LABEL.hex()}'),
        ("nonce preimage", preimage),
        ("SHA-256", hashlib.sha256(preimage).digest()),
        ("pump_nonce", pump_nonce),
        ("salt", salt),
        ("info label", f'"{SESSION_INFO_LABEL.decode()}" = {SESSION_INFO_LABEL.hex()}'),
        ("info", info),
        ("PRK", prk),
        ("OKM (80 bytes)", okm),
        ("key_c2p", keys.key_c2p),
        ("key_p2c", keys.key_p2c),
        ("confirm", keys.confirm),
    ]
    return _kv_block(rows)


def _frame_rows(frame: examples.ScriptedFrame) -> list[tuple[str, str | bytes]]:
    body = encode_body(frame.header, frame.message, frame.keys)
    crc = crc32(body)
    return [
        ("header", _header_fields(frame.header)),
        ("header hex", _header_by_field(body[:HEADER_BYTES])),
        ("payload", body[HEADER_BYTES:]),
        ("CRC-32", f"0x{crc:08x} (u32le: {crc.to_bytes(4, 'little').hex()})"),
        ("wire", frame.data),
    ]


@functools.cache
def _session_frames() -> tuple[examples.ScriptedFrame, ...]:
    return tuple(examples.example_session())


def _handshake_frames() -> str:
    frames = _session_frames()
    hs = examples.HANDSHAKE
    opens = [f for f in frames if f.header.known_type is MsgType.SESSION_OPEN and not f.header.is_error]
    request, reply = opens[0], opens[1]
    assert request.message.client_nonce == hs.client_nonce
    assert reply.header.session_id == hs.session_id
    assert reply.message.confirm == hs.keys.confirm
    return (
        "SESSION_OPEN request (plaintext):\n\n"
        + _kv_block(_frame_rows(request))
        + "\n\nSESSION_OPEN reply (plaintext; the header names the session):\n\n"
        + _kv_block(_frame_rows(reply))
    )


def _sealed_rows(frame: examples.ScriptedFrame) -> list[tuple[str, str | bytes]]:
    h = frame.header
    keys = frame.keys
    assert keys is not None
    body = encode_body(h, frame.message, keys)
    plaintext = encode_payload(frame.message)
    sealed = body[HEADER_BYTES:]
    crc = crc32(body)
    key_name = "key_c2p" if h.direction is Direction.PROGRAMMER_TO_PUMP else "key_p2c"
    return [
        ("header", _header_fields(h)),
        ("key", f"{key_name} of session 0x{keys.session_id:08x}"),
        ("header hex (AAD)", _header_by_field(body[:HEADER_BYTES])),
        ("AEAD nonce", aead_nonce(h.direction, h.counter)),
        ("plaintext payload", plaintext),
        ("ciphertext", sealed[:-TAG_BYTES]),
        ("tag", sealed[-TAG_BYTES:]),
        ("body", body),
        ("CRC-32", f"0x{crc:08x} (u32le: {crc.to_bytes(4, 'little').hex()})"),
        ("wire (COBS)", frame.data),
    ]


def _sealed_example() -> str:
    frames = _session_frames()
    secured = [f for f in frames if f.header.secured]
    first = secured[0]
    effectful = next(
        f
        for f in secured
        if not f.header.from_pump and f.header.known_type is not None and CATALOG[f.header.known_type].effectful
    )
    t1 = first.header.known_type
    t2 = effectful.header.known_type
    assert t1 is not None
    assert t2 is not None
    return (
        f"The first SECURED frame of the example session: the {t1.name} request of the clinician session above, "
        "the programmer's first frame after the handshake (counter 1). Its payload is empty, so the sealed part is "
        "the tag alone.\n\n"
        + _kv_block(_sealed_rows(first))
        + f"\n\nThe first effectful request of the same session, {t2.name}, with a payload and a command id:\n\n"
        + _kv_block(_sealed_rows(effectful))
    )


# --------------------------------------------------------------------------- assembly


def _check_meanings() -> None:
    missing = [c.name for c in ErrorCode if c not in _ERRORS]
    missing += [a.name for a in AlarmCode if a not in _ALARMS]
    missing += [m.name for m in TherapyMode if m not in _MODES]
    missing += [k.name for k in LogEventKind if k not in _LOG_FIELDS]
    for cls in _enum_classes():
        if cls in _ENUM_ELSEWHERE:
            continue
        missing += [f"{cls.__name__}.{m.name}" for m in cls if not _member_doc(m)]
    if missing:
        raise AssertionError(f"specgen: write a meaning for {', '.join(missing)}")


def _largest_payload() -> str:
    best = max(
        ((wire_size_range(cls)[1], cls.__name__) for d in CATALOG.values() for cls in (d.request, d.reply) if cls),
        key=lambda x: x[0],
    )
    max_secured = MAX_BODY_BYTES - HEADER_BYTES - TAG_BYTES
    if best[0] > max_secured:
        raise AssertionError(f"{best[1]} can reach {best[0]} bytes, over the {max_secured}-byte secured maximum")
    return f"{best[1]}, {best[0]} bytes"


def _ms(n_bytes: int) -> str:
    return f"{n_bytes * BITS_PER_BYTE * 1000 / LINK_BAUD:.1f}"


def _values() -> dict[str, Callable[[], str]]:
    frames = _session_frames()
    status_request = next(
        f for f in frames if f.header.known_type is MsgType.STATUS and not f.header.from_pump and f.header.secured
    )
    session_open_reply = examples.EXAMPLE_REPLIES[MsgType.SESSION_OPEN]
    max_wire = MAX_ENCODED_BYTES + 2
    pre_session = [d.msg_type.name for d in CATALOG.values() if d.pre_session]
    directions = " and ".join(f"{int(d)} ({d.name})" for d in Direction)
    return {
        "PROTOCOL_VERSION": lambda: str(PROTOCOL_VERSION),
        "SPEC_VERSION": lambda: SPEC_VERSION,
        "CRC_CHECK": lambda: f"0x{crc32(b'123456789'):08X}",
        "CRC_BYTES": lambda: str(CRC_BYTES),
        "MAX_FRAME_BYTES": lambda: str(MAX_FRAME_BYTES),
        "MAX_BODY_BYTES": lambda: str(MAX_BODY_BYTES),
        "MAX_ENCODED_BYTES": lambda: str(MAX_ENCODED_BYTES),
        "HEADER_BYTES": lambda: str(HEADER_BYTES),
        "TAG_BYTES": lambda: str(TAG_BYTES),
        "MAX_PLAIN_PAYLOAD": lambda: str(MAX_BODY_BYTES - HEADER_BYTES),
        "MAX_SECURED_PAYLOAD": lambda: str(MAX_BODY_BYTES - HEADER_BYTES - TAG_BYTES),
        "LARGEST_PAYLOAD": _largest_payload,
        "PRE_SESSION_TYPES": lambda: " and ".join(pre_session),
        "HEADER_TABLE": lambda: _field_table(Header),
        "FLAGS_TABLE": _flags_table,
        "ROLE_TABLE": _role_table,
        "TEST_KEY_LABEL": lambda: TEST_KEY_LABEL.decode("ascii"),
        "TEST_KEY_TABLE": _test_key_table,
        "TEST_KEY_FILE": lambda: TEST_KEY_SET.to_json().rstrip("\n"),
        "DIRECTIONS": lambda: directions,
        "PUMP_NONCE_LABEL": lambda: PUMP_NONCE_LABEL.decode("ascii"),
        "SESSION_INFO_LABEL": lambda: SESSION_INFO_LABEL.decode("ascii"),
        "INFO_BYTES": lambda: str(len(SESSION_INFO_LABEL) + 1 + 4 + 4),
        "HANDSHAKE_EXAMPLE": _handshake_example,
        "HANDSHAKE_FRAMES": _handshake_frames,
        "SEALED_EXAMPLE": _sealed_example,
        "MAX_OUTCOMES": lambda: str(messages.MAX_OUTCOMES),
        "ACCESS_MATRIX": _access_matrix,
        "ERROR_REPLY_TABLE": lambda: _field_table(ErrorReply),
        "ERROR_TABLE": _error_table,
        "BAD_TAG_FIRST_MS": lambda: f"{BAD_TAG_FIRST_MS}",
        "BAD_TAG_MAX_MS": lambda: f"{BAD_TAG_MAX_MS}",
        "ALARM_TABLE": _alarm_table,
        "MODE_TABLE": _mode_table,
        "MAX_FLEX_STEPS_PER_DAY": lambda: str(messages.MAX_FLEX_STEPS_PER_DAY),
        "BAUD": lambda: str(LINK_BAUD),
        "BYTES_PER_S": lambda: str(LINK_BAUD // BITS_PER_BYTE),
        "MAX_WIRE_BYTES": lambda: str(max_wire),
        "MAX_FRAME_MS": lambda: _ms(max_wire),
        "TWO_FRAMES_MS": lambda: _ms(2 * max_wire),
        "STATUS_REQUEST_MS": lambda: _ms(len(status_request.data)),
        "REPLY_TIMEOUT_MS": lambda: str(REPLY_TIMEOUT_MS),
        "RETRIES": lambda: str(RETRIES),
        "SESSION_TIMEOUT_EXAMPLE_MS": lambda: str(session_open_reply.session_timeout_ms),
        "MESSAGE_INDEX": _message_index,
        "MESSAGES": _messages,
        "RECORDS": _records_section,
        "LOG_TABLE": _log_table,
        "ENUMS": _enums_section,
        "VECTOR_TABLE": _vector_table,
    }


_PLACEHOLDER = re.compile(r"\{\{([A-Z0-9_]+)\}\}")
_HEADING = re.compile(r"^(#{2,3}) (.+)$", re.MULTILINE)
_LINK = re.compile(r"\]\(#([^)]+)\)")


def _template() -> str:
    return resources.files("protocol_spec").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


def _toc(text: str) -> str:
    lines = []
    for m in _HEADING.finditer(text):
        level, title = m.group(1), m.group(2)
        if level == "##" and title != "Contents":
            lines.append(f"- [{title}](#{_slug(title)})")
    return "\n".join(lines)


def _check_links(text: str) -> None:
    """Every in-document link must name a heading (GitHub anchors, duplicates numbered)."""
    seen: dict[str, int] = {}
    anchors: set[str] = set()
    for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    broken = sorted({a for a in _LINK.findall(text) if a not in anchors})
    if broken:
        raise AssertionError(f"SPEC.md links to missing headings: {', '.join(broken)}")


def render() -> str:
    """The complete text of SPEC.md."""
    _check_meanings()
    template = _template()
    values = _values()
    names = set(_PLACEHOLDER.findall(template))
    unknown = names - set(values) - {"TOC"}
    if unknown:
        raise AssertionError(f"{TEMPLATE_NAME}: unknown placeholders {sorted(unknown)}")
    unused = set(values) - names
    if unused:
        raise AssertionError(f"{TEMPLATE_NAME}: placeholders never used {sorted(unused)}")
    computed = {name: fn() for name, fn in values.items()}
    text = _PLACEHOLDER.sub(lambda m: computed[m.group(1)] if m.group(1) in computed else m.group(0), template)
    text = text.replace("{{TOC}}", _toc(text))
    _check_links(text)
    return text.rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol_spec.specgen", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="regenerate SPEC.md")
    group.add_argument("--check", action="store_true", help="exit 1 if SPEC.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        SPEC_PATH.write_text(text, encoding="utf-8")
        return 0
    if args.check:
        current = SPEC_PATH.read_text(encoding="utf-8") if SPEC_PATH.exists() else None
        if current != text:
            sys.stderr.write(STALE_MESSAGE + "\n")
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
