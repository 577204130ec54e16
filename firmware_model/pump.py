"""The virtual pump: reservoir, motor, battery, therapy, alarms and log on a virtual clock.

Time moves only through ``advance(now_ms)``. It jumps from one event that can change the
state to the next (a flex step, a bolus end, the motor step that crosses a reservoir
threshold, ERI, EOS) and in between moves the integral, the motor steps, the reservoir and
the battery in closed form, so the cost grows with events, not with steps.

Commands act at the pump's present time (advance first). A command is checked completely
before anything changes: a refusal raises ``RefusalError`` and leaves the pump as it was.
"""

from __future__ import annotations

import bisect
import copy
import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from protocol_spec.codec import DecodeError, decode_payload, encode_payload
from protocol_spec.enums import (
    AlarmCode,
    AlarmPriority,
    AlarmSet,
    BatteryState,
    BolusKind,
    DrugId,
    ErrorCode,
    FaultKind,
    LogEventKind,
    StageKind,
    TherapyMode,
    alarm_priority,
)
from protocol_spec.messages import DrugLimits, LogEntry, PatientBolusGrant, PatientBolusSettings, Program

from .alarms import ActiveAlarm, AlarmBoard
from .config import PumpConfig
from .delivery import RatePiece, ms_to_reach, step_quantum_nlms
from .errors import CorruptStateError, RefusalError
from .eventlog import EventLog
from .machine import MODE_OF_STATE, RUN_TRIGGER, PumpState, TherapyMachine
from .units import MS_PER_DAY, dose_ng_for_volume, rate_nl_per_day, volume_nl_for_dose

__all__ = ["Bolus", "Plant", "Pump", "PumpStatus", "RefillResult", "TherapyCheck"]

_NEVER = 1 << 62
_DAY = MS_PER_DAY
_BOLUS_RECORDS = 32
"""Boluses remembered one by one for the daily hard limit (older ones are merged)."""


