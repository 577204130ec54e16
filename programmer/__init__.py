"""The clinician's programmer: a sans-IO session, a synchronous facade over any serial URL, the CLI.

It speaks ``protocol_spec`` and never imports ``firmware_model``.
"""

from __future__ import annotations

__all__: list[str] = []
