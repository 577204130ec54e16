"""Accuracy-property benchmark: hypothesis examples per second for each property of
tests/test_accuracy.py.

Each property is run in process through its own ``@given`` wrapper, with fixed settings
(``max_examples``, derandomized so every run draws the same examples, no example database,
generation only: no shrinking, which would time the search for a counterexample rather than
the property). The examples are counted by wrapping ``test.hypothesis.inner_test`` (the hook
hypothesis documents for wrapping the inner test), so the figure is examples actually run
(including any hypothesis discarded as invalid) over the wall time of the whole call, strategy
drawing included: what one example costs in ``make test``. This is simpler and more honest than
timing through pytest (no collection, plugins or reporting in the figure). A property that
fails (a model bug reported elsewhere) is timed up to its failure and marked ``failed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, settings

from tests import test_accuracy

PROPERTIES = (
    "test_commanded_delivery_lags_the_ideal_by_less_than_one_step",
    "test_the_plant_conserves_volume",
    "test_basal_dose_in_any_24h_stays_within_the_hard_limit",
    "test_dose_in_any_24h_stays_within_the_hard_limit_boluses_included",
    "test_the_pumps_own_bridge_plan_is_accepted",
    "test_bridge_delivers_the_old_dose_until_the_dead_volume_is_flushed",
    "test_patient_bolus_lockout_and_daily_maximum_hold_across_resets",
    "test_stroke_error_moves_the_low_reservoir_alarm_by_exactly_its_drift",
)


def _one(name: str, examples: int) -> dict[str, Any]:
    test = getattr(test_accuracy, name)
    inner = test.hypothesis.inner_test
    count = 0

    def counted(*args: Any, **kwargs: Any) -> None:
        nonlocal count
        count += 1
        inner(*args, **kwargs)

    test.hypothesis.inner_test = counted
    configured: Callable[[], None] = settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(test)
    failed = None
    t0 = time.perf_counter()
    try:
        configured()
    except Exception as exc:  # a failing property: timed up to the failure
        failed = type(exc).__name__
    finally:
        wall = time.perf_counter() - t0
        test.hypothesis.inner_test = inner
    return {
        "examples": count,
        "wall_s": round(wall, 3),
        "examples_per_s": round(count / wall, 1) if wall > 0 else None,
        "failed": failed,
    }


def run(examples: int = 100) -> dict[str, Any]:
    """Examples per second of every accuracy property, ``examples`` examples each."""
    results = {name.removeprefix("test_"): _one(name, examples) for name in PROPERTIES}
    return {
        "examples_per_property": examples,
        "properties": results,
        "total_wall_s": round(sum(r["wall_s"] for r in results.values()), 3),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(20), indent=2))
