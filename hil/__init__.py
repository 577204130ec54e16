"""The rig: the ``pumprig`` command, launchers, targets, fault-injecting links, the conformance suite."""

from __future__ import annotations

__all__: list[str] = []
