"""Black-box judging over a link, for the campaigns that run against any target.

A campaign over a link sees what a programmer sees: the frames the target sends back, and what
the protocol lets it read (INTERROGATE, READ_LIMITS, READ_LOG). It never looks inside the
target. So "the frame changed nothing" is judged from the answers and from the target's own
record of its therapy and its log:

    judge = LinkJudge(pump)             # on a connected DeviceUnderTest
    before = judge.therapy()            # program, settings, limits, alarms (not the clock)
    answers = judge.send(frame)         # the frames the target sent back for it (fenced)
    judge.accepted(answers)             # True if any was an answer other than an error
    judge.therapy() == before           # and nothing the clinician sets has changed
    judge.log_since(seq)                # its log entries since, SECURITY aside
    judge.security_total()              # the SECURITY events counted in its log

``send`` fences every frame with an IDENTIFY: a device answers in order, so every answer to the
frame arrives before IDENTIFY's, and a frame left unanswered costs one round trip, not a timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

from hil.conformance import DeviceUnderTest
from hil.conformance.raw import RawWire
from protocol_spec import messages as m
from protocol_spec.codec import Header
from protocol_spec.enums import LogEventKind, MsgType

__all__ = ["LinkJudge", "Therapy"]

_CHANGES = frozenset(LogEventKind) - {
    LogEventKind.SECURITY,
    LogEventKind.SESSION_OPENED,
    LogEventKind.SESSION_CLOSED,
    LogEventKind.ALARM_RAISED,
    LogEventKind.ALARM_CLEARED,
    LogEventKind.BOLUS_COMPLETED,
}
"""Log entries only a request carried out writes (alarms and completions come with time; the
judge's own sessions are opened and closed)."""


@dataclass(frozen=True)
class Therapy:
    """What a refused frame must leave as it was, as the target reports it (time aside)."""

    program_crc: int
    mode: int
    dose_ng_per_day: int
    concentration_ug_per_ml: int
    low_reservoir_threshold_nl: int
    catheter_volume_nl: int
    patient_bolus: m.PatientBolusSettings
    silenced: int
    limits: m.DrugLimits
    last_refill_ms: int


class LinkJudge:
    """Raw frames to a target and what became of them, judged through the protocol alone."""

    def __init__(self, pump: DeviceUnderTest) -> None:
        self.pump = pump
        self.wire = RawWire(pump)
        self.frames_sent = 0
        self.bytes_sent = 0

    def send(self, data: bytes) -> list[Header]:
        """Send raw bytes, then an IDENTIFY; the headers of every frame received before its reply
        (notifications included: filter with ``accepted``)."""
        self.frames_sent += 1
        self.bytes_sent += len(data)
        self.wire.send(data)
        return self.wire.fence()

    @staticmethod
    def accepted(answers: list[Header]) -> bool:
        """True if the target answered with anything but an error (a notification aside)."""
        return any(h.from_pump and not h.is_error and h.msg_type != MsgType.ALARM_NOTIFY for h in answers)

    @staticmethod
    def refusals(answers: list[Header]) -> int:
        return sum(1 for h in answers if h.is_error)

    def therapy(self) -> Therapy:
        c = self.pump.clinician
        i = c.interrogate()
        return Therapy(
            i.program_crc,
            int(i.mode),
            i.dose_ng_per_day,
            i.concentration_ug_per_ml,
            i.low_reservoir_threshold_nl,
            i.catheter_volume_nl,
            i.patient_bolus,
            int(i.silenced),
            c.read_limits(),
            i.last_refill_ms,
        )

    def next_seq(self) -> int:
        return self.pump.clinician.read_log(0, 1).next_seq

    def log_since(self, first_seq: int) -> list[m.LogEntry]:
        """Entries since ``first_seq`` that only a request carried out writes."""
        return [e for e in self.pump.clinician.read_all_log(first_seq) if e.kind in _CHANGES]

    def security_total(self) -> int:
        """The SECURITY events the target's log counts (aggregated entries count many)."""
        return sum(e.count for e in self.pump.clinician.read_all_log(0) if e.kind is LogEventKind.SECURITY)
