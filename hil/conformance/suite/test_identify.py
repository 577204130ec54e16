"""IDENTIFY: plaintext, before any session; what the device announces."""

from __future__ import annotations

import pytest

from hil.conformance import DeviceUnderTest
from protocol_spec.enums import PROTOCOL_VERSION, DeviceClass


@pytest.mark.requirement("PRT-IDN-001")
def test_identify_answers_without_a_session(pump: DeviceUnderTest) -> None:
    reply = pump.clinician.identify()
    assert reply.device_class is DeviceClass.ITB_PUMP
    assert reply.max_frame_bytes >= 64
    assert reply == pump.identity


@pytest.mark.requirement("PRT-IDN-002")
def test_identify_names_protocol_version_one(pump: DeviceUnderTest) -> None:
    reply = pump.clinician.identify()
    assert reply.min_protocol_version <= PROTOCOL_VERSION <= reply.protocol_version
