"""The pump's parameters. Every default that no public source gives is ours, and says so.

Defaults (pumprig's choices, not a vendor's figures; DOMAIN.md lists what is public):
- motor step: 250 nL (at most 1 uL, as DOMAIN.md asks); stroke error 0 nL per step;
- catheter 195,000 nL and pump tubing 65,000 nL (dead volume for priming and bridges);
- battery: 1,750 C usable (about 486 mAh), 8 uA quiescent, 33 uC per motor step, 2 uC per
  telemetry frame. At zero rate that lasts 6.93 years (so EOS never comes after 7); at
  0.2 mL/day about 6.7 years, at 2 mL/day about 5.0;
- ERI when the charge left would last 90 days + a 14-day margin at the present program's
  highest rate, so EOS follows at least 90 days later if the therapy is not raised;
- low-reservoir threshold 2 mL; alarm repeats every 10 min (critical) and 60 min (other);
- the fastest bolus 1 mL/h (24 mL/day); the event log keeps 1,024 entries, the step log 256.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol_spec.enums import DrugId
from protocol_spec.messages import Concentration, DrugLimits

from .units import MS_PER_DAY, NG_PER_UG, NL_PER_ML

__all__ = ["DEFAULT_LIMITS", "BatteryConfig", "PumpConfig", "load_toml"]

DEFAULT_LIMITS = DrugLimits(
    drug=DrugId.BACLOFEN,
    concentrations=tuple(Concentration(c) for c in (50, 500, 1000, 2000)),
    min_rate_nl_per_day=5_000,
    max_rate_nl_per_day=4_000_000,
    hard_limit_ng_per_day=2000 * NG_PER_UG,
    soft_limit_ng_per_day=1000 * NG_PER_UG,
    soft_increase_permille_per_24h=300,
    max_bolus_ng=500 * NG_PER_UG,
)
"""Baclofen: 50/500/1000/2000 ug/mL; 5 uL/day (also the MINIMUM_RATE rate) to 4 mL/day;
hard limit 2000 ug/day; soft limit 1000 ug/day; +30 % per rolling 24 h without override."""


@dataclass(frozen=True)
class BatteryConfig:
    capacity_pc: int = 1_750_000_000_000_000
    """Usable charge, picocoulombs (1,750 C)."""
    quiescent_pc_per_ms: int = 8_000
    """Quiescent drain: 8 uA = 8,000 pC per ms."""
    step_pc: int = 33_000_000
    """Charge per motor step (33 uC)."""
    frame_pc: int = 2_000_000
    """Charge per telemetry frame sent or received (2 uC)."""
    eri_window_ms: int = (90 + 14) * MS_PER_DAY
    """ERI when the charge left would last this long at the present program: 90 days + margin."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0 and f.name != "frame_pc":
                raise ValueError(f"battery {f.name} must be positive")
        if self.eri_window_ms <= 90 * MS_PER_DAY:
            raise ValueError("the ERI window must exceed 90 days")


@dataclass(frozen=True)
class PumpConfig:
    reservoir_capacity_nl: int = 20 * NL_PER_ML
    step_volume_nl: int = 250
    stroke_error_nl_per_step: int = 0
    """True minus nominal volume per step: positive over-infuses, negative under-infuses."""
    catheter_volume_nl: int = 195_000
    tubing_volume_nl: int = 65_000
    battery: BatteryConfig = field(default_factory=BatteryConfig)
    low_reservoir_threshold_nl: int = 2 * NL_PER_ML
    critical_repeat_ms: int = 10 * 60_000
    non_critical_repeat_ms: int = 60 * 60_000
    limits: DrugLimits = DEFAULT_LIMITS
    max_bolus_rate_nl_per_day: int = 24 * NL_PER_ML
    event_log_capacity: int = 1024
    step_log_capacity: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.step_volume_nl <= 1000:
            raise ValueError("step_volume_nl must be in [1, 1000] (at most 1 uL)")
        if self.step_volume_nl + self.stroke_error_nl_per_step <= 0:
            raise ValueError("the stroke error would make a step move no drug or pull it back")
        if self.reservoir_capacity_nl <= 0 or self.catheter_volume_nl < 0 or self.tubing_volume_nl < 0:
            raise ValueError("volumes must not be negative and the reservoir must hold something")
        if not 0 <= self.low_reservoir_threshold_nl < self.reservoir_capacity_nl:
            raise ValueError("the low-reservoir threshold must lie below the capacity")
        if self.critical_repeat_ms < 1000 or self.non_critical_repeat_ms < 1000:
            raise ValueError("alarm repeat intervals are at least 1 s")
        if self.event_log_capacity < 16 or self.step_log_capacity < 1:
            raise ValueError("logs need room")

    @classmethod
    def profile(cls, reservoir_ml: int, **changes: Any) -> PumpConfig:
        """The 20 mL or 40 mL pump, with any parameter changed."""
        if reservoir_ml not in (20, 40):
            raise ValueError("the reservoir profiles are 20 mL and 40 mL")
        return dataclasses.replace(cls(), reservoir_capacity_nl=reservoir_ml * NL_PER_ML, **changes)

    @property
    def dead_volume_nl(self) -> int:
        """Pump tubing plus catheter: what a priming bolus fills and a bridge bolus flushes."""
        return self.catheter_volume_nl + self.tubing_volume_nl


def load_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a table; a ValueError naming the file if it cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from exc
