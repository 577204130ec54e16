"""The programmer over any serial URL: a thin synchronous shell around ``ProgrammerSession``.

    from programmer import Programmer
    from protocol_spec import KeySet

    with Programmer.open("/dev/ttyACM0", keys=KeySet.load("pump-0042.keys")) as prog:
        staged = prog.stage_program(program)              # step 1: checked, changes nothing
        prog.commit(staged.stage_token)                   # step 2: applied

Every method sends one request (a few for ``read_all_log``), returns the reply dataclass, and
raises a ``ProgrammerError`` otherwise (``programmer.errors``; each has an exit code).

**URLs.** Anything ``serial.serial_for_url`` opens: a device path (``/dev/ttyACM0``,
``/dev/ttyUSB0``, ``COM3``), a pty of ``pumprig serve --pty`` (``/dev/pts/N``), a TCP socket
(``socket://127.0.0.1:5000``: ``pumprig serve --tcp``, an emulated MCU's UART), a remote port
(``rfc2217://host:port``), and the in-process virtual pump (``pump://?preset=NAME``; its handler
lives in the rig: call ``hil.urlhandler.register()`` first). The programmer never branches on
the kind of transport.

**Exclusive access.** With ``exclusive=True`` (the default) a local serial port is locked
(``flock``) when it opens, so a second programmer or a terminal program cannot interleave
frames: it gets "port busy" instead. Windows ports are always exclusive; sockets ignore it.

**DTR and RTS.** Flow control is off (no RTS/CTS, no DSR/DTR, no XON/XOFF). By default DTR and
RTS are left as pyserial leaves them, asserted, which USB CDC-ACM firmware often needs before it
sends anything. Boards with an auto-reset circuit (Arduino Uno/Nano, most ESP32 and ESP8266
boards) reset when DTR (or RTS) falls or rises, and the operating system raises DTR when the
port opens: such a board reboots on every open. Pass ``dtr=False, rts=False`` to hold both
lines low once the port is open, and, on Linux, run ``stty -F /dev/ttyUSB0 -hupcl`` once so
closing the port does not drop DTR; if the board still resets on open, the IDENTIFY retries
(``timeout_ms`` x (1 + ``retries``)) must cover its boot time: raise ``timeout_ms``.

**Retries without harm.** A request unanswered within ``timeout_ms`` is sent again, up to
``retries`` more times, each time in a new frame (a new counter). A command with an effect keeps
its command id, so the pump carries it out at most once. If no attempt is answered, the outcome
is resolved from INTERROGATE's list of recent command outcomes (in this session if it still
works, else in a new one; a patient session, which may not interrogate, uses a clinician or test
key of the same key set if it has one): listed means it ran (or was refused) and the same command
id fetches the stored reply; not listed, where the list reaches back far enough, means it never
ran and the same command id runs it, once. Nothing is ever sent again under a new command id. If
that cannot settle it, ``UncertainOutcome`` (exit code 6) says so. A patient-only key set cannot
read the outcomes: the same command id is then sent again (in this session if it still works,
else in a new one), which is safe while the pump still remembers it (it keeps at least the 8
most recent commands).
"""

from __future__ import annotations

import contextlib
import errno
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypedDict, TypeVar

import serial
from serial.serialutil import SerialException

from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG, request_type_of
from protocol_spec.channel import new_command_id
from protocol_spec.codec import encode_payload
from protocol_spec.enums import (
    PROTOCOL_VERSION,
    AlarmCode,
    BolusKind,
    DrugId,
    ErrorCode,
    FaultKind,
    MsgType,
    ProgramSlot,
    RefillConfirmation,
    Role,
)
from protocol_spec.fields import FieldRangeError
from protocol_spec.framing import DELIMITER, crc32
from protocol_spec.inspect import CaptureDecoder, describe
from protocol_spec.security import TEST_KEY_SET, KeySet, RoleKey
from protocol_spec.timing import LINK_BAUD, REPLY_TIMEOUT_MS, RETRIES

