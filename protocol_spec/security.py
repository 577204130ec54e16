"""The security layer: role keys, the session handshake's key derivation, AEAD framing.

Primitives (chosen because a C port on a Cortex-M has them in every crypto library):
ChaCha20-Poly1305 (RFC 8439) for every frame after the handshake, HKDF-SHA256 (RFC 5869)
for session keys, SHA-256 for the pump's nonce. Pure functions: nonces and entropy come in
as bytes, so every derivation is reproducible from the golden vectors.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .enums import Direction, Role

__all__ = [
    "KEY_BYTES",
    "PUMP_NONCE_LABEL",
    "SESSION_INFO_LABEL",
    "TAG_BYTES",
    "TEST_KEY_LABEL",
    "TEST_KEY_SET",
    "KeyFileError",
    "KeySet",
    "RoleKey",
    "SessionKeys",
    "aead_nonce",
    "confirm_matches",
    "derive_session_keys",
    "generate_key_set",
    "hkdf_info",
    "open_payload",
    "pump_nonce",
    "seal_payload",
]

KEY_BYTES = 32
TAG_BYTES = 16
SESSION_INFO_LABEL = b"pumprig/v1 session keys"
PUMP_NONCE_LABEL = b"pumprig/v1 pump nonce"
_HKDF_LENGTH = 80  # c2p key (32) | p2c key (32) | key confirmation (16)


@dataclass(frozen=True)
class RoleKey:
    """One role's key on one device. ``key_id`` is random, never derived from the serial."""

    role: Role
    key_id: int
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ValueError(f"a role key is {KEY_BYTES} bytes, got {len(self.key)}")
        if not 0 <= self.key_id <= 0xFFFFFFFF:
            raise ValueError("key_id is a u32")

    def __repr__(self) -> str:  # never print key material by accident
        return f"RoleKey(role={self.role.name}, key_id=0x{self.key_id:08x})"


class KeyFileError(ValueError):
    """A key file that cannot be read or is malformed."""


