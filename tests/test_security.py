"""Keys, the handshake derivation and the AEAD: what an attacker on the line cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol_spec.enums import Direction, Role
from protocol_spec.examples import HANDSHAKE
from protocol_spec.security import (
    TAG_BYTES,
    TEST_KEY_SET,
    KeyFileError,
    KeySet,
    RoleKey,
    aead_nonce,
    confirm_matches,
    derive_session_keys,
    generate_key_set,
    open_payload,
    pump_nonce,
    seal_payload,
)

KEYS = HANDSHAKE.keys
HEADER = bytes(range(31))


def test_key_file_round_trips(tmp_path: Path) -> None:
    keys = generate_key_set(label="bench unit 7")
    path = tmp_path / "keys.json"
    path.write_text(keys.to_json())
    assert KeySet.load(path) == keys
    assert not keys.test_only


def test_generated_key_sets_differ() -> None:
    """No master key: two devices never share a role key or a key id."""
    a, b = generate_key_set(), generate_key_set()
    for role in Role:
        ka, kb = a.for_role(role), b.for_role(role)
        assert ka is not None
        assert kb is not None
        assert ka.key != kb.key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "malformed"),
        (json.dumps({"format": "other/1", "keys": []}), "not a pumprig key file"),
        (
            json.dumps({"format": "pumprig-keys/1", "keys": [{"role": "nurse", "key_id": "01", "key": "00"}]}),
            "malformed",
        ),
        (
            json.dumps(
                {
                    "format": "pumprig-keys/1",
                    "keys": [{"role": "clinician", "key_id": "01", "key": "00" * 32}] * 2,
                }
            ),
            "at most one key per role",
        ),
        (json.dumps({"format": "pumprig-keys/1", "keys": [{"role": "clinician", "key_id": "01", "key": "00"}]}), "32"),
    ],
)
def test_bad_key_files_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=message):
        KeySet.from_json(text)


def test_missing_key_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read key file"):
        KeySet.load(tmp_path / "absent.json")


def test_key_material_is_never_printed() -> None:
    role_key = TEST_KEY_SET.for_role(Role.CLINICIAN)
    assert role_key is not None
    assert role_key.key.hex() not in repr(role_key)
    assert KEYS.key_c2p.hex() not in repr(KEYS)


def test_the_published_test_key_set_is_marked_and_reproducible() -> None:
    import hashlib

    assert TEST_KEY_SET.test_only
    for role, key_id in ((Role.CLINICIAN, 0x7E570001), (Role.PATIENT, 0x7E570002), (Role.TEST, 0x7E570003)):
        k = TEST_KEY_SET.by_id(role, key_id)
        assert k is not None
        assert k.key == hashlib.sha256(b"pumprig PUBLISHED TEST KEY - NOT SECRET - " + role.name.encode()).digest()


def test_derivation_binds_every_input() -> None:
    """Changing the role key, the session id or either nonce changes every derived key."""
    base = derive_session_keys(HANDSHAKE.role_key, HANDSHAKE.session_id, HANDSHAKE.client_nonce, HANDSHAKE.pump_nonce)
    assert base == KEYS
    other_key = RoleKey(Role.CLINICIAN, HANDSHAKE.role_key.key_id, bytes(32))
    variants = [
        derive_session_keys(other_key, HANDSHAKE.session_id, HANDSHAKE.client_nonce, HANDSHAKE.pump_nonce),
        derive_session_keys(HANDSHAKE.role_key, HANDSHAKE.session_id + 1, HANDSHAKE.client_nonce, HANDSHAKE.pump_nonce),
        derive_session_keys(HANDSHAKE.role_key, HANDSHAKE.session_id, bytes(16), HANDSHAKE.pump_nonce),
        derive_session_keys(HANDSHAKE.role_key, HANDSHAKE.session_id, HANDSHAKE.client_nonce, bytes(16)),
    ]
    for v in variants:
        assert v.key_c2p != base.key_c2p
        assert v.key_p2c != base.key_p2c
        assert v.confirm != base.confirm
    assert base.key_c2p != base.key_p2c


def test_confirm_matches_only_the_right_confirmation() -> None:
    assert confirm_matches(KEYS, KEYS.confirm)
    assert not confirm_matches(KEYS, bytes(len(KEYS.confirm)))
    assert not confirm_matches(KEYS, KEYS.confirm[:-1])


def test_pump_nonce_never_repeats_even_with_constant_entropy() -> None:
    """A broken entropy source still gives a fresh nonce per (boot counter, session serial)."""
    stuck = bytes(16)
    nonces = {pump_nonce(stuck, boot, serial) for boot in range(50) for serial in range(50)}
    assert len(nonces) == 2500


def test_aead_nonces_differ_by_direction_and_counter() -> None:
    nonces = {aead_nonce(d, c) for d in Direction for c in range(1000)}
    assert len(nonces) == 2 * 1000


@given(st.binary(max_size=300), st.integers(1, (1 << 64) - 1), st.sampled_from(list(Direction)))
def test_seal_then_open_round_trips(payload: bytes, counter: int, direction: Direction) -> None:
    sealed = seal_payload(KEYS, direction, counter, HEADER, payload)
    assert len(sealed) == len(payload) + TAG_BYTES
    assert open_payload(KEYS, direction, counter, HEADER, sealed) == payload


@given(st.binary(min_size=1, max_size=100), st.data())
def test_any_tampering_is_detected(payload: bytes, data: st.DataObject) -> None:
    """A flipped bit anywhere (header, ciphertext, tag), another counter or the other
    direction's key: the tag does not verify."""
    sealed = seal_payload(KEYS, Direction.PROGRAMMER_TO_PUMP, 5, HEADER, payload)
    where = data.draw(st.sampled_from(["header", "sealed", "counter", "direction"]))
    if where == "header":
        i = data.draw(st.integers(0, len(HEADER) - 1))
        header = bytearray(HEADER)
        header[i] ^= 1 << data.draw(st.integers(0, 7))
        assert open_payload(KEYS, Direction.PROGRAMMER_TO_PUMP, 5, bytes(header), sealed) is None
    elif where == "sealed":
        i = data.draw(st.integers(0, len(sealed) - 1))
        tampered = bytearray(sealed)
        tampered[i] ^= 1 << data.draw(st.integers(0, 7))
        assert open_payload(KEYS, Direction.PROGRAMMER_TO_PUMP, 5, HEADER, bytes(tampered)) is None
    elif where == "counter":
        assert open_payload(KEYS, Direction.PROGRAMMER_TO_PUMP, 6, HEADER, sealed) is None
    else:  # a frame reflected back at its sender
        assert open_payload(KEYS, Direction.PUMP_TO_PROGRAMMER, 5, HEADER, sealed) is None


def test_short_sealed_data_is_refused_not_raised() -> None:
    for n in range(TAG_BYTES):
        assert open_payload(KEYS, Direction.PROGRAMMER_TO_PUMP, 1, HEADER, bytes(n)) is None
