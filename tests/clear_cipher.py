"""A cipher that does not encrypt, for the tests that show an eavesdropping campaign fails."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag

from protocol_spec.security import TAG_BYTES

__all__ = ["ClearCipher"]


class ClearCipher:
    """ChaCha20-Poly1305's interface with the payload left in clear and a keyed tag still checked:
    a pump (and programmer) whose encryption does not encrypt."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
        return hmac.new(self._key, nonce + associated_data + data, hashlib.sha256).digest()[:TAG_BYTES]

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
        return data + self._tag(nonce, data, associated_data)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes:
        payload, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(nonce, payload, associated_data)):
            raise InvalidTag
        return payload
