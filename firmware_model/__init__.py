"""The virtual implanted ITB pump: hardware, therapy, alarms, state machine, event log.

Pure: integer time in, values out; no ports, threads or clocks. It speaks ``protocol_spec``
and never imports ``programmer``.
"""

from __future__ import annotations

from .config import DEFAULT_LIMITS, BatteryConfig, PumpConfig
from .delivery import RatePiece, ideal_nlms, ideal_volume_nl
from .errors import PumpError, RefusalError
from .machine import PumpState
from .pump import Bolus, Pump, PumpStatus, RefillResult, TherapyCheck

__all__ = [
    "DEFAULT_LIMITS",
    "BatteryConfig",
    "Bolus",
    "Pump",
    "PumpConfig",
    "PumpError",
    "PumpState",
    "PumpStatus",
    "RatePiece",
    "RefillResult",
    "RefusalError",
    "TherapyCheck",
    "ideal_nlms",
    "ideal_volume_nl",
]
