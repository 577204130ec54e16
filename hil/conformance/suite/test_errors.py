"""Errors: the refusals of the codec's checks (SPEC.md, Receiving a frame steps 3 to 11, Errors, Versioning).

Frames the programmer would never send are built by hand (``RawWire``, ``RawSession``); every
refusal is checked for its form too (``assert_refusal``: FROM_PUMP | ERROR, the request's type,
counter and command id, sealed exactly when the device holds the session named).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from hil.conformance import SUITE_DOSE_NG_PER_DAY, DeviceUnderTest, continuous
from hil.conformance.raw import RawWire, assert_refusal, raw_session
from protocol_spec import messages as m
from protocol_spec.channel import new_command_id
from protocol_spec.codec import encode_payload
from protocol_spec.enums import ErrorCode, FrameFlags, MsgType, ProgramSlot, Role
from protocol_spec.framing import encode_frame

SECURED = int(FrameFlags.SECURED)
UNDEFINED_TYPES = (0x00, 0x7E, 0xFF)


def _alarm_notify_payload() -> bytes:
    return bytes(12)  # never read: the type alone is refused (step 6, before the payload)


@pytest.mark.requirement("PRT-ERR-001", "PRT-ERR-002")
@pytest.mark.parametrize("msg_type", UNDEFINED_TYPES, ids=[f"0x{t:02x}" for t in UNDEFINED_TYPES])
def test_undefined_message_type_is_unknown_message(pump: DeviceUnderTest, msg_type: int) -> None:
    wire = RawWire(pump)
    command_id = 0x0123_4567_89AB_CDEF
    counter, data = wire.plain(msg_type, b"\x01\x02", command_id=command_id)
    packet = wire.ask_plain(data, counter)
    assert_refusal(
        packet, ErrorCode.UNKNOWN_MESSAGE, msg_type=msg_type, counter=counter, command_id=command_id, secured=False
    )


@pytest.mark.requirement("PRT-ERR-001", "PRT-ERR-002", "PRT-ERR-007")
def test_undefined_message_type_in_a_session_is_refused_sealed(pump: DeviceUnderTest) -> None:
    with raw_session(pump, Role.CLINICIAN) as session:
        counter, body = session.body(0x7E, b"")
        packet = session.send(encode_frame(body), counter)
        assert_refusal(packet, ErrorCode.UNKNOWN_MESSAGE, msg_type=0x7E, counter=counter, secured=True)


@pytest.mark.requirement("PRT-ERR-002")
@pytest.mark.parametrize("secured", [False, True], ids=["plaintext", "in-a-session"])
def test_alarm_notify_from_a_programmer_is_unknown_message(pump: DeviceUnderTest, secured: bool) -> None:
    with raw_session(pump, Role.CLINICIAN) as session:
        if secured:
            counter, body = session.body(MsgType.ALARM_NOTIFY, _alarm_notify_payload())
            packet = session.send(encode_frame(body), counter)
        else:
            counter, data = session.wire.plain(MsgType.ALARM_NOTIFY, _alarm_notify_payload())
            packet = session.wire.ask_plain(data, counter)
        assert_refusal(
            packet, ErrorCode.UNKNOWN_MESSAGE, msg_type=MsgType.ALARM_NOTIFY, counter=counter, secured=secured
        )


@dataclass(frozen=True)
class Malformed:
    msg_type: MsgType
    payload: bytes
    flags: int = 0
    secured: bool = False


MALFORMED = {
    "identify-with-a-payload": Malformed(MsgType.IDENTIFY, b"\x00"),
    "session-open-one-byte-short": Malformed(MsgType.SESSION_OPEN, bytes([Role.CLINICIAN]) + bytes(19)),
    # the length is checked (step 9) before the ranges (step 10): a cut payload is MALFORMED even
    # when a field before the cut is out of range (role 0)
    "short-payload-with-a-field-out-of-range": Malformed(MsgType.SESSION_OPEN, bytes(20)),
    "status-one-byte-long": Malformed(MsgType.STATUS, b"\x00", secured=True),
    "read-log-one-byte-short": Malformed(MsgType.READ_LOG, struct.pack("<I", 0), secured=True),
    "undefined-header-flag": Malformed(MsgType.IDENTIFY, b"", flags=0x08),
    "error-without-from-pump": Malformed(MsgType.IDENTIFY, b"", flags=int(FrameFlags.ERROR)),
    "undefined-flag-in-a-session": Malformed(MsgType.STATUS, b"", flags=0x40, secured=True),
}


@pytest.mark.requirement("PRT-ERR-001", "PRT-ERR-003", "PRT-ERR-007")
@pytest.mark.parametrize("case", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_frame_is_refused(pump: DeviceUnderTest, case: Malformed) -> None:
    with raw_session(pump, Role.CLINICIAN) as session:
        if case.secured:
            counter, body = session.body(case.msg_type, case.payload, flags=SECURED | case.flags)
            packet = session.send(encode_frame(body), counter)
        else:
            counter, data = session.wire.plain(case.msg_type, case.payload, flags=case.flags)
            packet = session.wire.ask_plain(data, counter)
        assert_refusal(packet, ErrorCode.MALFORMED, msg_type=case.msg_type, counter=counter, secured=case.secured)


def _other_versions(pump: DeviceUnderTest) -> list[int]:
    spoken = range(pump.identity.min_protocol_version, pump.identity.protocol_version + 1)
    return [v for v in (0, 2, 255) if v not in spoken]


@pytest.mark.requirement("PRT-ERR-001", "PRT-ERR-004")
@pytest.mark.parametrize("index", [0, 1, 2])
def test_other_protocol_version_is_version_mismatch(pump: DeviceUnderTest, index: int) -> None:
    versions = _other_versions(pump)
    if index >= len(versions):
        pytest.skip("the device speaks this version")
    version = versions[index]
    wire = RawWire(pump)
    # a payload IDENTIFY does not have: the payload of another version is not read (no MALFORMED)
    counter, data = wire.plain(MsgType.IDENTIFY, b"\xff" * 5, version=version, command_id=0x42)
    error = assert_refusal(
        wire.ask_plain(data, counter),
        ErrorCode.VERSION_MISMATCH,
        msg_type=MsgType.IDENTIFY,
        counter=counter,
        command_id=0x42,
        secured=False,
    )
    assert (error.lo, error.hi) == (pump.identity.min_protocol_version, pump.identity.protocol_version)


@dataclass(frozen=True)
class OutOfRange:
    msg_type: MsgType
    payload: bytes
    field: int
    lo: int | None
    hi: int | None
    effectful: bool = False


def _configure_alarms(pump: DeviceUnderTest, critical_repeat_ms: int) -> bytes:
    threshold = pump.baseline.low_reservoir_threshold_nl + 1_000
    return struct.pack("<III", threshold, critical_repeat_ms, 3_600_000)


OUT_OF_RANGE = {
    "read-log-page-of-0": OutOfRange(MsgType.READ_LOG, struct.pack("<IB", 0, 0), 1, 1, 16),
    "read-log-page-of-17": OutOfRange(MsgType.READ_LOG, struct.pack("<IB", 0, 17), 1, 1, 16),
    "read-program-undefined-slot": OutOfRange(MsgType.READ_PROGRAM, bytes([max(ProgramSlot) + 1]), 0, None, None),
    "configure-alarms-repeat-under-1-s": OutOfRange(MsgType.CONFIGURE_ALARMS, b"", 1, 1000, 2**32 - 1, effectful=True),
}


@pytest.mark.requirement("PRT-ERR-001", "PRT-ERR-005", "PRT-ERR-007")
@pytest.mark.parametrize("case", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_field_outside_its_wire_range_is_out_of_range(pump: DeviceUnderTest, case: OutOfRange) -> None:
    payload = _configure_alarms(pump, 999) if case.msg_type is MsgType.CONFIGURE_ALARMS else case.payload
    command_id = new_command_id() if case.effectful else 0
    with raw_session(pump, Role.CLINICIAN) as session:
        counter, body = session.body(case.msg_type, payload, command_id=command_id)
        error = assert_refusal(
            session.send(encode_frame(body), counter),
            ErrorCode.OUT_OF_RANGE,
            msg_type=case.msg_type,
            counter=counter,
            command_id=command_id,
            secured=True,
        )
    assert error.field == case.field
    if case.lo is not None:
        assert (error.lo, error.hi) == (case.lo, case.hi)
    info = pump.clinician.interrogate()
    assert info.low_reservoir_threshold_nl == pump.baseline.low_reservoir_threshold_nl
    assert command_id == 0 or command_id not in {o.command_id for o in info.outcomes}


@pytest.mark.requirement("PRT-ERR-001", "PRT-ERR-006")
@pytest.mark.parametrize("msg_type", [MsgType.STAGE_PROGRAM, MsgType.CONFIGURE_ALARMS], ids=lambda t: t.name)
def test_effectful_request_without_command_id_is_refused(pump: DeviceUnderTest, msg_type: MsgType) -> None:
    if msg_type is MsgType.STAGE_PROGRAM:
        payload = encode_payload(m.StageProgram(1, continuous(SUITE_DOSE_NG_PER_DAY // 2)))
    else:
        payload = _configure_alarms(pump, 600_000)
    with raw_session(pump, Role.CLINICIAN) as session:
        counter, body = session.body(msg_type, payload, command_id=0)
        assert_refusal(
            session.send(encode_frame(body), counter),
            ErrorCode.MISSING_COMMAND_ID,
            msg_type=msg_type,
            counter=counter,
            secured=True,
        )
        status = session.reply(m.Status())
        assert isinstance(status, m.StatusReply)
        assert status.staged == 0, "a request refused for its missing command id staged a program"
    info = pump.clinician.interrogate()
    assert info.low_reservoir_threshold_nl == pump.baseline.low_reservoir_threshold_nl
    assert info.dose_ng_per_day == SUITE_DOSE_NG_PER_DAY
