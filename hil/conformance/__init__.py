"""The conformance suite: requirements as data, targets as data, the suite, its runner and report.

    pumprig conform --url /dev/pts/5 --profile full --junit results.xml --report out/

One suite certifies the virtual pump, a board on a serial port and a board in a networked lab
with the same assertions, through the protocol alone (``hil.conformance.suite``). The pytest
plugin (``hil.conformance.plugin``, entry point ``pumprig``) lets users write their own.
"""

from __future__ import annotations

from .dut import (
    SUITE_CONCENTRATION_UG_PER_ML,
    SUITE_DOSE_NG_PER_DAY,
    DeviceUnderTest,
    RawLink,
    TargetUnusable,
    continuous,
    refused,
)
from .requirements import PROFILES, Requirement, RequirementError, in_profile, load_requirements
from .targets import Target, TargetError, load_targets, target_for_url

__all__ = [
    "PROFILES",
    "SUITE_CONCENTRATION_UG_PER_ML",
    "SUITE_DOSE_NG_PER_DAY",
    "DeviceUnderTest",
    "RawLink",
    "Requirement",
    "RequirementError",
    "Target",
    "TargetError",
    "TargetUnusable",
    "continuous",
    "in_profile",
    "load_requirements",
    "load_targets",
    "refused",
    "target_for_url",
]
