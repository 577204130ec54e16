"""The programmer's side of one session, sans-IO: bytes and integer time in, bytes and decisions out.

    session = ProgrammerSession(role_key)
    wire = session.start_handshake(now_ms)            # SESSION_OPEN, plaintext
    events = session.receive_data(chunk, now_ms)      # [SessionOpened(...)] once the pump answers
    wire = session.send(m.Refill(...), now_ms)        # effectful: a command id, kept for every retry
    events = session.receive_data(chunk, now_ms)      # [ReplyReceived(...)] or [Refused(...)]
    decision = session.poll(now_ms)                   # Resend(data) / GiveUp(...) / None

It holds the two ``Channel``s (plaintext before the session, sealed in it), at most one request
in flight, and the rules of SPEC.md "Timing and retries" as decisions: no socket, no clock, no
thread. The caller moves the bytes and says what time it is.

- Every attempt of a request is a new frame with a new counter; an effectful request keeps its
  command id and payload across attempts, so the pump carries it out at most once.
- A reply answers the request in flight when its ``echo_counter`` is the counter of *any* of its
  attempts and its message type and command id are the request's: a late reply is still an answer.
- A BUSY or BAD_TAG refusal with ``retry_after_ms`` is a wait, not an answer, while attempts remain.
- After the last attempt times out, ``poll`` gives up (``GiveUp``): for an effectful request the
  outcome is then unknown and must be resolved from INTERROGATE's outcomes (``judge_outcome``),
  never by sending a new command.
- ALARM_NOTIFY comes out as ``AlarmNotified``; frames that cannot be read are counted in
  ``stats`` and dropped, never answered.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG, request_type_of
from protocol_spec.channel import Channel, client_finish, client_hello, new_command_id
from protocol_spec.codec import DecodeError, Header, decode_header
from protocol_spec.enums import ErrorCode, MsgType, Role
from protocol_spec.fields import FieldRangeError
from protocol_spec.framing import Deframer
from protocol_spec.security import RoleKey, SessionKeys
from protocol_spec.timing import REPLY_TIMEOUT_MS, RETRIES

from .errors import UsageError

__all__ = [
    "AlarmNotified",
    "BackingOff",
    "Event",
    "GiveUp",
    "KeyRejected",
    "ProgrammerSession",
    "Refused",
    "ReplyReceived",
    "Resend",
    "SessionOpened",
    "SessionState",
    "SessionStats",
    "Verdict",
    "judge_outcome",
]

_BACKOFF_CODES = frozenset({ErrorCode.BUSY, ErrorCode.BAD_TAG})


class SessionState(enum.Enum):
    IDLE = "idle"
    """No session: only IDENTIFY (and the handshake) may be sent, in plaintext."""
    OPENING = "opening"
    """SESSION_OPEN sent, no answer yet."""
    OPEN = "open"
    FAILED = "failed"
    """The handshake was refused, or the pump's key confirmation did not match."""
    LOST = "lost"
    """The pump said it holds no such session (or the caller gave up on it): open a new one."""
    CLOSED = "closed"


@dataclass
class SessionStats:
    """What was received, and what was dropped without an answer."""

    frames_ok: int = 0
    """Frames accepted: replies, refusals and notifications of this session."""
    framing_errors: int = 0
    """Bad CRC, bad COBS, oversize, too short."""
    undecodable: int = 0
    """Valid framing, but refused by the codec or the channel (tag, counter, version, layout)."""
    version_mismatch: int = 0
    """Of ``undecodable``: frames of another protocol version."""
    other_session: int = 0
    """Sealed frames of a session that is not this one."""
    unmatched: int = 0
    """Readable frames that answer nothing in flight: late after a give-up, duplicated, or stray."""


# ---------------------------------------------------------------------- events


@dataclass(frozen=True)
class ReplyReceived:
    """The reply to the request in flight."""

    msg_type: MsgType
    command_id: int
    message: Any
    header: Header


@dataclass(frozen=True)
class Refused:
    """An error reply to the request in flight. ``authenticated`` is False for a plaintext one."""

    msg_type: MsgType
    command_id: int
    error: m.ErrorReply
    authenticated: bool
    header: Header


@dataclass(frozen=True)
class SessionOpened:
    session_id: int
    reply: m.SessionOpenReply


@dataclass(frozen=True)
class KeyRejected:
    """The pump answered SESSION_OPEN, but its key confirmation does not match our key."""

    role: Role
    key_id: int


