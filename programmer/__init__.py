"""The clinician's programmer: a sans-IO session, a synchronous facade over any serial URL, the CLI.

It speaks ``protocol_spec`` and never imports ``firmware_model``.
"""

from __future__ import annotations

from .client import Programmer, PublishedKeysWarning, SerialPort, open_port
from .errors import (
    EXIT_CODES,
    KeyMismatch,
    LinkError,
    NoReply,
    ProgrammerError,
    PumpRefused,
    ReplyLost,
    UncertainOutcome,
    UsageError,
    describe_refusal,
    exit_code_for,
)
from .session import (
    AlarmNotified,
    BackingOff,
    GiveUp,
    KeyRejected,
    ProgrammerSession,
    Refused,
    ReplyReceived,
    Resend,
    SessionOpened,
    SessionState,
    SessionStats,
    Verdict,
    judge_outcome,
)

__all__: list[str] = [
    "EXIT_CODES",
    "AlarmNotified",
    "BackingOff",
    "GiveUp",
    "KeyMismatch",
    "KeyRejected",
    "LinkError",
    "NoReply",
    "Programmer",
    "ProgrammerError",
    "ProgrammerSession",
    "PublishedKeysWarning",
    "PumpRefused",
    "Refused",
    "ReplyLost",
    "ReplyReceived",
    "Resend",
    "SerialPort",
    "SessionOpened",
    "SessionState",
    "SessionStats",
    "UncertainOutcome",
    "UsageError",
    "Verdict",
    "describe_refusal",
    "exit_code_for",
    "judge_outcome",
    "open_port",
]
