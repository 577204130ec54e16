"""The pump behind the protocol, sans-IO: bytes and time in, bytes out.

    device = Device(pump, TEST_KEY_SET, config=DeviceConfig(test_role=True))
    device.receive_data(chunk, now_ms)      # any chunking; replies are queued
    device.advance(now_ms)                  # time passes: therapy, session timeouts, notifications
    wire = device.data_to_send()            # what to write to the port

``now_ms`` is the host's monotonic time (the link's clock). The pump's own uptime follows it,
plus whatever the test role added with TEST_ADVANCE_TIME, and stands still while the test role
holds the clock. Every received frame goes through the checks of SPEC.md "Receiving a frame"
in their order; each refusal is answered with its error code (or dropped, where the spec says
so) and changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG
from protocol_spec.channel import Channel
from protocol_spec.codec import DecodeError, Header, Packet, decode_body, decode_header, decode_payload, encode_payload
from protocol_spec.enums import (
    PROTOCOL_VERSION,
    AlarmCode,
    AlarmEvent,
    AlarmSet,
    DeviceClass,
    ErrorCode,
    FaultKind,
    Feature,
    LogEventKind,
    MsgType,
    ProgramSlot,
    RefillConfirmation,
    Role,
    StageKind,
    alarm_priority,
)
from protocol_spec.framing import MAX_FRAME_BYTES, Deframer, crc32
from protocol_spec.security import KeySet, SessionKeys, derive_session_keys, pump_nonce
from protocol_spec.timing import BAD_TAG_FIRST_MS, BAD_TAG_MAX_MS

from .alarms import tone_of
from .config import PumpConfig
from .errors import CorruptStateError, RefusalError
from .nvm import BootReport, NvLayout, NvStore, WriteHook, boot, corrupt
from .pump import Plant, Pump, TherapyCheck

__all__ = ["Device", "DeviceConfig", "LinkStats", "nv_layout"]

_SECURITY_CODES = frozenset(
    {ErrorCode.BAD_TAG, ErrorCode.REPLAYED_COUNTER, ErrorCode.WRONG_ROLE, ErrorCode.NO_SESSION, ErrorCode.UNKNOWN_KEY}
)
_ALARM_EVENTS = {
    LogEventKind.ALARM_RAISED: AlarmEvent.RAISED,
    LogEventKind.ALARM_ACKNOWLEDGED: AlarmEvent.ACKNOWLEDGED,
    LogEventKind.ALARM_SILENCED: AlarmEvent.SILENCED,
    LogEventKind.ALARM_CLEARED: AlarmEvent.CLEARED,
}
_LOG_ENTRY_BYTES = len(encode_payload(m.LogEntry(0, 0, 0, LogEventKind.RESET, 0, 1, 0, 0)))
_SET_EVENTS = frozenset({LogEventKind.ALARM_RAISED, LogEventKind.ALARM_CLEARED})
_NOT_RECORDED = frozenset({ErrorCode.BUSY, ErrorCode.STORAGE_FAULT})
_MAX_REPEATS_NOTIFIED = 64
"""After a long time jump, at most this many REPEATED notifications per alarm (the newest)."""


@dataclass(frozen=True)
class DeviceConfig:
    serial_number: str = "VP0000001"
    model: str = "pumprig-virtual"
    firmware_version: tuple[int, int, int] = (0, 1, 0)
    test_role: bool = False
    """Started for testing: the TEST messages exist (and need a TEST key in the key set)."""
    session_timeout_ms: int = 300_000
    max_sessions: int = 4
    outcomes_kept: int = 64
    """Effectful command ids remembered for exactly-once (at least MAX_OUTCOMES)."""

    def __post_init__(self) -> None:
        if self.outcomes_kept < m.MAX_OUTCOMES:
            raise ValueError(f"keep at least {m.MAX_OUTCOMES} command outcomes")


@dataclass
class LinkStats:
    """What the device received and how it judged it."""

    frames_ok: int = 0
    frames_bad_crc: int = 0
    frames_bad_framing: int = 0
    dropped: int = 0
    """Valid frames not answered: too short for a header, our own echo, bad tags in a backoff."""
    refused: dict[str, int] = field(default_factory=dict)
    last_refusal: str = ""
    """The newest refusal and why, in words (for a rig's log; the wire carries only the code)."""


@dataclass
class _Session:
    role: Role
    keys: SessionKeys
    channel: Channel
    last_valid_ms: int
    key_id: int = 0
    proven: bool = False
    """The programmer has proven its key (a sealed frame of it verified). Until then the
    session is pending: not logged, and it can displace only another pending session."""


@dataclass
class _Outcome:
    msg_type: MsgType
    digest: bytes
    reply: Any
    """The reply payload, or the ErrorReply of a refusal."""
    at_ms: int


@dataclass
class _Staged:
    session_id: int
    token: int
    kind: StageKind
    request: Any
    check: TherapyCheck


class Device:
    """One virtual pump as its telemetry firmware would run it."""

    def __init__(
        self,
        pump: Pump,
        keys: KeySet,
        *,
        config: DeviceConfig | None = None,
        boot_counter: int = 1,
        entropy: Callable[[int], bytes] = secrets.token_bytes,
        store: NvStore | None = None,
    ) -> None:
        """A device around a running pump. Without ``store`` nothing persists; ``Device.boot``
        makes one from a non-volatile image."""
        self.pump = pump
        self.store = store
        self._last_written: bytes | None = None
        self._last_log: bytes | None = None
        self.keys = keys
        self.config = config if config is not None else DeviceConfig()
        self.boot_counter = boot_counter
        self._entropy = entropy
        self._deframer = Deframer()
        self._plain = Channel(from_pump=True)
        self._sessions: dict[int, _Session] = {}
        self._session_serial = 0
        self._outcomes: OrderedDict[int, _Outcome] = OrderedDict()
        self._staged: _Staged | None = None
        self._out: list[bytes] = []
        self.stats = LinkStats()
        self._bad_tags_in_row = 0
        self._backoff_until_ms = 0
        self._host_ms = 0
        self._offset_ms = pump.now_ms
        self._held_at: int | None = None
        self._log_seen = pump.log.next_seq

    # ------------------------------------------------------------------ non-volatile memory

    @classmethod
    def boot(
        cls,
        pump_config: PumpConfig,
        keys: KeySet,
        *,
        config: DeviceConfig | None = None,
        image: bytes | None = None,
        plant: Plant | None = None,
        host_ms: int = 0,
        entropy: Callable[[int], bytes] = secrets.token_bytes,
        on_write: WriteHook | None = None,
    ) -> tuple[Device, BootReport]:
        """Boot from a non-volatile image (None: a factory-new device).

        The boot counter goes up before anything else. The state record holds the pump's
        firmware state and the exactly-once table together, so a power cut at any write leaves
        the old state or the new one, never a mix; the event log is written after it (a cut
        between leaves the log short, never wrong). One bad copy is repaired and logged; a
        record with both copies bad (or one that does not make sense) gives a critical
        MEMORY_ERROR and the safe state: minimum rate, until a clinician reprograms.
        ``plant`` is the physical pump (reservoir, battery) carried over a reset.
        """
        cfg = config if config is not None else DeviceConfig()
        store, report = boot(nv_layout(pump_config, cfg), image, on_write)
        raw_boot = store.read("boot")
        boot_counter = (int.from_bytes(raw_boot, "little") if raw_boot else 0) + 1
        store.write("boot", boot_counter.to_bytes(8, "little"))
        pump = Pump(pump_config)
        outcomes: OrderedDict[int, _Outcome] = OrderedDict()
        interrupted = None
        memory_error = bool(report.failed)
        raw = store.read("state")
        if raw is not None and not memory_error:
            try:
                pump, outcomes, interrupted = _decode_state(pump_config, raw, store.read("log") or b"", plant)
            except (CorruptStateError, ValueError, KeyError, TypeError):
                memory_error = True
        if memory_error and plant is not None:  # factory firmware state, the physical pump as it is
            pump, _ = Pump.restore(pump_config, Pump(pump_config).firmware_record(), plant)
        device = cls(pump, keys, config=cfg, boot_counter=boot_counter, entropy=entropy, store=store)
        device._outcomes = outcomes
        device._host_ms = host_ms
        device._offset_ms = pump.now_ms - host_ms
        if interrupted is not None:
            pump.log_event(LogEventKind.BOLUS_INTERRUPTED, interrupted)
        pump.log_event(LogEventKind.RESET, 0, boot_counter)
        for name in report.repaired:
            del name
            pump.log_event(LogEventKind.MEMORY_REPAIRED)
        if memory_error:
            pump.enter_safe_state(AlarmCode.MEMORY_ERROR)
        device._log_seen = pump.log.next_seq
        device.checkpoint()
        return device, report

    def checkpoint(self, until_ms: int | None = None) -> None:
        """Commit the state record, then the event log, if they changed. Every effectful command
        is committed here, with its outcome, before its reply is sent; before the pump runs
        to ``until_ms`` its accounting at that time is committed first (write-ahead)."""
        if self.store is None:
            return
        self._write_state(self.pump.firmware_record(until_ms=until_ms))

    def _write_state(self, record: dict[str, Any], then: Callable[[], None] | None = None) -> None:
        """Write the state record holding ``record`` (if anything worth a write changed), then
        the event log. ``then`` runs at the state record's commit point (at once if no write
        was needed)."""
        assert self.store is not None
        data, key = _encode_state(record, self._outcomes)
        if key != self._last_written:  # the clock or a fraction of a step alone is not worth a write
            self.store.write("state", data, on_committed=then)
            self._last_written = key
        elif then is not None:
            then()
        log = _encode_log(self.pump)
        if log != self._last_log:  # after the state: a cut between leaves the log short, never wrong
            self.store.write("log", log)
            self._last_log = log

    def reboot(self, *, corrupt_bit: int | None = None, save_first: bool = True) -> BootReport:
        """Reset the processor: boot again from non-volatile memory (the plant carries over).
        Sessions, the stage slot and half-received frames are lost; queued replies are kept."""
        if self.store is None:
            raise ValueError("reboot needs non-volatile memory (Device.boot)")
        if save_first:
            self.checkpoint()
        image = bytearray(self.store.image)
        if corrupt_bit is not None:
            corrupt(image, corrupt_bit % (len(image) * 8))
        queued = self._out
        fresh, report = Device.boot(
            self.pump.config,
            self.keys,
            config=self.config,
            image=bytes(image),
            plant=self.pump.plant(),
            host_ms=self._host_ms,
            entropy=self._entropy,
            on_write=self.store.on_write,
        )
        fresh._out = queued
        fresh.stats = self.stats
        self.__dict__.update(fresh.__dict__)
        return report

    # ------------------------------------------------------------------ the three calls

    def receive_data(self, data: bytes, now_ms: int) -> None:
        """Bytes from the link, in any chunking. Replies are queued for ``data_to_send``."""
        self.advance(now_ms)
        for item in self._deframer.feed(data):
            if isinstance(item, bytes):
                self.pump.count_frames(1)
                self._on_body(item)
        self.stats.frames_ok = self._deframer.frames_ok
        self.stats.frames_bad_crc = self._deframer.frames_bad_crc
        self.stats.frames_bad_framing = self._deframer.frames_bad
        self._notify_alarms()

    def advance(self, now_ms: int) -> None:
        """Host time passes: the pump runs, idle sessions end, alarm events are notified."""
        if now_ms < self._host_ms:
            raise ValueError(f"host time runs forward only: {now_ms} < {self._host_ms}")
        self._host_ms = now_ms
        before = self.pump.now_ms
        self._run_pump_to(self.pump_time_ms)
        for sid in [s for s, x in self._sessions.items() if now_ms - x.last_valid_ms > self.config.session_timeout_ms]:
            self._end_session(sid)
        self._notify_alarms(repeats_since_ms=before)
        self.checkpoint()

    def data_to_send(self) -> bytes:
        """Everything queued for the link, in order; empties the queue."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def pump_time_ms(self) -> int:
        """The pump's uptime now: host time, plus test-role advances, frozen while held."""
        return self._held_at if self._held_at is not None else self._host_ms + self._offset_ms

    @property
    def clock_held(self) -> bool:
        """True while the test role holds the pump's clock (TEST_HOLD_CLOCK)."""
        return self._held_at is not None

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------ receiving

    def _on_body(self, body: bytes) -> None:
        header = decode_header(body)
        if header is None:
            self.stats.dropped += 1  # nothing to echo
            return
        session = self._sessions.get(header.session_id) if header.secured else None
        result = decode_body(body, session.keys if session is not None else None)
        if isinstance(result, DecodeError):  # refused before step 14: the counter mark stays
            self._refuse_decode(result, header, session)
            return
        h = result.header
        if h.from_pump:
            self.stats.dropped += 1  # our own echo, or another pump's frame
            return
        d = CATALOG[MsgType(h.msg_type)]
        if session is not None:
            replay = session.channel.check_fresh(h)
            if replay is not None:
                self._refuse(h, session, replay.code, replay.detail)
                return
            session.last_valid_ms = self._host_ms
            if not session.proven:
                self._prove(h.session_id, session)
            self._bad_tags_in_row = 0
            self._backoff_until_ms = 0
            if d.pre_session:
                self._refuse(h, session, ErrorCode.WRONG_ROLE, f"{d.msg_type.name} is accepted before a session only")
                return
            if session.role not in d.roles:
                self._refuse(h, session, ErrorCode.WRONG_ROLE, f"{session.role.name} may not send {d.msg_type.name}")
                return
        elif not d.pre_session:
            self._refuse(h, None, ErrorCode.NO_SESSION, f"{d.msg_type.name} needs a session")
            return
        if d.test_only and not self.config.test_role:
            self._refuse(h, session, ErrorCode.NOT_SUPPORTED, "this device was not started for testing")
            return
        if d.effectful:
            self._effectful(result, session)
        else:
            self._answer(result, session)

    def _refuse_decode(self, err: DecodeError, header: Header, session: _Session | None) -> None:
        h = err.header if err.header is not None else header
        if h.from_pump:
            self.stats.dropped += 1
            return
        if err.code is ErrorCode.BAD_TAG:
            if self._host_ms < self._backoff_until_ms:
                self.stats.dropped += 1
                self._security_event(ErrorCode.BAD_TAG, h)
                return
            backoff = min(BAD_TAG_MAX_MS, BAD_TAG_FIRST_MS << min(self._bad_tags_in_row, 16))
            self._bad_tags_in_row += 1
            self._backoff_until_ms = self._host_ms + backoff
            self._refuse(h, session, ErrorCode.BAD_TAG, err.detail, retry_after_ms=backoff)
            return
        self._refuse(h, session, err.code, err.detail, field=err.field, lo=err.lo, hi=err.hi)

    def _refuse(
        self,
        request: Header,
        session: _Session | None,
        code: ErrorCode,
        detail: str,
        *,
        field: int = 255,
        lo: int = 0,
        hi: int = 0,
        retry_after_ms: int = 0,
    ) -> m.ErrorReply:
        """Answer with an error reply: sealed if the pump holds the named session, else plaintext."""
        self.stats.last_refusal = f"{code.name}: {detail}"
        self.stats.refused[code.name] = self.stats.refused.get(code.name, 0) + 1
        if code in _SECURITY_CODES:
            self._security_event(code, request)
        reply = m.ErrorReply(code, field, lo, hi, retry_after_ms)
        self._send_error(request, session, reply)
        return reply

    def _send_error(self, request: Header, session: _Session | None, reply: m.ErrorReply) -> None:
        channel = session.channel if session is not None else self._plain
        self._queue(channel.error(request, reply).data)

    def _security_event(self, code: ErrorCode, request: Header) -> None:
        session_id = request.session_id if request.session_id in self._sessions else 0
        self.pump.note_security_event(int(code), session_id, request.msg_type)

    def _queue(self, frame: bytes) -> None:
        self.pump.count_frames(1)
        self._out.append(frame)

    # ------------------------------------------------------------------ exactly-once

    def _effectful(self, packet: Packet, session: _Session | None) -> None:
        h = packet.header
        msg_type = MsgType(h.msg_type)
        digest = hashlib.sha256(bytes([msg_type]) + encode_payload(packet.message)).digest()
        known = self._outcomes.get(h.command_id)
        if known is not None:
            if known.msg_type is not msg_type or known.digest != digest:
                self._refuse(h, session, ErrorCode.COMMAND_ID_REUSED, "command id recorded with another request")
                return
            self._resend(h, session, known.reply)
            return
        try:
            reply = self._handle(packet, session)
        except RefusalError as exc:
            if exc.code in _NOT_RECORDED:  # nothing was recorded or done: a retry is evaluated afresh
                self._refuse(h, session, exc.code, exc.detail, retry_after_ms=exc.retry_after_ms)
                return
            reply = m.ErrorReply(exc.code, exc.field, exc.lo, exc.hi, exc.retry_after_ms)
            self.stats.refused[exc.code.name] = self.stats.refused.get(exc.code.name, 0) + 1
        self._outcomes[h.command_id] = _Outcome(msg_type, digest, reply, self.pump.now_ms)
        while len(self._outcomes) > self.config.outcomes_kept:
            self._outcomes.popitem(last=False)
        self.checkpoint()  # outcome and accounting together, before the reply and the motor
        self._resend(h, session, reply)
        if msg_type is MsgType.TEST_INJECT_FAULT and self.store is not None:
            self._reboot_fault(packet.message)

    def _resend(self, h: Header, session: _Session | None, reply: Any) -> None:
        if isinstance(reply, m.ErrorReply):
            self._send_error(h, session, reply)
        else:
            assert session is not None
            self._queue(session.channel.reply(h, reply).data)

    def _answer(self, packet: Packet, session: _Session | None) -> None:
        h = packet.header
        try:
            reply = self._handle(packet, session)
        except RefusalError as exc:
            self._refuse(h, session, exc.code, exc.detail, field=exc.field, lo=exc.lo, hi=exc.hi)
            return
        if isinstance(reply, _OpenedSession):
            self._queue(self._plain.reply(h, reply.reply, session_id=reply.session_id).data)
            return
        channel = session.channel if session is not None else self._plain
        self._queue(channel.reply(h, reply).data)
        if h.msg_type == MsgType.SESSION_CLOSE and session is not None:
            self._end_session(h.session_id)

    # ------------------------------------------------------------------ the messages

    def _handle(self, packet: Packet, session: _Session | None) -> Any:
        msg = packet.message
        handler = _HANDLERS[MsgType(packet.header.msg_type)]
        return handler(self, msg, packet.header, session)

    def _identify(self, _msg: m.Identify, _h: Header, _s: _Session | None) -> m.IdentifyReply:
        features = Feature.FLEX | Feature.PATIENT_BOLUS
        if self.config.test_role:
            features |= Feature.TEST_ROLE | Feature.VIRTUAL_TIME | Feature.FAULT_INJECTION | Feature.STEP_LOG
        major, minor, patch = self.config.firmware_version
        return m.IdentifyReply(
            PROTOCOL_VERSION, PROTOCOL_VERSION, DeviceClass.ITB_PUMP, features, MAX_FRAME_BYTES, major, minor, patch
        )

    def _session_open(self, msg: m.SessionOpen, _h: Header, _s: _Session | None) -> _OpenedSession:
        role_key = self.keys.by_id(msg.role, msg.key_id)
        if role_key is None or (msg.role is Role.TEST and not self.config.test_role):
            raise RefusalError(ErrorCode.UNKNOWN_KEY, "no such key on this device", field=1)
        # key ids are public: anyone can open, so an unproven session displaces only another
        # unproven one (the pump holds max_sessions of each), and is logged once proven
        self._make_room(proven=False)
        session_id = 0
        while session_id == 0 or session_id in self._sessions:
            session_id = int.from_bytes(self._entropy(4), "little")
        self._session_serial += 1
        nonce = pump_nonce(self._entropy(16), self.boot_counter, self._session_serial)
        keys = derive_session_keys(role_key, session_id, msg.client_nonce, nonce)
        channel = Channel(from_pump=True, keys=keys)
        self._sessions[session_id] = _Session(msg.role, keys, channel, self._host_ms, msg.key_id)
        reply = m.SessionOpenReply(nonce, self.boot_counter, self.config.session_timeout_ms, keys.confirm)
        return _OpenedSession(session_id, reply)

    def _make_room(self, *, proven: bool, keep: int = 0) -> None:
        """Before one more session of a kind (proven or pending): if the pump already holds
        ``max_sessions`` others of that kind, end the one idle longest (never ``keep``)."""
        others = [sid for sid, x in self._sessions.items() if x.proven is proven and sid != keep]
        if len(others) >= self.config.max_sessions:
            self._end_session(min(others, key=lambda sid: self._sessions[sid].last_valid_ms))

    def _prove(self, session_id: int, session: _Session) -> None:
        """The first sealed frame of the session verified: the programmer holds the key."""
        session.proven = True
        self._make_room(proven=True, keep=session_id)
        self.pump.log_event(LogEventKind.SESSION_OPENED, session.role, session_id, session.key_id)

    def _end_session(self, session_id: int) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        if self._staged is not None and self._staged.session_id == session_id:
            self._drop_stage()  # a lost or closed session never leaves a change half-applied
        if session.proven:  # a pending one was never logged as opened
            self.pump.log_event(LogEventKind.SESSION_CLOSED, session.role, session_id)

    def _session_close(self, _msg: m.SessionClose, _h: Header, _s: _Session | None) -> m.Ack:
        return m.Ack()

    def _interrogate(self, _msg: m.Interrogate, _h: Header, _s: _Session | None) -> m.InterrogateReply:
        p = self.pump
        st = p.status()
        cfg = p.config
        major, minor, patch = self.config.firmware_version
        outcomes = tuple(
            m.CommandOutcome(
                cid, o.msg_type, o.reply.code if isinstance(o.reply, m.ErrorReply) else ErrorCode.OK, o.at_ms
            )
            for cid, o in reversed(self._outcomes.items())
        )[: m.MAX_OUTCOMES]
        return m.InterrogateReply(
            serial_number=self.config.serial_number,
            model=self.config.model,
            firmware_major=major,
            firmware_minor=minor,
            firmware_patch=patch,
            protocol_version=PROTOCOL_VERSION,
            boot_counter=self.boot_counter,
            uptime_ms=st.now_ms,
            wall_clock_ms=max(0, st.wall_clock_ms),
            reservoir_capacity_nl=cfg.reservoir_capacity_nl,
            reservoir_estimate_nl=max(0, st.reservoir_estimate_nl),
            low_reservoir_threshold_nl=p.low_reservoir_threshold_nl,
            catheter_volume_nl=p.catheter_volume_nl,
            tubing_volume_nl=cfg.tubing_volume_nl,
            step_volume_nl=cfg.step_volume_nl,
            last_refill_ms=p.last_refill_ms,
            battery_state=st.battery_state,
            battery_remaining_permille=st.battery_charge_pc * 1000 // cfg.battery.capacity_pc,
            eri_at_ms=st.eri_at_ms or 0,
            alarms=st.alarms,
            silenced=p.alarms.silenced_set(st.now_ms),
            drug=p.drug,
            concentration_ug_per_ml=st.concentration_ug_per_ml,
            mode=st.mode,
            dose_ng_per_day=p.dose_now_ng_per_day(),
            rate_nl_per_day=p.program_rate_nl_per_day(),
            program_crc=crc32(encode_payload(p.program)),
            bolus_active=st.bolus_active,
            patient_bolus=p.patient_bolus,
            outcomes=outcomes,
        )

    def _status(self, _msg: m.Status, _h: Header, _s: _Session | None) -> m.StatusReply:
        st = self.pump.status()
        return m.StatusReply(
            uptime_ms=st.now_ms,
            wall_clock_ms=max(0, st.wall_clock_ms),
            mode=st.mode,
            rate_nl_per_day=self.pump.program_rate_nl_per_day(),
            bolus_active=st.bolus_active,
            reservoir_estimate_nl=max(0, st.reservoir_estimate_nl),
            delivered_nl=st.commanded_nl,
            battery_state=st.battery_state,
            alarms=st.alarms,
            staged=int(self._staged is not None),
        )

    def _read_program(self, msg: m.ReadProgram, _h: Header, _s: _Session | None) -> m.Program:
        if msg.slot is ProgramSlot.ACTIVE:
            return self.pump.program
        staged = self._staged
        if staged is None or not isinstance(staged.request, m.StageProgram):
            raise RefusalError(ErrorCode.NOTHING_STAGED, "no program is staged")
        return staged.request.program

    def _stage(self, request: Any, session: _Session | None, kind: StageKind, check: TherapyCheck) -> m.StageReply:
        assert session is not None
        token = crc32(encode_payload(request))
        session_id = next(sid for sid, s in self._sessions.items() if s is session)
        self._staged = _Staged(session_id, token, kind, request, check)
        return m.StageReply(
            token, kind, check.max_dose_ng_per_day, check.max_rate_nl_per_day, int(check.soft_limit_overridden)
        )

    def _stage_program(self, msg: m.StageProgram, _h: Header, s: _Session | None) -> m.StageReply:
        with _inside_field(1):  # a refused value inside the Program names the field that holds it
            check = self.pump.check_program(msg.program, bool(msg.override_soft_limits))
        return self._stage(msg, s, StageKind.PROGRAM, check)

    def _stage_bolus(self, msg: m.StageBolus, _h: Header, s: _Session | None) -> m.StageReply:
        check = self.pump.check_bolus(msg.kind, msg.volume_nl, msg.duration_ms)
        return self._stage(msg, s, StageKind.BOLUS, check)

    def _stage_patient_bolus(self, msg: m.StagePatientBolus, _h: Header, s: _Session | None) -> m.StageReply:
        with _inside_field(1):
            check = self.pump.check_patient_bolus(msg.settings)
        return self._stage(msg, s, StageKind.PATIENT_BOLUS_SETTINGS, check)

    def _commit(self, msg: m.Commit, _h: Header, _s: _Session | None) -> m.CommitReply:
        staged = self._staged
        if staged is None:
            raise RefusalError(ErrorCode.NOTHING_STAGED, "nothing is staged")
        if msg.stage_token != staged.token:
            raise RefusalError(ErrorCode.STAGE_MISMATCH, "the token is not the staged change's", field=0)
        request = staged.request
        if isinstance(request, m.StageProgram):
            self.pump.commit_program(request.program, bool(request.override_soft_limits), token=staged.token)
        elif isinstance(request, m.StageBolus):
            self.pump.start_bolus(request.kind, request.volume_nl, request.duration_ms, token=staged.token)
        else:
            self.pump.set_patient_bolus(request.settings, token=staged.token)
        self._staged = None
        return m.CommitReply(staged.token, self.pump.now_ms)

    def _abort(self, _msg: m.Abort, _h: Header, _s: _Session | None) -> m.Ack:
        self._drop_stage()
        return m.Ack()

    def _drop_stage(self) -> None:
        staged = self._staged
        if staged is not None:
            self._staged = None
            self.pump.log_event(LogEventKind.PROGRAM_ABORTED, staged.kind, staged.token)

    def _patient_bolus_request(
        self, _msg: m.PatientBolusRequest, _h: Header, _s: _Session | None
    ) -> m.PatientBolusGrant:
        return self.pump.request_patient_bolus()

    def _cancel_bolus(self, _msg: m.CancelBolus, _h: Header, _s: _Session | None) -> m.Ack:
        self.pump.cancel_bolus()
        return m.Ack()

    def _refill(self, msg: m.Refill, _h: Header, _s: _Session | None) -> m.RefillReply:
        needed = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED
        if msg.confirmations & needed != needed:
            raise RefusalError(
                ErrorCode.OUT_OF_RANGE, "both refill confirmations are needed (pocket-fill guard)", field=5, lo=3, hi=3
            )
        r = self.pump.refill(
            msg.aspirated_volume_nl, msg.added_volume_nl, msg.concentration_ug_per_ml, msg.drug, msg.catheter_volume_nl
        )
        return m.RefillReply(
            r.expected_volume_nl,
            r.aspirated_volume_nl,
            r.discrepancy_nl,
            r.reservoir_estimate_nl,
            int(r.concentration_changed),
            r.bridge_volume_nl,
        )

    def _configure_alarms(self, msg: m.ConfigureAlarms, _h: Header, _s: _Session | None) -> m.AlarmConfig:
        self.pump.configure_alarms(msg.low_reservoir_threshold_nl, msg.critical_repeat_ms, msg.non_critical_repeat_ms)
        return m.AlarmConfig(msg.low_reservoir_threshold_nl, msg.critical_repeat_ms, msg.non_critical_repeat_ms)

    def _silence_alarm(self, msg: m.SilenceAlarm, _h: Header, s: _Session | None) -> m.Ack:
        self.pump.silence_alarm(msg.alarm, msg.duration_ms, s.role if s is not None else 0)
        return m.Ack()

    def _acknowledge_alarm(self, msg: m.AcknowledgeAlarm, _h: Header, s: _Session | None) -> m.Ack:
        self.pump.acknowledge_alarm(msg.alarm, s.role if s is not None else 0)
        return m.Ack()

    def _read_log(self, msg: m.ReadLog, _h: Header, _s: _Session | None) -> m.LogPage:
        log = self.pump.log
        return m.LogPage(log.oldest_seq, log.next_seq, tuple(log.page(msg.first_seq, msg.max_entries)))

    def _set_clock(self, msg: m.SetClock, _h: Header, _s: _Session | None) -> m.SetClockReply:
        before = max(0, self.pump.wall_clock_ms)
        self.pump.set_clock(msg.wall_clock_ms)
        return m.SetClockReply(before, msg.wall_clock_ms)

    def _read_limits(self, _msg: m.ReadLimits, _h: Header, _s: _Session | None) -> m.DrugLimits:
        return self.pump.limits

    def _set_limits(self, msg: m.SetLimits, _h: Header, _s: _Session | None) -> m.DrugLimits:
        self.pump.set_limits(msg.limits)
        return self.pump.limits

    def _advance_time(self, msg: m.AdvanceTime, _h: Header, _s: _Session | None) -> m.ClockReply:
        before = self.pump.now_ms
        if self._held_at is not None:
            self._held_at += msg.delta_ms
        else:
            self._offset_ms += msg.delta_ms
        target_ms = self.pump_time_ms
        if self.store is None:
            self.pump.advance(target_ms)
        else:
            # one transaction: the pump's record at the end of the jump (worked out on a twin) is
            # committed, and the pump (motor and all) moves there at that commit point. A power
            # cut anywhere leaves the old time and accounting or the new ones, never one without
            # the other; committing each step of a jump of years would take hours.
            self._write_state(self.pump.record_at(target_ms), then=lambda: self.pump.advance(target_ms))
        self._notify_alarms(repeats_since_ms=before)
        return m.ClockReply(self.pump.now_ms, int(self._held_at is not None))

    def _hold_clock(self, msg: m.HoldClock, _h: Header, _s: _Session | None) -> m.ClockReply:
        if msg.hold and self._held_at is None:
            self._held_at = self.pump_time_ms
        elif not msg.hold and self._held_at is not None:
            self._offset_ms = self._held_at - self._host_ms
            self._held_at = None
        return m.ClockReply(self.pump.now_ms, int(self._held_at is not None))

    def _inject_fault(self, msg: m.InjectFault, _h: Header, _s: _Session | None) -> m.Ack:
        """Motor faults act at once. Resets, power cuts and memory corruption reboot the device
        after the Ack is sent (with non-volatile memory) or reset the pump alone (without)."""
        resets = (FaultKind.RESET, FaultKind.LOW_BATTERY_RESET, FaultKind.POWER_CUT, FaultKind.MEMORY_CORRUPTION)
        if msg.fault in resets and self.store is not None:
            self.pump.log_event(LogEventKind.FAULT_INJECTED, msg.fault, msg.param)
            return m.Ack()
        if msg.fault is FaultKind.RESET or msg.fault is FaultKind.LOW_BATTERY_RESET:
            self._drop_stage()
            for sid in list(self._sessions):
                self._end_session(sid)
            self.boot_counter += 1
            self.pump.log_event(LogEventKind.FAULT_INJECTED, msg.fault, msg.param)
            self.pump.reset(self.boot_counter)
            if msg.fault is FaultKind.LOW_BATTERY_RESET:
                self.pump.enter_safe_state(AlarmCode.LOW_BATTERY_RESET)
            return m.Ack()
        self.pump.inject_fault(msg.fault, msg.param)
        return m.Ack()

    def _reboot_fault(self, msg: m.InjectFault) -> None:
        if msg.fault is FaultKind.MEMORY_CORRUPTION:
            self.reboot(corrupt_bit=msg.param)
        elif msg.fault in (FaultKind.RESET, FaultKind.POWER_CUT):
            self.reboot()
        elif msg.fault is FaultKind.LOW_BATTERY_RESET:
            self.reboot()
            self.pump.enter_safe_state(AlarmCode.LOW_BATTERY_RESET)
            self.checkpoint()

    def _read_plant(self, _msg: m.ReadPlant, _h: Header, _s: _Session | None) -> m.PlantReply:
        a = self.pump.acc
        return m.PlantReply(
            a.true_reservoir_nl,
            a.delivered_true_nl,
            a.steps_total,
            self.pump.config.stroke_error_nl_per_step,
            a.charge_pc // 1_000_000,
            int(self.pump.alarms.is_active(AlarmCode.MOTOR_STALL)),
        )

    def _read_step_log(self, msg: m.ReadStepLog, _h: Header, _s: _Session | None) -> m.StepLogReply:
        p = self.pump
        first = max(msg.first_step, p.oldest_logged_step)
        times = p.step_times(first, msg.max_items)
        return m.StepLogReply(p.acc.steps_total, p.oldest_logged_step, first, tuple(m.StepTime(t) for t in times))

    # ------------------------------------------------------------------ notifications

    def _run_pump_to(self, target_ms: int) -> None:
        """Run the pump to ``target_ms``, committing the accounting of each motor step before
        the motor takes it (with non-volatile memory): a power cut anywhere on the way loses at
        most the step in flight, however long the jump."""
        while self.pump.now_ms < target_ms:
            end = self.pump.next_motion_ms(target_ms) if self.store is not None else target_ms
            self.checkpoint(until_ms=end)
            self.pump.advance(end)

    def _notify_alarms(self, repeats_since_ms: int | None = None) -> None:
        """ALARM_NOTIFY into every open session allowed to receive it, one per alarm event."""
        log = self.pump.log
        repeats_due = (
            repeats_since_ms is not None and bool(self.pump.alarms.active) and self.pump.now_ms > repeats_since_ms
        )
        if log.next_seq == self._log_seen and not repeats_due:
            return  # nothing logged and no tone due since the last look: the common case, per frame
        active = self.pump.alarms.as_set()
        entries = [e for e in log.page(self._log_seen, log.next_seq - self._log_seen) if e.kind in _ALARM_EVENTS]
        self._log_seen = log.next_seq
        # the set after each event: RAISED and CLEARED entries carry it; the others keep the last
        sets: list[int] = []
        after = int(active)
        for e in reversed(entries):
            sets.append(after)
            if e.kind in (LogEventKind.ALARM_RAISED, LogEventKind.ALARM_CLEARED):
                after = e.value_a ^ (1 << (e.code - 1))  # the set before this event
        events = [
            (AlarmCode(e.code), _ALARM_EVENTS[e.kind], e.at_ms, e.value_a if e.kind in _SET_EVENTS else s)
            for e, s in zip(entries, reversed(sets), strict=True)
        ]
        if repeats_since_ms is not None:
            now = self.pump.now_ms
            for code, alarm in self.pump.alarms.active.items():
                tones = [t for t in self.pump.alarms.tones(code, repeats_since_ms + 1, now + 1) if t != alarm.raised_ms]
                events.extend((code, AlarmEvent.REPEATED, t, int(active)) for t in tones[-_MAX_REPEATS_NOTIFIED:])
        if not events:
            return
        roles = CATALOG[MsgType.ALARM_NOTIFY].roles
        for session in self._sessions.values():
            if session.role not in roles or not session.proven:  # a pending one may be anyone's
                continue
            for code, event, at_ms, alarm_set in events:
                note = m.AlarmNotify(code, event, alarm_priority(code), tone_of(code), at_ms, AlarmSet(alarm_set))
                self._queue(session.channel.notify(note).data)


def nv_layout(pump_config: PumpConfig, config: DeviceConfig) -> NvLayout:
    """The non-volatile image: a boot counter; the state record (firmware state and the
    exactly-once table, committed together); the event log."""
    state_bytes = 16_384 + config.outcomes_kept * 160
    return NvLayout.of({"boot": 8, "state": state_bytes, "log": pump_config.event_log_capacity * _LOG_ENTRY_BYTES})


def _encode_state(record: dict[str, Any], outcomes: OrderedDict[int, _Outcome]) -> tuple[bytes, bytes]:
    """The state record (the pump's firmware record and the exactly-once table), and the same
    without the clock (to tell whether anything changed)."""
    doc: dict[str, Any] = {
        "pump": record,
        "outcomes": [
            [
                cid,
                int(o.msg_type),
                o.digest.hex(),
                isinstance(o.reply, m.ErrorReply),
                encode_payload(o.reply).hex(),
                o.at_ms,
            ]
            for cid, o in outcomes.items()
        ],
    }
    data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    # whether anything worth a write changed: not the clock, nor the integral between steps
    doc["pump"] = {**doc["pump"], "now_ms": None, "integral_nlms": None}
    return data, json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _encode_log(pump: Pump) -> bytes:
    return b"".join(_encoded_entry(e) for e in pump.log.entries())


@functools.lru_cache(maxsize=8192)
def _encoded_entry(entry: m.LogEntry) -> bytes:
    """Log entries never change once written (a burst's count does, as a new object)."""
    return encode_payload(entry)


def _decode_state(
    pump_config: PumpConfig, data: bytes, log_bytes: bytes, plant: Plant | None
) -> tuple[Pump, OrderedDict[int, _Outcome], Any]:
    doc = json.loads(data)
    entries = []
    for i in range(0, len(log_bytes), _LOG_ENTRY_BYTES):
        entry = decode_payload(m.LogEntry, log_bytes[i : i + _LOG_ENTRY_BYTES])
        if isinstance(entry, DecodeError):
            raise CorruptStateError(f"event log entry {i // _LOG_ENTRY_BYTES}: {entry.detail}")
        entries.append(entry)
    record = doc["pump"]
    if plant is None:  # first boot of an image in a new process: the plant is as the firmware believes
        estimate = int(record["estimate_nl"])
        plant = Plant(max(0, estimate), 0, 0, max(0, estimate), Pump(pump_config).acc.charge_pc)
    pump, interrupted = Pump.restore(pump_config, record, plant, entries)
    outcomes: OrderedDict[int, _Outcome] = OrderedDict()
    for cid, msg_type, digest, is_error, payload, at_ms in doc["outcomes"]:
        t = MsgType(msg_type)
        reply_cls = m.ErrorReply if is_error else CATALOG[t].reply
        reply = decode_payload(reply_cls, bytes.fromhex(payload))
        if isinstance(reply, DecodeError):
            raise CorruptStateError(f"stored outcome of {t.name}: {reply.detail}")
        outcomes[int(cid)] = _Outcome(t, bytes.fromhex(digest), reply, int(at_ms))
    return pump, outcomes, interrupted


@contextlib.contextmanager
def _inside_field(index: int) -> Iterator[None]:
    """SPEC.md "Errors": for a value inside a record, ``field`` is the index of the top-level
    field that holds it (``lo``/``hi`` stay the inner field's range)."""
    try:
        yield
    except RefusalError as exc:
        if exc.field != 255:
            exc.field = index
        raise


def _is_error(reply: Any) -> bool:
    return isinstance(reply, m.ErrorReply)


def _result_code(reply: Any) -> ErrorCode:
    return reply.code if isinstance(reply, m.ErrorReply) else ErrorCode.OK


@dataclass(frozen=True)
class _OpenedSession:
    session_id: int
    reply: m.SessionOpenReply


_Handler = Callable[[Device, Any, Header, "_Session | None"], Any]
_HANDLERS: dict[MsgType, _Handler] = {
    MsgType.IDENTIFY: Device._identify,
    MsgType.SESSION_OPEN: Device._session_open,
    MsgType.SESSION_CLOSE: Device._session_close,
    MsgType.INTERROGATE: Device._interrogate,
    MsgType.STATUS: Device._status,
    MsgType.READ_PROGRAM: Device._read_program,
    MsgType.STAGE_PROGRAM: Device._stage_program,
    MsgType.STAGE_BOLUS: Device._stage_bolus,
    MsgType.STAGE_PATIENT_BOLUS: Device._stage_patient_bolus,
    MsgType.COMMIT: Device._commit,
    MsgType.ABORT: Device._abort,
    MsgType.PATIENT_BOLUS_REQUEST: Device._patient_bolus_request,
    MsgType.CANCEL_BOLUS: Device._cancel_bolus,
    MsgType.REFILL: Device._refill,
    MsgType.CONFIGURE_ALARMS: Device._configure_alarms,
    MsgType.SILENCE_ALARM: Device._silence_alarm,
    MsgType.ACKNOWLEDGE_ALARM: Device._acknowledge_alarm,
    MsgType.READ_LOG: Device._read_log,
    MsgType.SET_CLOCK: Device._set_clock,
    MsgType.READ_LIMITS: Device._read_limits,
    MsgType.SET_LIMITS: Device._set_limits,
    MsgType.TEST_ADVANCE_TIME: Device._advance_time,
    MsgType.TEST_HOLD_CLOCK: Device._hold_clock,
    MsgType.TEST_INJECT_FAULT: Device._inject_fault,
    MsgType.TEST_READ_PLANT: Device._read_plant,
    MsgType.TEST_READ_STEP_LOG: Device._read_step_log,
}
assert set(_HANDLERS) == {t for t, d in CATALOG.items() if d.request is not None}, "every request has a handler"
