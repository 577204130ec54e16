"""Malformed frames and line noise over a link against a target (the in-process virtual pump
behind pyserial's interface), and proof that each run over a link can fail: a target whose
receiver skips the CRC, and one that loses the frame after a bad one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cobs import cobs

from hil.campaigns import load_all
from hil.conformance import DeviceUnderTest
from protocol_spec.framing import CRC_BYTES, Deframer, FramingError, FramingProblem

from .virtual_target import connected, device_of, run_over_link

SEED = 1


@pytest.fixture
def pump() -> Iterator[DeviceUnderTest]:
    with connected() as dut:
        yield dut


class _CrcBlind(Deframer):
    """A receiver that strips the CRC without checking it: line errors pass as data."""

    def _end_of_frame(self) -> bytes | FramingError | None:
        encoded = bytes(self._buf)
        result = super()._end_of_frame()
        if isinstance(result, FramingError) and result.problem is FramingProblem.BAD_CRC:
            return bytes(cobs.decode(encoded))[:-CRC_BYTES]
        return result


class _OutOfStep(Deframer):
    """A receiver that loses its step after a bad frame: the frame after it is dropped too."""

    def __init__(self) -> None:
        super().__init__()
        self._skip = False

    def _end_of_frame(self) -> bytes | FramingError | None:
        result = super()._end_of_frame()
        if result is None:
            return None
        if self._skip:
            self._skip = False
            return FramingError(FramingProblem.BAD_COBS, 0)
        self._skip = isinstance(result, FramingError)
        return result


def test_malformed_frames_over_a_link_meets_its_target_at_ci_size(pump: DeviceUnderTest) -> None:
    size = load_all()["malformed-frames"].size("ci", over_link=True)
    o = run_over_link("malformed-frames", pump, SEED)
    assert o.ok, (o.figures, o.note)
    assert o.done == o.figures["frames"] == size
    f = o.figures
    assert f["state_changes"] == f["wrongly_accepted"] == f["hangs"] == f["good_requests_lost"] == 0
    assert f["alive_at_end"] == 1
    assert f["refused"] > 0, "no malformed frame reached the decoder"
    assert f["unanswered"] > 0, "no malformed frame was dropped by the framing"
    assert f["authentic_malformed"] > 0, "no frame reached the payload checks"
    assert f["security_log_events"] > 0
    assert f["answered_ok"] + f["refused"] + f["unanswered"] == size


def test_line_noise_over_a_link_meets_its_target_at_ci_size(pump: DeviceUnderTest) -> None:
    size = load_all()["line-noise"].size("ci", over_link=True)
    o = run_over_link("line-noise", pump, SEED)
    assert o.ok, (o.figures, o.note)
    f = o.figures
    assert o.done == f["corruptions"] == f["rejected"] == f["next_good_accepted"] == size
    assert f["state_changes"] == 0
    for kind in ("single_bit_flips", "multi_bit_flips", "wire_bursts", "codeword_bursts"):
        assert f[kind] > 0, kind
    assert f["identify_frames"] + f["golden_frames"] + f["sealed_frames"] == size
    assert min(f["identify_frames"], f["golden_frames"], f["sealed_frames"]) > 0


def test_a_target_that_skips_the_crc_fails_malformed_frames(pump: DeviceUnderTest) -> None:
    """Genuine requests with a broken CRC are carried out, and IDENTIFYs with one answered."""
    device_of(pump)._deframer = _CrcBlind()
    o = run_over_link("malformed-frames", pump, SEED, 1_000)
    assert not o.ok
    assert o.figures["wrongly_accepted"] > 0
    assert o.figures["state_changes"] > 0


def test_a_target_that_skips_the_crc_fails_line_noise(pump: DeviceUnderTest) -> None:
    """Flips in the CRC reach the decoder as the frame itself: accepted, and a sealed frame's
    counter taken, so that the genuine frame after it is refused as a replay."""
    device_of(pump)._deframer = _CrcBlind()
    o = run_over_link("line-noise", pump, SEED, 400)
    assert not o.ok
    assert o.figures["rejected"] < o.figures["corruptions"]
    assert o.figures["next_good_accepted"] < o.figures["corruptions"]
    assert o.figures["passed_crc"] > 0


def test_a_target_out_of_step_after_a_bad_frame_fails_malformed_frames(pump: DeviceUnderTest) -> None:
    """The fence after the first bad frame is lost: a hang, and the run ends there."""
    device_of(pump)._deframer = _OutOfStep()
    o = run_over_link("malformed-frames", pump, SEED, 200)
    assert not o.ok
    assert o.figures["hangs"] == 1
    assert o.done < 200
    assert "stopped answering" in o.note


def test_a_target_out_of_step_after_a_bad_frame_fails_line_noise(pump: DeviceUnderTest) -> None:
    """The good frame after the first corrupted one is lost."""
    device_of(pump)._deframer = _OutOfStep()
    o = run_over_link("line-noise", pump, SEED, 200)
    assert not o.ok
    assert o.figures["next_good_accepted"] < o.figures["corruptions"] == 1
