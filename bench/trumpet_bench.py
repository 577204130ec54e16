"""Trumpet benchmark: wall time to compute an IMPLANT trumpet curve, with its quantization
bound, from 30 days of motor steps (the floor scheduler's, from ``hil.trumpet``).

The analysis period is days 2 to 30 (the first day left out, as the method does). A typical
dose (300 ug/day at 500 ug/mL: 600 uL/day, 2,400 steps a day) and the pump's highest rate
(2,000 ug/day at 500 ug/mL: 4 mL/day, 16,000 steps a day). Goal: under 0.5 s for the high
rate in process. The time to generate the steps is reported beside it, not in it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from firmware_model.units import MS_PER_DAY, rate_nl_per_day
from hil.trumpet import IMPLANT, ideal_step_times

GOAL_S = 0.5
STEP_NL = 250
DAYS = 30


def _one(dose_ng_per_day: int, concentration_ug_per_ml: int, repeats: int) -> dict[str, Any]:
    rate = rate_nl_per_day(dose_ng_per_day, concentration_ug_per_ml)
    t0 = time.perf_counter()
    steps = ideal_step_times(rate, STEP_NL, 0, DAYS * MS_PER_DAY)
    generate_s = time.perf_counter() - t0
    times = []
    curve = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        curve = IMPLANT.curve(steps, step_nl=STEP_NL, rate_nl_per_day=rate, analysis_end_ms=DAYS * MS_PER_DAY)
        times.append(time.perf_counter() - t0)
    assert curve is not None
    assert curve.at_bound(), "the floor scheduler left the quantization bound"
    return {
        "dose_ug_per_day": dose_ng_per_day // 1000,
        "concentration_ug_per_ml": concentration_ug_per_ml,
        "rate_nl_per_day": rate,
        "steps": len(steps),
        "analysis_days": (curve.analysis_end_ms - curve.analysis_start_ms) // MS_PER_DAY,
        "wall_s_median": round(statistics.median(times), 4),
        "wall_s_max": round(max(times), 4),
        "generate_steps_s": round(generate_s, 3),
        "max_percent": [round(p, 3) for p in curve.max_percent],
        "min_percent": [round(p, 3) for p in curve.min_percent],
    }


def run(repeats: int = 5) -> dict[str, Any]:
    typical = _one(300_000, 500, repeats)
    high = _one(2_000_000, 500, repeats)
    return {
        "goal": f"an IMPLANT curve with its bound from {DAYS} days of steps in under {GOAL_S} s",
        "windows_min": [w // 60_000 for w in IMPLANT.windows_ms],
        "typical_dose": typical,
        "highest_rate": high,
        "within_goal": typical["wall_s_median"] < GOAL_S and high["wall_s_median"] < GOAL_S,
    }