@dataclass(frozen=True)
class AlarmNotified:
    notify: m.AlarmNotify
    header: Header


@dataclass(frozen=True)
class BackingOff:
    """BUSY or BAD_TAG with a wait: the request is sent again at ``resend_at_ms`` (by ``poll``)."""

    msg_type: MsgType
    code: ErrorCode
    resend_at_ms: int


Event = ReplyReceived | Refused | SessionOpened | KeyRejected | AlarmNotified | BackingOff


# ---------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Resend:
    """Write ``data``: attempt number ``attempt`` (1-based) of the request in flight."""

    data: bytes
    attempt: int
    counter: int


@dataclass(frozen=True)
class GiveUp:
    """No answer after every attempt. For an effectful request the outcome is uncertain."""

    msg_type: MsgType
    command_id: int
    effectful: bool
    attempts: int

    @property
    def uncertain(self) -> bool:
        return self.effectful


@dataclass
class _InFlight:
    msg_type: MsgType
    message: object
    command_id: int
    effectful: bool
    secured: bool
    max_attempts: int
    deadline_ms: int
    counters: list[int] = field(default_factory=list)
    hellos: dict[int, m.SessionOpen] = field(default_factory=dict)
    """SESSION_OPEN: the hello of each attempt (each with a fresh nonce), by counter."""

    @property
    def attempts(self) -> int:
        return len(self.counters)


