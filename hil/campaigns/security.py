"""Security campaigns: replay, forgery, wrong role, eavesdropping and denial of service.

Each campaign puts an attacker on the line between a programmer and the device (sans-IO: the
real ``Device`` behind ``receive_data``/``data_to_send``, the real ``ProgrammerSession`` and codec,
virtual time) and counts what the attacker achieved. "Accepted" or "executed" means the device
acted (its therapy, its exactly-once table, its stage slot, its sessions or its log beyond
SECURITY entries changed) or answered the frame with a non-error reply; every refusal must also be
in the event log as a SECURITY entry (aggregated: the entries' counts add up to the refusals).

The same rows run over a link (``hil.campaigns.link_security``) build their attacker frames and
judge what an eavesdropper learns with the pieces here: ``forge``, ``readdressed``, ``Capture``
and ``EavesdropTally``.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from firmware_model.config import PumpConfig
from firmware_model.device import Device, DeviceConfig
from firmware_model.presets import boot_device, make_pump
from firmware_model.pump import Pump
from programmer.session import AlarmNotified, ProgrammerSession, ReplyReceived, SessionOpened, SessionState
from protocol_spec import messages as m
from protocol_spec.catalog import CATALOG, request_type_of
from protocol_spec.channel import Channel
from protocol_spec.codec import (
    HEADER_BYTES,
    DecodeError,
    Header,
    decode_body,
    decode_header,
    encode_header,
    encode_payload,
)
from protocol_spec.enums import (
    PROTOCOL_VERSION,
    AlarmCode,
    BolusKind,
    Direction,
    DrugId,
    ErrorCode,
    FaultKind,
    FrameFlags,
    LogEventKind,
    MsgType,
    ProgramSlot,
    RefillConfirmation,
    Role,
    TherapyMode,
)
from protocol_spec.examples import EXAMPLE_REQUESTS
from protocol_spec.framing import Deframer, encode_frame
from protocol_spec.security import TAG_BYTES, TEST_KEY_SET, RoleKey, SessionKeys, derive_session_keys, seal_payload
from protocol_spec.timing import BITS_PER_BYTE, LINK_BAUD

from . import Budget, Outcome, campaign

__all__ = [
    "FALSE_ALARM",
    "FLOOD_MIX",
    "FORGERIES",
    "Capture",
    "EavesdropTally",
    "Probe",
    "Refusals",
    "chance_bound",
    "chance_matches_ppm",
    "eavesdrop_patterns",
    "forge",
    "is_number_pattern",
    "patient_values",
    "readdressed",
    "replay_figures",
    "scan",
    "scan_each",
]

_MS_PER_S = 1_000
_MS_PER_MIN = 60_000
_MS_PER_HOUR = 3_600_000
_UG = 1_000
_REFILL_OK = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED
_PATIENT_SETTINGS = m.PatientBolusSettings(1, 25 * _UG, 600_000, _MS_PER_HOUR, 4)


def _rng(seed: int) -> random.Random:
    # reproducible attack schedules, not secrets: a seeded PRNG is the point
    return random.Random(seed)  # noqa: S311


class _Entropy:
    """A seeded entropy source for the device that can restart from its seed: a weak RNG that
    repeats itself after a reset, the worst case SPEC.md "Handshake" guards against."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._rng = _rng(seed)

    def restart(self) -> None:
        self._rng = _rng(self._seed)

    def __call__(self, n: int) -> bytes:
        return self._rng.randbytes(n)


def _device(seed: int, *, nvm: bool = False, config: DeviceConfig | None = None) -> tuple[Device, _Entropy]:
    """The default preset (20 mL at 500 ug/mL, 300 ug/day continuous) behind the protocol."""
    entropy = _Entropy(seed)
    cfg = config if config is not None else DeviceConfig(test_role=True)
    if nvm:
        device, _ = boot_device(None, PumpConfig(), cfg, TEST_KEY_SET, entropy=entropy)
    else:
        device = Device(make_pump(None, PumpConfig()), TEST_KEY_SET, config=cfg, entropy=entropy)
    return device, entropy


# ---------------------------------------------------------------------- judging one frame


def _therapy(pump: Pump) -> tuple[object, ...]:
    """``pump.therapy_digest()`` without what any frame may change: the battery charge and frame
    count (every frame costs charge, which moves the next battery event) and the log's length."""
    d = pump.therapy_digest()
    accounts, effective = d[7], d[16]
    assert isinstance(accounts, tuple)
    assert isinstance(effective, tuple)
    return (*d[:7], accounts[:2], *d[8:15], effective[:2])


def _state(device: Device) -> tuple[object, ...]:
    """Everything a refused frame must leave as it was (host time standing still)."""
    staged = device._staged
    return (
        _therapy(device.pump),
        tuple(device._outcomes),
        None if staged is None else staged.token,
        tuple(sorted(device._sessions)),
        device.pump_time_ms,
        device.clock_held,
    )


def _security_total(pump: Pump) -> int:
    return sum(e.count for e in pump.log.entries(LogEventKind.SECURITY))


@dataclass
class Probe:
    """What one attacker frame did: judged from the device's state, its log and its answer."""

    acted: bool
    answered_ok: bool
    refused: str
    """The error code name it was refused with, "dropped" if unanswered, "" if accepted."""
    logged: int
    """How many SECURITY events the device counted for it."""

    @property
    def accepted(self) -> bool:
        return self.acted or self.answered_ok


