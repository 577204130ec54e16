"""Delivery accuracy as trumpet curves against the quantization bound (``hil.trumpet``).

A stepping pump cannot deliver smoothly: over a window a motor step of s nL is taken or not.
The best any scheduler can show on a window worth x steps is floor(x) or ceil(x) steps; the
target's curve must lie within that bound, on the IEC 60601-2-24 windows (2 to 31 min, the
second hour of a 2 h run) and on implant windows (30 min to 24 h, days 2 and 3 of a 3-day run).
The report plots each curve against the bound, and, for the typical dose, against a scheduler
that takes the hour's steps in one burst (what the bound rules out).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hil.conformance import DeviceUnderTest, continuous
from hil.trumpet import IEC, IMPLANT, TrumpetCurve, burst_step_times
from protocol_spec.enums import DrugId, RefillConfirmation

MS_PER_HOUR = 3_600_000
THERAPIES = {
    # name: (dose ng/day, concentration ug/mL): rates of 100, 250 and 500 uL/day, none a whole
    # number of steps an hour, so the bound is not trivially 0 %
    "low": (50_000, 500),
    "typical": (250_000, 1000),
    "high": (1_000_000, 2000),
}


def _start(pump: DeviceUnderTest, dose_ng_per_day: int, conc_ug_per_ml: int) -> tuple[int, int]:
    """Refill with ``conc`` and run the dose: (its rate as the pump computed it, the commit time)."""
    c = pump.clinician
    b = pump.baseline
    c.refill(
        aspirated_volume_nl=c.status().reservoir_estimate_nl,
        added_volume_nl=b.reservoir_capacity_nl,
        drug=DrugId(b.limits.drug),
        concentration_ug_per_ml=conc_ug_per_ml,
        catheter_volume_nl=b.catheter_volume_nl,
        confirmations=RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED,
    )
    applied = pump.program(continuous(dose_ng_per_day, conc_ug_per_ml), override_soft_limits=True)
    return c.status().rate_nl_per_day, applied.applied_at_ms


def _points(curve: TrumpetCurve, values: tuple[float, ...]) -> list[tuple[float, float]]:
    return [(w / MS_PER_HOUR, v) for w, v in zip(curve.windows_ms, values, strict=True)]


def _failures(curve: TrumpetCurve) -> list[str]:
    return [
        f"{w // 60_000} min: {hi:+.2f} / {lo:+.2f} % against the bound {up:+.2f} / {low:+.2f} %"
        for w, hi, lo, up, low in zip(
            curve.windows_ms,
            curve.max_percent,
            curve.min_percent,
            curve.bound_upper_percent,
            curve.bound_lower_percent,
            strict=True,
        )
        if hi > up + 1e-9 or lo < low - 1e-9
    ]


@pytest.mark.requirement("THR-ACC-002")
@pytest.mark.requires("test_role", "virtual_time", "step_log")
@pytest.mark.parametrize("therapy", list(THERAPIES))
def test_trumpet_curves_lie_within_the_quantization_bound(
    pump: DeviceUnderTest, pump_figure: Callable[..., None], therapy: str
) -> None:
    dose, conc = THERAPIES[therapy]
    step_nl = pump.baseline.step_volume_nl
    rate, t0 = _start(pump, dose, conc)
    assert rate == dose * 1000 // conc
    steps = pump.record_steps(IMPLANT.run_end_ms(), rate)
    assert steps, "no motor step in three days"
    iec = IEC.curve(steps, step_nl=step_nl, rate_nl_per_day=rate, run_start_ms=t0)
    implant = IMPLANT.curve(steps, step_nl=step_nl, rate_nl_per_day=rate, run_start_ms=t0)
    assert not _failures(iec), f"IEC windows outside the bound: {_failures(iec)}"
    assert not _failures(implant), f"implant windows outside the bound: {_failures(implant)}"
    series = {
        "pump: largest": _points(implant, implant.max_percent),
        "pump: smallest": _points(implant, implant.min_percent),
        "bound: upper": _points(implant, implant.bound_upper_percent),
        "bound: lower": _points(implant, implant.bound_lower_percent),
    }
    name = f"{therapy} dose, {dose // 1000} ug/day at {conc} ug/mL ({rate} nL/day, {step_nl} nL steps)"
    pump_figure(f"trumpet curve, implant windows: {name}", "window (h)", "deviation (%)", series, "line", x_log=True)
    if therapy == "typical":
        burst = IMPLANT.curve(
            burst_step_times(rate, step_nl, t0, t0 + IMPLANT.run_end_ms()),
            step_nl=step_nl,
            rate_nl_per_day=rate,
            run_start_ms=t0,
        )
        assert _failures(burst), "a scheduler that bursts once an hour must leave the bound"
        series |= {
            "hourly burst: largest": _points(burst, burst.max_percent),
            "hourly burst: smallest": _points(burst, burst.min_percent),
        }
        pump_figure(
            f"the same against a scheduler that bursts once an hour: {name}",
            "window (h)",
            "deviation (%)",
            series,
            "line",
            x_log=True,
        )