class ProgrammerSession:
    """One session with one pump, from the programmer's side. Pure: see the module docstring."""

    def __init__(
        self,
        role_key: RoleKey,
        *,
        reply_timeout_ms: int = REPLY_TIMEOUT_MS,
        retries: int = RETRIES,
        nonces: Callable[[int], bytes] = secrets.token_bytes,
        command_ids: Callable[[], int] = new_command_id,
    ) -> None:
        if reply_timeout_ms < 1 or retries < 0:
            raise UsageError("the reply timeout is at least 1 ms and the retries at least 0")
        self.role_key = role_key
        self.reply_timeout_ms = reply_timeout_ms
        self.retries = retries
        self._nonces = nonces
        self._command_ids = command_ids
        self._deframer = Deframer()
        self._plain = Channel(from_pump=False)
        self._secure: Channel | None = None
        self._in_flight: _InFlight | None = None
        self.state = SessionState.IDLE
        self.open_reply: m.SessionOpenReply | None = None
        self.last_heard_ms: int | None = None
        """Host time of the last authenticated frame from the pump in this session."""
        self.stats = SessionStats()

    # ------------------------------------------------------------------ what it knows

    @property
    def session_id(self) -> int:
        return self._secure.session_id if self._secure is not None else 0

    @property
    def session_keys(self) -> SessionKeys | None:
        return self._secure.keys if self._secure is not None else None

    @property
    def busy(self) -> bool:
        """True while a request is in flight (the next one waits: one at a time)."""
        return self._in_flight is not None

    @property
    def next_deadline_ms(self) -> int | None:
        """When ``poll`` will next decide something (None: nothing in flight)."""
        return self._in_flight.deadline_ms if self._in_flight is not None else None

    def expired(self, now_ms: int) -> bool:
        """True if the pump has surely ended the session for want of frames (its session timeout)."""
        if self.state is not SessionState.OPEN or self.open_reply is None or self.last_heard_ms is None:
            return False
        return now_ms - self.last_heard_ms >= self.open_reply.session_timeout_ms

    def new_command_id(self) -> int:
        return self._command_ids()

    # ------------------------------------------------------------------ sending

    def start_handshake(self, now_ms: int) -> bytes:
        """SESSION_OPEN with a fresh nonce. The reply finishes the handshake in ``receive_data``."""
        if self.state not in (SessionState.IDLE, SessionState.FAILED):
            raise UsageError(f"a handshake starts a new session, but this one is {self.state.value}")
        self._check_idle()
        self.state = SessionState.OPENING
        hello = client_hello(self.role_key, self._nonces(m.NONCE_BYTES))
        self._in_flight = _InFlight(
            MsgType.SESSION_OPEN, hello, 0, effectful=False, secured=False, max_attempts=1 + self.retries, deadline_ms=0
        )
        return self._emit(self._in_flight, now_ms)

    def send(self, message: object, now_ms: int, *, command_id: int | None = None, retries: int | None = None) -> bytes:
        """The first frame of a request. Effectful requests get ``command_id`` (a fresh one if None).

        Raises UsageError on local misuse: a request in flight, no session for a session-only
        type, a value outside its wire range.
        """
        try:
            msg_type = request_type_of(message)
        except TypeError as exc:
            raise UsageError(str(exc)) from exc
        d = CATALOG[msg_type]
        if msg_type is MsgType.SESSION_OPEN:
            raise UsageError("open a session with start_handshake()")
        self._check_idle()
        if not d.pre_session and self.state is not SessionState.OPEN:
            raise UsageError(f"{msg_type.name} needs an open session; this one is {self.state.value}")
        if d.effectful:
            command_id = self._command_ids() if command_id is None else command_id
            if not 0 < command_id < 1 << 64:
                raise UsageError(f"{msg_type.name} needs a non-zero 64-bit command id")
        elif command_id:
            raise UsageError(f"{msg_type.name} has no effect and carries no command id")
        tries = 1 + (self.retries if retries is None else retries)
        request = _InFlight(
            msg_type,
            message,
            command_id or 0,
            effectful=d.effectful,
            secured=not d.pre_session,
            max_attempts=max(1, tries),
            deadline_ms=0,
        )
        data = self._emit(request, now_ms)  # raises on a bad value: nothing is then in flight
        self._in_flight = request
        return data

    def _check_idle(self) -> None:
        if self._in_flight is not None:
            raise UsageError(
                f"{self._in_flight.msg_type.name} is still in flight: one request at a time (wait for its "
                "answer, or for poll() to give up)"
            )

    def _emit(self, request: _InFlight, now_ms: int) -> bytes:
        """A new frame for one more attempt: a new counter, the same command id and payload."""
        if request.msg_type is MsgType.SESSION_OPEN:
            hello = request.message if not request.hellos else client_hello(self.role_key, self._nonces(m.NONCE_BYTES))
            assert isinstance(hello, m.SessionOpen)
            out = self._plain.request(hello)
            request.hellos[out.header.counter] = hello
        else:
            channel = self._secure if request.secured else self._plain
            if channel is None:
                raise UsageError(f"{request.msg_type.name} needs an open session")
            try:
                out = channel.request(request.message, request.command_id)
            except (FieldRangeError, ValueError) as exc:
                raise UsageError(f"{request.msg_type.name}: {exc}") from exc
        request.counters.append(out.header.counter)
        request.deadline_ms = now_ms + self.reply_timeout_ms
        return out.data

    # ------------------------------------------------------------------ deciding

    def poll(self, now_ms: int) -> Resend | GiveUp | None:
        """What to do now: send the request in flight again, give up on it, or nothing yet."""
        request = self._in_flight
        if request is None or now_ms < request.deadline_ms:
            return None
        if request.attempts < request.max_attempts:
            data = self._emit(request, now_ms)
            return Resend(data, request.attempts, request.counters[-1])
        self._in_flight = None
        if request.msg_type is MsgType.SESSION_OPEN:
            self.state = SessionState.FAILED
        return GiveUp(request.msg_type, request.command_id, request.effectful, request.attempts)

    def abandon(self) -> None:
        """Forget the request in flight (its late reply will be counted as unmatched)."""
        if self._in_flight is not None and self._in_flight.msg_type is MsgType.SESSION_OPEN:
            self.state = SessionState.FAILED
        self._in_flight = None

    def mark_lost(self) -> None:
        """The caller no longer trusts this session (e.g. no reply at all): open a new one."""
        self._in_flight = None
        if self.state in (SessionState.OPEN, SessionState.OPENING):
            self.state = SessionState.LOST

    def mark_closed(self) -> None:
        self._in_flight = None
        self.state = SessionState.CLOSED

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes, now_ms: int) -> list[Event]:
        """Bytes from the link, in any chunking: the events they complete, in order."""
        events: list[Event] = []
        for item in self._deframer.feed(data):
            if not isinstance(item, bytes):
                self.stats.framing_errors += 1
                continue
            event = self._on_body(item, now_ms)
            if event is not None:
                events.append(event)
        return events

    def _on_body(self, body: bytes, now_ms: int) -> Event | None:
        header = decode_header(body)
        if header is None:
            self.stats.undecodable += 1
            return None
        if header.secured:
            channel = self._secure
            if channel is None or header.session_id != channel.session_id:
                self.stats.other_session += 1
                return None
            result = channel.accept(body)
        else:
            result = self._plain.accept(body)
        if isinstance(result, DecodeError):
            self.stats.undecodable += 1
            if result.code is ErrorCode.VERSION_MISMATCH:
                self.stats.version_mismatch += 1
            return None
        h = result.header
        if h.secured:
            self.last_heard_ms = now_ms
        if h.msg_type == MsgType.ALARM_NOTIFY and not h.is_error:
            if not h.secured:  # only the session's keys make a notification believable
                self.stats.unmatched += 1
                return None
            self.stats.frames_ok += 1
            return AlarmNotified(result.message, h)
        request = self._in_flight
        if (
            request is None
            or h.echo_counter not in request.counters
            or h.msg_type != request.msg_type
            or h.command_id != request.command_id
            or (h.secured and not request.secured)
            or (request.secured and not h.secured and not h.is_error)
        ):
            self.stats.unmatched += 1
            return None
        self.stats.frames_ok += 1
        if h.is_error:
            return self._on_error(request, h, result.message, now_ms)
        self._in_flight = None
        if request.msg_type is MsgType.SESSION_OPEN:
            return self._finish_handshake(request, h, result.message, now_ms)
        if request.msg_type is MsgType.SESSION_CLOSE:
            self.state = SessionState.CLOSED
        return ReplyReceived(request.msg_type, request.command_id, result.message, h)

    def _on_error(self, request: _InFlight, h: Header, error: m.ErrorReply, now_ms: int) -> Event:
        code = ErrorCode(error.code)
        if (
            h.secured
            and code in _BACKOFF_CODES
            and error.retry_after_ms > 0
            and request.attempts < request.max_attempts
        ):
            request.deadline_ms = max(request.deadline_ms, now_ms + error.retry_after_ms)
            return BackingOff(request.msg_type, code, request.deadline_ms)
        self._in_flight = None
        if request.msg_type is MsgType.SESSION_OPEN:
            self.state = SessionState.FAILED
        elif code is ErrorCode.NO_SESSION and self.state is SessionState.OPEN:
            self.state = SessionState.LOST
        return Refused(request.msg_type, request.command_id, error, h.secured, h)

    def _finish_handshake(self, request: _InFlight, h: Header, reply: m.SessionOpenReply, now_ms: int) -> Event:
        hello = request.hellos[h.echo_counter]
        keys = client_finish(self.role_key, hello, h, reply) if h.session_id else None
        if keys is None:
            self.state = SessionState.FAILED
            return KeyRejected(self.role_key.role, self.role_key.key_id)
        self._secure = Channel(from_pump=False, keys=keys)
        self.state = SessionState.OPEN
        self.open_reply = reply
        self.last_heard_ms = now_ms
        return SessionOpened(keys.session_id, reply)


