"""A programmer for tests of ``firmware_model.device.Device``, on host (virtual) time.

    rig = Rig(make_device(test_role=True))
    clin = rig.open(Role.CLINICIAN)                       # handshake with the published test keys
    ex = rig.send(m.Status(), clin)                       # a request, answered at rig.now_ms
    status = ex.ok                                        # the reply payload (asserts no error)
    ex = rig.send(m.Refill(...), clin)                    # effectful: a fresh command id
    assert ex.code is ErrorCode.OK

Everything is deterministic: the device's entropy, the client nonces and the command ids all
come from seeded ``random.Random`` instances, so a failing test reproduces exactly. Replies are
decoded with the channel of the session they name (plaintext otherwise); the reply to a request
is the frame whose ``echo_counter`` is the request's counter, and ALARM_NOTIFY notifications
(``echo_counter`` 0) are kept apart.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from firmware_model.config import PumpConfig
from firmware_model.device import Device, DeviceConfig
from firmware_model.pump import Pump
from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG, request_type_of
from protocol_spec.channel import Channel, Outgoing, client_finish, client_hello
from protocol_spec.codec import DecodeError, Header, Packet, decode_header, encode_header
from protocol_spec.enums import (
    PROTOCOL_VERSION,
    DrugId,
    ErrorCode,
    FrameFlags,
    LogEventKind,
    MsgType,
    RefillConfirmation,
    Role,
)
from protocol_spec.framing import Deframer, encode_frame
from protocol_spec.security import TEST_KEY_SET, KeySet, RoleKey, seal_payload

__all__ = [
    "REFILL_FULL",
    "Exchange",
    "Rig",
    "Session",
    "body_of",
    "boot_device",
    "flip_bit",
    "log_since",
    "make_device",
    "plain_frame",
    "security_counts",
    "seeded_entropy",
    "therapy_state",
]


def seeded_entropy(seed: int) -> Callable[[int], bytes]:
    """A deterministic entropy source for the device (``Device(entropy=...)``)."""
    return random.Random(seed).randbytes


def make_device(
    *,
    test_role: bool = True,
    keys: KeySet = TEST_KEY_SET,
    pump: Pump | None = None,
    seed: int = 1,
    boot_counter: int = 1,
    config: DeviceConfig | None = None,
) -> Device:
    """A device on a fresh pump (or the one given), with deterministic entropy."""
    cfg = config if config is not None else DeviceConfig(test_role=test_role)
    return Device(
        pump if pump is not None else Pump(PumpConfig()),
        keys,
        config=cfg,
        boot_counter=boot_counter,
        entropy=seeded_entropy(seed),
    )


def boot_device(*, test_role: bool = True, keys: KeySet = TEST_KEY_SET, seed: int = 1) -> Device:
    """A factory-new device with non-volatile memory (``Device.boot``), deterministic entropy."""
    device, _ = Device.boot(PumpConfig(), keys, config=DeviceConfig(test_role=test_role), entropy=seeded_entropy(seed))
    return device


# ---------------------------------------------------------------------- frames


def body_of(wire: bytes) -> bytes:
    """The body of one framed frame (CRC checked and removed)."""
    (body,) = Deframer().feed(wire)
    assert isinstance(body, bytes), body
    return body


def flip_bit(wire: bytes, bit: int) -> bytes:
    """The frame with bit ``bit`` of its body flipped and a correct CRC: only the AEAD (or the
    header checks) can catch it, as with a forgery or an error the CRC missed."""
    body = bytearray(body_of(wire))
    body[bit // 8] ^= 1 << (bit % 8)
    return encode_frame(bytes(body))


def plain_frame(header: Header, payload: bytes = b"") -> bytes:
    """A frame built by hand: header and raw payload bytes, plaintext."""
    return encode_frame(encode_header(header) + payload)


# ---------------------------------------------------------------------- state


def therapy_state(pump: Pump) -> tuple[object, ...]:
    """``pump.therapy_digest()`` without what every frame is allowed to change.

    Every frame received or sent costs battery charge (``acc.frames``, ``acc.charge_pc``), which
    moves the next battery event (``_next_event_ms``); security refusals are logged (the log's
    ``next_seq``). Those are masked here; tests check them separately.
    """
    d = pump.therapy_digest()
    assert len(d) == 17, "therapy_digest changed shape: update therapy_state"
    accounts = d[7]
    effective = d[16]
    assert isinstance(accounts, tuple)
    assert isinstance(effective, tuple)
    return (*d[:7], accounts[:2], *d[8:15], effective[:2])


def log_since(pump: Pump, seq: int) -> list[m.LogEntry]:
    """Log entries with a sequence number of ``seq`` or more."""
    return [e for e in pump.log.entries() if e.seq >= seq]


def security_counts(pump: Pump) -> dict[int, int]:
    """Sum of the ``count`` of every SECURITY entry, by error code."""
    out: dict[int, int] = {}
    for e in pump.log.entries(LogEventKind.SECURITY):
        out[e.code] = out.get(e.code, 0) + e.count
    return out


# ---------------------------------------------------------------------- the programmer


@dataclass
class Session:
    """One open session, programmer side."""

    role: Role
    session_id: int
    channel: Channel
    open_reply: m.SessionOpenReply

    def burn_counter(self) -> int:
        """Use up one send counter without sending anything (gaps are allowed); for hand-made
        frames that need a fresh counter."""
        return self.channel.request(m.Status()).header.counter

    def sealed(self, header: Header, payload: bytes) -> bytes:
        """A frame sealed with this session's keys under ``header`` as given (hand-made frames)."""
        keys = self.channel.keys
        assert keys is not None
        raw = encode_header(header)
        return encode_frame(raw + seal_payload(keys, header.direction, header.counter, raw, payload))

    def header(self, msg_type: int, *, command_id: int = 0, counter: int | None = None) -> Header:
        """A request header of this session with a fresh counter (or the one given)."""
        return Header(
            PROTOCOL_VERSION,
            msg_type,
            FrameFlags.SECURED,
            self.session_id,
            self.burn_counter() if counter is None else counter,
            0,
            command_id,
        )


