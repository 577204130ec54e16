"""The event log: a bounded ring of entries with a life-long sequence number."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from protocol_spec.enums import LogEventKind
from protocol_spec.messages import LogEntry

__all__ = ["EventLog"]

_BURST_LOOKBACK = 32
"""How many recent entries a burst looks back through for its own entry."""


class EventLog:
    """Keeps the newest ``capacity`` entries; ``seq`` counts every entry ever written."""

    def __init__(self, capacity: int) -> None:
        self._entries: deque[LogEntry] = deque(maxlen=capacity)
        self.next_seq = 0

    def add(self, at_ms: int, wall_ms: int, kind: LogEventKind, code: int = 0, a: int = 0, b: int = 0) -> LogEntry:
        entry = LogEntry(self.next_seq, at_ms, wall_ms, kind, code, 1, a, b)
        self._entries.append(entry)
        self.next_seq += 1
        return entry

    def restore(self, entry: LogEntry) -> None:
        """Put back an entry read from non-volatile memory (in order)."""
        self._entries.append(entry)
        self.next_seq = entry.seq + 1

    def bump(self, kind: LogEventKind, code: int, a: int, b: int) -> bool:
        """Count one more event into the newest entry of this kind and code among the last
        ``_BURST_LOOKBACK`` entries, whatever its age, with its values updated (an aggregated
        burst; interleaved codes each keep their entry). False if a new entry is needed: none
        there, or its count is full. A flood of one code so takes a new entry only every 65,535
        events, or after 32 other entries: it cannot push the clinical history out of the log."""
        for i in range(len(self._entries) - 1, max(-1, len(self._entries) - 1 - _BURST_LOOKBACK), -1):
            e = self._entries[i]
            if e.kind is kind and e.code == code:
                if e.count >= 0xFFFF:
                    return False
                self._entries[i] = replace(e, count=e.count + 1, value_a=a, value_b=b)
                return True
        return False

    @property
    def oldest_seq(self) -> int:
        return self._entries[0].seq if self._entries else self.next_seq

    def page(self, first_seq: int, max_items: int) -> list[LogEntry]:
        """Entries from ``first_seq`` on (or from the oldest kept), at most ``max_items``."""
        start = max(first_seq, self.oldest_seq) - self.oldest_seq
        return [self._entries[i] for i in range(start, min(len(self._entries), start + max_items))]

    def entries(self, kind: LogEventKind | None = None) -> list[LogEntry]:
        return [e for e in self._entries if kind is None or e.kind is kind]

    def __len__(self) -> int:
        return len(self._entries)
