"""The security campaigns over a link at CI size on ``pump://``, and evidence that each can fail
(hil/campaigns/link_security.py).

The campaigns see the target through the protocol alone; these tests break the in-process pump
behind the link on purpose (white-box, reached through the port ``pump://`` opened), so that it
accepts a replayed counter, skips the tag check, lets a patient do a clinician's work, sends its
payloads in clear or does not log, and show that the campaign says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

import firmware_model.device as device_module
from hil.campaigns import Budget, Outcome, load_all
from hil.campaigns import link_security as ls
from hil.conformance import DeviceUnderTest
from protocol_spec import codec, security
from protocol_spec.catalog import CATALOG
from protocol_spec.channel import Channel
from protocol_spec.codec import Header
from protocol_spec.enums import Direction, ErrorCode, ProgramSlot, Role
from protocol_spec.security import TAG_BYTES, SessionKeys, aead_nonce

from .clear_cipher import ClearCipher
from .virtual_target import connected, device_of

SEED = 1


@pytest.fixture
def pump() -> Iterator[DeviceUnderTest]:
    """A fresh virtual pump behind pump:// (every open makes a new one)."""
    with connected() as dut:
        yield dut


@pytest.fixture
def pump_without_test_role() -> Iterator[DeviceUnderTest]:
    with connected("pump://?test_role=0") as dut:
        yield dut


def _ci(name: str, pump: DeviceUnderTest) -> Outcome:
    c = load_all()[name]
    assert c.link is not None
    size = c.size("ci", over_link=True)
    outcome = c.link(size, Budget(None), SEED, pump)
    assert outcome.done == size
    return outcome


# ---------------------------------------------------------------------- replay


def test_replay_over_a_link_accepts_nothing_and_logs_every_replay(pump: DeviceUnderTest) -> None:
    program = pump.clinician.read_program(ProgramSlot.ACTIVE)
    settings = pump.clinician.interrogate().patient_bolus
    o = _ci("replay", pump)
    assert o.ok, o
    f = o.figures
    assert f["accepted"] == 0
    assert f["batches_changed"] == 0
    assert f["logged"] == f["replayed"]
    assert f["refused_otherwise"] == 0
    for code in ("refused_replayed_counter", "refused_no_session", "refused_bad_tag", "dropped_in_backoff"):
        assert f[code] > 0, code
    for context in ("same_session", "new_session", "after_close", "after_reset"):
        assert f[f"in_{context}"] > 0, context
    assert f["patient_boluses_granted"] >= 1
    # the target is left as found and usable
    assert pump.clinician.read_program(ProgramSlot.ACTIVE) == program
    assert pump.clinician.interrogate().patient_bolus == settings
    pump.reset()


def test_replay_without_the_test_role_skips_the_reset_and_says_so(pump_without_test_role: DeviceUnderTest) -> None:
    o = ls.replay_over_link(300, Budget(None), SEED, pump_without_test_role)
    assert o.ok, o
    assert "in_after_reset" not in o.figures
    assert "no replays after a reset" in o.note