@dataclass
class Exchange:
    """What the device sent back for one delivery of bytes."""

    request: Header | None
    """The header of the request sent (None for bytes that hold no frame)."""
    reply: Packet | None
    """The reply (or error reply) whose ``echo_counter`` is the request's counter."""
    notes: list[Packet] = field(default_factory=list)
    """ALARM_NOTIFY notifications, in the order sent."""
    others: list[Packet | DecodeError] = field(default_factory=list)
    """Anything else: replies to other requests, frames the programmer could not accept."""
    wire: bytes = b""
    """Everything the device sent."""

    @property
    def answered(self) -> bool:
        return self.reply is not None

    @property
    def code(self) -> ErrorCode:
        """OK for a reply, the error code for an error reply. Asserts there was a reply."""
        assert self.reply is not None, f"no reply to {self.request} (others: {self.others})"
        if self.reply.header.is_error:
            return ErrorCode(self.reply.message.code)
        return ErrorCode.OK

    @property
    def error(self) -> m.ErrorReply:
        assert self.reply is not None, f"no reply to {self.request} (others: {self.others})"
        assert self.reply.header.is_error, f"expected an error reply, got {self.reply.message}"
        assert isinstance(self.reply.message, m.ErrorReply)
        return self.reply.message

    @property
    def ok(self) -> Any:
        """The reply payload; fails the test on an error reply or no reply."""
        assert self.reply is not None, f"no reply to {self.request} (others: {self.others})"
        assert not self.reply.header.is_error, f"refused: {self.reply.message}"
        return self.reply.message


