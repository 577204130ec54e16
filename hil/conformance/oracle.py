"""A small model of programming and delivery, written from SPEC.md alone, to judge a target by.

The suite must not trust the model it tests, so this oracle shares nothing with
``firmware_model``: it knows only what SPEC.md says (and protocol_spec's encoding, for tokens).

- **Two-step programming.** One stage slot; STAGE replaces what was staged and changes nothing
  else; its token is the CRC-32 of the STAGE payload; COMMIT with that token applies it and
  empties the slot, with another token it is STAGE_MISMATCH, with nothing staged NOTHING_STAGED
  (both change nothing); ABORT empties the slot.
- **Rates.** CONTINUOUS: ``dose_ng_per_day * 1000 // concentration_ug_per_ml`` (integers;
  SPEC.md does not say how a remainder is rounded, this oracle rounds down); MINIMUM_RATE: the
  drug library's ``min_rate_nl_per_day``; STOPPED: 0. FLEX and SINGLE_BOLUS are not modelled.
- **Delivery.** The ideal delivery is the integral of the rate over the pump's uptime, kept
  exactly in nL*ms/day (a rate of R nL/day for T ms adds R*T; ``MS_PER_DAY`` of them are 1 nL).
  A pump moves whole motor steps of ``step_volume_nl``, so what it commands is within one step
  of the ideal: ``delivery_window_nl`` gives the volumes allowed.
- **Reservoir.** The estimate is filled minus commanded; a refill that aspirates what the pump
  estimates and adds V leaves V.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol_spec import messages as m
from protocol_spec.codec import encode_payload
from protocol_spec.enums import ErrorCode, TherapyMode
from protocol_spec.framing import crc32

__all__ = ["MS_PER_DAY", "ProgrammingOracle", "delivery_window_nl", "rate_nl_per_day", "stage_token"]

MS_PER_DAY = 86_400_000
NG_PER_UG = 1000
"""1 ug/mL = 1 ng/uL = 1000 ng/mL: nL = ng * 1000 / (ug/mL)."""


def rate_nl_per_day(program: m.Program, min_rate_nl_per_day: int) -> int:
    """The basal rate a program delivers (SPEC.md, Therapy modes)."""
    mode = TherapyMode(program.mode)
    if mode is TherapyMode.STOPPED:
        return 0
    if mode is TherapyMode.MINIMUM_RATE:
        return min_rate_nl_per_day
    if mode is TherapyMode.CONTINUOUS:
        return program.dose_ng_per_day * NG_PER_UG // program.concentration_ug_per_ml
    raise ValueError(f"the oracle does not model {mode.name}")


def stage_token(request: object) -> int:
    """A STAGE_* request's token: CRC-32 of its plaintext payload (SPEC.md, Two-step programming)."""
    return crc32(encode_payload(request))


def delivery_window_nl(ideal_nl_ms_per_day: int, step_volume_nl: int) -> tuple[int, int]:
    """The whole volumes (nL) a pump may have commanded when the ideal delivery is
    ``ideal_nl_ms_per_day`` (nL*ms/day): within one motor step of it, either way."""
    step = step_volume_nl * MS_PER_DAY
    low = -(-(ideal_nl_ms_per_day - step) // MS_PER_DAY)
    high = (ideal_nl_ms_per_day + step) // MS_PER_DAY
    return max(0, low), high


@dataclass
class ProgrammingOracle:
    """What the pump must show after each step of a sequence of commands."""

    active: m.Program
    min_rate_nl_per_day: int
    staged: m.StageProgram | None = None
    ideal_since_start: int = 0
    """Ideal delivery since the oracle started, nL*ms/day."""
    ideal_since_refill: int = 0
    """Ideal delivery since the last refill (or the start), nL*ms/day."""
    uptime_ms: int = 0
    """Time the oracle has let pass since it started."""

    @property
    def rate_nl_per_day(self) -> int:
        return rate_nl_per_day(self.active, self.min_rate_nl_per_day)

    @property
    def staged_token(self) -> int | None:
        return stage_token(self.staged) if self.staged is not None else None

    def stage(self, request: m.StageProgram) -> int:
        """STAGE_PROGRAM: the slot now holds ``request``; its token."""
        self.staged = request
        return stage_token(request)

    def commit(self, token: int) -> ErrorCode:
        """COMMIT(token): OK (applied), STAGE_MISMATCH or NOTHING_STAGED (nothing changed)."""
        if self.staged is None:
            return ErrorCode.NOTHING_STAGED
        if token != stage_token(self.staged):
            return ErrorCode.STAGE_MISMATCH
        self.active = self.staged.program
        self.staged = None
        return ErrorCode.OK

    def abort(self) -> None:
        self.staged = None

    def advance(self, delta_ms: int) -> None:
        """``delta_ms`` of uptime pass at the present rate."""
        amount = self.rate_nl_per_day * delta_ms
        self.ideal_since_start += amount
        self.ideal_since_refill += amount
        self.uptime_ms += delta_ms

    def refill(self) -> None:
        """A refill: the estimate starts again from what was added."""
        self.ideal_since_refill = 0

    def delivered_window_nl(self, step_volume_nl: int) -> tuple[int, int]:
        """Volumes the pump may have commanded since the oracle started."""
        return delivery_window_nl(self.ideal_since_start, step_volume_nl)

    def used_since_refill_window_nl(self, step_volume_nl: int) -> tuple[int, int]:
        """Volumes the reservoir estimate may have dropped by since the last refill."""
        return delivery_window_nl(self.ideal_since_refill, step_volume_nl)
