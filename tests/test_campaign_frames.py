"""The frame campaigns (hil/campaigns/frames.py) at their CI size, the checks that make them
fail when the code under test misbehaves, and a short run of the atheris harness."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cobs import cobs

from firmware_model.device import Device
from hil.campaigns import REGISTRY, Budget, load_all
from hil.campaigns import frames as campaign_frames
from hil.campaigns.frames import (
    LivePump,
    bursts_detected,
    crc_proof,
    crc_syndromes,
    golden_frames,
    harmless,
    min_undetected_weight,
    run_line_noise,
    run_malformed_frames,
)
from protocol_spec import messages as m
from protocol_spec.codec import DecodeError, Header
from protocol_spec.enums import ErrorCode
from protocol_spec.framing import CRC_BYTES, MAX_FRAME_BYTES, Deframer, FramingError, FramingProblem
from tests.device_harness import REFILL_FULL

ROOT = Path(__file__).resolve().parent.parent
SEED = 20_240_601


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    load_all()


# --------------------------------------------------------------------------- at CI size


@pytest.mark.parametrize("name", ["malformed-frames", "line-noise"])
def test_the_campaign_meets_its_target_at_ci_size(name: str) -> None:
    c = REGISTRY[name]
    size = c.size("ci")
    outcome = c.run(size, Budget(None), SEED)
    assert outcome.done == size
    assert outcome.ok, (outcome.note, outcome.figures)


def test_malformed_frames_figures_say_what_was_reached() -> None:
    outcome = run_malformed_frames(5_000, Budget(None), SEED)
    f = outcome.figures
    assert outcome.ok, outcome.note
    assert (f["exceptions"], f["hangs"], f["state_changes"], f["unanswered_good_frames"]) == (0, 0, 0, 0)
    assert f["passed_crc"] > 1_000, "mutated frames reach the header, session and tag checks"
    assert f["authentic_malformed"] > 500, "sealed malformed frames reach the payload checks"
    assert f["refused"] > 0
    assert f["dropped"] > 0
    assert f["security_log_entries"] > 0
    assert 0 < f["max_receive_ms"] < 1_000


def test_line_noise_flips_every_bit_of_every_golden_frame_first() -> None:
    frames = golden_frames()
    every_bit = sum(8 * len(f.wire) for f in frames)
    outcome = run_line_noise(every_bit + 3_000, Budget(None), SEED)
    f = outcome.figures
    assert outcome.ok, outcome.note
    assert f["single_bit_flips"] == every_bit
    assert f["multi_bit_flips"] + f["wire_bursts"] + f["codeword_bursts"] == 3_000
    assert f["detected"] == f["next_good_accepted"] == every_bit + 3_000
    assert f["passed_crc"] == 0
    assert (f["proven_burst_bits"], f["proven_min_distance"], f["proven_up_to_bytes"]) == (32, 4, MAX_FRAME_BYTES)


def test_a_budget_stops_the_campaigns_cleanly() -> None:
    for run in (run_malformed_frames, run_line_noise):
        outcome = run(10**9, Budget(0.5), SEED)
        assert 0 < outcome.done < 10**9
        assert outcome.ok, outcome.note


def test_the_campaigns_are_deterministic_from_the_seed() -> None:
    def counts(run: Any) -> dict[str, Any]:
        figures = run(3_000, Budget(None), SEED).figures
        return {k: v for k, v in figures.items() if k not in ("max_receive_ms", "frames_per_s")}

    assert counts(run_malformed_frames) == counts(run_malformed_frames)
    assert counts(run_line_noise) == counts(run_line_noise)


def test_the_golden_frames_are_every_accepted_vector_frame() -> None:
    frames = golden_frames()
    assert len(frames) == len({f.wire for f in frames}) > 80
    assert sum(not f.protocol for f in frames) == 5, "the framing vectors marked accept"
    assert any(f.keys is not None for f in frames)
    for f in frames:
        assert Deframer().feed(f.wire) == [f.body]


# --------------------------------------------------------------------------- they can fail


def test_malformed_frames_sees_a_refusal_that_moves_the_counter_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Device._refuse_decode

    def leaky(self: Device, err: DecodeError, header: Header, session: Any) -> None:
        original(self, err, header, session)
        if session is not None:
            session.channel.highest_received += 1

    monkeypatch.setattr(Device, "_refuse_decode", leaky)
    outcome = run_malformed_frames(3_000, Budget(None), SEED)
    assert not outcome.ok
    assert outcome.figures["state_changes"] > 0
    assert "sessions changed" in outcome.note


def test_malformed_frames_sees_a_refusal_that_touches_the_therapy(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Device._refuse_decode

    def meddling(self: Device, err: DecodeError, header: Header, session: Any) -> None:
        original(self, err, header, session)
        if err.code is ErrorCode.MALFORMED:
            self.pump.low_reservoir_threshold_nl += 1

    monkeypatch.setattr(Device, "_refuse_decode", meddling)
    outcome = run_malformed_frames(3_000, Budget(None), SEED)
    assert not outcome.ok
    assert outcome.figures["state_changes"] > 0
    assert "therapy changed" in outcome.note


def test_malformed_frames_counts_exceptions_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Device._on_body

    def fragile(self: Device, body: bytes) -> None:
        if body[:1] != b"\x01":  # a version other than 1: frequent among mutated frames
            raise IndexError("boom")
        original(self, body)

    monkeypatch.setattr(Device, "_on_body", fragile)
    outcome = run_malformed_frames(3_000, Budget(None), SEED)
    assert not outcome.ok
    assert outcome.figures["exceptions"] > 0
    assert outcome.done == 3_000
    assert "IndexError: boom" in outcome.note


def test_malformed_frames_counts_a_slow_receive_as_a_hang() -> None:
    ticks = iter(range(0, 10**15, 10**6))  # 1 ms a call ...
    calls = 0

    def clock() -> int:
        nonlocal calls
        calls += 1
        return next(ticks) + (2 * 10**9 if calls == 100 else 0)  # ... but one receive ends 2 s late

    outcome = run_malformed_frames(1_000, Budget(None), SEED, clock=clock)
    assert not outcome.ok
    assert outcome.figures["hangs"] == 1
    assert outcome.figures["max_receive_ms"] >= 2_000


class _CrcBlindDeframer(Deframer):
    """A receiver that lets frames with a bad CRC through."""

    def _end_of_frame(self) -> bytes | FramingError | None:
        encoded = bytes(self._buf)
        result = super()._end_of_frame()
        if isinstance(result, FramingError) and result.problem is FramingProblem.BAD_CRC:
            return bytes(cobs.decode(encoded))[:-CRC_BYTES]
        return result


def test_line_noise_sees_a_receiver_that_does_not_check_the_crc(monkeypatch: pytest.MonkeyPatch) -> None:
    golden_frames()  # loaded with the real deframer
    monkeypatch.setattr(campaign_frames, "Deframer", _CrcBlindDeframer)
    outcome = run_line_noise(20_000, Budget(None), SEED)
    assert not outcome.ok
    assert outcome.figures["detected"] < 20_000
    assert outcome.figures["passed_crc"] > 0
    assert "accepted" in outcome.note


def test_the_crc_proof_holds_for_crc32_and_fails_for_weaker_checks() -> None:
    proof = crc_proof()
    assert (proof.burst_bits, proof.min_distance, proof.codeword_bytes) == (32, 4, MAX_FRAME_BYTES)
    s = crc_syndromes(64)
    assert bursts_detected(s, 32)
    assert not bursts_detected(s, 33), "a 32-bit CRC cannot catch every 33-bit burst"
    assert min_undetected_weight(s) is None
    weak = s & np.uint32(0xFF)  # an 8-bit check on 512 bits: two errors share a syndrome (pigeonhole)
    assert not bursts_detected(weak, 32)
    weight = min_undetected_weight(weak)
    assert weight is not None
    assert weight <= 2
    holed = s.copy()
    holed[100] = 0
    assert min_undetected_weight(holed) == 1
    assert not bursts_detected(holed, 32)
    triple = s.copy()
    triple[7] = triple[3] ^ triple[5]
    assert min_undetected_weight(triple) == 3


# --------------------------------------------------------------------------- the live pump's guard


def _body(wire: bytes) -> bytes:
    (body,) = Deframer().feed(wire)
    assert isinstance(body, bytes)
    return body


def test_a_live_request_cut_short_and_completed_by_a_delimiter_is_held_back() -> None:
    """The campaign never gives the device a frame that is valid after all: a live REFILL
    without its final delimiter is spoiled before the next delimiter could complete it."""
    live = LivePump(SEED)
    refill = live.channel.request(REFILL_FULL, 0x5EED).data
    assert not harmless(_body(refill), live.keys, live.mark)
    assert live.offer(refill, 1_000) is None
    assert live.offer(refill[:-1], 2_000) is not None
    assert live.offer(b"\x00", 3_000) is not None
    assert live.skipped == 2
    assert live.keepalive()
    assert live.divergence() is None
    assert live.device.pump.acc.filled_total_nl == live._twin().pump.acc.filled_total_nl


def test_replayed_and_plaintext_session_frames_are_harmless_and_fed() -> None:
    live = LivePump(SEED)
    old = live.channel.request(m.Status())
    assert live.keepalive()
    assert harmless(_body(old.data), live.keys, live.mark), "a replay is refused"
    plain = live.plain.request(m.Status()).data
    assert harmless(_body(plain), live.keys, live.mark), "a session-only type in plaintext is refused"
    assert live.offer(old.data, 10) is not None
    assert live.offer(plain, 20) is not None
    assert live.keepalive()
    assert live.divergence() is None
    assert live.device.stats.refused == {"REPLAYED_COUNTER": 1, "NO_SESSION": 1}


def test_an_authentic_frame_refused_after_the_counter_check_is_not_harmless() -> None:
    """A sealed IDENTIFY of the live session moves the counter mark before WRONG_ROLE refuses
    it: it is held back while its counter is fresh (a plaintext IDENTIFY is harmless)."""
    live = LivePump(SEED)
    sealed = _body(live.channel.request(m.Identify()).data)
    assert not harmless(sealed, live.keys, live.mark)
    assert harmless(_body(live.plain.request(m.Identify()).data), live.keys, live.mark)
    assert live.keepalive()
    assert harmless(sealed, live.keys, live.mark), "once replayed, it is refused before it acts"


# --------------------------------------------------------------------------- atheris


def _atheris_or_skip() -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install 'atheris>=2.3,<4')")


def test_the_atheris_harness_runs_a_few_thousand_inputs(tmp_path: Path) -> None:
    _atheris_or_skip()
    done = subprocess.run(
        [sys.executable, "-m", "hil.campaigns.fuzz_frames", "-atheris_runs=3000", "-seed=1"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 3000 in" in done.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_the_atheris_harness_fails_on_a_broken_device(monkeypatch: pytest.MonkeyPatch) -> None:
    _atheris_or_skip()
    from hil.campaigns import fuzz_frames

    fuzz_frames.TestOneInput(b"")
    fuzz_frames.TestOneInput(bytes(range(256)))
    original = Device._refuse_decode

    def leaky(self: Device, err: DecodeError, header: Header, session: Any) -> None:
        original(self, err, header, session)
        self.pump.low_reservoir_threshold_nl += 1

    monkeypatch.setattr(Device, "_refuse_decode", leaky)
    failures: list[str] = []
    for mode in range(4):  # whatever end the data provider reads the mode from
        try:
            fuzz_frames.TestOneInput(bytes([mode]) * 96)
        except AssertionError as exc:
            failures.append(str(exc))
    assert failures, "no input reached a refusal"
    assert all("changed the therapy" in f for f in failures), failures