# ---------------------------------------------------------------------- resolving an uncertain outcome


class Verdict(enum.Enum):
    CARRIED_OUT = "carried out"
    """Listed with result OK: it ran. Its reply can be fetched by sending the same command id."""
    REFUSED = "refused"
    """Listed with an error: the refusal stands (the same command id fetches it whole)."""
    NEVER_RAN = "never ran"
    """Not listed, and the list reaches back past it: sending the same command id runs it once."""
    UNKNOWN = "unknown"
    """Not listed, and the pump may have forgotten it: nothing may be sent; ask a person."""


def judge_outcome(
    command_id: int,
    msg_type: MsgType,
    outcomes: Sequence[m.CommandOutcome],
    recorded_before: Collection[int] = (),
) -> tuple[Verdict, m.CommandOutcome | None]:
    """What INTERROGATE's ``outcomes`` (newest first) say of a command that got no reply.

    ``recorded_before`` holds command ids the pump is known to have recorded before this
    command was first sent (they were answered). The list holds the most recent effectful
    commands, newest first; so if it is not full, or it still holds one of those, a command
    recorded after them would be in it too: not listed means never run (SPEC.md, "Command ids
    and exactly-once").
    """
    for outcome in outcomes:
        if outcome.command_id == command_id:
            if outcome.msg_type != msg_type:
                return Verdict.UNKNOWN, outcome  # the id of another request: not ours to judge
            ok = outcome.result == ErrorCode.OK
            return (Verdict.CARRIED_OUT if ok else Verdict.REFUSED), outcome
    if len(outcomes) < m.MAX_OUTCOMES or any(o.command_id in recorded_before for o in outcomes):
        return Verdict.NEVER_RAN, None
    return Verdict.UNKNOWN, None