from .errors import (
    KeyMismatch,
    LinkError,
    NoReply,
    ProgrammerError,
    PumpRefused,
    ReplyLost,
    UncertainOutcome,
    UsageError,
)
from .session import (
    AlarmNotified,
    BackingOff,
    Event,
    GiveUp,
    KeyRejected,
    ProgrammerSession,
    Refused,
    ReplyReceived,
    Resend,
    SessionOpened,
    SessionState,
    Verdict,
    judge_outcome,
)

__all__ = [
    "POLL_MS",
    "Programmer",
    "ProgrammerOptions",
    "PublishedKeysWarning",
    "SerialPort",
    "TracingPort",
    "link_error",
    "open_port",
]

POLL_MS = 20
"""The port's read timeout: how often the deadlines of the session are looked at."""
_IDLE_S = 0.005
"""A read that returned at once and empty (a port that does not wait) sleeps this long."""
_RESOLVE_ROUNDS = 2
"""Rounds of (read the outcomes, send the same command id) before an outcome is called uncertain."""
_RECORDED_KEPT = 64
_STAGE_ATTEMPTS = 3
"""Stages sent (each a new command) before a stage whose reply is lost is reported."""

T = TypeVar("T")


_ONE_FRAME_REFUSALS = frozenset({ErrorCode.REPLAYED_COUNTER, ErrorCode.BAD_TAG})
"""Refusals of a frame, not of the command: the pump checked them before the command id."""


class ProgrammerOptions(TypedDict, total=False):
    """The keyword options of ``Programmer`` a caller may pass through (``**options``) to one it
    has made for it (the rig's device under test does)."""

    reply_timeout_ms: int
    retries: int
    clock: Callable[[], int] | None
    sleep: Callable[[float], None] | None
    command_ids: Callable[[], int]
    trace: Callable[[str], None] | None


class PublishedKeysWarning(UserWarning):
    """The programmer is using the published TEST keys, which protect nothing."""


class SerialPort(Protocol):
    """What the programmer needs of a port (``serial.serial_for_url`` returns one)."""

    @property
    def timeout(self) -> float | None: ...
    @timeout.setter
    def timeout(self, value: float | None) -> None: ...
    @property
    def in_waiting(self) -> int: ...
    def read(self, size: int = 1, /) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def close(self) -> None: ...


class TracingPort:
    """A port that annotates every frame it carries, both ways, in the order they pass.

    Frames are decoded with ``protocol_spec.inspect``: the handshakes are followed with the
    programmer's own key set, so the sealed frames of its sessions are shown opened. Received
    bytes are held back to the last frame delimiter, so a frame split across reads is shown
    once, whole, and never interleaved with a frame sent meanwhile.
    """

    def __init__(self, port: SerialPort, keys: KeySet, emit: Callable[[str], None]) -> None:
        self._port = port
        self._emit = emit
        self._decoder = CaptureDecoder(keys)
        self._pending = bytearray()

    @property
    def timeout(self) -> float | None:
        return self._port.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._port.timeout = value

    @property
    def in_waiting(self) -> int:
        return self._port.in_waiting

    def read(self, size: int = 1, /) -> bytes:
        data = self._port.read(size)
        if data:
            self._pending += data
            end = self._pending.rfind(DELIMITER)
            if end >= 0:
                whole = bytes(self._pending[: end + 1])
                del self._pending[: end + 1]
                self._show(whole)
        return data

    def write(self, data: bytes, /) -> int | None:
        written = self._port.write(data)
        self._show(data)
        return written

    def close(self) -> None:
        self._port.close()

    def _show(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            self._emit(describe(frame))


# ---------------------------------------------------------------------- opening a port

_MISSING = {errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.ENOTDIR}
_PERMISSION = {errno.EACCES, errno.EPERM}
_BUSY = {errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK}
_REFUSED = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT}