def _probe(device: Device, frame: bytes, now_ms: int) -> tuple[Probe, bytes]:
    """Deliver one attacker frame at ``now_ms`` (the device is first brought to that time, so that
    only the frame can change its state) and judge it."""
    device.advance(now_ms)
    before = _state(device)
    seq = device.pump.log.next_seq
    logged = _security_total(device.pump)
    refused = dict(device.stats.refused)
    dropped = device.stats.dropped
    device.receive_data(frame, now_ms)
    out = device.data_to_send()
    others = [e for e in device.pump.log.entries() if e.seq >= seq and e.kind is not LogEventKind.SECURITY]
    acted = _state(device) != before or bool(others)
    answered_ok = False
    for body in Deframer().feed(out):
        h = decode_header(body) if isinstance(body, bytes) else None
        if h is not None and not h.is_error and h.msg_type != MsgType.ALARM_NOTIFY:
            answered_ok = True
    codes = [k for k, v in device.stats.refused.items() if v != refused.get(k, 0)]
    reason = codes[0] if codes else "dropped" if device.stats.dropped > dropped else ""
    return Probe(acted, answered_ok, reason, _security_total(device.pump) - logged), out


@dataclass
class _Tally:
    """Counts over many probes."""

    frames: int = 0
    accepted: int = 0
    logged: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def add(self, p: Probe) -> None:
        self.frames += 1
        self.accepted += int(p.accepted)
        self.logged += p.logged
        key = "accepted" if p.accepted else p.refused or "unanswered"
        self.refused[key] = self.refused.get(key, 0) + 1

    def count(self, name: str) -> int:
        return self.refused.get(name, 0)


# ---------------------------------------------------------------------- a programmer on the wire


@dataclass
class _Wire:
    """The link: host time, and every frame both ways (for replays and eavesdropping)."""

    device: Device
    now_ms: int = 0
    to_pump: list[bytes] = field(default_factory=list)
    from_pump: list[bytes] = field(default_factory=list)

    def send(self, data: bytes) -> bytes:
        self.to_pump.append(data)
        self.device.receive_data(data, self.now_ms)
        out = self.device.data_to_send()
        self.from_pump.append(out)
        return out


class _Refused(RuntimeError):
    """The pump did not answer a genuine programmer's request as the campaign expected."""


class _Programmer:
    """``ProgrammerSession`` driven over a ``_Wire``, one request at a time; deterministic."""

    def __init__(self, wire: _Wire, role: Role, nonces: random.Random, ids: random.Random) -> None:
        key = TEST_KEY_SET.for_role(role)
        assert key is not None
        self.wire = wire
        self.role = role
        self.session = ProgrammerSession(key, nonces=nonces.randbytes, command_ids=lambda: ids.getrandbits(63) + 1)
        self.hello = b""
        self.sent: list[bytes] = []
        """The SECURED frames this programmer sent."""

    def _run(self, data: bytes) -> object:
        out = self.wire.send(data)
        events = [e for e in self.session.receive_data(out, self.wire.now_ms) if not isinstance(e, AlarmNotified)]
        if len(events) != 1:
            raise _Refused(f"{self.role.name}: expected one answer, got {events}")
        return events[0]

    def open(self) -> int:
        self.hello = self.session.start_handshake(self.wire.now_ms)
        event = self._run(self.hello)
        if not isinstance(event, SessionOpened):
            raise _Refused(f"{self.role.name} session refused: {event}")
        return event.session_id

    def call(self, message: object) -> Any:
        pre_session = CATALOG[request_type_of(message)].pre_session
        if not pre_session and self.session.state is SessionState.LOST:
            raise _Refused(f"{self.role.name}: the session is {self.session.state.value}")
        data = self.session.send(message, self.wire.now_ms)
        if not pre_session:
            self.sent.append(data)
        event = self._run(data)
        if not isinstance(event, ReplyReceived):
            raise _Refused(f"{self.role.name}: {type(message).__name__} refused: {event}")
        return event.message


def _bodies(wire: bytes) -> Iterator[bytes]:
    for item in Deframer().feed(wire):
        if isinstance(item, bytes):
            yield item


def _header(wire: bytes) -> Header:
    (body,) = _bodies(wire)
    h = decode_header(body)
    assert h is not None
    return h


def _clinical_work(clin: _Programmer, rng: random.Random) -> None:
    """A clinician's visit that does real work: read, set the clock and alarms, refill, program."""
    interrogated = clin.call(m.Interrogate())
    clin.call(m.Status())
    clin.call(m.SetClock(1_700_000_000_000 + rng.randrange(10**9)))
    clin.call(m.ConfigureAlarms(rng.randrange(1_000_000, 4_000_000), 600_000, _MS_PER_HOUR))
    clin.call(
        m.Refill(
            aspirated_volume_nl=interrogated.reservoir_estimate_nl,
            added_volume_nl=rng.randrange(15_000_000, 20_000_001),
            drug=DrugId.BACLOFEN,
            concentration_ug_per_ml=500,
            catheter_volume_nl=195_000,
            confirmations=_REFILL_OK,
        )
    )
    dose = rng.randrange(250, 381) * _UG
    stage = clin.call(m.StageProgram(0, m.Program(TherapyMode.CONTINUOUS, 500, dose, 0, 0, 0, ())))
    clin.call(m.Commit(stage.stage_token))
    stage = clin.call(m.StagePatientBolus(0, _PATIENT_SETTINGS))
    clin.call(m.Commit(stage.stage_token))
    clin.call(m.ReadProgram(ProgramSlot.ACTIVE))
    clin.call(m.ReadLog(0, 8))
    clin.call(m.ReadLimits())


# ====================================================================== 1. replay


class Refusals(Protocol):
    """A tally of attacker frames by what became of them, in-process or over a link."""

    @property
    def frames(self) -> int: ...

    @property
    def accepted(self) -> int: ...

    def count(self, name: str) -> int:
        """The frames refused with the error code of this name, or counted under it."""
        ...


