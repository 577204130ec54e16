"""One side of a link, sans-IO: counters, the handshake, sealing and checking frames.

Both the programmer and the pump use a ``Channel``: it numbers what it sends, refuses what
it has seen (a counter not above the highest accepted one), and after the handshake seals
every frame with the session keys. It holds no socket and reads no clock.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass

from .catalog import request_type_of
from .codec import DecodeError, Header, Packet, decode_body, encode_packet
from .enums import PROTOCOL_VERSION, ErrorCode, FrameFlags, MsgType
from .messages import ErrorReply, SessionOpen, SessionOpenReply
from .security import RoleKey, SessionKeys, confirm_matches, derive_session_keys

__all__ = ["Channel", "Outgoing", "client_finish", "client_hello", "new_command_id"]

MAX_COUNTER = (1 << 64) - 1


@dataclass(frozen=True)
class Outgoing:
    """A frame ready for the wire, with the header it carries."""

    header: Header
    data: bytes


class Channel:
    """Counters and keys for one side of one session (or of the pre-session link).

    ``from_pump`` says which side this is. With ``keys`` None the channel speaks plaintext
    (identify and the handshake only).
    """

    def __init__(self, *, from_pump: bool, keys: SessionKeys | None = None, first_counter: int = 1) -> None:
        self.from_pump = from_pump
        self.keys = keys
        self._next_counter = first_counter
        self.highest_received = 0

    @property
    def session_id(self) -> int:
        return self.keys.session_id if self.keys is not None else 0

    def _header(self, msg_type: int, flags: FrameFlags, echo_counter: int, command_id: int) -> Header:
        if self._next_counter > MAX_COUNTER:
            raise OverflowError("counter exhausted: open a new session")
        counter = self._next_counter
        self._next_counter += 1
        if self.keys is not None:
            flags |= FrameFlags.SECURED
        if self.from_pump:
            flags |= FrameFlags.FROM_PUMP
        return Header(PROTOCOL_VERSION, msg_type, flags, self.session_id, counter, echo_counter, command_id)

    def request(self, message: object, command_id: int = 0) -> Outgoing:
        """Programmer side: a request. Effectful requests need a command id (``new_command_id``)."""
        msg_type = request_type_of(message)
        header = self._header(msg_type, FrameFlags(0), 0, command_id)
        return Outgoing(header, encode_packet(header, message, self.keys))

    def reply(self, request: Header, message: object, *, session_id: int | None = None) -> Outgoing:
        """Pump side: the reply to ``request``, echoing its counter and command id."""
        header = self._header(request.msg_type, FrameFlags(0), request.counter, request.command_id)
        if session_id is not None:  # SESSION_OPEN's reply names the new session
            header = dataclasses.replace(header, session_id=session_id)
        return Outgoing(header, encode_packet(header, message, self.keys))

    def error(self, request: Header, error: ErrorReply) -> Outgoing:
        """Pump side: a refusal of ``request`` (whatever its message type value, even unknown)."""
        header = self._header(request.msg_type, FrameFlags.ERROR, request.counter, request.command_id)
        return Outgoing(header, encode_packet(header, error, self.keys))

    def notify(self, message: object) -> Outgoing:
        """Pump side: an unsolicited notification."""
        header = self._header(MsgType.ALARM_NOTIFY, FrameFlags(0), 0, 0)
        return Outgoing(header, encode_packet(header, message, self.keys))

    def accept(self, body: bytes) -> Packet | DecodeError:
        """Decode a received frame body and check its counter is fresh.

        In a secured session a counter at or below the highest accepted one is refused
        with REPLAYED_COUNTER; the high-water mark moves only for frames that pass every
        earlier check (SPEC.md, "Counters and replay").
        """
        result = decode_body(body, self.keys)
        if isinstance(result, DecodeError):
            return result
        if result.header.from_pump == self.from_pump:
            return DecodeError(ErrorCode.MALFORMED, "frame from the wrong side", result.header)
        if self.keys is not None:
            if not result.header.secured:
                return DecodeError(ErrorCode.NO_SESSION, "plaintext frame inside a session", result.header)
            return self.check_fresh(result.header) or result
        return result

    def check_fresh(self, header: Header) -> DecodeError | None:
        """Refuse an authentic frame's counter if seen before; else raise the high-water mark past it."""
        if header.counter <= self.highest_received:
            return DecodeError(
                ErrorCode.REPLAYED_COUNTER, f"counter {header.counter} <= {self.highest_received}", header
            )
        self.highest_received = header.counter
        return None


def new_command_id() -> int:
    """A random, non-zero 64-bit command id."""
    while True:
        value = secrets.randbits(64)
        if value:
            return value


def client_hello(role_key: RoleKey, client_nonce: bytes) -> SessionOpen:
    """The programmer's SESSION_OPEN for a role key and a fresh 16-byte nonce."""
    return SessionOpen(role_key.role, role_key.key_id, client_nonce)


def client_finish(
    role_key: RoleKey, hello: SessionOpen, reply_header: Header, reply: SessionOpenReply
) -> SessionKeys | None:
    """Derive the session keys from the pump's reply; None if its key confirmation is wrong."""
    keys = derive_session_keys(role_key, reply_header.session_id, hello.client_nonce, reply.pump_nonce)
    return keys if confirm_matches(keys, reply.confirm) else None
