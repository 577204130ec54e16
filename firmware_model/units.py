"""Integer units and the one definition of dose to rate.

Volumes are nanolitres, doses nanograms, concentrations micrograms per millilitre, times
milliseconds, charge picocoulombs. 1 ug/mL = 1 ng/uL, so a dose of D ng/day at C ug/mL
needs D * 1000 / C nL/day.
"""

from __future__ import annotations

__all__ = [
    "MS_PER_DAY",
    "MS_PER_HOUR",
    "MS_PER_S",
    "MS_PER_YEAR",
    "NG_PER_UG",
    "NL_PER_ML",
    "NL_PER_UL",
    "dose_ng_for_volume",
    "rate_nl_per_day",
    "volume_nl_for_dose",
]

MS_PER_S = 1000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
MS_PER_YEAR = 365 * MS_PER_DAY + MS_PER_DAY // 4
"""A Julian year (365.25 days): the unit of "7 years" in the battery rules."""
NL_PER_UL = 1000
NL_PER_ML = 1_000_000
NG_PER_UG = 1000


def rate_nl_per_day(dose_ng_per_day: int, concentration_ug_per_ml: int) -> int:
    """The pumping rate for a daily dose at a concentration, rounded down (never over-deliver)."""
    if concentration_ug_per_ml <= 0:
        raise ValueError("a dose needs a concentration above 0 ug/mL")
    return dose_ng_per_day * NL_PER_UL // concentration_ug_per_ml


def volume_nl_for_dose(dose_ng: int, concentration_ug_per_ml: int) -> int:
    """The volume holding a dose, rounded down."""
    return rate_nl_per_day(dose_ng, concentration_ug_per_ml)


def dose_ng_for_volume(volume_nl: int, concentration_ug_per_ml: int) -> int:
    """The dose a volume holds, rounded down."""
    return volume_nl * concentration_ug_per_ml // NL_PER_UL
