"""The virtual implanted ITB pump: hardware, therapy, alarms, state machine, device endpoint.

Pure: bytes and integer time in, bytes and values out. It speaks ``protocol_spec`` and never
imports ``programmer``.
"""

from __future__ import annotations

__all__: list[str] = []