def _logs_all_but(unlogged: ErrorCode, pump: DeviceUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Break the target: it refuses as before but leaves ``unlogged`` refusals out of its log."""
    device = device_of(pump)
    log = device._security_event

    def log_all_but(code: ErrorCode, request: Header) -> None:
        if code is not unlogged:
            log(code, request)

    monkeypatch.setattr(device, "_security_event", log_all_but)


def test_replay_over_a_link_fails_on_a_pump_that_accepts_a_replayed_counter(
    pump: DeviceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Channel, "check_fresh", lambda _self, _header: None)
    o = ls.replay_over_link(100, Budget(None), SEED, pump)
    assert not o.ok
    assert o.figures["accepted"] > 0


def test_replay_over_a_link_fails_on_a_pump_that_does_not_log_replays(
    pump: DeviceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    _logs_all_but(ErrorCode.REPLAYED_COUNTER, pump, monkeypatch)
    o = ls.replay_over_link(100, Budget(None), SEED, pump)
    assert not o.ok
    assert o.figures["accepted"] == 0
    assert o.figures["logged"] == o.figures["replayed"] - o.figures["refused_replayed_counter"] < o.figures["replayed"]


# ---------------------------------------------------------------------- forgery


def test_forgery_over_a_link_accepts_nothing_and_the_genuine_frames_get_through(pump: DeviceUnderTest) -> None:
    o = _ci("forgery", pump)
    assert o.ok, o
    f = o.figures
    assert f["accepted"] == 0
    assert f["bad_tag_answered"] > 0
    assert f["dropped_in_backoff"] > 0
    assert f["logged"] == f["forged"]
    assert f["genuine_answered"] == f["genuine_frames"] > 0
    assert all(f[f"kind_{k}"] > 0 for k in ls.FORGERIES)


def test_forgery_over_a_link_fails_on_a_pump_that_skips_the_tag_check(
    pump: DeviceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pump decrypts what it receives but never checks the tag (ChaCha20 alone, as RFC 8439
    encrypts: block counter 1)."""
    verified = security.open_payload

    def unchecked(keys: SessionKeys, direction: Direction, counter: int, header: bytes, sealed: bytes) -> bytes | None:
        opened = verified(keys, direction, counter, header, sealed)
        if opened is not None or direction is not Direction.PROGRAMMER_TO_PUMP or len(sealed) < TAG_BYTES:
            return opened
        nonce = (1).to_bytes(4, "little") + aead_nonce(direction, counter)
        stream = Cipher(algorithms.ChaCha20(keys.key_for(direction), nonce), mode=None).decryptor()
        return stream.update(sealed[:-TAG_BYTES])

    monkeypatch.setattr(codec, "open_payload", unchecked)
    o = ls.forgery_over_link(200, Budget(None), SEED, pump)
    assert not o.ok
    assert o.figures["accepted"] > 0


def test_forgery_over_a_link_fails_on_a_pump_that_does_not_log_bad_tags(
    pump: DeviceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    _logs_all_but(ErrorCode.BAD_TAG, pump, monkeypatch)
    o = ls.forgery_over_link(200, Budget(None), SEED, pump)
    assert not o.ok
    assert o.figures["accepted"] == 0
    assert o.figures["logged"] == 0 < o.figures["forged"]


# ---------------------------------------------------------------------- wrong role


def test_wrong_role_over_a_link_executes_nothing_and_logs_everything(pump: DeviceUnderTest) -> None:
    o = _ci("wrong-role", pump)
    assert o.ok, o
    f = o.figures
    assert f["executed"] == 0
    assert f["batches_changed"] == 0
    assert f["refused_otherwise"] == 0
    assert f["logged_permille"] == 1000
    assert f["logged"] == f["sent"]
    for role in ("clinician", "patient", "test", "no_session"):
        assert f[f"as_{role}"] > 0, role


def test_wrong_role_without_the_test_role_counts_the_test_key_refused(pump_without_test_role: DeviceUnderTest) -> None:
    o = ls.wrong_role_over_link(300, Budget(None), SEED, pump_without_test_role)
    assert o.ok, o
    assert o.figures["refused_unknown_key"] == o.figures["as_test"] > 0
    assert o.figures["logged"] == o.figures["sent"]


def test_wrong_role_over_a_link_is_reproducible_from_its_seed() -> None:
    def figures() -> dict[str, int | float]:
        with connected() as dut:
            return ls.wrong_role_over_link(200, Budget(None), SEED, dut).figures

    assert figures() == figures()


def test_wrong_role_over_a_link_fails_on_a_pump_that_lets_a_patient_program(
    pump: DeviceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    lax = {
        t: dataclasses.replace(d, roles=d.roles | {Role.PATIENT}) if not (d.pre_session or d.test_only) else d
        for t, d in CATALOG.items()
    }
    monkeypatch.setattr(device_module, "CATALOG", lax)
    o = ls.wrong_role_over_link(200, Budget(None), SEED, pump)
    assert not o.ok
    assert o.figures["executed"] > 0


# ---------------------------------------------------------------------- eavesdropping


def test_eavesdropping_over_a_link_finds_no_plaintext(pump: DeviceUnderTest) -> None:
    o = _ci("eavesdropping", pump)
    assert o.ok, o
    f = o.figures
    assert f["matches"] == f["plaintext_matches"] == 0
    assert f["patterns"] > 0
    assert f["sealed_bytes_scanned"] > 0
    assert f["patterns_missing_from_plaintext"] == 0
    assert f["sealed_frames_not_opened"] == 0


def test_eavesdropping_over_a_link_fails_on_a_pump_that_sends_in_clear(
    pump: DeviceUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(security, "ChaCha20Poly1305", ClearCipher)
    o = ls.eavesdropping_over_link(3, Budget(None), SEED, pump)
    assert not o.ok
    assert o.figures["matches"] > 0