@dataclass(frozen=True)
class KeySet:
    """A device's key set: at most one key per role."""

    keys: tuple[RoleKey, ...]
    test_only: bool = False
    """True for the published test key set: never for a real device."""
    label: str = ""

    def for_role(self, role: Role) -> RoleKey | None:
        for k in self.keys:
            if k.role is role:
                return k
        return None

    def by_id(self, role: Role, key_id: int) -> RoleKey | None:
        k = self.for_role(role)
        return k if k is not None and k.key_id == key_id else None

    def to_json(self) -> str:
        doc = {
            "format": "pumprig-keys/1",
            "label": self.label,
            "test_only": self.test_only,
            "keys": [{"role": k.role.name.lower(), "key_id": f"{k.key_id:08x}", "key": k.key.hex()} for k in self.keys],
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> KeySet:
        try:
            doc = json.loads(text)
            fmt = doc.get("format")
            keys = tuple(
                RoleKey(Role[k["role"].upper()], int(k["key_id"], 16), bytes.fromhex(k["key"])) for k in doc["keys"]
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyFileError(f"malformed key file: {exc}") from exc
        if fmt != "pumprig-keys/1":
            raise KeyFileError("not a pumprig key file (format must be 'pumprig-keys/1')")
        roles = [k.role for k in keys]
        if len(set(roles)) != len(roles):
            raise KeyFileError("a key file holds at most one key per role")
        return cls(keys, bool(doc.get("test_only", False)), str(doc.get("label", "")))

    @classmethod
    def load(cls, path: str | Path) -> KeySet:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
        return cls.from_json(text)


def generate_key_set(roles: Iterable[Role] = tuple(Role), label: str = "") -> KeySet:
    """A fresh random key set (per device; no master key)."""
    return KeySet(
        tuple(RoleKey(r, secrets.randbits(32), secrets.token_bytes(KEY_BYTES)) for r in roles),
        test_only=False,
        label=label,
    )


TEST_KEY_LABEL = b"pumprig PUBLISHED TEST KEY - NOT SECRET - "


def _published_test_key(role: Role, key_id: int) -> RoleKey:
    return RoleKey(role, key_id, hashlib.sha256(TEST_KEY_LABEL + role.name.encode()).digest())


TEST_KEY_SET = KeySet(
    tuple(
        _published_test_key(role, key_id)
        for role, key_id in ((Role.CLINICIAN, 0x7E570001), (Role.PATIENT, 0x7E570002), (Role.TEST, 0x7E570003))
    ),
    test_only=True,
    label="pumprig published TEST key set: public, for emulators and test rigs only",
)
"""The published test key set. Anyone can read it: it protects nothing.

key = SHA-256("pumprig PUBLISHED TEST KEY - NOT SECRET - " + role name in capitals);
key ids 0x7E570001 (clinician), 0x7E570002 (patient), 0x7E570003 (test).
"""


@dataclass(frozen=True)
class SessionKeys:
    """What both sides derive from the handshake."""

    session_id: int
    role: Role
    key_id: int
    key_c2p: bytes
    """Key for frames from the programmer to the pump."""
    key_p2c: bytes
    """Key for frames from the pump to the programmer."""
    confirm: bytes
    """Key confirmation the pump returns in SESSION_OPEN's reply."""

    def key_for(self, direction: Direction) -> bytes:
        return self.key_c2p if direction is Direction.PROGRAMMER_TO_PUMP else self.key_p2c

    def __repr__(self) -> str:
        return f"SessionKeys(session_id=0x{self.session_id:08x}, role={self.role.name}, key_id=0x{self.key_id:08x})"


def pump_nonce(entropy: bytes, boot_counter: int, session_serial: int) -> bytes:
    """The pump's handshake nonce: fresh entropy mixed with the non-volatile boot counter.

    SHA-256(label | boot_counter u64le | session_serial u32le | entropy)[:16]. Even with a
    weak entropy source, the (boot counter, session serial) pair never repeats.
    """
    h = hashlib.sha256()
    h.update(PUMP_NONCE_LABEL)
    h.update(boot_counter.to_bytes(8, "little"))
    h.update(session_serial.to_bytes(4, "little"))
    h.update(entropy)
    return h.digest()[:16]


def hkdf_info(role: Role, key_id: int, session_id: int) -> bytes:
    return SESSION_INFO_LABEL + bytes([role]) + key_id.to_bytes(4, "little") + session_id.to_bytes(4, "little")


def derive_session_keys(role_key: RoleKey, session_id: int, client_nonce: bytes, pump_nonce_: bytes) -> SessionKeys:
    """HKDF-SHA256(ikm=role key, salt=client_nonce|pump_nonce, info=label|role|key_id|session_id), 80 bytes."""
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=_HKDF_LENGTH,
        salt=client_nonce + pump_nonce_,
        info=hkdf_info(role_key.role, role_key.key_id, session_id),
    ).derive(role_key.key)
    return SessionKeys(session_id, role_key.role, role_key.key_id, okm[:32], okm[32:64], okm[64:80])


def confirm_matches(keys: SessionKeys, confirm: bytes) -> bool:
    """Constant-time comparison of the pump's key confirmation."""
    return hmac.compare_digest(keys.confirm, confirm)


def aead_nonce(direction: Direction, counter: int) -> bytes:
    """12-byte ChaCha20-Poly1305 nonce: direction u32le | counter u64le (never repeats per key)."""
    return int(direction).to_bytes(4, "little") + counter.to_bytes(8, "little")


def seal_payload(keys: SessionKeys, direction: Direction, counter: int, header: bytes, payload: bytes) -> bytes:
    """Encrypt and authenticate: ciphertext | 16-byte tag; the header is associated data."""
    return ChaCha20Poly1305(keys.key_for(direction)).encrypt(aead_nonce(direction, counter), payload, header)


def open_payload(keys: SessionKeys, direction: Direction, counter: int, header: bytes, sealed: bytes) -> bytes | None:
    """Decrypt and verify; None if the tag does not verify (never raises on received bytes)."""
    if len(sealed) < TAG_BYTES:
        return None
    try:
        return ChaCha20Poly1305(keys.key_for(direction)).decrypt(aead_nonce(direction, counter), sealed, header)
    except InvalidTag:
        return None
