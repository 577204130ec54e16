"""The security campaigns at CI size, and evidence that each can fail (hil/campaigns/security.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest

import firmware_model.device as device_module
from hil.campaigns import REGISTRY, Budget, Outcome
from hil.campaigns import security as sec
from protocol_spec import messages as m
from protocol_spec import security
from protocol_spec.catalog import CATALOG
from protocol_spec.channel import Channel
from protocol_spec.enums import DrugId, Role

from .clear_cipher import ClearCipher

SEED = 1


def _ci(name: str) -> Outcome:
    c = REGISTRY[name]
    outcome = c.run(c.sizes[0], Budget(None), SEED)
    assert outcome.done == c.sizes[0]
    return outcome


def test_replay_accepts_nothing_and_logs_every_replay() -> None:
    o = _ci("replay")
    assert o.ok, o
    assert o.figures["accepted"] == 0
    assert o.figures["logged"] == o.figures["replayed"]
    assert o.figures["reset_sessions_reopened_with_old_id"] > 0, "the worst case after a reset was not reached"
    for context in ("same_session", "programmer_restart", "new_session", "pump_reset"):
        assert o.figures[f"in_{context}"] > 0


def test_replay_fails_on_a_pump_that_forgets_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Channel, "check_fresh", lambda _self, _header: None)
    o = sec.replay(300, Budget(None), SEED)
    assert not o.ok
    assert o.figures["accepted"] > 0


def test_forgery_accepts_nothing_and_the_genuine_frames_get_through() -> None:
    o = _ci("forgery")
    assert o.ok, o
    assert o.figures["accepted"] == 0
    assert o.figures["bad_tag_answered"] > 0
    assert o.figures["dropped_in_backoff"] > 0
    assert o.figures["genuine_answered"] == o.figures["genuine_frames"] > 0


def test_the_judge_calls_a_genuine_frame_accepted_and_its_forgeries_not() -> None:
    device, _ = sec._device(3)
    wire = sec._Wire(device)
    clin = sec._Programmer(wire, Role.CLINICIAN, sec._rng(1), sec._rng(2))
    clin.open()
    keys = clin.session.session_keys
    assert keys is not None
    refill = m.Refill(0, 20_000_000, DrugId.BACLOFEN, 500, 195_000, sec._REFILL_OK)
    other = dataclasses.replace(keys, key_c2p=bytes(32))
    rng = sec._rng(4)
    for kind in sec.FORGERIES:
        wire.now_ms += 60_000  # past any backoff
        probe, _ = sec._probe(device, sec.forge(kind, keys, other, refill, 1_000, 77, rng), wire.now_ms)
        assert not probe.accepted, kind
    genuine = Channel(from_pump=False, keys=keys, first_counter=2_000).request(refill, 78).data
    probe, _ = sec._probe(device, genuine, wire.now_ms)
    assert probe.accepted
    assert probe.acted


def test_wrong_role_executes_nothing_and_logs_everything() -> None:
    o = _ci("wrong-role")
    assert o.ok, o
    assert o.figures["executed"] == 0
    assert o.figures["logged_permille"] == 1000
    assert o.figures["refused_wrong_role"] > 0
    assert o.figures["refused_no_session"] > 0


def test_wrong_role_fails_on_a_pump_that_lets_every_role_send_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    everyone = frozenset(Role)
    lax = {t: dataclasses.replace(d, roles=everyone) if d.roles else d for t, d in CATALOG.items()}
    monkeypatch.setattr(device_module, "CATALOG", lax)
    o = sec.wrong_role(200, Budget(None), SEED)
    assert not o.ok
    assert o.figures["executed"] > 0


def test_eavesdropping_finds_nothing_in_sealed_traffic() -> None:
    o = _ci("eavesdropping")
    assert o.ok, o
    assert o.figures["matches"] == 0
    assert o.figures["plaintext_matches"] == 0
    assert o.figures["patterns_missing_from_plaintext"] == 0
    assert o.figures["expected_chance_matches_ppm"] < 1_000_000


def test_the_chance_bound_tolerates_what_random_bytes_show_and_no_leak() -> None:
    """Random ciphertext matches a 4-byte pattern now and then: the row allows what chance gives
    but once in a million runs, which a leak (a match in every session) far exceeds."""
    assert sec.chance_bound(0) == 0
    assert sec.chance_bound(81_314) == 4  # the full run's expectation: 0.08 matches
    assert sec.chance_bound(1_000_000) == 9
    lam = 0.08
    tail = 1 - sum(math.exp(-lam) * lam**k / math.factorial(k) for k in range(sec.chance_bound(80_000) + 1))
    assert tail < sec.FALSE_ALARM
    assert sec.scan_each([b"..abcd", b"cd.."], {b"abcd", b"dcd."}) == 1, "no match straddles two frames"


def test_eavesdropping_fails_on_a_pump_that_sends_in_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "ChaCha20Poly1305", ClearCipher)
    o = sec.eavesdropping(6, Budget(None), SEED)
    assert not o.ok
    assert o.figures["matches"] > o.figures["chance_bound"]


def test_the_scan_finds_known_plaintext_when_it_is_there() -> None:
    patterns = sec.eavesdrop_patterns(["VP1234567", 300_000, 7, True])
    assert patterns == {b"VP1234567", (300_000).to_bytes(4, "little"), (300_000).to_bytes(8, "little")}
    assert sec.scan(b"..VP1234567.." + (300_000).to_bytes(8, "little"), patterns) == 3
    assert sec.chance_matches_ppm(1_000_000, {b"abcd"}) == 233


def test_a_flood_for_an_hour_changes_no_delivery_and_evicts_nothing() -> None:
    o = sec._dos_day(20_000, Budget(None), SEED, duration_ms=3_600_000)
    assert o.ok, o
    assert o.figures["steps_flooded"] == o.figures["steps_quiet"] > 0
    assert o.figures["early_log_entries_lost"] == 0
    assert o.figures["battery_overhead_permille_of_day"] > 0


def test_a_flood_of_session_opens_cuts_off_no_programmer_and_logs_nothing() -> None:
    """Found by this campaign: key ids are public, and the pump logged every SESSION_OPEN and,
    past its bound, ended the genuine programmer's session to make room for one."""
    o = sec._dos_day(5_000, Budget(None), SEED, duration_ms=3_600_000, mix=("session_open",))
    assert o.figures["genuine_polls_answered"] == o.figures["genuine_polls"] > 0
    assert o.figures["log_entries_written"] == 0
    assert o.ok, o


def test_denial_of_service_for_24_hours() -> None:
    """Found by this campaign: security bursts were aggregated for 60 s only, so a day-long flood
    wrote over 1,440 entries per code and evicted the 1,024-entry log."""
    o = _ci("denial-of-service")
    assert o.figures["steps_flooded"] == o.figures["steps_quiet"]
    assert o.figures["genuine_polls_answered"] == o.figures["genuine_polls"]
    assert o.ok, o