def replay_figures(t: Refusals, dropped: str) -> dict[str, int | float]:
    """The replay row's first figures: frames replayed, accepted, and refused by code; ``dropped``
    is the name the tally counts frames dropped unanswered in a bad-tag backoff under."""
    return {
        "replayed": t.frames,
        "accepted": t.accepted,
        "refused_replayed_counter": t.count(ErrorCode.REPLAYED_COUNTER.name),
        "refused_no_session": t.count(ErrorCode.NO_SESSION.name),
        "refused_bad_tag": t.count(ErrorCode.BAD_TAG.name),
        "dropped_in_backoff": t.count(dropped),
    }


def readdressed(frame: bytes, session_id: int) -> bytes:
    """The frame with its header naming another session (CRC recomputed): the header is the
    AEAD's associated data, so only the tag can refuse it."""
    (body,) = _bodies(frame)
    h = decode_header(body)
    assert h is not None
    return encode_frame(encode_header(dataclasses.replace(h, session_id=session_id)) + body[HEADER_BYTES:])


@campaign(
    "replay",
    row="replay",
    target="0 accepted; all counted and logged",
    unit="replayed frames",
    sizes=(2_000, 200_000),
)
def replay(size: int, budget: Budget, seed: int) -> Outcome:
    """Record every SECURED frame of a clinician's and a patient's real work, then replay each:
    in its own session, after the programmer restarts (sessions still open on the pump; replays
    as sent and re-addressed to the new sessions), after the sessions were closed (as sent and
    re-addressed) and after the pump resets with an entropy source that repeats itself (the old
    SESSION_OPEN frames are replayed first, so the pump may hold sessions of the same ids)."""
    rng = _rng(seed)
    t = _Tally()
    contexts: dict[str, int] = {}
    hellos_same_id = 0
    rounds = 0
    while t.frames < size and not budget.expired():
        rounds += 1
        device, entropy = _device(rng.getrandbits(32), nvm=True)
        wire = _Wire(device)
        nonce_seed, id_seed = rng.getrandbits(32), rng.getrandbits(32)

        def programmer(role: Role, nonce_seed: int = nonce_seed, id_seed: int = id_seed, wire: _Wire = wire) -> Any:
            return _Programmer(wire, role, _rng(nonce_seed + role), _rng(id_seed + role))

        clin, pat = programmer(Role.CLINICIAN), programmer(Role.PATIENT)
        clin.call(m.Identify())
        old_ids = {Role.CLINICIAN: clin.open(), Role.PATIENT: pat.open()}
        _clinical_work(clin, rng)
        pat.call(m.Status())
        pat.call(m.PatientBolusRequest())
        pat.call(m.ReadLimits())
        recorded = [(Role.CLINICIAN, f) for f in clin.sent] + [(Role.PATIENT, f) for f in pat.sent]
        rng.shuffle(recorded)

        def replay_all(context: str, frames: list[bytes], wire: _Wire = wire) -> bool:
            for frame in frames:
                if t.frames >= size:
                    return False
                wire.now_ms += 1
                probe, _ = _probe(wire.device, frame, wire.now_ms)
                t.add(probe)
                contexts[context] = contexts.get(context, 0) + 1
            return True

        # 1. in the same session (still open)
        if not replay_all("same_session", [f for _, f in recorded]):
            break
        # 2. the programmer restarts (its nonce generator too) and opens new sessions; the old
        #    sessions are still open on the pump (the crashed programmer never closed them)
        restarted = {role: programmer(role) for role in (Role.CLINICIAN, Role.PATIENT)}
        new_ids = {role: p.open() for role, p in restarted.items()}
        if not replay_all("programmer_restart", [f for _, f in recorded]):
            break
        if not replay_all("programmer_restart", [readdressed(f, new_ids[r]) for r, f in recorded]):
            break
        # 3. every session closed; new ones opened
        for p in (clin, pat, *restarted.values()):
            p.call(m.SessionClose())
        fresh = {role: programmer(role) for role in (Role.CLINICIAN, Role.PATIENT)}
        new_ids = {role: p.open() for role, p in fresh.items()}
        if not replay_all("new_session", [f for _, f in recorded]):
            break
        if not replay_all("new_session", [readdressed(f, new_ids[r]) for r, f in recorded]):
            break
        # 4. the pump resets (TEST fault RESET) and its entropy source starts over; the old
        #    SESSION_OPEN frames are replayed, then every recorded frame
        tester = programmer(Role.TEST)
        tester.open()
        entropy.restart()
        tester.call(m.InjectFault(FaultKind.RESET, 0))
        for role, p in ((Role.CLINICIAN, clin), (Role.PATIENT, pat)):
            out = wire.send(p.hello)
            h = _header(out)
            hellos_same_id += int(not h.is_error and h.session_id == old_ids[role])
        if not replay_all("pump_reset", [f for _, f in recorded]):
            break
    ok = t.accepted == 0 and t.logged == t.frames
    return Outcome(
        done=t.frames,
        figures={
            **replay_figures(t, "dropped"),
            "logged": t.logged,
            "sessions_recorded": rounds * 2,
            "reset_sessions_reopened_with_old_id": hellos_same_id,
            **{f"in_{k}": v for k, v in contexts.items()},
        },
        ok=ok,
        note="pre-session frames (IDENTIFY, SESSION_OPEN) are plaintext by design and not counted",
    )


# ====================================================================== 2. forgery


FORGERIES = ("random_tag", "wrong_key", "flipped_tag", "flipped_ciphertext", "flipped_header")
"""The kinds of forged frame (``forge``)."""