class Rig:
    """A programmer wired to one device, with a host clock that only runs forward."""

    def __init__(self, device: Device, *, seed: int = 7, now_ms: int = 0) -> None:
        self.device = device
        self.now_ms = now_ms
        self._rng = random.Random(seed)
        self.plain = Channel(from_pump=False)
        self.sessions: dict[int, Session] = {}
        self.sent: list[bytes] = []
        """Every frame sent, in order (for replays)."""
        device.advance(now_ms)

    @property
    def pump(self) -> Pump:
        return self.device.pump

    # ------------------------------------------------------------------ time

    def at(self, now_ms: int | None) -> int:
        """Move the host clock to ``now_ms`` (if given); return the clock."""
        if now_ms is not None:
            assert now_ms >= self.now_ms, f"host time runs forward only: {now_ms} < {self.now_ms}"
            self.now_ms = now_ms
        return self.now_ms

    def wait(self, ms: int) -> list[Packet]:
        """Let ``ms`` of host time pass with nothing received; return the notifications sent."""
        self.now_ms += ms
        self.device.advance(self.now_ms)
        return self.collect(None).notes

    # ------------------------------------------------------------------ ids

    def command_id(self) -> int:
        while True:
            value = self._rng.getrandbits(64)
            if value:
                return value

    def nonce(self) -> bytes:
        return self._rng.randbytes(16)

    # ------------------------------------------------------------------ sessions

    def hello(self, role: Role, *, key_id: int | None = None, keys: KeySet = TEST_KEY_SET) -> m.SessionOpen:
        role_key = keys.for_role(role)
        if role_key is None:  # a role the key set lacks: any key id will do
            role_key = RoleKey(role, 0x0BAD0000 + int(role), bytes(32))
        hello = client_hello(role_key, self.nonce())
        return hello if key_id is None else m.SessionOpen(hello.role, key_id, hello.client_nonce)

    def try_open(
        self, role: Role, *, key_id: int | None = None, keys: KeySet = TEST_KEY_SET, at: int | None = None
    ) -> tuple[Exchange, Session | None]:
        """SESSION_OPEN; the session if the pump opened one and its key confirmation matches."""
        hello = self.hello(role, key_id=key_id, keys=keys)
        ex = self.send(hello, None, at=at)
        if ex.reply is None or ex.reply.header.is_error:
            return ex, None
        role_key = keys.for_role(role)
        assert role_key is not None
        reply = ex.reply.message
        assert isinstance(reply, m.SessionOpenReply)
        session_keys = client_finish(role_key, hello, ex.reply.header, reply)
        assert session_keys is not None, "key confirmation failed"
        session = Session(role, ex.reply.header.session_id, Channel(from_pump=False, keys=session_keys), reply)
        self.sessions[session.session_id] = session
        return ex, session

    def open(self, role: Role, *, keys: KeySet = TEST_KEY_SET, at: int | None = None, prove: bool = True) -> Session:
        """A session, proven by a first STATUS as a programmer's first request would (the
        pump counts and logs a session once its key is proven); ``prove=False``: pending."""
        ex, session = self.try_open(role, keys=keys, at=at)
        assert session is not None, f"{role.name} session refused: {ex.reply}"
        if prove:
            self.ok(m.Status(), session)
        return session

    # ------------------------------------------------------------------ requests

    def frame(self, message: object, session: Session | None = None, *, command_id: int | None = None) -> Outgoing:
        """Build (and number) a request without sending it. Effectful types get a fresh
        command id unless one is given."""
        if command_id is None:
            command_id = self.command_id() if CATALOG[request_type_of(message)].effectful else 0
        channel = session.channel if session is not None else self.plain
        return channel.request(message, command_id)

    def send(
        self,
        message: object,
        session: Session | None = None,
        *,
        command_id: int | None = None,
        at: int | None = None,
    ) -> Exchange:
        """Send one request (in ``session``, or plaintext) at host time ``at`` (default: now)."""
        out = self.frame(message, session, command_id=command_id)
        return self.deliver(out.data, at=at)

    def ok(
        self,
        message: object,
        session: Session | None = None,
        *,
        command_id: int | None = None,
        at: int | None = None,
    ) -> Any:
        """Send a request that must succeed; its reply payload."""
        return self.send(message, session, command_id=command_id, at=at).ok

    def deliver(self, wire: bytes, *, at: int | None = None) -> Exchange:
        """Put raw bytes on the link at host time ``at``; collect what the device sends back."""
        self.at(at)
        self.sent.append(wire)
        self.device.receive_data(wire, self.now_ms)
        request: Header | None = None
        for item in Deframer().feed(wire):
            if isinstance(item, bytes):
                request = decode_header(item)
        return self.collect(request)

    def collect(self, request: Header | None) -> Exchange:
        """Decode everything the device has queued; match the reply to ``request``."""
        wire = self.device.data_to_send()
        ex = Exchange(request, None, wire=wire)
        for item in Deframer().feed(wire):
            assert isinstance(item, bytes), f"the device sent a bad frame: {item}"
            header = decode_header(item)
            assert header is not None
            session = self.sessions.get(header.session_id) if header.secured else None
            channel = session.channel if session is not None else self.plain
            got = channel.accept(item)
            if isinstance(got, DecodeError):
                ex.others.append(got)
            elif got.header.msg_type == MsgType.ALARM_NOTIFY and not got.header.is_error:
                ex.notes.append(got)
            elif (
                request is not None
                and ex.reply is None
                and got.header.echo_counter == request.counter
                and got.header.msg_type == request.msg_type
            ):
                ex.reply = got
            else:
                ex.others.append(got)
        return ex


REFILL_FULL = m.Refill(
    aspirated_volume_nl=0,
    added_volume_nl=20_000_000,
    drug=DrugId.BACLOFEN,
    concentration_ug_per_ml=500,
    catheter_volume_nl=195_000,
    confirmations=RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED,
)
"""A full 20 mL reservoir of baclofen at 500 ug/mL."""
