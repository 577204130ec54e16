"""Decoding captures: frames in, annotated packets out, following handshakes to decrypt.

``CaptureDecoder`` takes the bytes of a link (one direction or both interleaved), splits
frames, and when it sees a SESSION_OPEN exchange for a key it holds, derives that session's
keys so the secured frames that follow can be opened. Pure: no files, no ports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .codec import DecodeError, Packet, decode_body, decode_header
from .enums import MsgType
from .fields import FieldInfo, field_infos
from .framing import Deframer, FramingError
from .jsonable import header_json, to_jsonable
from .messages import SessionOpen, SessionOpenReply
from .security import KeySet, SessionKeys, confirm_matches, derive_session_keys

__all__ = ["CaptureDecoder", "DecodedFrame", "describe", "describe_lines", "frame_json"]


@dataclass(frozen=True)
class DecodedFrame:
    index: int
    result: Packet | DecodeError | FramingError
    body: bytes
    note: str = ""


class CaptureDecoder:
    """Split and decode a capture, deriving session keys from the handshakes it sees."""

    def __init__(self, key_set: KeySet | None = None, sessions: Iterable[SessionKeys] = ()) -> None:
        self._key_set = key_set
        self._deframer = Deframer()
        self._hellos: dict[int, SessionOpen] = {}
        self.sessions: dict[int, SessionKeys] = {k.session_id: k for k in sessions}
        self._count = 0
        self.dropped = 0
        """Frames lost to framing errors (noise, bad CRC)."""

    def feed(self, data: bytes) -> list[DecodedFrame]:
        out = []
        for item in self._deframer.feed(data):
            self._count += 1
            if isinstance(item, FramingError):
                self.dropped += 1
                out.append(DecodedFrame(self._count, item, b""))
                continue
            header = decode_header(item)
            keys = self.sessions.get(header.session_id) if header is not None else None
            result = decode_body(item, keys)
            note = self._track(result) if isinstance(result, Packet) else ""
            out.append(DecodedFrame(self._count, result, item, note))
        return out

    def _track(self, packet: Packet) -> str:
        h = packet.header
        if h.known_type is not MsgType.SESSION_OPEN or h.is_error:
            return ""
        if isinstance(packet.message, SessionOpen):
            self._hellos[h.counter] = packet.message
            return ""
        if not isinstance(packet.message, SessionOpenReply):
            return ""
        hello = self._hellos.pop(h.echo_counter, None)
        if hello is None:
            return "handshake reply without its request in the capture: later frames stay sealed"
        role_key = self._key_set.by_id(hello.role, hello.key_id) if self._key_set is not None else None
        if role_key is None:
            return f"no {hello.role.name.lower()} key 0x{hello.key_id:08x} given: later frames stay sealed"
        keys = derive_session_keys(role_key, h.session_id, hello.client_nonce, packet.message.pump_nonce)
        if not confirm_matches(keys, packet.message.confirm):
            return "key confirmation does not match this key: later frames stay sealed"
        self.sessions[keys.session_id] = keys
        return f"session 0x{keys.session_id:08x} keys derived ({keys.role.name.lower()} key 0x{keys.key_id:08x})"


_HEX_FIELDS = frozenset({"key_id", "command_id", "program_crc", "stage_token"})


def _value_text(info: FieldInfo, value: Any) -> str:
    j = to_jsonable(value)
    if isinstance(j, list):
        text = "|".join(str(x) for x in j) or "(none)"
    elif info.enum is not None:
        text = f"{j} ({int(value)})"
    elif info.kind == "raw":
        text = str(j)
    elif info.kind == "int" and info.name in _HEX_FIELDS:
        text = f"0x{value:0{info.width_bytes * 2}x}"
    else:
        text = str(j)
    return f"{text} {info.unit}".rstrip()


def describe_lines(message: Any, indent: str = "  ") -> list[str]:
    """One line per field, with units; nested records and arrays indented."""
    lines: list[str] = []
    for info in field_infos(type(message)):
        value = getattr(message, info.name)
        if info.kind == "struct":
            lines.append(f"{indent}{info.name}:")
            lines.extend(describe_lines(value, indent + "  "))
        elif info.kind == "array":
            lines.append(f"{indent}{info.name}: {len(value)} x {info.item.__name__ if info.item else ''}")
            for i, item in enumerate(value):
                inner = describe_lines(item, indent + "    ")
                lines.append(f"{indent}  [{i}] " + "; ".join(s.strip() for s in inner))
        else:
            lines.append(f"{indent}{info.name} = {_value_text(info, value)}")
    return lines


def describe(frame: DecodedFrame) -> str:
    """A human-readable annotation of one decoded frame."""
    r = frame.result
    if isinstance(r, FramingError):
        return f"#{frame.index} FRAMING ERROR {r.problem.value} ({r.length} bytes dropped)"
    if isinstance(r, DecodeError):
        where = ""
        if r.header is not None:
            where = f" type=0x{r.header.msg_type:02x} session=0x{r.header.session_id:08x} counter={r.header.counter}"
        return f"#{frame.index} REJECTED {r.code.name}: {r.detail}{where}"
    h = r.header
    arrow = "pump -> programmer" if h.from_pump else "programmer -> pump"
    name = h.known_type.name if h.known_type is not None else f"0x{h.msg_type:02x}"
    kind = "ERROR" if h.is_error else ("reply" if h.from_pump and h.echo_counter else "")
    if h.known_type is MsgType.ALARM_NOTIFY:
        kind = "notification"
    elif not h.from_pump:
        kind = "request"
    head = (
        f"#{frame.index} {arrow} {name} {kind} [{'secured' if h.secured else 'plaintext'}] "
        f"session=0x{h.session_id:08x} counter={h.counter}"
    )
    if h.echo_counter:
        head += f" echo={h.echo_counter}"
    if h.command_id:
        head += f" command_id=0x{h.command_id:016x}"
    lines = [head, f"  {type(r.message).__name__}"]
    lines.extend(describe_lines(r.message, "    "))
    if frame.note:
        lines.append(f"  note: {frame.note}")
    return "\n".join(lines)


def frame_json(frame: DecodedFrame) -> dict[str, Any]:
    """The same, as a JSON-ready object."""
    r = frame.result
    if isinstance(r, FramingError):
        return {"index": frame.index, "ok": False, "framing_error": r.problem.value, "length": r.length}
    if isinstance(r, DecodeError):
        return {
            "index": frame.index,
            "ok": False,
            "error": r.code.name,
            "detail": r.detail,
            "header": header_json(r.header) if r.header is not None else None,
            "body_hex": frame.body.hex(),
        }
    return {
        "index": frame.index,
        "ok": True,
        "header": header_json(r.header),
        "payload_class": type(r.message).__name__,
        "fields": to_jsonable(r.message),
        "note": frame.note or None,
        "body_hex": frame.body.hex(),
    }