def forge(
    kind: str,
    keys: SessionKeys,
    other: SessionKeys,
    message: object,
    counter: int,
    command_id: int,
    rng: random.Random,
) -> bytes:
    """One forged frame of ``kind`` (``FORGERIES``) on the open session of ``keys``: the request
    of ``message`` with ``counter`` and ``command_id``, sealed with the session's keys and then its
    tag replaced, or one bit of its tag, its ciphertext (``message`` needs a payload) or its
    authenticated header flipped; or sealed with ``other``, another key set's keys (wrong_key)."""
    header = encode_header(
        Header(PROTOCOL_VERSION, request_type_of(message), FrameFlags.SECURED, keys.session_id, counter, 0, command_id)
    )
    payload = encode_payload(message)
    sealing = other if kind == "wrong_key" else keys
    raw = bytearray(header + seal_payload(sealing, Direction.PROGRAMMER_TO_PUMP, counter, header, payload))
    if kind == "random_tag":
        raw[-TAG_BYTES:] = rng.randbytes(TAG_BYTES)
    elif kind == "flipped_tag":
        bit = rng.randrange(TAG_BYTES * 8)
        raw[len(raw) - TAG_BYTES + bit // 8] ^= 1 << (bit % 8)
    elif kind == "flipped_ciphertext":
        bit = rng.randrange(len(payload) * 8)
        raw[HEADER_BYTES + bit // 8] ^= 1 << (bit % 8)
    elif kind == "flipped_header":  # counter, echo counter or command id: the AEAD's associated data
        bit = rng.randrange(7 * 8, HEADER_BYTES * 8)
        raw[bit // 8] ^= 1 << (bit % 8)
    return encode_frame(bytes(raw))


_FORGED_REQUESTS: tuple[object, ...] = (
    m.Status(),
    m.SetClock(1_800_000_000_000),
    m.ConfigureAlarms(3_000_000, 600_000, _MS_PER_HOUR),
    m.Refill(3_000_000, 20_000_000, DrugId.BACLOFEN, 500, 195_000, _REFILL_OK),
    m.StageProgram(0, m.Program(TherapyMode.CONTINUOUS, 500, 350 * _UG, 0, 0, 0, ())),
    m.StageBolus(BolusKind.BRIDGE, 0, 260_000, 7_200_000),
    m.SetLimits(EXAMPLE_REQUESTS[MsgType.SET_LIMITS].limits),
)
_FRAME_SPACING_MS = 5
"""A frame of about 55 bytes takes about 5 ms at 115200 baud."""
_KEEPALIVE_EVERY = 8
"""The genuine programmer sends a STATUS after 1 to this many forgeries: it must be answered
(frames that verify are always processed), and it ends the backoff, so that the next forgery is
answered with BAD_TAG and the ones after it fall in the backoff (both paths are exercised)."""


@campaign(
    "forgery",
    row="forgery",
    target="0 accepted in 1,000,000",
    unit="forged frames",
    sizes=(20_000, 1_000_000),
)
def forgery(size: int, budget: Budget, seed: int) -> Outcome:
    """Forged frames on an open clinician session: random tags, frames sealed with another key
    set's key, and valid frames with one bit of the tag, the ciphertext or the authenticated
    header flipped (CRC recomputed), at line rate. Frames dropped in the bad-tag backoff are
    authenticated first and count as not accepted; the genuine programmer's frames in between
    must all be answered."""
    rng = _rng(seed)
    device, _ = _device(rng.getrandbits(32))
    wire = _Wire(device)
    clin = _Programmer(wire, Role.CLINICIAN, _rng(rng.getrandbits(32)), _rng(rng.getrandbits(32)))
    clin.open()
    keys = clin.session.session_keys
    assert keys is not None
    wrong_key = RoleKey(Role.CLINICIAN, keys.key_id, rng.randbytes(32))  # another device's key set
    other = derive_session_keys(wrong_key, keys.session_id, rng.randbytes(16), rng.randbytes(16))
    counter = 1 << 40  # above the genuine counters
    t = _Tally()
    kinds: dict[str, int] = {}
    genuine = genuine_answered = 0
    while t.frames < size and not budget.expired():
        for _ in range(min(rng.randint(1, _KEEPALIVE_EVERY), size - t.frames)):
            kind = FORGERIES[rng.randrange(len(FORGERIES))]
            message = _FORGED_REQUESTS[rng.randrange(len(_FORGED_REQUESTS))]
            if kind == "flipped_ciphertext" and not encode_payload(message):
                message = _FORGED_REQUESTS[1]
            cid = rng.getrandbits(63) + 1
            command_id = cid if CATALOG[request_type_of(message)].effectful else 0
            frame = forge(kind, keys, other, message, counter, command_id, rng)
            counter += 1
            wire.now_ms += _FRAME_SPACING_MS
            probe, _ = _probe(device, frame, wire.now_ms)
            t.add(probe)
            kinds[kind] = kinds.get(kind, 0) + 1
        wire.now_ms += _FRAME_SPACING_MS
        genuine += 1
        try:
            clin.call(m.Status())
            genuine_answered += 1
        except _Refused:
            pass
    ok = t.accepted == 0 and t.logged == t.frames and genuine_answered == genuine
    return Outcome(
        done=t.frames,
        figures={
            "forged": t.frames,
            "accepted": t.accepted,
            "bad_tag_answered": t.count(ErrorCode.BAD_TAG.name),
            "dropped_in_backoff": t.count("dropped"),
            "other_refusals": t.frames - t.accepted - t.count(ErrorCode.BAD_TAG.name) - t.count("dropped"),
            "logged": t.logged,
            "genuine_frames": genuine,
            "genuine_answered": genuine_answered,
            **{f"kind_{k}": v for k, v in sorted(kinds.items())},
        },
        ok=ok,
    )


# ====================================================================== 3. wrong role / no session


def _attempts(device_roles: tuple[Role, ...]) -> list[tuple[MsgType, Role | None]]:
    """Every (type, role) the access matrix refuses: a session type by a role not marked for it,
    every session type in plaintext, and the pre-session types inside a session."""
    out: list[tuple[MsgType, Role | None]] = []
    for t, d in CATALOG.items():
        if d.request is None:
            continue
        if d.pre_session:
            out += [(t, r) for r in device_roles]
        else:
            out += [(t, r) for r in device_roles if r not in d.roles]
            out.append((t, None))
    return out


def _role_device(seed: int) -> tuple[_Wire, dict[Role, _Programmer], random.Random]:
    """A stopped pump holding 1.5 mL (LOW_RESERVOIR active, so alarms can be silenced and
    acknowledged), patient boluses enabled, a program staged and a bridge bolus running, so that
    any message wrongly carried out would show; a session of every role."""
    rng = _rng(seed)
    pump = Pump(PumpConfig())
    pump.refill(0, 1_500_000, 500)
    pump.set_patient_bolus(_PATIENT_SETTINGS)
    assert pump.alarms.is_active(AlarmCode.LOW_RESERVOIR)
    device = Device(pump, TEST_KEY_SET, config=DeviceConfig(test_role=True), entropy=_Entropy(rng.getrandbits(32)))
    wire = _Wire(device)
    sessions = {
        r: _Programmer(wire, r, _rng(rng.getrandbits(32)), _rng(rng.getrandbits(32)))
        for r in (Role.CLINICIAN, Role.PATIENT, Role.TEST)
    }
    for p in sessions.values():
        p.open()
        p.call(m.Status())  # the key proven, as a programmer's first request proves it
    sessions[Role.CLINICIAN].call(EXAMPLE_REQUESTS[MsgType.STAGE_PROGRAM])
    pump.start_bolus(BolusKind.BRIDGE, 100_000, _MS_PER_HOUR)
    return wire, sessions, rng


def _request_for(t: MsgType, device: Device) -> object:
    if t is MsgType.COMMIT and device._staged is not None:
        return m.Commit(device._staged.token)
    return EXAMPLE_REQUESTS[t]


@campaign(
    "wrong-role",
    row="wrong role / no session",
    target="0 executed, 100 % logged",
    unit="refused requests",
    sizes=(3_000, 100_000),
)
def wrong_role(size: int, budget: Budget, seed: int) -> Outcome:
    """Every message type a role may not send, sent in a session of that role (PATIENT sending
    clinician types, CLINICIAN sending TEST types, TEST sending clinical changes, any role sending
    pre-session types), and every session type in plaintext without a session; the example
    payloads of the catalogue, on a pump set up so that each would visibly succeed if allowed."""
    rng = _rng(seed)
    attempts = _attempts((Role.CLINICIAN, Role.PATIENT, Role.TEST))
    t = _Tally()
    by_role: dict[str, int] = {}
    while t.frames < size and not budget.expired():
        wire, sessions, round_rng = _role_device(rng.getrandbits(32))
        plain = Channel(from_pump=False)
        order = list(attempts)
        round_rng.shuffle(order)
        for msg_type, role in order[: size - t.frames]:
            message = _request_for(msg_type, wire.device)
            if msg_type is MsgType.SESSION_OPEN:  # a fresh hello with a genuine key id
                message = m.SessionOpen(Role.CLINICIAN, 0x7E570001, round_rng.randbytes(16))
            cid = round_rng.getrandbits(63) + 1 if CATALOG[msg_type].effectful else 0
            secure = sessions[role].session._secure if role is not None else None
            channel = secure if secure is not None else plain
            frame = channel.request(message, cid).data
            probe, _ = _probe(wire.device, frame, wire.now_ms)
            t.add(probe)
            name = role.name.lower() if role is not None else "no_session"
            by_role[name] = by_role.get(name, 0) + 1
    executed = t.accepted
    ok = executed == 0 and t.logged == t.frames
    return Outcome(
        done=t.frames,
        figures={
            "sent": t.frames,
            "executed": executed,
            "refused_wrong_role": t.count(ErrorCode.WRONG_ROLE.name),
            "refused_no_session": t.count(ErrorCode.NO_SESSION.name),
            "logged": t.logged,
            "logged_permille": t.logged * 1000 // max(1, t.frames),
            **{f"as_{k}": v for k, v in sorted(by_role.items())},
        },
        ok=ok,
    )


# ====================================================================== 4. eavesdropping


def eavesdrop_patterns(values: list[object]) -> set[bytes]:
    """The byte patterns of known plaintexts, at least 4 bytes each: ASCII of text values, and the
    u32 and u64 little-endian encodings of integers (the u32 only when the value fits and is at
    least 256, so that no pattern is mostly zeros and matches a counter by chance)."""
    out: set[bytes] = set()
    for v in values:
        if isinstance(v, str) and len(v) >= 4:
            out.add(v.encode("ascii"))
        elif isinstance(v, int) and not isinstance(v, bool) and v >= 256:
            if v < 1 << 32:
                out.add(v.to_bytes(4, "little"))
            if v < 1 << 64:
                out.add(v.to_bytes(8, "little"))
    return out


_PATIENT_SUFFIXES = ("_nl", "_ng", "_ng_per_day", "_ug_per_ml", "_nl_per_day")


def patient_values(message: object) -> list[object]:
    """Patient data in a payload: serial number, model, and every dose, concentration, volume."""
    out: list[object] = []
    if not dataclasses.is_dataclass(message) or isinstance(message, type):
        return out
    for f in dataclasses.fields(message):
        v = getattr(message, f.name)
        if f.name in ("serial_number", "model") or f.name.endswith(_PATIENT_SUFFIXES):
            out.append(v)
        elif isinstance(v, tuple):
            for item in v:
                out += patient_values(item)
        else:
            out += patient_values(v)
    return out


def is_number_pattern(pattern: bytes, values: list[object]) -> bool:
    return all(not isinstance(v, str) or v.encode("ascii") != pattern for v in values)


def scan_each(parts: list[bytes], patterns: set[bytes]) -> int:
    """``scan`` of each part apart (frames: a match never straddles two)."""
    return sum(scan(part, patterns) for part in parts)


def scan(data: bytes, patterns: set[bytes]) -> int:
    """How many times any pattern occurs in ``data`` (overlapping occurrences counted)."""
    n = 0
    for p in patterns:
        start = data.find(p)
        while start >= 0:
            n += 1
            start = data.find(p, start + 1)
    return n


def chance_matches_ppm(scanned_bytes: int, patterns: set[bytes]) -> int:
    """Matches expected by chance in ``scanned_bytes`` of uniformly random bytes, in millionths."""
    expected = sum(max(0, scanned_bytes - len(p) + 1) / 256 ** len(p) for p in patterns)
    return int(expected * 1_000_000 + 0.5)


FALSE_ALARM = 1e-6
"""How rarely a sound cipher may fail the eavesdropping row by chance."""


def chance_bound(expected_ppm: int, false_alarm: float = FALSE_ALARM) -> int:
    """The most matches random ciphertext shows but with probability ``false_alarm``: the least
    k with P(Poisson(expected) > k) < false_alarm. Sealed bytes are indistinguishable from random,
    so a 4-byte pattern turns up in megabytes of them now and then (``chance_matches_ppm``); a
    leak turns up in every session, thousands of times over."""
    lam = expected_ppm / 1_000_000
    term = math.exp(-lam)  # P(X = 0)
    below = term
    k = 0
    while 1.0 - below >= false_alarm:
        k += 1
        term *= lam / k
        below += term
    return k


@dataclass
class Capture:
    """The frames of one captured session, taken apart with the session keys the eavesdropping
    judge holds (``add``). Each frame's part is kept apart: scanned one by one, a pattern can
    never straddle two frames (nor match a separator put between them)."""

    sealed: list[bytes] = field(default_factory=list)
    """The sealed part (ciphertext and tag) of every SECURED frame."""
    plain: list[bytes] = field(default_factory=list)
    """Every plaintext frame body (IDENTIFY, SESSION_OPEN and their replies, plaintext refusals)."""
    decrypted: list[bytes] = field(default_factory=list)
    """The payload of every SECURED frame, opened: the positive control."""
    seen: list[object] = field(default_factory=list)
    """Every patient value in the opened payloads."""
    plain_fields: int = 0
    """Patient values in plaintext frames' fields (none may be)."""
    unopened: int = 0
    """SECURED frames that do not open with the keys held."""
    unreadable: int = 0
    """Plaintext frames that do not decode."""

    def add(self, stream: bytes, keys: dict[int, SessionKeys]) -> None:
        """The frames of ``stream`` (bytes as the line carried them), opened with the keys of
        their sessions."""
        for body in _bodies(stream):
            h = decode_header(body)
            if h is not None and h.secured:
                self.sealed.append(body[HEADER_BYTES:])
                packet = decode_body(body, keys.get(h.session_id))
                if isinstance(packet, DecodeError):
                    self.unopened += 1
                    continue
                self.decrypted.append(encode_payload(packet.message))
                self.seen += patient_values(packet.message)
            else:
                self.plain.append(body)
                packet = decode_body(body)
                if isinstance(packet, DecodeError):
                    self.unreadable += 1
                    continue
                self.plain_fields += len(patient_values(packet.message))


@dataclass
class EavesdropTally:
    """What the scans of the captured sessions found, summed over the sessions (``add``)."""

    sessions: int = 0
    sealed_bytes: int = 0
    plain_bytes: int = 0
    patterns: int = 0
    matches_sealed: int = 0
    matches_plain: int = 0
    coincidences: int = 0
    """u32 patterns found in plaintext frames: other fields of equal value, not leaks."""
    chance_ppm: int = 0
    missed_controls: int = 0
    unopened: int = 0

    def add(self, capture: Capture, known: list[object]) -> None:
        """Scan one captured session for ``known`` (what the eavesdropper knows of the pump: its
        serial number and model) and every patient value seen in its payloads."""
        values = known + capture.seen
        patterns = eavesdrop_patterns(values)
        # the positive control: each value seen in a payload is found there by the same scan
        seen = capture.seen
        controls = {pat for pat in eavesdrop_patterns(seen) if len(pat) == 4 or not is_number_pattern(pat, seen)}
        self.missed_controls += sum(1 for pat in controls if scan_each(capture.decrypted, {pat}) == 0)
        self.patterns += len(patterns)
        self.matches_sealed += scan_each(capture.sealed, patterns)
        # plaintext frames are read field by field (no field may hold patient data) and scanned for
        # the text patterns; numbers there are structured (a u32 may be another field of equal
        # value: SESSION_OPEN's 300,000 ms timeout and a 300 ug/day dose), counted apart
        text = {pat for pat in patterns if not is_number_pattern(pat, values)}
        self.matches_plain += scan_each(capture.plain, text) + capture.plain_fields
        self.coincidences += scan_each(capture.plain, patterns - text)
        self.sealed_bytes += sum(len(part) for part in capture.sealed)
        self.plain_bytes += sum(len(part) for part in capture.plain)
        self.chance_ppm += sum(chance_matches_ppm(len(part), patterns) for part in capture.sealed)
        self.unopened += capture.unopened
        self.sessions += 1

    @property
    def bound(self) -> int:
        """The most matches in the sealed parts that random bytes show (``chance_bound``)."""
        return chance_bound(self.chance_ppm)

    @property
    def ok(self) -> bool:
        """No more matches in the sealed parts than chance, none in plaintext, every control found."""
        return self.matches_sealed <= self.bound and self.matches_plain == 0 and self.missed_controls == 0

    def figures(self) -> dict[str, int | float]:
        return {
            "sessions": self.sessions,
            "sealed_bytes_scanned": self.sealed_bytes,
            "plaintext_bytes_scanned": self.plain_bytes,
            "patterns": self.patterns,
            "matches": self.matches_sealed,
            "plaintext_matches": self.matches_plain,
            "plaintext_u32_coincidences": self.coincidences,
            "expected_chance_matches_ppm": self.chance_ppm,
            "chance_bound": self.bound,
            "patterns_missing_from_plaintext": self.missed_controls,
        }


@campaign(
    "eavesdropping",
    row="eavesdropping",
    target="0 matches beyond chance (at most what random bytes show but once in a million runs)",
    unit="sessions captured",
    sizes=(600, 30_000),
)
def eavesdropping(size: int, budget: Budget, seed: int) -> Outcome:
    """Capture both directions of sessions that read the pump (INTERROGATE, STATUS, READ_PROGRAM,
    READ_LIMITS, READ_LOG), refill it, program doses and set patient boluses, on pumps with random
    serial numbers; scan the sealed part of every SECURED frame for each known plaintext of the
    session (serial, model, every dose, concentration and volume sent or received, u32 and u64),
    and the plaintext pre-session frames for the same. The decrypted payloads must hold every
    pattern (a positive control: the scan would find them if they leaked)."""
    rng = _rng(seed)
    tally = EavesdropTally()
    while tally.sessions < size and not budget.expired():
        serial = f"VP{rng.randrange(10**7):07d}"
        model = f"pumprig-{rng.randrange(10**6):06d}"
        device, _ = _device(rng.getrandbits(32), config=DeviceConfig(serial_number=serial, model=model))
        wire = _Wire(device)
        role = Role.CLINICIAN if tally.sessions % 3 != 2 else Role.PATIENT
        p = _Programmer(wire, role, _rng(rng.getrandbits(32)), _rng(rng.getrandbits(32)))
        p.call(m.Identify())
        p.open()
        if role is Role.CLINICIAN:
            _clinical_work(p, rng)
            p.call(m.Interrogate())
        else:
            p.call(m.ReadLimits())
        p.call(m.Status())
        p.call(m.SessionClose())
        # every patient value that crossed the link, either way
        keys = p.session.session_keys
        assert keys is not None
        capture = Capture()
        for chunk in wire.to_pump + wire.from_pump:
            capture.add(chunk, {keys.session_id: keys})
        if capture.unopened or capture.unreadable:
            undecoded = f"{capture.unopened} sealed, {capture.unreadable} plaintext"
            raise RuntimeError(f"frames of the captured session do not decode: {undecoded}")
        tally.add(capture, [serial, model])
    return Outcome(
        done=tally.sessions,
        figures=tally.figures(),
        ok=tally.ok,
        note="patterns of 4 to 15 bytes; the sealed part of each frame (ciphertext and tag) is scanned apart; "
        "met when the matches are no more than random bytes show but once in a million runs",
    )


# ====================================================================== 5. denial of service


FLOOD_MIX: tuple[str, ...] = ("no_session_plaintext", "no_session_unknown_id", "session_open", "bad_tag", "bad_tag")
"""What the flood is made of, in equal turns: session-only requests in plaintext, SECURED frames
naming a session the pump does not hold, SESSION_OPENs with the published key ids of every role
(never proven), and forged frames on the genuine programmer's session."""
_FLOOD_FRAME_BYTES = 56
"""A flood frame on the wire (a sealed STATUS with its delimiters: about 55 bytes)."""
LINE_RATE_FRAMES_PER_S = LINK_BAUD // BITS_PER_BYTE // _FLOOD_FRAME_BYTES
_DAY_MS = 24 * _MS_PER_HOUR
_BURST_MS = 10 * _MS_PER_S
"""The flood arrives in bursts, one every 10 s of host time (its frames at one instant)."""
_POOL_FRAMES = 512
_POLL_MS = _MS_PER_MIN
"""The genuine programmer polls STATUS once a minute (both pumps): the session stays open."""


def _flood_frames(
    kind: str, n: int, rng: random.Random, forger: Channel, plain: Channel, ghost: Channel
) -> list[bytes]:
    frames = []
    for _ in range(n):
        if kind == "session_open":  # key ids are public; the key is not
            key = TEST_KEY_SET.keys[rng.randrange(len(TEST_KEY_SET.keys))]
            frames.append(plain.request(m.SessionOpen(key.role, key.key_id, rng.randbytes(16)), 0).data)
            continue
        message = _FORGED_REQUESTS[rng.randrange(len(_FORGED_REQUESTS))]
        cid = rng.getrandbits(63) + 1 if CATALOG[request_type_of(message)].effectful else 0
        if kind == "no_session_plaintext":
            frames.append(plain.request(message, cid).data)
        elif kind == "no_session_unknown_id":
            frames.append(ghost.request(message, cid).data)
        else:
            raw = bytearray(next(_bodies(forger.request(message, cid).data)))
            raw[-TAG_BYTES:] = rng.randbytes(TAG_BYTES)
            frames.append(encode_frame(bytes(raw)))
    return frames


@dataclass
class _Run:
    """One pump through the day: its genuine programmer and what it saw."""

    wire: _Wire
    clin: _Programmer
    polls: int = 0
    polls_answered: int = 0
    flood_frames: int = 0


def _dos_day(
    size_frames: int, budget: Budget, seed: int, *, duration_ms: int = _DAY_MS, mix: tuple[str, ...] = FLOOD_MIX
) -> Outcome:
    rng = _rng(seed)
    dev_seed, nonce_seed, id_seed = rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32)
    runs = []
    for _ in range(2):  # the same pump and programmer twice: one flooded, one not
        device, _ = _device(dev_seed)
        wire = _Wire(device)
        clin = _Programmer(wire, Role.CLINICIAN, _rng(nonce_seed), _rng(id_seed))
        clin.open()
        clin.call(m.Refill(0, 20_000_000, DrugId.BACLOFEN, 500, 195_000, _REFILL_OK))
        runs.append(_Run(wire, clin))
    flooded, quiet = runs
    pf, pq = flooded.wire.device.pump, quiet.wire.device.pump
    early = pf.log.entries()
    seq0 = pf.log.next_seq
    charge0 = (pf.acc.charge_pc, pq.acc.charge_pc)
    frames0 = (pf.acc.frames, pq.acc.frames)
    keys = flooded.clin.session.session_keys
    assert keys is not None
    forger = Channel(from_pump=False, keys=keys, first_counter=1 << 40)
    ghost = Channel(from_pump=False, keys=dataclasses.replace(keys, session_id=keys.session_id ^ 0x5A5A5A5A))
    plain = Channel(from_pump=False)
    # the refusal never depends on which flood frame it is (plaintext counters are not checked; an
    # unknown session or a bad tag is refused before any counter): a pool of each kind is replayed
    pools = {kind: _flood_frames(kind, _POOL_FRAMES, rng, forger, plain, ghost) for kind in set(mix)}
    step_ms = _BURST_MS
    steps = duration_ms // step_ms
    done_ms = 0
    for i in range(1, steps + 1):
        if budget.expired():
            break
        now = i * step_ms
        for r in runs:
            r.wire.now_ms = now
            r.wire.device.advance(now)
        n = size_frames * i // steps - flooded.flood_frames  # evenly spread over the bursts
        if n > 0:
            pool = pools[mix[i % len(mix)]]
            blob = b"".join(pool[rng.randrange(len(pool))] for _ in range(n))
            flooded.wire.device.receive_data(blob, now)
            flooded.wire.device.data_to_send()
            flooded.flood_frames += n
        if now % _POLL_MS == 0:
            for r in runs:
                r.polls += 1
                try:
                    r.clin.call(m.Status())
                    r.polls_answered += 1
                except _Refused:
                    pass
        done_ms = now
    pf_refused = flooded.wire.device.stats.refused
    alarms = [e for e in pf.log.entries() if e.kind in _ALARM_KINDS]
    alarms_quiet = [e for e in pq.log.entries() if e.kind in _ALARM_KINDS]
    kept = {e.seq for e in pf.log.entries()}
    lost = sum(1 for e in early if e.seq not in kept)
    used_flooded, used_quiet = charge0[0] - pf.acc.charge_pc, charge0[1] - pq.acc.charge_pc
    overhead_pc = used_flooded - used_quiet
    quiet_day_pc = max(1, used_quiet * _DAY_MS // max(1, done_ms))
    same_delivery = (pf.acc.steps_total, pf.acc.delivered_true_nl, pf.acc.estimate_nl) == (
        pq.acc.steps_total,
        pq.acc.delivered_true_nl,
        pq.acc.estimate_nl,
    )
    same_alarms = [(e.kind, e.code, e.at_ms) for e in alarms] == [(e.kind, e.code, e.at_ms) for e in alarms_quiet]
    ok = (
        same_delivery
        and same_alarms
        and lost == 0
        and flooded.polls_answered == flooded.polls
        and quiet.polls_answered == quiet.polls
    )
    return Outcome(
        done=flooded.flood_frames,
        figures={
            "flood_frames": flooded.flood_frames,
            "virtual_minutes": done_ms // _MS_PER_MIN,
            "steps_flooded": pf.acc.steps_total,
            "steps_quiet": pq.acc.steps_total,
            "alarm_events_flooded": len(alarms),
            "alarm_events_quiet": len(alarms_quiet),
            "genuine_polls_answered": flooded.polls_answered,
            "genuine_polls": flooded.polls,
            "refusals_answered": sum(pf_refused.values()),
            "log_entries_written": pf.log.next_seq - seq0,
            "log_capacity": pf.config.event_log_capacity,
            "early_log_entries_lost": lost,
            "extra_frames_charged": (pf.acc.frames - frames0[0]) - (pq.acc.frames - frames0[1]),
            "battery_overhead_uc": overhead_pc // 1_000_000,
            "battery_overhead_permille_of_day": overhead_pc * 1000 // quiet_day_pc,
        },
        ok=ok,
        note="" if lost == 0 else f"{lost} log entries from before the flood were evicted",
    )


_ALARM_KINDS = frozenset(
    {LogEventKind.ALARM_RAISED, LogEventKind.ALARM_CLEARED, LogEventKind.BOLUS_STARTED, LogEventKind.BOLUS_COMPLETED}
)


@campaign(
    "denial-of-service",
    row="denial of service",
    target="delivery unchanged, the log not evicted, battery overhead reported",
    unit="flood frames over 24 virtual hours",
    sizes=(80_000, LINE_RATE_FRAMES_PER_S * 24 * 3_600),
)
def denial_of_service(size: int, budget: Budget, seed: int) -> Outcome:
    """A flood of unauthenticated frames (session-only requests in plaintext, SECURED frames of a
    session the pump does not hold, SESSION_OPENs that never prove the key) and of forged frames
    on the genuine session, spread evenly over 24 virtual hours (the full size is the line rate,
    115200 baud), against a pump delivering 300 ug/day, and the same pump without the flood:
    delivered steps and alarm events must be equal, the genuine programmer's polls answered, the
    log entries from before the flood still there. The battery charge the flood cost (every frame
    received or sent is charged) is reported per mille of the quiet pump's daily consumption."""
    return _dos_day(size, budget, seed)
