"""The ideal delivery, defined once, and the step arithmetic the scheduler is built on.

Delivery is an integral of the effective rate over monotonic time. To keep it exact the
integral is held in nL*ms/day ("nlms"): a rate of R nL/day for T ms adds R*T nlms, and
MS_PER_DAY nlms are one nanolitre. The motor has taken exactly floor(integral / Q) steps,
where Q = step volume * MS_PER_DAY: never ahead of the ideal, never a whole step behind.
Steps fall where the integral crosses a multiple of Q, so they are evenly spread (an
error-accumulator scheduler), and the time of step k is found in closed form.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .units import MS_PER_DAY

__all__ = ["RatePiece", "ideal_nlms", "ideal_volume_nl", "ms_to_reach", "step_quantum_nlms"]


@dataclass(frozen=True)
class RatePiece:
    """A stretch of constant effective rate. A bolus piece has a budget: it delivers at most
    ``budget_nl`` however long it runs."""

    start_ms: int
    stop_ms: int | None
    """None while it is still running."""
    rate_nl_per_day: int
    budget_nl: int | None = None


def ideal_nlms(pieces: Iterable[RatePiece], at_ms: int) -> int:
    """THE ideal delivery: the exact integral of the effective rate up to ``at_ms``, in nlms."""
    total = 0
    for p in pieces:
        end = at_ms if p.stop_ms is None else min(at_ms, p.stop_ms)
        if end <= p.start_ms:
            continue
        amount = p.rate_nl_per_day * (end - p.start_ms)
        if p.budget_nl is not None:
            amount = min(amount, p.budget_nl * MS_PER_DAY)
        total += amount
    return total


def ideal_volume_nl(pieces: Iterable[RatePiece], at_ms: int) -> int:
    """The ideal delivered volume up to ``at_ms``, rounded down to whole nanolitres."""
    return ideal_nlms(pieces, at_ms) // MS_PER_DAY


def step_quantum_nlms(step_volume_nl: int) -> int:
    """Q: the integral one motor step stands for."""
    return step_volume_nl * MS_PER_DAY


def ms_to_reach(from_nlms: int, target_nlms: int, rate_nl_per_day: int) -> int:
    """Whole milliseconds until an integral at ``from_nlms`` growing at ``rate`` reaches
    ``target_nlms`` (0 if already there). The rate must be positive."""
    gap = target_nlms - from_nlms
    if gap <= 0:
        return 0
    return -(-gap // rate_nl_per_day)