def _os_errno(exc: BaseException) -> int | None:
    """The errno behind a pyserial error (pyserial keeps it, or chains the OSError)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        number = getattr(seen, "errno", None)
        if isinstance(number, int):
            return number
        seen = seen.__cause__ or seen.__context__
    return None


def link_error(url: str, exc: BaseException) -> LinkError:
    """Say in words why ``url`` could not be opened or used."""
    number = _os_errno(exc)
    text = str(exc)
    lowered = text.lower()
    if number in _BUSY or "exclusively lock" in lowered or "busy" in lowered:
        return LinkError(
            url, "busy", f"{url} is busy: another program has it open (close it, or use another port)", text
        )
    if number in _PERMISSION or "permission denied" in lowered or "access is denied" in lowered:
        return LinkError(
            url,
            "permission",
            f"permission denied on {url}: on Linux add yourself to the group owning it (often `dialout`) "
            "and log in again",
            text,
        )
    if number in _MISSING or "no such file" in lowered or "filenotfound" in lowered:
        return LinkError(
            url, "missing", f"{url} does not exist: is the pump (or its adapter) plugged in, is this its port?", text
        )
    if number in _REFUSED or "connection refused" in lowered:
        return LinkError(url, "refused", f"nothing answers at {url}: is `pumprig serve` (or the target) running?", text)
    return LinkError(url, "other", f"cannot open {url}", text)


def open_port(
    url: str,
    *,
    exclusive: bool = True,
    baudrate: int = LINK_BAUD,
    dtr: bool | None = None,
    rts: bool | None = None,
) -> serial.Serial:
    """Open ``url`` as the protocol's link: 8N1, no flow control, exclusive where supported.

    ``dtr``/``rts`` None leave the lines as pyserial sets them (asserted); see the module
    docstring for boards that reset on DTR. Raises UsageError for a URL pyserial cannot parse
    and LinkError (missing, permission, busy, refused, ...) when the port cannot be opened.
    """
    try:
        port = serial.serial_for_url(url, do_not_open=True)
    except ValueError as exc:
        raise UsageError(
            f"{url!r} is not a port: give a device path (/dev/ttyACM0, COM3) or a URL "
            f"(socket://HOST:PORT, rfc2217://HOST:PORT, pump://...): {exc}"
        ) from exc
    except (SerialException, OSError) as exc:
        raise link_error(url, exc) from exc
    port.baudrate = baudrate
    port.bytesize = serial.EIGHTBITS
    port.parity = serial.PARITY_NONE
    port.stopbits = serial.STOPBITS_ONE
    port.xonxoff = False
    port.rtscts = False
    port.dsrdtr = False
    port.timeout = POLL_MS / 1000
    if not url.lower().startswith("rfc2217://"):
        # pyserial's RFC 2217 client refuses write_timeout at open(); its socket has a 5 s timeout
        port.write_timeout = 5.0
    if exclusive:
        port.exclusive = True
    if dtr is not None:
        port.dtr = dtr
    if rts is not None:
        port.rts = rts
    try:
        port.open()
    except (SerialException, OSError) as exc:
        raise link_error(url, exc) from exc
    return port


# ---------------------------------------------------------------------- the programmer


class Programmer:
    """A programmer talking to one pump over one port. ``Programmer.open(url)`` is the usual start.

    The constructor takes a port already open (anything with ``read``, ``write``, ``in_waiting``,
    ``timeout`` and ``close``) and does no I/O; ``connect()`` identifies the pump and opens the
    session. ``clock`` (integer milliseconds, monotonic) and ``sleep`` (seconds) default to the
    system's; a rig on virtual time passes its own.
    """

    def __init__(
        self,
        port: SerialPort,
        *,
        keys: KeySet,
        role: Role = Role.CLINICIAN,
        reply_timeout_ms: int = REPLY_TIMEOUT_MS,
        retries: int = RETRIES,
        url: str = "",
        owns_port: bool = False,
        clock: Callable[[], int] | None = None,
        sleep: Callable[[float], None] | None = None,
        command_ids: Callable[[], int] = new_command_id,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        role_key = keys.for_role(role)
        if role_key is None:
            held = ", ".join(k.role.name for k in keys.keys) or "no key"
            raise UsageError(f"the key set holds no {role.name} key (it holds {held}): give the pump's key file")
        if reply_timeout_ms < 1 or retries < 0:
            raise UsageError("the reply timeout is at least 1 ms and the retries at least 0")
        self.keys = keys
        self.role = role
        self.url = url or getattr(port, "portstr", None) or "the port"
        self.reply_timeout_ms = reply_timeout_ms
        self.retries = retries
        self._port: SerialPort = TracingPort(port, keys, trace) if trace is not None else port
        self._owns_port = owns_port
        self._clock = clock if clock is not None else _monotonic_ms
        self._sleep = sleep if sleep is not None else time.sleep
        self._command_ids = command_ids
        self._role_key = role_key
        self._session = self._new_session(role_key)
        self._recorded: deque[int] = deque(maxlen=_RECORDED_KEPT)
        self._closed = False
        self.identity: m.IdentifyReply | None = None
        """The pump's IDENTIFY reply, from ``connect()``."""
        self.notifications: list[m.AlarmNotify] = []
        """ALARM_NOTIFY received while waiting for replies, oldest first (the caller may clear it)."""

    @classmethod
    def open(
        cls,
        url: str,
        *,
        keys: KeySet | None = None,
        role: Role = Role.CLINICIAN,
        timeout_ms: int = REPLY_TIMEOUT_MS,
        retries: int = RETRIES,
        exclusive: bool = True,
        baudrate: int = LINK_BAUD,
        dtr: bool | None = None,
        rts: bool | None = None,
        trace: Callable[[str], None] | None = None,
    ) -> Programmer:
        """Open ``url``, IDENTIFY the pump and open a session with the role's key.

        With ``keys`` None the published TEST key set is used, with a PublishedKeysWarning: it
        works with emulators and test rigs only, and protects nothing. ``trace`` gets every frame
        sent and received, annotated (``TracingPort``); ``dtr``/``rts``: see ``open_port``.
        """
        if keys is None:
            warnings.warn(
                PublishedKeysWarning(
                    "no key set given: using the published TEST keys, which protect nothing "
                    "(emulators and test rigs only; give the pump's key file for a real device)"
                ),
                stacklevel=2,
            )
            keys = TEST_KEY_SET
        if keys.for_role(role) is None:
            raise UsageError(f"the key set holds no {role.name} key: give the pump's key file")
        port = open_port(url, exclusive=exclusive, baudrate=baudrate, dtr=dtr, rts=rts)
        try:
            prog = cls(
                port,
                keys=keys,
                role=role,
                reply_timeout_ms=timeout_ms,
                retries=retries,
                url=url,
                owns_port=True,
                trace=trace,
            )
        except BaseException:
            port.close()
            raise
        try:
            prog.connect()
        except BaseException:
            prog.close()
            raise
        return prog

    def __enter__(self) -> Programmer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ session life

    @property
    def session_id(self) -> int:
        return self._session.session_id

    @property
    def session(self) -> ProgrammerSession:
        """The sans-IO session underneath (its ``stats`` say what was dropped)."""
        return self._session

    def connect(self) -> None:
        """IDENTIFY the pump, check it speaks our protocol version, open the session."""
        identity = self.identify()
        if not identity.min_protocol_version <= PROTOCOL_VERSION <= identity.protocol_version:
            raise LinkError(
                self.url,
                "incompatible",
                f"the pump at {self.url} speaks protocol versions {identity.min_protocol_version} to "
                f"{identity.protocol_version}; this programmer speaks {PROTOCOL_VERSION}",
            )
        self._open_session()

    def close(self) -> None:
        """SESSION_CLOSE (best effort: a pump that does not hear it forgets the session by itself),
        then close the port if this programmer opened it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._session.state is SessionState.OPEN and not self._session.busy:
                with contextlib.suppress(ProgrammerError):
                    self._request(m.SessionClose(), retries=0, reopen=False)
                self._session.mark_closed()
        finally:
            if self._owns_port:
                with contextlib.suppress(SerialException, OSError):
                    self._port.close()

    def _new_session(self, role_key: RoleKey) -> ProgrammerSession:
        return ProgrammerSession(
            role_key, reply_timeout_ms=self.reply_timeout_ms, retries=self.retries, command_ids=self._command_ids
        )

    def _open_session(self) -> None:
        session = self._new_session(self._role_key)
        self._handshake(session)
        self._session = session

    def _ensure_session(self) -> ProgrammerSession:
        if self._closed:
            raise UsageError("this programmer is closed")
        s = self._session
        if s.state is not SessionState.OPEN or s.expired(self._clock()):
            self._open_session()
        return self._session

    def _handshake(self, session: ProgrammerSession) -> None:
        event = self._exchange(session, session.start_handshake(self._clock()))
        if isinstance(event, SessionOpened):
            return
        key = session.role_key
        if isinstance(event, KeyRejected):
            raise KeyMismatch(key.role, key.key_id, code=None)
        if isinstance(event, Refused):
            if event.error.code == ErrorCode.UNKNOWN_KEY:
                raise KeyMismatch(key.role, key.key_id, code=ErrorCode.UNKNOWN_KEY)
            raise _refusal(event, None)
        if isinstance(event, GiveUp):
            raise NoReply(MsgType.SESSION_OPEN, event.attempts, self._hint(session))
        raise LinkError(self.url, "protocol", f"unexpected answer to SESSION_OPEN: {event!r}")

    # ------------------------------------------------------------------ moving bytes

    def _write(self, data: bytes) -> None:
        try:
            self._port.write(data)
        except (SerialException, OSError) as exc:
            raise LinkError(self.url, "lost", f"cannot write to {self.url}: the link is lost", str(exc)) from exc

    def _read(self) -> bytes:
        started = self._clock()
        try:
            waiting = self._port.in_waiting
            chunk = self._port.read(waiting or 1)
            if chunk:
                more = self._port.in_waiting
                if more:
                    chunk += self._port.read(more)
        except (SerialException, OSError) as exc:
            raise LinkError(self.url, "lost", f"cannot read from {self.url}: the link is lost", str(exc)) from exc
        if not chunk and self._clock() - started < POLL_MS // 2:
            self._sleep(_IDLE_S)  # a port that returns at once when nothing is there
        return chunk

    def _exchange(self, session: ProgrammerSession, first: bytes) -> Event | GiveUp:
        """Write a request's first frame, then read, resend and wait as the session decides."""
        self._write(first)
        while True:
            decision = session.poll(self._clock())
            if isinstance(decision, Resend):
                self._write(decision.data)
                continue
            if isinstance(decision, GiveUp):
                return decision
            chunk = self._read()
            if not chunk:
                continue
            answer: Event | None = None
            for event in session.receive_data(chunk, self._clock()):
                if isinstance(event, AlarmNotified):
                    self.notifications.append(event.notify)
                elif not isinstance(event, BackingOff):
                    answer = event
            if answer is not None:
                return answer

    def _hint(self, session: ProgrammerSession) -> str:
        st = session.stats
        if st.version_mismatch:
            return f" ({st.version_mismatch} frame(s) of another protocol version were received)"
        dropped = st.framing_errors + st.undecodable
        if dropped:
            return f" ({dropped} unreadable frame(s) were received: line noise, wrong baud rate, or another device)"
        return ""

    # ------------------------------------------------------------------ requests

    def request(self, message: object) -> Any:
        """Any request, by its message dataclass: the reply's dataclass, or a ProgrammerError.

        Effectful requests get a command id and the exactly-once treatment of the module docstring.
        """
        try:
            d = CATALOG[request_type_of(message)]
        except TypeError as exc:
            raise UsageError(str(exc)) from exc
        if d.effectful:
            return self._command(message)
        return self._request(message)

    def _request(
        self,
        message: object,
        *,
        session: ProgrammerSession | None = None,
        retries: int | None = None,
        reopen: bool = True,
    ) -> Any:
        """A request with no effect: its reply, PumpRefused or NoReply. A session the pump no
        longer holds is opened again once (``reopen``)."""
        msg_type = request_type_of(message)
        pre_session = CATALOG[msg_type].pre_session
        for again in (False, True):
            if session is not None:
                s = session
            elif pre_session or not reopen:
                s = self._session
            else:
                s = self._ensure_session()
            event = self._exchange(s, s.send(message, self._clock(), retries=retries))
            if isinstance(event, ReplyReceived):
                return event.message
            if isinstance(event, Refused):
                lost = event.error.code == ErrorCode.NO_SESSION and not pre_session
                if lost and reopen and session is None and not again:
                    s.mark_lost()
                    continue
                raise _refusal(event, message)
            if isinstance(event, GiveUp):
                raise NoReply(msg_type, event.attempts, self._hint(s))
            raise LinkError(self.url, "protocol", f"unexpected answer to {msg_type.name}: {event!r}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _command(self, message: object) -> Any:
        """A request with an effect, carried out exactly once or reported as uncertain."""
        msg_type = request_type_of(message)
        s = self._ensure_session()
        command_id = s.new_command_id()
        event = self._exchange(s, s.send(message, self._clock(), command_id=command_id))
        settled, reply = self._settle(event, message, command_id)
        if settled:
            return reply
        return self._resolve(message, msg_type, command_id)

    def _settle(self, event: Event | GiveUp, message: object, command_id: int) -> tuple[bool, Any]:
        """(True, reply) for a reply, raise for an authenticated refusal, (False, None) if unsettled."""
        if isinstance(event, ReplyReceived):
            self._recorded.append(command_id)
            return True, event.message
        if isinstance(event, Refused):
            if event.authenticated and event.error.code not in _ONE_FRAME_REFUSALS:
                raise _refusal(event, message)
            if event.authenticated:
                # a refusal of one frame (a duplicate, a corrupted copy) says nothing of another
                # attempt of the same command, which may have run: resolve it by command id
                return False, None
            if event.error.code == ErrorCode.NO_SESSION:
                self._session.mark_lost()
            return False, None  # a plaintext refusal may be forged: it proves nothing
        if isinstance(event, GiveUp):
            return False, None
        raise LinkError(self.url, "protocol", f"unexpected answer: {event!r}")

    def _resolve(self, message: object, msg_type: MsgType, command_id: int) -> Any:
        """No believable answer: read the pump's outcomes, then send the same command id again."""
        recorded_before = set(self._recorded)
        listed: m.CommandOutcome | None = None
        for _ in range(_RESOLVE_ROUNDS):
            try:
                outcomes = self._outcomes()
            except ProgrammerError as exc:
                raise UncertainOutcome(command_id, msg_type, f"the pump's outcomes could not be read ({exc})") from exc
            if outcomes is not None:
                verdict, found = judge_outcome(command_id, msg_type, outcomes, recorded_before)
                if verdict is Verdict.UNKNOWN:
                    raise UncertainOutcome(
                        command_id,
                        msg_type,
                        "it is not in the pump's list of recent outcomes, which may no longer reach back to it",
                    )
                listed = found or listed
            # listed: the same id fetches the stored result; never ran: the same id runs it, once
            try:
                s = self._ensure_session()
                event = self._exchange(s, s.send(message, self._clock(), command_id=command_id))
            except (NoReply, LinkError, KeyMismatch) as exc:
                raise UncertainOutcome(command_id, msg_type, f"a new session could not be opened ({exc})") from exc
            settled, reply = self._settle(event, message, command_id)
            if settled:
                return reply
            self._session.mark_lost()
        if listed is not None and listed.result == ErrorCode.OK:
            raise ReplyLost(command_id, msg_type, listed)
        if listed is not None:
            raise PumpRefused(ErrorCode(listed.result), msg_type=msg_type, request=message)
        raise UncertainOutcome(command_id, msg_type, "no reply to the same command sent again")

    def _outcomes(self) -> tuple[m.CommandOutcome, ...] | None:
        """INTERROGATE's outcomes, in this session or a new one; None if no key of ours may read them."""
        readers = CATALOG[MsgType.INTERROGATE].roles
        if self.role in readers:
            try:
                reply = self._request(m.Interrogate())
            except NoReply:
                self._session.mark_lost()  # perhaps the session, not the link: once more in a new one
                reply = self._request(m.Interrogate())
            assert isinstance(reply, m.InterrogateReply)
            return reply.outcomes
        for role in (Role.CLINICIAN, Role.TEST):
            key = self.keys.for_role(role)
            if key is not None and role in readers:
                side = self._new_session(key)
                self._handshake(side)
                try:
                    reply = self._request(m.Interrogate(), session=side)
                finally:
                    if side.state is SessionState.OPEN:
                        with contextlib.suppress(ProgrammerError):
                            self._request(m.SessionClose(), session=side, retries=0)
                assert isinstance(reply, m.InterrogateReply)
                return reply.outcomes
        return None

    def _typed(self, message: object, cls: type[T]) -> T:
        reply = self.request(message)
        if not isinstance(reply, cls):
            raise LinkError(self.url, "protocol", f"expected {cls.__name__}, the pump sent {type(reply).__name__}")
        return reply

    # ------------------------------------------------------------------ every message, typed

    def identify(self) -> m.IdentifyReply:
        """Protocol versions, device class and features (plaintext; also a ping)."""
        reply = self._typed(m.Identify(), m.IdentifyReply)
        self.identity = reply
        return reply

    def interrogate(self) -> m.InterrogateReply:
        return self._typed(m.Interrogate(), m.InterrogateReply)

    def status(self) -> m.StatusReply:
        return self._typed(m.Status(), m.StatusReply)

    def read_program(self, slot: ProgramSlot = ProgramSlot.ACTIVE) -> m.Program:
        return self._typed(m.ReadProgram(slot), m.Program)

    def _stage(self, request: object) -> m.StageReply:
        """A stage and its token. Staging replaces the staged change and changes nothing else
        (SPEC.md, two-step programming), so a stage whose reply was lost is simply staged again
        as a new command: only its reply, the token, is of any use."""
        for attempt in range(_STAGE_ATTEMPTS):
            try:
                reply = self._typed(request, m.StageReply)
                break
            except (ReplyLost, UncertainOutcome):
                if attempt == _STAGE_ATTEMPTS - 1:
                    raise
        try:
            expected = crc32(encode_payload(request))
        except FieldRangeError as exc:  # pragma: no cover - it was encoded to be sent
            raise UsageError(str(exc)) from exc
        if reply.stage_token != expected:
            raise LinkError(
                self.url,
                "protocol",
                f"the pump staged something other than what was sent (token 0x{reply.stage_token:08x}, "
                f"expected 0x{expected:08x}): do not commit it",
            )
        return reply

    def stage_program(self, program: m.Program, *, override_soft_limits: bool = False) -> m.StageReply:
        """Stage a basal program (step 1 of 2); its token, checked against what was sent, goes to ``commit``."""
        return self._stage(m.StageProgram(int(override_soft_limits), program))

    def stage_bolus(
        self, kind: BolusKind, volume_nl: int, duration_ms: int, *, override_soft_limits: bool = False
    ) -> m.StageReply:
        """Stage a PRIMING or BRIDGE bolus (step 1 of 2)."""
        return self._stage(m.StageBolus(kind, int(override_soft_limits), volume_nl, duration_ms))

    def stage_patient_bolus(
        self, settings: m.PatientBolusSettings, *, override_soft_limits: bool = False
    ) -> m.StageReply:
        """Stage patient-bolus settings (step 1 of 2)."""
        return self._stage(m.StagePatientBolus(int(override_soft_limits), settings))

    def commit(self, stage_token: int) -> m.CommitReply:
        """Apply the staged change whose token the clinician confirmed (step 2 of 2)."""
        return self._typed(m.Commit(stage_token), m.CommitReply)

    def abort(self) -> m.Ack:
        """Drop the staged change; the running program continues."""
        return self._typed(m.Abort(), m.Ack)

    def patient_bolus_request(self) -> m.PatientBolusGrant:
        """Patient role: one bolus under the programmed settings."""
        return self._typed(m.PatientBolusRequest(), m.PatientBolusGrant)

    def cancel_bolus(self) -> m.Ack:
        return self._typed(m.CancelBolus(), m.Ack)

    def refill(
        self,
        *,
        aspirated_volume_nl: int,
        added_volume_nl: int,
        drug: DrugId,
        concentration_ug_per_ml: int,
        catheter_volume_nl: int,
        confirmations: RefillConfirmation,
    ) -> m.RefillReply:
        return self._typed(
            m.Refill(
                aspirated_volume_nl, added_volume_nl, drug, concentration_ug_per_ml, catheter_volume_nl, confirmations
            ),
            m.RefillReply,
        )

    def configure_alarms(
        self, *, low_reservoir_threshold_nl: int, critical_repeat_ms: int, non_critical_repeat_ms: int
    ) -> m.AlarmConfig:
        return self._typed(
            m.ConfigureAlarms(low_reservoir_threshold_nl, critical_repeat_ms, non_critical_repeat_ms), m.AlarmConfig
        )

    def silence_alarm(self, alarm: AlarmCode, duration_ms: int) -> m.Ack:
        return self._typed(m.SilenceAlarm(alarm, duration_ms), m.Ack)

    def acknowledge_alarm(self, alarm: AlarmCode) -> m.Ack:
        return self._typed(m.AcknowledgeAlarm(alarm), m.Ack)

    def read_log(self, first_seq: int = 0, max_entries: int = m.MAX_LOG_PAGE) -> m.LogPage:
        return self._typed(m.ReadLog(first_seq, max_entries), m.LogPage)

    def read_all_log(self, first_seq: int = 0, *, page_size: int = m.MAX_LOG_PAGE) -> Iterator[m.LogEntry]:
        """Every entry from ``first_seq`` (or the oldest still held) to the newest, a page at a time."""
        seq = first_seq
        while True:
            page = self.read_log(seq, page_size)
            if not page.entries:
                return
            yield from page.entries
            seq = page.entries[-1].seq + 1
            if seq >= page.next_seq:
                return

    def set_clock(self, wall_clock_ms: int) -> m.SetClockReply:
        return self._typed(m.SetClock(wall_clock_ms), m.SetClockReply)

    def read_limits(self) -> m.DrugLimits:
        return self._typed(m.ReadLimits(), m.DrugLimits)

    def set_limits(self, limits: m.DrugLimits) -> m.DrugLimits:
        return self._typed(m.SetLimits(limits), m.DrugLimits)

    # test role

    def advance_time(self, delta_ms: int) -> m.ClockReply:
        return self._typed(m.AdvanceTime(delta_ms), m.ClockReply)

    def hold_clock(self, hold: bool) -> m.ClockReply:
        return self._typed(m.HoldClock(int(hold)), m.ClockReply)

    def inject_fault(self, fault: FaultKind, param: int = 0) -> m.Ack:
        return self._typed(m.InjectFault(fault, param), m.Ack)

    def read_plant(self) -> m.PlantReply:
        return self._typed(m.ReadPlant(), m.PlantReply)

    def read_step_log(self, first_step: int = 0, max_items: int = m.MAX_STEP_LOG_PAGE) -> m.StepLogReply:
        return self._typed(m.ReadStepLog(first_step, max_items), m.StepLogReply)


def _refusal(event: Refused, request: object | None) -> PumpRefused:
    e = event.error
    return PumpRefused(
        ErrorCode(e.code),
        e.field,
        e.lo,
        e.hi,
        e.retry_after_ms,
        msg_type=event.msg_type,
        request=request,
        authenticated=event.authenticated,
    )


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000