def _dose_up_ng(volume_nl: int, concentration_ug_per_ml: int) -> int:
    """The dose a volume holds, rounded up (what the daily hard limit must count)."""
    return -(-volume_nl * concentration_ug_per_ml // 1000)


# Program field indices, for refusals that name a field (Program's wire order)
_F_MODE, _F_CONC, _F_DOSE, _F_BOLUS_DOSE, _F_BOLUS_MS, _F_CYCLE, _F_STEPS = range(7)


@dataclass
class Bolus:
    """A running bolus. PRIMING and BRIDGE replace the basal rate while they run (they push
    the dead volume); PATIENT adds to it; SINGLE is the single-bolus mode's delivery."""

    kind: BolusKind
    volume_nl: int
    rate_nl_per_day: int
    started_ms: int
    remaining_nlms: int
    replaces_basal: bool


@dataclass(frozen=True)
class TherapyCheck:
    """What an accepted program or bolus will do, as STAGE replies report it."""

    max_dose_ng_per_day: int
    max_rate_nl_per_day: int
    soft_limit_overridden: bool
    soft_limit_ng_per_day: int = 0
    """The (lowest) soft limit the change crosses under override; 0 if none."""


@dataclass(frozen=True)
class Plant:
    """The physical pump: what the firmware cannot see and a reset does not change."""

    true_reservoir_nl: int
    delivered_true_nl: int
    removed_true_nl: int
    filled_total_nl: int
    charge_pc: int


@dataclass(frozen=True)
class RefillResult:
    expected_volume_nl: int
    aspirated_volume_nl: int
    discrepancy_nl: int
    reservoir_estimate_nl: int
    concentration_changed: bool
    bridge_volume_nl: int


@dataclass(frozen=True)
class PumpStatus:
    """A read-only picture of the pump at ``now_ms``."""

    now_ms: int
    wall_clock_ms: int
    state: PumpState
    mode: TherapyMode
    basal_rate_nl_per_day: int
    """What the program asks for now (0 while the motor is held)."""
    effective_rate_nl_per_day: int
    """Basal plus bolus as the motor runs now."""
    bolus_active: BolusKind
    reservoir_estimate_nl: int
    true_reservoir_nl: int
    commanded_nl: int
    """Motor steps times the nominal step volume, since manufacture."""
    delivered_true_nl: int
    steps_total: int
    battery_charge_pc: int
    battery_state: BatteryState
    alarms: AlarmSet
    concentration_ug_per_ml: int
    eri_at_ms: int | None
    eos_at_ms: int | None


@dataclass
class _Segment:
    """Constant total rate from ``start_ms``; the integral was ``start_nlms`` then."""

    start_ms: int
    start_nlms: int
    rate_nl_per_day: int


@dataclass
class _FlexPlan:
    offsets_ms: list[int]
    rates_nl_per_day: list[int]
    cycle_ms: int
    anchor_wall_ms: int


@dataclass
class _Accounts:
    """Everything that only grows or only shrinks, in integer units."""

    integral_nlms: int = 0
    steps_total: int = 0
    estimate_nl: int = 0
    true_reservoir_nl: int = 0
    delivered_true_nl: int = 0
    filled_total_nl: int = 0
    """Every nanolitre ever put in (conservation: true + delivered + removed = filled)."""
    removed_true_nl: int = 0
    """Every nanolitre taken out by aspiration at refills."""
    charge_pc: int = 0
    frames: int = 0


@dataclass
class _Dosing:
    """Dose history for the rolling-24-h increase limit: (from_ms, max dose or None); and for
    the daily hard limit, which bounds any 24 h boluses included: the basal's daily dose as it
    changed, (from_ms, ng/day), and the boluses given, (start_ms, end_ms, ng)."""

    history: list[tuple[int, int | None]] = field(default_factory=list)
    basal: list[tuple[int, int]] = field(default_factory=list)
    boluses: list[tuple[int, int, int]] = field(default_factory=list)

    def note_basal(self, now_ms: int, dose_ng_per_day: int) -> None:
        if not self.basal or self.basal[-1][1] != dose_ng_per_day:
            if self.basal and self.basal[-1][0] == now_ms:
                self.basal.pop()
            self.basal.append((now_ms, dose_ng_per_day))
        cutoff = now_ms - _DAY
        while len(self.basal) > 1 and self.basal[1][0] <= cutoff:
            self.basal.pop(0)

    def add_bolus(self, start_ms: int, end_ms: int, dose_ng: int) -> None:
        """Record a bolus; beyond ``_BOLUS_RECORDS`` the two oldest merge into one that ends with
        the later (bounded memory, and never less dose counted for any window)."""
        self.boluses.append((start_ms, end_ms, dose_ng))
        if len(self.boluses) > _BOLUS_RECORDS:
            (s0, e0, d0), (_s1, e1, d1) = self.boluses[0], self.boluses[1]
            self.boluses[:2] = [(s0, max(e0, e1), d0 + d1)]

    def in_last_day(self, now_ms: int) -> tuple[int, int]:
        """(the highest basal daily dose that ran in the last 24 h, the boluses that may
        have delivered in it, ng)."""
        cutoff = now_ms - _DAY
        self.boluses = [b for b in self.boluses if b[1] > cutoff]
        while len(self.basal) > 1 and self.basal[1][0] <= cutoff:  # the one in effect at the cutoff stays
            self.basal.pop(0)
        return max((d for _, d in self.basal), default=0), sum(b[2] for b in self.boluses)


class Pump:
    """The implanted pump's firmware, pure and on virtual time."""

    def __init__(self, config: PumpConfig | None = None, *, wall_clock_ms: int = 0, record_rates: bool = False) -> None:
        self.config = cfg = config if config is not None else PumpConfig()
        self.now_ms = 0
        self._wall_offset_ms = wall_clock_ms
        self._fsm = TherapyMachine()
        self.program = Program(TherapyMode.STOPPED, 0, 0, 0, 0, 0, ())
        self.drug = DrugId.NONE
        self.concentration_ug_per_ml = 0
        self.acc = _Accounts(charge_pc=cfg.battery.capacity_pc)
        self.alarms = AlarmBoard(cfg.critical_repeat_ms, cfg.non_critical_repeat_ms)
        self.low_reservoir_threshold_nl = cfg.low_reservoir_threshold_nl
        self.limits = cfg.limits
        self.catheter_volume_nl = cfg.catheter_volume_nl
        self.last_refill_ms = 0
        self.log = EventLog(cfg.event_log_capacity)
        self.bolus: Bolus | None = None
        self.patient_bolus = PatientBolusSettings(0, 0, 0, 0, 0)
        self._patient_starts: deque[int] = deque()
        self._dosing = _Dosing()
        self._loaded = False
        self._continuous_rate = 0
        self._flex: _FlexPlan | None = None
        self.eri_at_ms: int | None = None
        self.eos_at_ms: int | None = None
        self._q = step_quantum_nlms(cfg.step_volume_nl)
        self._true_step_nl = cfg.step_volume_nl + cfg.stroke_error_nl_per_step
        self._basal_eff = 0
        self._bolus_eff = 0
        self._next_event_ms = _NEVER
        self._eri_due_ms = _NEVER
        self._eos_due_ms = _NEVER
        self._segments: deque[_Segment] = deque([_Segment(0, 0, 0)])
        self.rate_pieces: list[RatePiece] | None = [] if record_rates else None
        self._open_basal: RatePiece | None = None
        self.events_processed = 0
        self._bridge_rate_nl_per_day = 0
        self._bridge_concentration = 0
        self._stall_since_ms = 0
        self._replan()

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> PumpState:
        return self._fsm.state

    @property
    def mode(self) -> TherapyMode:
        return MODE_OF_STATE[self._fsm.state]

    @property
    def wall_clock_ms(self) -> int:
        return self.now_ms + self._wall_offset_ms

    @property
    def battery_state(self) -> BatteryState:
        if self.eos_at_ms is not None:
            return BatteryState.EOS
        return BatteryState.ERI if self.eri_at_ms is not None else BatteryState.OK

    def status(self) -> PumpStatus:
        a = self.acc
        return PumpStatus(
            now_ms=self.now_ms,
            wall_clock_ms=self.wall_clock_ms,
            state=self.state,
            mode=self.mode,
            basal_rate_nl_per_day=0 if self._held() else self._program_rate_now(),
            effective_rate_nl_per_day=self._basal_eff + self._bolus_eff,
            bolus_active=self.bolus.kind if self.bolus is not None else BolusKind.NONE,
            reservoir_estimate_nl=a.estimate_nl,
            true_reservoir_nl=a.true_reservoir_nl,
            commanded_nl=a.steps_total * self.config.step_volume_nl,
            delivered_true_nl=a.delivered_true_nl,
            steps_total=a.steps_total,
            battery_charge_pc=a.charge_pc,
            battery_state=self.battery_state,
            alarms=self.alarms.as_set(),
            concentration_ug_per_ml=self.concentration_ug_per_ml,
            eri_at_ms=self.eri_at_ms,
            eos_at_ms=self.eos_at_ms,
        )

    def therapy_digest(self) -> tuple[object, ...]:
        """Everything a refused command must leave unchanged."""
        a = self.acc
        return (
            self.now_ms,
            self._wall_offset_ms,
            self.state,
            self.program,
            self.drug,
            self.concentration_ug_per_ml,
            (a.integral_nlms, a.steps_total, a.estimate_nl, a.true_reservoir_nl, a.delivered_true_nl),
            (a.filled_total_nl, a.removed_true_nl, a.charge_pc, a.frames),
            None if self.bolus is None else (self.bolus.kind, self.bolus.remaining_nlms, self.bolus.rate_nl_per_day),
            self.patient_bolus,
            tuple(self._patient_starts),
            tuple(self._dosing.history),
            {c: (x.raised_ms, x.acknowledged, x.silenced_until_ms) for c, x in self.alarms.active.items()},
            self.low_reservoir_threshold_nl,
            (self.alarms.critical_repeat_ms, self.alarms.non_critical_repeat_ms),
            self.log.next_seq,
            (self._basal_eff, self._bolus_eff, self._next_event_ms),
        )

    def step_times(self, first_step: int, max_items: int) -> list[int]:
        """Times (uptime ms) of steps ``first_step`` .. (0-based, since manufacture), computed
        from the rate segments the pump keeps for its last ``step_log_capacity`` steps."""
        q = self._q
        out: list[int] = []
        segs = list(self._segments)
        k = max(first_step, self.oldest_logged_step)
        while k < self.acc.steps_total and len(out) < max_items:
            target = (k + 1) * q
            i = len(segs) - 1
            while i > 0 and segs[i].start_nlms >= target:
                i -= 1
            seg = segs[i]
            out.append(seg.start_ms + ms_to_reach(seg.start_nlms, target, seg.rate_nl_per_day))
            k += 1
        return out

    @property
    def oldest_logged_step(self) -> int:
        """The first step whose time ``step_times`` can still give."""
        return max(0, self.acc.steps_total - self.config.step_log_capacity, self._segments[0].start_nlms // self._q)

    # ------------------------------------------------------------------ time

    def advance(self, now_ms: int) -> None:
        """Move virtual time forward to ``now_ms`` (uptime, ms), handling every event on the way."""
        if now_ms < self.now_ms:
            raise ValueError(f"time runs forward only: {now_ms} < {self.now_ms}")
        while self._next_event_ms <= now_ms:
            self._integrate_to(self._next_event_ms)
            self._on_event()
        self._integrate_to(now_ms)

    def next_event_ms(self) -> int | None:
        """When the next state-changing event falls due (None: nothing will ever change)."""
        return None if self._next_event_ms >= _NEVER else self._next_event_ms

    def _integrate_to(self, t: int) -> None:
        dt = t - self.now_ms
        if dt <= 0:
            return
        a = self.acc
        added = self._basal_eff * dt
        bolus = self.bolus
        if self._bolus_eff and bolus is not None:
            b = min(bolus.remaining_nlms, self._bolus_eff * dt)
            bolus.remaining_nlms -= b
            added += b
        if added:
            a.integral_nlms += added
            new_steps = a.integral_nlms // self._q - a.steps_total
            if new_steps:
                a.steps_total += new_steps
                a.estimate_nl -= new_steps * self.config.step_volume_nl
                moved = min(new_steps * self._true_step_nl, a.true_reservoir_nl)
                a.true_reservoir_nl -= moved
                a.delivered_true_nl += moved
                a.charge_pc -= new_steps * self.config.battery.step_pc
        a.charge_pc = max(0, a.charge_pc - self.config.battery.quiescent_pc_per_ms * dt)
        self.now_ms = t

    def _on_event(self) -> None:
        self.events_processed += 1
        bolus = self.bolus
        if bolus is not None and bolus.remaining_nlms == 0:
            self._end_bolus(LogEventKind.BOLUS_COMPLETED)
        self._check_reservoir_alarms()
        if self.eri_at_ms is None and self.now_ms >= self._eri_due_ms:
            self.eri_at_ms = self.now_ms
            self._raise(AlarmCode.ERI)
        if self.eos_at_ms is None and self.now_ms >= self._eos_due_ms:
            self._end_of_service()
        self._replan()

    # ------------------------------------------------------------------ planning

    def _held(self) -> bool:
        active = self.alarms.active
        return (
            not self._loaded  # never filled: nothing to pump
            or AlarmCode.EMPTY_RESERVOIR in active
            or AlarmCode.MOTOR_STALL in active
            or self._fsm.state is PumpState.END_OF_SERVICE
        )

    def _program_rate_now(self) -> int:
        st = self._fsm.state
        if st is PumpState.CONTINUOUS:
            return self._continuous_rate
        if st is PumpState.FLEX:
            plan = self._flex
            assert plan is not None
            pos = (self.wall_clock_ms - plan.anchor_wall_ms) % plan.cycle_ms
            return plan.rates_nl_per_day[bisect.bisect_right(plan.offsets_ms, pos) - 1]
        if st is PumpState.MINIMUM_RATE:
            return self.limits.min_rate_nl_per_day
        return 0

    def _program_peak_rate(self) -> int:
        """The present program's highest basal rate: what ERI assumes the therapy will be."""
        st = self._fsm.state
        if st is PumpState.FLEX:
            assert self._flex is not None
            return max(self._flex.rates_nl_per_day)
        return self._program_rate_now() if st is not PumpState.SINGLE_BOLUS else 0

    def _replan(self) -> None:
        """Recompute the effective rates and when the next event falls due."""
        held = self._held()
        bolus = self.bolus
        basal = 0 if held or (bolus is not None and bolus.replaces_basal) else self._program_rate_now()
        bolus_rate = bolus.rate_nl_per_day if bolus is not None and not held else 0
        self._record_rates(basal)
        self._basal_eff, self._bolus_eff = basal, bolus_rate
        rate = basal + bolus_rate
        now = self.now_ms
        a = self.acc
        q = self._q
        segs = self._segments
        last = segs[-1]
        # a new segment when the rate changes, or when the integral left the last one's line (a
        # bolus's final millisecond delivers only the rest of its budget)
        if last.rate_nl_per_day != rate or last.start_nlms + last.rate_nl_per_day * (now - last.start_ms) != (
            a.integral_nlms
        ):
            if segs[-1].start_ms == now:
                segs.pop()
            segs.append(_Segment(now, a.integral_nlms, rate))
            floor_nlms = (a.steps_total - self.config.step_log_capacity) * q
            while len(segs) > 1 and segs[1].start_nlms <= floor_nlms:
                segs.popleft()
        nxt = _NEVER
        if self._fsm.state is PumpState.FLEX:
            plan = self._flex
            assert plan is not None
            pos = (self.wall_clock_ms - plan.anchor_wall_ms) % plan.cycle_ms
            i = bisect.bisect_right(plan.offsets_ms, pos)
            boundary = plan.offsets_ms[i] if i < len(plan.offsets_ms) else plan.offsets_ms[0] + plan.cycle_ms
            nxt = now + boundary - pos
        if bolus_rate and bolus is not None:
            nxt = min(nxt, now + ms_to_reach(0, bolus.remaining_nlms, bolus_rate))
        if rate and self._loaded:
            step = self.config.step_volume_nl
            est = a.estimate_nl
            ks = [est // step]  # the step after which less than one step is left: EMPTY
            if AlarmCode.LOW_RESERVOIR not in self.alarms.active:
                ks.append(-(-(est - self.low_reservoir_threshold_nl) // step))
            k = min(x for x in ks if x >= 1) if any(x >= 1 for x in ks) else 0
            if k:
                nxt = min(nxt, now + ms_to_reach(a.integral_nlms, (a.steps_total + k) * q, rate))
        self._plan_battery(rate)
        self._next_event_ms = min(nxt, self._eri_due_ms, self._eos_due_ms)
        self._dosing.note_basal(now, self._basal_dose_ng_per_day())

    def _plan_battery(self, rate: int) -> None:
        """ERI and EOS times from the drain at the present rate, taken continuously (steps
        as their exact fraction), so each is due within one step's charge of its threshold."""
        if self.eos_at_ms is not None:
            self._eri_due_ms = self._eos_due_ms = _NEVER
            return
        b = self.config.battery
        a = self.acc
        q = self._q
        drain_per_ms_q = b.quiescent_pc_per_ms * q + b.step_pc * rate  # pC per ms, times Q
        fraction_pc_q = b.step_pc * (a.integral_nlms - a.steps_total * q)

        def due(charge_to_spend_pc: int) -> int:
            if charge_to_spend_pc <= 0:
                return self.now_ms
            return self.now_ms + ms_to_reach(fraction_pc_q, charge_to_spend_pc * q, drain_per_ms_q)

        self._eos_due_ms = due(a.charge_pc)
        if self.eri_at_ms is None:
            peak_q = b.quiescent_pc_per_ms * q + b.step_pc * self._program_peak_rate()
            keep_pc = b.eri_window_ms * peak_q // q
            self._eri_due_ms = due(a.charge_pc - keep_pc)
        else:
            self._eri_due_ms = _NEVER

    def _record_rates(self, basal: int) -> None:
        """Keep the rate pieces the ideal delivery is computed from (tests only)."""
        pieces = self.rate_pieces
        if pieces is None:
            return
        open_piece = self._open_basal
        if open_piece is not None and open_piece.rate_nl_per_day == basal:
            return
        if open_piece is not None:
            pieces[pieces.index(open_piece)] = RatePiece(open_piece.start_ms, self.now_ms, open_piece.rate_nl_per_day)
        self._open_basal = RatePiece(self.now_ms, None, basal)
        pieces.append(self._open_basal)

    # ------------------------------------------------------------------ alarms

    def _raise(self, code: AlarmCode) -> None:
        if self.alarms.is_active(code):
            return
        self.alarms.active[code] = ActiveAlarm(code, self.now_ms)
        self._log(LogEventKind.ALARM_RAISED, code, int(self.alarms.as_set()))
        if alarm_priority(code) is AlarmPriority.CRITICAL and self.bolus is not None:
            self._end_bolus(LogEventKind.BOLUS_INTERRUPTED)

    def _clear(self, code: AlarmCode) -> None:
        if self.alarms.active.pop(code, None) is not None:
            self._log(LogEventKind.ALARM_CLEARED, code, int(self.alarms.as_set()))
            if code is AlarmCode.MOTOR_STALL:
                self._log(LogEventKind.STALL_RECOVERED, code, self.now_ms - self._stall_since_ms)

    def _check_reservoir_alarms(self) -> None:
        if not self._loaded:
            return
        est = self.acc.estimate_nl
        if est <= self.low_reservoir_threshold_nl:
            self._raise(AlarmCode.LOW_RESERVOIR)
        else:
            self._clear(AlarmCode.LOW_RESERVOIR)
        if est < self.config.step_volume_nl:
            self._raise(AlarmCode.EMPTY_RESERVOIR)
        else:
            self._clear(AlarmCode.EMPTY_RESERVOIR)

    def _end_of_service(self) -> None:
        self.eos_at_ms = self.now_ms
        if self.eri_at_ms is None:
            self.eri_at_ms = self.now_ms
            self._raise(AlarmCode.ERI)
        self._fsm.fire("end_of_service")
        self._raise(AlarmCode.EOS)

    def _log(self, kind: LogEventKind, code: int = 0, a: int = 0, b: int = 0) -> None:
        self.log.add(self.now_ms, max(0, self.wall_clock_ms), kind, code, a, b)

    # ------------------------------------------------------------------ boluses

    def _start_bolus(self, kind: BolusKind, volume_nl: int, rate: int) -> None:
        self.bolus = Bolus(kind, volume_nl, rate, self.now_ms, volume_nl * MS_PER_DAY, kind in _REPLACES_BASAL)
        if not self._is_old_dose_bridge(kind, rate):
            end_ms = self.now_ms + -(-volume_nl * MS_PER_DAY // rate)
            self._dosing.add_bolus(self.now_ms, end_ms, _dose_up_ng(volume_nl, self.concentration_ug_per_ml))
        self._log(LogEventKind.BOLUS_STARTED, kind, volume_nl, -(-volume_nl * MS_PER_DAY // rate))
        if self.rate_pieces is not None:
            self.rate_pieces.append(RatePiece(self.now_ms, None, rate, volume_nl))

    def _end_bolus(self, how: LogEventKind) -> None:
        bolus = self.bolus
        assert bolus is not None
        delivered_nl = (bolus.volume_nl * MS_PER_DAY - bolus.remaining_nlms) // MS_PER_DAY
        self.bolus = None
        records = self._dosing.boluses
        if records and records[-1][0] == bolus.started_ms:
            # what it delivered, when it ended (the planned end and dose were counted so far)
            delivered_ng = _dose_up_ng(delivered_nl + 1, self.concentration_ug_per_ml)
            records[-1] = (bolus.started_ms, self.now_ms, min(records[-1][2], delivered_ng))
        if how is LogEventKind.BOLUS_INTERRUPTED:
            self._log(how, bolus.kind, delivered_nl, bolus.volume_nl - delivered_nl)
        else:
            self._log(how, bolus.kind, delivered_nl)
        if self.rate_pieces is not None:
            pieces = self.rate_pieces
            for i in range(len(pieces) - 1, -1, -1):
                p = pieces[i]
                if p.budget_nl is not None and p.stop_ms is None:
                    pieces[i] = RatePiece(p.start_ms, self.now_ms, p.rate_nl_per_day, p.budget_nl)
                    break
        if bolus.kind is BolusKind.SINGLE and self._fsm.state is PumpState.SINGLE_BOLUS:
            self._fsm.fire("single_bolus_done")
            self.program = Program(TherapyMode.STOPPED, 0, 0, 0, 0, 0, ())
            self._note_dose(None)

    def _bolus_rate(self, volume_nl: int, duration_ms: int, field_volume: int, field_duration: int) -> int:
        if volume_nl < 1:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, "a bolus needs a volume", field=field_volume, lo=1, hi=1 << 32)
        if duration_ms < 1:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, "a bolus needs a duration", field=field_duration, lo=1)
        rate = volume_nl * MS_PER_DAY // duration_ms
        top = self.config.max_bolus_rate_nl_per_day
        if not 1 <= rate <= top:
            # the range of the duration field for this volume: no faster than the fastest bolus
            # the motor runs, no slower than 1 nL/day
            raise RefusalError(
                ErrorCode.OUT_OF_RANGE,
                f"bolus rate {rate} nL/day is outside [1, {top}]",
                field=field_duration,
                lo=-(-volume_nl * MS_PER_DAY // top),
                hi=min(volume_nl * MS_PER_DAY, (1 << 32) - 1),
            )
        return rate

    def _is_old_dose_bridge(self, kind: BolusKind, rate_nl_per_day: int) -> bool:
        """A BRIDGE no faster than the basal ran before the concentration changed: it delivers the
        old dose in the basal's place and adds none (a faster one is a bolus like any other)."""
        return kind is BolusKind.BRIDGE and 0 < rate_nl_per_day <= self._bridge_rate_nl_per_day

    def _basal_dose_ng_per_day(self) -> int:
        """The daily dose the basal program delivers (its highest, for FLEX), whatever holds it."""
        st = self._fsm.state
        if st is PumpState.CONTINUOUS:
            return self.program.dose_ng_per_day
        if st is PumpState.FLEX:
            return max(step.dose_ng_per_day for step in self.program.steps)
        if st is PumpState.MINIMUM_RATE:
            return _dose_up_ng(self.limits.min_rate_nl_per_day, self.concentration_ug_per_ml)
        return 0

    def _check_daily_dose(self, *, basal_ng_per_day: int = 0, bolus_ng: int = 0, field: int = 255) -> None:
        """The hard limit bounds the dose of any 24 h, boluses included. Checked conservatively
        before each bolus and program: the highest basal daily dose that ran in the last 24 h or
        is asked for, plus every bolus that may have delivered in the last 24 h, plus the one asked
        for. Any 24 h window then holds at most the hard limit (the latest thing started in it
        was checked against everything else in it); the motor adds at most one step."""
        hard = self.limits.hard_limit_ng_per_day
        basal, boluses = self._dosing.in_last_day(self.now_ms)
        basal = max(basal, basal_ng_per_day, self._basal_dose_ng_per_day())
        if basal + boluses + bolus_ng > hard:
            raise RefusalError(
                ErrorCode.HARD_LIMIT,
                f"{basal} ng/day of basal, {boluses} ng of boluses in the last 24 h and {bolus_ng} ng more "
                f"exceed the hard limit of {hard} ng in any 24 h",
                field=field,
                hi=hard,
            )

    def _refuse_bolus_now(self) -> None:
        if self._fsm.state is PumpState.END_OF_SERVICE or self.alarms.critical_active:
            raise RefusalError(ErrorCode.ALARM_ACTIVE, "no bolus starts while a critical alarm is active")
        if self.bolus is not None:
            raise RefusalError(ErrorCode.BUSY, f"a {self.bolus.kind.name} bolus is running")
        if not self._loaded or self.concentration_ug_per_ml == 0:
            raise RefusalError(ErrorCode.CONCENTRATION_MISMATCH, "the reservoir holds no drug")

    def check_bolus(self, kind: BolusKind, volume_nl: int, duration_ms: int) -> TherapyCheck:
        """Check a PRIMING or BRIDGE bolus without starting it (fields as in STAGE_BOLUS)."""
        if kind not in (BolusKind.PRIMING, BolusKind.BRIDGE):
            raise RefusalError(ErrorCode.OUT_OF_RANGE, "STAGE_BOLUS starts PRIMING or BRIDGE", field=0, lo=1, hi=2)
        self._refuse_bolus_now()
        rate = self._bolus_rate(volume_nl, duration_ms, 2, 3)
        # what reaches the patient first is the drug in the tubing and catheter: after a
        # concentration change, a bridge delivers the old drug
        conc = self._bridge_concentration if kind is BolusKind.BRIDGE and self._bridge_concentration else None
        conc = conc or self.concentration_ug_per_ml
        dose = dose_ng_for_volume(volume_nl, conc)
        if not self._is_old_dose_bridge(kind, rate):
            top = self.limits.max_bolus_ng
            if dose > top:
                raise RefusalError(ErrorCode.HARD_LIMIT, f"bolus of {dose} ng exceeds {top} ng", field=2, hi=top)
            self._check_daily_dose(bolus_ng=_dose_up_ng(volume_nl, conc), field=2)
        return TherapyCheck(dose_ng_for_volume(rate, conc), rate, soft_limit_overridden=False)

    def start_bolus(self, kind: BolusKind, volume_nl: int, duration_ms: int, *, token: int = 0) -> TherapyCheck:
        """Start a PRIMING or BRIDGE bolus; the basal program is not changed."""
        check = self.check_bolus(kind, volume_nl, duration_ms)
        self._log(LogEventKind.PROGRAM_COMMITTED, StageKind.BOLUS, token, check.max_dose_ng_per_day)
        self._start_bolus(kind, volume_nl, check.max_rate_nl_per_day)
        self._replan()
        return check

    def bridge_plan(self) -> tuple[int, int] | None:
        """After a refill that changed the concentration: the BRIDGE bolus (volume, duration)
        that pushes the old drug out of the pump tubing and the catheter at the rate the basal
        ran before the refill, so the patient keeps the old dose until the new concentration
        arrives. None if the last refill changed nothing or no basal was running. Start it
        with ``start_bolus(BolusKind.BRIDGE, volume, duration)``; it replaces the basal rate
        while it runs, then the program continues at the new concentration."""
        rate = self._bridge_rate_nl_per_day
        if not rate:
            return None
        volume = self.catheter_volume_nl + self.config.tubing_volume_nl
        return volume, -(-volume * MS_PER_DAY // rate)

    def cancel_bolus(self) -> bool:
        """Stop a running supplemental bolus (True if one was running)."""
        if self.bolus is None or self.bolus.kind is BolusKind.SINGLE:
            return False
        self._end_bolus(LogEventKind.BOLUS_INTERRUPTED)
        self._replan()
        return True

    def set_patient_bolus(self, settings: PatientBolusSettings, *, token: int = 0) -> TherapyCheck:
        """Configure the patient-activated bolus (the clinician's limits for the patient)."""
        check = self.check_patient_bolus(settings)
        self._log(LogEventKind.PROGRAM_COMMITTED, StageKind.PATIENT_BOLUS_SETTINGS, token, check.max_dose_ng_per_day)
        self.patient_bolus = settings
        self._replan()
        return check

    def check_patient_bolus(self, settings: PatientBolusSettings) -> TherapyCheck:
        """Check patient-bolus settings without applying them."""
        top = self.limits.max_bolus_ng
        if settings.dose_ng > top:
            raise RefusalError(ErrorCode.HARD_LIMIT, f"{settings.dose_ng} ng exceeds {top} ng", field=1, hi=top)
        rate = 0
        if settings.enabled:
            if self.concentration_ug_per_ml == 0:
                raise RefusalError(ErrorCode.CONCENTRATION_MISMATCH, "the reservoir holds no drug")
            if settings.max_per_24h < 1:
                raise RefusalError(ErrorCode.OUT_OF_RANGE, "allow at least one bolus a day", field=4, lo=1, hi=255)
            volume = volume_nl_for_dose(settings.dose_ng, self.concentration_ug_per_ml)
            rate = self._bolus_rate(volume, settings.duration_ms, 1, 2)
        return TherapyCheck(settings.dose_ng * settings.max_per_24h, rate, soft_limit_overridden=False)

    def request_patient_bolus(self) -> PatientBolusGrant:
        """The patient presses the button: a grant, or a refusal saying why."""
        s = self.patient_bolus
        if not s.enabled:
            raise RefusalError(ErrorCode.NOT_SUPPORTED, "patient boluses are not enabled")
        self._refuse_bolus_now()
        now = self.now_ms
        starts = [t for t in self._patient_starts if t > now - _DAY]
        last = self._patient_starts[-1] if self._patient_starts else None  # a lockout may exceed 24 h
        if last is not None and now < last + s.lockout_ms:
            wait = last + s.lockout_ms
            raise RefusalError(ErrorCode.BOLUS_LOCKOUT, f"locked out until {wait} ms", retry_after_ms=wait - now)
        if len(starts) >= s.max_per_24h:
            raise RefusalError(ErrorCode.BOLUS_DAILY_MAX, f"{len(starts)} boluses in 24 h", hi=s.max_per_24h)
        self._check_daily_dose(bolus_ng=s.dose_ng)
        volume = volume_nl_for_dose(s.dose_ng, self.concentration_ug_per_ml)
        rate = self._bolus_rate(volume, s.duration_ms, 1, 2)
        self._patient_starts = deque([*starts, now])
        self._start_bolus(BolusKind.PATIENT, volume, rate)
        self._replan()
        next_allowed = max(
            now + s.lockout_ms, self._patient_starts[0] + _DAY if len(starts) + 1 >= s.max_per_24h else 0
        )
        return PatientBolusGrant(s.dose_ng, s.duration_ms, next_allowed, s.max_per_24h - len(starts) - 1)

    # ------------------------------------------------------------------ programs

    def check_program(self, program: Program, override_soft_limits: bool = False) -> TherapyCheck:
        """Check a program against the drug library and the pump without applying it."""
        return self._check(program, override_soft_limits)[0]

    def _check(
        self, program: Program, override: bool, *, dose_history: bool = True
    ) -> tuple[TherapyCheck, _FlexPlan | None, int]:
        """``dose_history`` False: the program alone against the library (a new library for the
        running program), not what the last 24 h delivered."""
        lim = self.limits
        if self._fsm.state is PumpState.END_OF_SERVICE:
            raise RefusalError(ErrorCode.ALARM_ACTIVE, "the battery is at end of service")
        mode = program.mode
        _require_unused(program)
        if mode in (TherapyMode.STOPPED, TherapyMode.MINIMUM_RATE):
            rate = lim.min_rate_nl_per_day if mode is TherapyMode.MINIMUM_RATE else 0
            return TherapyCheck(0, rate, soft_limit_overridden=False), None, rate
        conc = program.concentration_ug_per_ml
        if self.concentration_ug_per_ml == 0 or conc != self.concentration_ug_per_ml:
            raise RefusalError(
                ErrorCode.CONCENTRATION_MISMATCH,
                f"program says {conc} ug/mL, the reservoir holds {self.concentration_ug_per_ml} ug/mL",
                field=_F_CONC,
                lo=self.concentration_ug_per_ml,
                hi=self.concentration_ug_per_ml,
            )
        if mode is TherapyMode.SINGLE_BOLUS:
            if self.alarms.critical_active:
                raise RefusalError(ErrorCode.ALARM_ACTIVE, "no bolus starts while a critical alarm is active")
            if self.bolus is not None and self.bolus.kind is not BolusKind.SINGLE:
                raise RefusalError(ErrorCode.BUSY, f"a {self.bolus.kind.name} bolus is running")
            if not 1 <= program.bolus_dose_ng <= lim.max_bolus_ng:
                raise RefusalError(
                    ErrorCode.HARD_LIMIT, "single bolus dose", field=_F_BOLUS_DOSE, lo=1, hi=lim.max_bolus_ng
                )
            if dose_history:
                self._check_daily_dose(bolus_ng=program.bolus_dose_ng, field=_F_BOLUS_DOSE)
            volume = volume_nl_for_dose(program.bolus_dose_ng, conc)
            rate = self._bolus_rate(volume, program.bolus_duration_ms, _F_BOLUS_DOSE, _F_BOLUS_MS)
            dose_rate = program.bolus_dose_ng * MS_PER_DAY // program.bolus_duration_ms
            return TherapyCheck(dose_rate, rate, soft_limit_overridden=False), None, rate
        plan: _FlexPlan | None = None
        if mode is TherapyMode.CONTINUOUS:
            doses = [program.dose_ng_per_day]
            dose_field = _F_DOSE
        else:
            plan = self._flex_plan(program)
            doses = [s.dose_ng_per_day for s in program.steps]
            dose_field = _F_STEPS
        rates = []
        for dose in doses:
            if dose > lim.hard_limit_ng_per_day:
                raise RefusalError(
                    ErrorCode.HARD_LIMIT,
                    f"{dose} ng/day exceeds the hard limit",
                    field=dose_field,
                    hi=lim.hard_limit_ng_per_day,
                )
            rate = rate_nl_per_day(dose, conc)
            if not lim.min_rate_nl_per_day <= rate <= lim.max_rate_nl_per_day:
                raise RefusalError(  # the range of the dose field: doses whose rates are programmable
                    ErrorCode.OUT_OF_RANGE,
                    f"{dose} ng/day at {conc} ug/mL is {rate} nL/day, outside "
                    f"[{lim.min_rate_nl_per_day}, {lim.max_rate_nl_per_day}] nL/day",
                    field=dose_field,
                    lo=-(-lim.min_rate_nl_per_day * conc // 1000),
                    hi=((lim.max_rate_nl_per_day + 1) * conc - 1) // 1000,
                )
            rates.append(rate)
        top = max(doses)
        if dose_history:
            self._check_daily_dose(basal_ng_per_day=top, field=dose_field)
        crossed = 0
        if top > lim.soft_limit_ng_per_day:
            crossed = lim.soft_limit_ng_per_day
            if not override:
                raise RefusalError(
                    ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE,
                    f"{top} ng/day is above the soft limit",
                    field=dose_field,
                    hi=lim.soft_limit_ng_per_day,
                )
        baseline = self._dose_baseline()
        if baseline is not None:
            allowed = baseline * (1000 + lim.soft_increase_permille_per_24h) // 1000
            if top > allowed:
                crossed = min(crossed, allowed) if crossed else allowed
                if not override:
                    raise RefusalError(
                        ErrorCode.SOFT_LIMIT_NEEDS_OVERRIDE,
                        f"{top} ng/day raises the running {baseline} ng/day by more than "
                        f"{lim.soft_increase_permille_per_24h} permille in 24 h",
                        field=dose_field,
                        hi=allowed,
                    )
        if plan is not None:
            plan.rates_nl_per_day = rates
        return TherapyCheck(top, max(rates), bool(crossed), crossed), plan, rates[0]

    def _flex_plan(self, program: Program) -> _FlexPlan:
        cycle = program.cycle_days
        if not 1 <= cycle <= 7:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, "flex cycle", field=_F_CYCLE, lo=1, hi=7)
        if not program.steps:
            raise RefusalError(
                ErrorCode.OUT_OF_RANGE, "a flex program needs steps", field=_F_STEPS, lo=1, hi=13 * cycle
            )
        offsets = [s.day * _DAY + s.start_ms_of_day for s in program.steps]
        if offsets[0] != 0:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, "the first flex step starts on day 0 at 0 ms", field=_F_STEPS)
        if any(b <= a for a, b in itertools.pairwise(offsets)):
            raise RefusalError(ErrorCode.OUT_OF_RANGE, "flex steps must be in strictly increasing time", field=_F_STEPS)
        for day in range(7):
            n = sum(1 for s in program.steps if s.day == day)
            if n > 13 or (n and day >= cycle):
                raise RefusalError(
                    ErrorCode.OUT_OF_RANGE, f"day {day}: {n} steps (at most 13, days < cycle)", field=_F_STEPS, hi=13
                )
        wall = self.wall_clock_ms
        return _FlexPlan(offsets, [], cycle * _DAY, wall - wall % _DAY)

    def commit_program(self, program: Program, override_soft_limits: bool = False, *, token: int = 0) -> TherapyCheck:
        """Check and apply a basal program at once (after STAGE, at COMMIT)."""
        check, plan, rate = self._check(program, override_soft_limits)
        if self.bolus is not None and self.bolus.kind is BolusKind.SINGLE:
            self._end_bolus(LogEventKind.BOLUS_INTERRUPTED)
        self._fsm.fire(RUN_TRIGGER[program.mode])
        self.program = program
        for code in (AlarmCode.LOW_BATTERY_RESET, AlarmCode.MEMORY_ERROR):
            self._clear(code)  # the safe state ends when a clinician reprograms
        self._flex = plan
        self._continuous_rate = rate if program.mode is TherapyMode.CONTINUOUS else 0
        self._log(LogEventKind.PROGRAM_COMMITTED, StageKind.PROGRAM, token, check.max_dose_ng_per_day)
        if check.soft_limit_overridden:
            self._log(
                LogEventKind.SOFT_LIMIT_OVERRIDE,
                StageKind.PROGRAM,
                check.max_dose_ng_per_day,
                check.soft_limit_ng_per_day,
            )
        if program.mode is TherapyMode.SINGLE_BOLUS:
            self._start_bolus(
                BolusKind.SINGLE, volume_nl_for_dose(program.bolus_dose_ng, self.concentration_ug_per_ml), rate
            )
        running = program.mode in (TherapyMode.CONTINUOUS, TherapyMode.FLEX)
        self._note_dose(check.max_dose_ng_per_day if running else None)
        self._replan()
        return check

    def _note_dose(self, dose: int | None) -> None:
        hist = self._dosing.history
        hist.append((self.now_ms, dose))
        cutoff = self.now_ms - _DAY
        while len(hist) > 1 and hist[1][0] <= cutoff:
            hist.pop(0)

    def _dose_baseline(self) -> int | None:
        """The lowest running daily dose in the last 24 h (None if nothing ran)."""
        cutoff = self.now_ms - _DAY
        hist = self._dosing.history
        doses = [
            d for i, (t, d) in enumerate(hist) if d is not None and (i + 1 == len(hist) or hist[i + 1][0] > cutoff)
        ]
        return min(doses) if doses else None

    # ------------------------------------------------------------------ refill, alarms, clock

    def refill(
        self,
        aspirated_volume_nl: int,
        added_volume_nl: int,
        concentration_ug_per_ml: int,
        drug: DrugId = DrugId.BACLOFEN,
        catheter_volume_nl: int | None = None,
    ) -> RefillResult:
        """Empty the reservoir (by aspiration) and fill it with ``added_volume_nl`` of a drug.
        ``catheter_volume_nl``, if given, records a revised catheter (for priming and bridges)."""
        cap = self.config.reservoir_capacity_nl
        if not 1 <= added_volume_nl <= cap:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, "added volume", field=1, lo=1, hi=cap)
        allowed = [c.ug_per_ml for c in self.limits.concentrations]
        if concentration_ug_per_ml not in allowed or drug is not self.limits.drug:
            raise RefusalError(
                ErrorCode.OUT_OF_RANGE,
                f"{drug.name} at {concentration_ug_per_ml} ug/mL is not in the drug library ({allowed})",
                field=3,
                lo=min(allowed),
                hi=max(allowed),
            )
        if self._fsm.state is PumpState.END_OF_SERVICE:
            raise RefusalError(ErrorCode.ALARM_ACTIVE, "the battery is at end of service")
        if self.bolus is not None:
            raise RefusalError(ErrorCode.BUSY, f"a {self.bolus.kind.name} bolus is running")
        changed = self._loaded and concentration_ug_per_ml != self.concentration_ug_per_ml
        old_rate, old_conc = self._program_rate_now(), self.concentration_ug_per_ml
        rerated: tuple[Program, TherapyCheck, _FlexPlan | None, int] | None = None
        if changed and self.program.mode in (TherapyMode.CONTINUOUS, TherapyMode.FLEX):
            # the program keeps its doses; its rates follow the new concentration
            new_program = replace(self.program, concentration_ug_per_ml=concentration_ug_per_ml)
            old_conc = self.concentration_ug_per_ml
            self.concentration_ug_per_ml = concentration_ug_per_ml
            try:
                rerated = (new_program, *self._check(new_program, override=True))
            finally:
                self.concentration_ug_per_ml = old_conc
        a = self.acc
        expected = a.estimate_nl
        a.removed_true_nl += a.true_reservoir_nl
        a.true_reservoir_nl = added_volume_nl
        a.filled_total_nl += added_volume_nl
        a.estimate_nl = added_volume_nl
        self.drug = drug
        self.concentration_ug_per_ml = concentration_ug_per_ml
        if rerated is not None:
            old_plan = self._flex
            self.program, check, self._flex, rate = rerated
            if self._flex is not None and old_plan is not None:
                self._flex.anchor_wall_ms = old_plan.anchor_wall_ms  # the cycle keeps its place
            self._continuous_rate = rate if self.program.mode is TherapyMode.CONTINUOUS else 0
            self._note_dose(check.max_dose_ng_per_day)
        self._loaded = True
        self.last_refill_ms = self.now_ms
        self._bridge_rate_nl_per_day = old_rate if changed else 0
        self._bridge_concentration = old_conc if changed else 0
        if catheter_volume_nl is not None:
            self.catheter_volume_nl = catheter_volume_nl
        self._log(LogEventKind.REFILL, drug, added_volume_nl, aspirated_volume_nl - expected)
        self._check_reservoir_alarms()
        self._replan()
        return RefillResult(
            expected, aspirated_volume_nl, aspirated_volume_nl - expected, added_volume_nl, changed,
            self.catheter_volume_nl + self.config.tubing_volume_nl if changed else 0,
        )  # fmt: skip

    def configure_alarms(
        self, low_reservoir_threshold_nl: int, critical_repeat_ms: int, non_critical_repeat_ms: int
    ) -> None:
        cap = self.config.reservoir_capacity_nl
        if not 0 <= low_reservoir_threshold_nl < cap:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, "threshold", field=0, lo=0, hi=cap - 1)
        for i, v in ((1, critical_repeat_ms), (2, non_critical_repeat_ms)):
            if not 1000 <= v <= 24 * 3_600_000:
                raise RefusalError(ErrorCode.OUT_OF_RANGE, "repeat interval", field=i, lo=1000, hi=24 * 3_600_000)
        self.low_reservoir_threshold_nl = low_reservoir_threshold_nl
        self.alarms.critical_repeat_ms = critical_repeat_ms
        self.alarms.non_critical_repeat_ms = non_critical_repeat_ms
        self._log(LogEventKind.ALARM_CONFIG, 0, low_reservoir_threshold_nl, critical_repeat_ms)
        self._check_reservoir_alarms()
        self._replan()

    def silence_alarm(self, code: AlarmCode, duration_ms: int, role: int = 0) -> None:
        alarm = self.alarms.active.get(code)
        if alarm is None:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, f"{code.name} is not active", field=0)
        alarm.silenced_until_ms = self.now_ms + duration_ms
        self._log(LogEventKind.ALARM_SILENCED, code, duration_ms, role)

    def acknowledge_alarm(self, code: AlarmCode, role: int = 0) -> None:
        """Record that a clinician has seen an alarm; its tones stop. An alarm clears only when its
        cause is gone (LOW_BATTERY_RESET and MEMORY_ERROR: when a clinician reprograms)."""
        alarm = self.alarms.active.get(code)
        if alarm is None:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, f"{code.name} is not active", field=0)
        alarm.acknowledged = True
        self._log(LogEventKind.ALARM_ACKNOWLEDGED, code, role)

    def set_clock(self, wall_clock_ms: int) -> None:
        """Set the wall clock. Delivery runs on monotonic time, so nothing is skipped or repeated."""
        if wall_clock_ms < 0:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, "wall clock", field=0, lo=0)
        old = self.wall_clock_ms
        self._wall_offset_ms = wall_clock_ms - self.now_ms
        self._log(LogEventKind.CLOCK_SET, 0, old, wall_clock_ms)
        self._replan()

    def count_frames(self, frames: int) -> None:
        """Charge for telemetry frames sent or received."""
        self.acc.frames += frames
        self.acc.charge_pc = max(0, self.acc.charge_pc - frames * self.config.battery.frame_pc)
        self._replan()

    def set_limits(self, limits: DrugLimits) -> None:
        """Replace the drug library. The running program must still be within it."""
        if limits.drug is not self.limits.drug:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, "this pump's drug library is for one drug", field=0)
        if not 0 < limits.min_rate_nl_per_day <= limits.max_rate_nl_per_day:
            raise RefusalError(
                ErrorCode.OUT_OF_RANGE, "rates: 0 < min <= max", field=2, lo=1, hi=limits.max_rate_nl_per_day
            )
        if limits.soft_limit_ng_per_day > limits.hard_limit_ng_per_day:
            raise RefusalError(
                ErrorCode.OUT_OF_RANGE, "soft limit above hard limit", field=5, hi=limits.hard_limit_ng_per_day
            )
        if not limits.concentrations:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, "at least one concentration", field=1, lo=1)
        old = self.limits
        self.limits = limits
        try:
            if self.program.mode in (TherapyMode.CONTINUOUS, TherapyMode.FLEX):
                self._check(self.program, override=True, dose_history=False)
        except RefusalError:
            self.limits = old
            raise
        self._log(LogEventKind.LIMITS_SET, limits.drug, limits.hard_limit_ng_per_day, limits.soft_limit_ng_per_day)
        self._replan()

    def program_rate_nl_per_day(self) -> int:
        """The basal rate the program asks for now (whether or not the motor is held)."""
        return self._program_rate_now()

    def dose_now_ng_per_day(self) -> int:
        """The basal dose in effect now (for FLEX, the present step's)."""
        if self.mode is TherapyMode.CONTINUOUS:
            return self.program.dose_ng_per_day
        if self.mode is TherapyMode.FLEX:
            assert self._flex is not None
            pos = (self.wall_clock_ms - self._flex.anchor_wall_ms) % self._flex.cycle_ms
            return self.program.steps[bisect.bisect_right(self._flex.offsets_ms, pos) - 1].dose_ng_per_day
        return 0

    def log_event(self, kind: LogEventKind, code: int = 0, a: int = 0, b: int = 0) -> None:
        """Write an entry for the device layer (sessions, aborts)."""
        self._log(kind, code, a, b)

    def note_security_event(self, code: int, session_id: int, msg_type: int) -> None:
        """Log a security refusal, aggregated per code (``EventLog.bump``), so a flood cannot
        evict the log."""
        if not self.log.bump(LogEventKind.SECURITY, code, session_id, msg_type):
            self._log(LogEventKind.SECURITY, code, session_id, msg_type)

    # ------------------------------------------------------------------ non-volatile state

    def plant(self) -> Plant:
        """The physical state (drug in the reservoir and through the outlet, battery charge),
        which a reset of the firmware does not change."""
        a = self.acc
        return Plant(a.true_reservoir_nl, a.delivered_true_nl, a.removed_true_nl, a.filled_total_nl, a.charge_pc)

    def firmware_record(self, *, until_ms: int | None = None) -> dict[str, Any]:
        """What the firmware keeps in non-volatile memory, as JSON values.

        The motor's accounting is committed before the motor acts: with ``until_ms`` the
        record holds the accounting the pump will have reached then, so a reset at any time
        up to ``until_ms`` restores at least the steps taken: the reservoir estimate can only
        be under-counted, by at most the steps of that window (the device commits before
        every step, so by at most one).
        """
        record = self._exact_record()
        if until_ms is None or until_ms <= self.now_ms:
            return record
        if until_ms <= self._next_event_ms:  # constant rates until then: closed form
            dt = until_ms - self.now_ms
            a = self.acc
            bolus = self.bolus
            integral = a.integral_nlms + self._basal_eff * dt
            if self._bolus_eff and bolus is not None:
                integral += min(bolus.remaining_nlms, self._bolus_eff * dt)
            steps = integral // self._q
            estimate = a.estimate_nl - (steps - a.steps_total) * self.config.step_volume_nl
        else:
            twin = self._projected(record, until_ms).acc
            integral, steps, estimate = twin.integral_nlms, twin.steps_total, twin.estimate_nl
        record.update(steps_total=steps, integral_nlms=integral, estimate_nl=estimate)
        return record

    def next_motion_ms(self, limit_ms: int) -> int:
        """The end of the next stretch in which the motor takes at most one step and no event
        falls: the next step's time, the next event, or ``limit_ms``."""
        end = min(limit_ms, self._next_event_ms)
        rate = self._basal_eff + self._bolus_eff
        if rate:
            a = self.acc
            end = min(end, self.now_ms + max(1, ms_to_reach(a.integral_nlms, (a.steps_total + 1) * self._q, rate)))
        return end

    def record_at(self, until_ms: int) -> dict[str, Any]:
        """The firmware record the pump will hold at ``until_ms`` if nothing else happens (a
        twin is run there; this pump does not change)."""
        if until_ms <= self.now_ms:
            return self._exact_record()
        twin = copy.deepcopy(self)
        twin.advance(until_ms)
        return twin._exact_record()

    def _projected(self, record: dict[str, Any], until_ms: int) -> Pump:
        twin, _ = Pump.restore(self.config, record, self.plant())
        if self.bolus is not None:  # the motor will keep running it until until_ms
            twin.bolus = replace(self.bolus)
            twin._replan()
        twin.advance(until_ms)
        return twin

    def _exact_record(self) -> dict[str, Any]:
        a = self.acc
        flex = self._flex
        return {
            "now_ms": self.now_ms,
            "wall_offset_ms": self._wall_offset_ms,
            "state": self._fsm.state.name,
            "program": encode_payload(self.program).hex(),
            "drug": int(self.drug),
            "concentration_ug_per_ml": self.concentration_ug_per_ml,
            "limits": encode_payload(self.limits).hex(),
            "catheter_volume_nl": self.catheter_volume_nl,
            "last_refill_ms": self.last_refill_ms,
            "low_reservoir_threshold_nl": self.low_reservoir_threshold_nl,
            "repeat_ms": [self.alarms.critical_repeat_ms, self.alarms.non_critical_repeat_ms],
            "patient_bolus": encode_payload(self.patient_bolus).hex(),
            "patient_starts": list(self._patient_starts),
            "dosing": [list(x) for x in self._dosing.history],
            "dose_basal": [list(x) for x in self._dosing.basal],
            "dose_boluses": [list(x) for x in self._dosing.boluses],
            "alarms": [
                [int(c), x.raised_ms, x.acknowledged, x.silenced_until_ms] for c, x in self.alarms.active.items()
            ],
            "eri_at_ms": self.eri_at_ms,
            "eos_at_ms": self.eos_at_ms,
            "loaded": self._loaded,
            "flex_anchor_wall_ms": None if flex is None else flex.anchor_wall_ms,
            "steps_total": a.steps_total,
            "integral_nlms": a.integral_nlms,
            "estimate_nl": a.estimate_nl,
            "bolus": None if self.bolus is None else int(self.bolus.kind),
        }

    @classmethod
    def restore(
        cls, config: PumpConfig, record: Mapping[str, Any], plant: Plant, log: Iterable[LogEntry] = ()
    ) -> tuple[Pump, BolusKind | None]:
        """A pump rebooted from its non-volatile record, with the plant as it physically is.
        Returns the pump and the kind of a bolus the reset interrupted (to be logged)."""
        p = cls(config)
        p.now_ms = int(record["now_ms"])
        p._wall_offset_ms = int(record["wall_offset_ms"])
        p._fsm.state = PumpState[record["state"]]
        p.program = _decoded(Program, record["program"])
        p.drug = DrugId(record["drug"])
        p.concentration_ug_per_ml = int(record["concentration_ug_per_ml"])
        p.limits = _decoded(DrugLimits, record["limits"])
        p.catheter_volume_nl = int(record["catheter_volume_nl"])
        p.last_refill_ms = int(record["last_refill_ms"])
        p.low_reservoir_threshold_nl = int(record["low_reservoir_threshold_nl"])
        p.alarms.critical_repeat_ms, p.alarms.non_critical_repeat_ms = record["repeat_ms"]
        p.patient_bolus = _decoded(PatientBolusSettings, record["patient_bolus"])
        p._patient_starts = deque(int(t) for t in record["patient_starts"])
        p._dosing.history = [(int(t), None if d is None else int(d)) for t, d in record["dosing"]]
        p._dosing.basal = [(int(t), int(d)) for t, d in record.get("dose_basal", [])]
        p._dosing.boluses = [(int(t), int(e), int(d)) for t, e, d in record.get("dose_boluses", [])]
        for code, raised, acked, silenced in record["alarms"]:
            p.alarms.active[AlarmCode(code)] = ActiveAlarm(AlarmCode(code), raised, bool(acked), silenced)
        p.eri_at_ms, p.eos_at_ms = record["eri_at_ms"], record["eos_at_ms"]
        p._loaded = bool(record["loaded"])
        a = p.acc
        a.steps_total = int(record["steps_total"])
        a.integral_nlms = int(record["integral_nlms"])
        a.estimate_nl = int(record["estimate_nl"])
        a.true_reservoir_nl, a.delivered_true_nl, a.removed_true_nl, a.filled_total_nl, a.charge_pc = (
            plant.true_reservoir_nl,
            plant.delivered_true_nl,
            plant.removed_true_nl,
            plant.filled_total_nl,
            plant.charge_pc,
        )
        p._segments = deque([_Segment(p.now_ms, a.integral_nlms, 0)])
        for entry in log:
            p.log.restore(entry)
        if (
            p.program.mode in (TherapyMode.CONTINUOUS, TherapyMode.FLEX)
            and p._fsm.state is not PumpState.END_OF_SERVICE
        ):
            _, p._flex, rate = p._check(p.program, override=True)
            p._continuous_rate = rate if p.program.mode is TherapyMode.CONTINUOUS else 0
            if p._flex is not None and record["flex_anchor_wall_ms"] is not None:
                p._flex.anchor_wall_ms = int(record["flex_anchor_wall_ms"])
        p._check_reservoir_alarms()
        interrupted = None if record["bolus"] is None else BolusKind(record["bolus"])
        if interrupted is BolusKind.SINGLE and p._fsm.state is PumpState.SINGLE_BOLUS:
            p._fsm.fire("single_bolus_done")  # the single bolus mode's bolus is lost: the pump stops
            p.program = Program(TherapyMode.STOPPED, 0, 0, 0, 0, 0, ())
        p._replan()
        return p, interrupted

    # ------------------------------------------------------------------ faults

    def inject_fault(self, fault: FaultKind, param: int = 0) -> None:
        """The test role's faults. Memory faults belong to the device's non-volatile store."""
        if fault in (FaultKind.MEMORY_CORRUPTION, FaultKind.POWER_CUT):
            raise RefusalError(ErrorCode.NOT_SUPPORTED, f"{fault.name} needs the device's non-volatile memory")
        self._log(LogEventKind.FAULT_INJECTED, fault, param)
        if fault is FaultKind.MOTOR_STALL:
            if not self.alarms.is_active(AlarmCode.MOTOR_STALL):
                self._stall_since_ms = self.now_ms
            self._raise(AlarmCode.MOTOR_STALL)
        elif fault is FaultKind.MOTOR_STALL_CLEAR:
            self._clear(AlarmCode.MOTOR_STALL)  # recovery detected: logged as the alarm clearing
        elif fault is FaultKind.LOW_BATTERY_RESET:
            self.reset()
            self.enter_safe_state(AlarmCode.LOW_BATTERY_RESET)
        else:
            self.reset()
        self._replan()

    def reset(self, boot_counter: int = 0) -> None:
        """A processor reset: therapy resumes from memory; a running bolus is lost (logged)."""
        if self.bolus is not None:
            self._end_bolus(LogEventKind.BOLUS_INTERRUPTED)
        self._log(LogEventKind.RESET, 0, boot_counter)
        self._replan()

    def enter_safe_state(self, alarm: AlarmCode) -> None:
        """Minimum rate (needs no concentration) with a critical alarm: low battery reset, memory error."""
        if self._fsm.state is PumpState.END_OF_SERVICE:
            return
        if self.bolus is not None:
            self._end_bolus(LogEventKind.BOLUS_INTERRUPTED)
        self._fsm.fire("safe_state")
        self.program = Program(TherapyMode.MINIMUM_RATE, 0, 0, 0, 0, 0, ())
        self._flex = None
        self._note_dose(None)
        self._raise(alarm)
        self._replan()


