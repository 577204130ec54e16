"""Alarms: what is active, its priority and tone, and when it sounds.

Repeats are computed, not simulated: an alarm raised at R with repeat interval P sounds at
R, R + P, R + 2P, ... except while silenced, and not at all once acknowledged. The log
records raise, acknowledge, silence and clear, never the repeats.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol_spec.enums import AlarmCode, AlarmPriority, AlarmSet, TonePattern, alarm_priority

__all__ = ["ActiveAlarm", "AlarmBoard", "tone_of"]


def tone_of(code: AlarmCode) -> TonePattern:
    """Critical: 3-second two-tone; non-critical: 1-second single tone (DOMAIN.md)."""
    return TonePattern.TWO_TONE_3S if alarm_priority(code) is AlarmPriority.CRITICAL else TonePattern.SINGLE_TONE_1S


@dataclass
class ActiveAlarm:
    code: AlarmCode
    raised_ms: int
    acknowledged: bool = False
    silenced_until_ms: int = 0


class AlarmBoard:
    """The set of active alarms and their repeat intervals."""

    def __init__(self, critical_repeat_ms: int, non_critical_repeat_ms: int) -> None:
        self.active: dict[AlarmCode, ActiveAlarm] = {}
        self.critical_repeat_ms = critical_repeat_ms
        self.non_critical_repeat_ms = non_critical_repeat_ms

    def repeat_ms(self, code: AlarmCode) -> int:
        critical = alarm_priority(code) is AlarmPriority.CRITICAL
        return self.critical_repeat_ms if critical else self.non_critical_repeat_ms

    def is_active(self, code: AlarmCode) -> bool:
        return code in self.active

    @property
    def critical_active(self) -> bool:
        return any(alarm_priority(c) is AlarmPriority.CRITICAL for c in self.active)

    def as_set(self) -> AlarmSet:
        bits = 0
        for code in self.active:
            bits |= 1 << (code - 1)
        return AlarmSet(bits)

    def silenced_set(self, now_ms: int) -> AlarmSet:
        bits = 0
        for code, a in self.active.items():
            if a.acknowledged or a.silenced_until_ms > now_ms:
                bits |= 1 << (code - 1)
        return AlarmSet(bits)

    def tones(self, code: AlarmCode, start_ms: int, end_ms: int) -> list[int]:
        """Times in [start_ms, end_ms) at which ``code`` sounds (empty if not active)."""
        a = self.active.get(code)
        if a is None or a.acknowledged:
            return []
        period = self.repeat_ms(code)
        first = max(start_ms, a.raised_ms, a.silenced_until_ms)
        k = -(-(first - a.raised_ms) // period)
        out = []
        t = a.raised_ms + k * period
        while t < end_ms:
            out.append(t)
            t += period
        return out

    def next_tone_ms(self, code: AlarmCode, now_ms: int) -> int | None:
        """When ``code`` next sounds at or after ``now_ms`` (None if it will not)."""
        a = self.active.get(code)
        if a is None or a.acknowledged:
            return None
        period = self.repeat_ms(code)
        first = max(now_ms, a.raised_ms, a.silenced_until_ms)
        return a.raised_ms + -(-(first - a.raised_ms) // period) * period
