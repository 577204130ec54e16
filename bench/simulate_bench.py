"""Simulator benchmark: wall time to live a pump's whole life (to EOS, with auto-refill).

A 13-step flex program at a typical dose (125 to 200 ug/day at 500 ug/mL) and the same at
ten times the dose (1,250 to 2,000 ug/day: ten times the motor steps and the refills).
Goals: under 1 s in process, and the 10x run under 1.5 times the first.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

from firmware_model.simulate import SimulationSpec, simulate
from firmware_model.units import MS_PER_YEAR
from protocol_spec.examples import flex_13_steps

GOAL_S = 1.0
GOAL_RATIO = 1.5


def _spec(dose_factor_tenths: int) -> SimulationSpec:
    program = flex_13_steps()
    steps = tuple(
        dataclasses.replace(s, dose_ng_per_day=s.dose_ng_per_day * dose_factor_tenths // 10) for s in program.steps
    )
    return SimulationSpec(program=dataclasses.replace(program, steps=steps), auto_refill=True)


def _one(spec: SimulationSpec, repeats: int) -> dict[str, Any]:
    times = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = simulate(spec)
        times.append(time.perf_counter() - t0)
    assert result is not None
    assert result.eos_at_ms is not None
    return {
        "wall_s_median": round(statistics.median(times), 3),
        "wall_s_max": round(max(times), 3),
        "simulated_years": round(result.end_ms / MS_PER_YEAR, 3),
        "eri_to_eos_days": result.to_json()["eri_to_eos_days"],
        "steps": result.steps,
        "refills": result.refills,
        "events": result.events,
    }


def run(repeats: int) -> dict[str, Any]:
    typical = _one(_spec(5), repeats)
    tenfold = _one(_spec(50), repeats)
    ratio = tenfold["wall_s_median"] / typical["wall_s_median"]
    return {
        "goal": f"to EOS in under {GOAL_S} s; the 10x-dose run under {GOAL_RATIO} x the typical one",
        "flex13_typical_dose": typical,
        "flex13_ten_times_dose": tenfold,
        "ten_times_over_typical": round(ratio, 2),
        "within_goal": typical["wall_s_median"] < GOAL_S and tenfold["wall_s_median"] < GOAL_S and ratio < GOAL_RATIO,
    }