T = TypeVar("T")


def _decoded(cls: type[T], hex_payload: str) -> T:
    """A message kept in non-volatile memory; a record that does not decode is corrupt."""
    value = decode_payload(cls, bytes.fromhex(hex_payload))
    if isinstance(value, DecodeError):
        raise CorruptStateError(f"non-volatile record holds a bad {cls.__name__}: {value.detail}")
    result: T = value
    return result


_REPLACES_BASAL = frozenset({BolusKind.PRIMING, BolusKind.BRIDGE})


def _require_unused(program: Program) -> None:
    """Fields a mode does not use must be 0 (or empty)."""
    mode = program.mode
    used = {
        TherapyMode.STOPPED: set(),
        TherapyMode.MINIMUM_RATE: set(),
        TherapyMode.CONTINUOUS: {_F_CONC, _F_DOSE},
        TherapyMode.FLEX: {_F_CONC, _F_CYCLE, _F_STEPS},
        TherapyMode.SINGLE_BOLUS: {_F_CONC, _F_BOLUS_DOSE, _F_BOLUS_MS},
    }[mode]
    values = {
        _F_CONC: program.concentration_ug_per_ml,
        _F_DOSE: program.dose_ng_per_day,
        _F_BOLUS_DOSE: program.bolus_dose_ng,
        _F_BOLUS_MS: program.bolus_duration_ms,
        _F_CYCLE: program.cycle_days,
        _F_STEPS: len(program.steps),
    }
    for index, value in values.items():
        if index not in used and value:
            raise RefusalError(ErrorCode.OUT_OF_RANGE, f"{mode.name} does not use field {index}", field=index, hi=0)
