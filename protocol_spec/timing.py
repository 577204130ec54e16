"""Timing recommendations for the reference link (SPEC.md, "Timing and retries"), and the
pump's bad-tag backoff. Recommendations, not protocol rules: one place, used by the spec, the
pump and the programmer alike."""

from __future__ import annotations

__all__ = ["BAD_TAG_FIRST_MS", "BAD_TAG_MAX_MS", "BITS_PER_BYTE", "LINK_BAUD", "REPLY_TIMEOUT_MS", "RETRIES"]

LINK_BAUD = 115_200
BITS_PER_BYTE = 10  # 8N1
REPLY_TIMEOUT_MS = 500
RETRIES = 3
BAD_TAG_FIRST_MS = 1_000
"""Backoff after the first frame whose tag fails; it doubles with each further failure."""
BAD_TAG_MAX_MS = 60_000
"""The longest backoff: seconds, never a lockout."""
