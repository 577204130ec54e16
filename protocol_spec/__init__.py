"""pumprig's telemetry protocol: framing, header, typed messages, security, codec.

This is the only package that knows byte layouts. Everything is pure: bytes in, values out.
SPEC.md (beside this file) is generated from these definitions; ``vectors/`` holds the
golden frames any implementation can check itself against.
"""

from __future__ import annotations

from . import messages
from .catalog import CATALOG, MessageDef, message_def, request_type_of
from .codec import (
    HEADER_BYTES,
    DecodeError,
    Header,
    Packet,
    decode_body,
    decode_header,
    encode_body,
    encode_packet,
    encode_payload,
)
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
    alarms_in,
)
from .fields import FieldRangeError
from .framing import MAX_FRAME_BYTES, Deframer, FramingError, FramingProblem, crc32, encode_frame
from .security import TEST_KEY_SET, KeyFileError, KeySet, RoleKey, SessionKeys, derive_session_keys

__version__ = "0.1.0"

__all__ = [
    "CATALOG",
    "HEADER_BYTES",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "TEST_KEY_SET",
    "AlarmCode",
    "AlarmEvent",
    "AlarmPriority",
    "AlarmSet",
    "BatteryState",
    "BolusKind",
    "DecodeError",
    "Deframer",
    "DeviceClass",
    "Direction",
    "DrugId",
    "ErrorCode",
    "FaultKind",
    "Feature",
    "FieldRangeError",
    "FrameFlags",
    "FramingError",
    "FramingProblem",
    "Header",
    "KeyFileError",
    "KeySet",
    "LogEventKind",
    "MessageDef",
    "MsgType",
    "Packet",
    "ProgramSlot",
    "RefillConfirmation",
    "Role",
    "RoleKey",
    "SessionKeys",
    "StageKind",
    "TherapyMode",
    "TonePattern",
    "alarm_priority",
    "alarms_in",
    "crc32",
    "decode_body",
    "decode_header",
    "derive_session_keys",
    "encode_body",
    "encode_frame",
    "encode_packet",
    "encode_payload",
    "message_def",
    "messages",
    "request_type_of",
]
