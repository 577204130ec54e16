"""The message catalogue: for each message type, its request and reply, who may send it,
whether it has an effect (and so carries a command id), and what it is for.

This table is the protocol's access policy (deny by default: a role not listed is refused
with WRONG_ROLE) and the source of SPEC.md's message section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import messages as m
from .enums import MsgType, Role

__all__ = ["CATALOG", "MessageDef", "message_def", "reply_type_of", "request_type_of"]

CLINICIAN = frozenset({Role.CLINICIAN})
READERS = frozenset({Role.CLINICIAN, Role.PATIENT, Role.TEST})
CLINICAL_READERS = frozenset({Role.CLINICIAN, Role.TEST})
TEST = frozenset({Role.TEST})
NO_ROLE: frozenset[Role] = frozenset()


@dataclass(frozen=True)
class MessageDef:
    msg_type: MsgType
    request: type[Any] | None
    """Request payload class (None: the pump only sends this type)."""
    reply: type[Any]
    """Reply payload class (or the notification, for pump-initiated types)."""
    roles: frozenset[Role]
    """Roles allowed to send it in a session; empty for pre-session messages."""
    effectful: bool
    """Changes pump state: carries a non-zero command id, answered exactly once."""
    pre_session: bool
    """Accepted without a session, in plaintext."""
    test_only: bool
    """Exists only on a device started for testing (feature TEST_ROLE)."""
    summary: str


def _d(
    t: MsgType,
    request: type[Any] | None,
    reply: type[Any],
    roles: frozenset[Role],
    summary: str,
    *,
    effectful: bool = False,
    pre_session: bool = False,
) -> MessageDef:
    return MessageDef(
        t,
        request,
        reply,
        roles,
        effectful,
        pre_session,
        test_only=roles == TEST,
        summary=summary,
    )


CATALOG: dict[MsgType, MessageDef] = {
    d.msg_type: d
    for d in [
        _d(
            MsgType.IDENTIFY,
            m.Identify,
            m.IdentifyReply,
            NO_ROLE,
            "Protocol version, device class and features; a ping. No session needed.",
            pre_session=True,
        ),
        _d(
            MsgType.SESSION_OPEN,
            m.SessionOpen,
            m.SessionOpenReply,
            NO_ROLE,
            "Open a secured session with a role key (handshake).",
            pre_session=True,
        ),
        _d(MsgType.SESSION_CLOSE, m.SessionClose, m.Ack, READERS, "Close the session."),
        _d(
            MsgType.INTERROGATE,
            m.Interrogate,
            m.InterrogateReply,
            CLINICAL_READERS,
            "Identity, clock, reservoir, battery, alarms, therapy, recent command outcomes.",
        ),
        _d(MsgType.STATUS, m.Status, m.StatusReply, READERS, "Short status poll."),
        _d(
            MsgType.READ_PROGRAM,
            m.ReadProgram,
            m.Program,
            CLINICAL_READERS,
            "The active or the staged basal program, whole.",
        ),
        _d(
            MsgType.STAGE_PROGRAM,
            m.StageProgram,
            m.StageReply,
            CLINICIAN,
            "Stage a basal program (step 1 of 2).",
            effectful=True,
        ),
        _d(
            MsgType.STAGE_BOLUS,
            m.StageBolus,
            m.StageReply,
            CLINICIAN,
            "Stage a priming or bridge bolus (step 1 of 2).",
            effectful=True,
        ),
        _d(
            MsgType.STAGE_PATIENT_BOLUS,
            m.StagePatientBolus,
            m.StageReply,
            CLINICIAN,
            "Stage patient-bolus settings (step 1 of 2).",
            effectful=True,
        ),
        _d(
            MsgType.COMMIT, m.Commit, m.CommitReply, CLINICIAN, "Apply the staged change (step 2 of 2).", effectful=True
        ),
        _d(
            MsgType.ABORT,
            m.Abort,
            m.Ack,
            CLINICIAN,
            "Drop the staged change; the running program continues.",
            effectful=True,
        ),
        _d(
            MsgType.PATIENT_BOLUS_REQUEST,
            m.PatientBolusRequest,
            m.PatientBolusGrant,
            frozenset({Role.PATIENT}),
            "Patient requests one bolus within its lockout and daily maximum.",
            effectful=True,
        ),
        _d(
            MsgType.CANCEL_BOLUS,
            m.CancelBolus,
            m.Ack,
            CLINICIAN,
            "Stop the running bolus (logged as interrupted).",
            effectful=True,
        ),
        _d(
            MsgType.REFILL,
            m.Refill,
            m.RefillReply,
            CLINICIAN,
            "Record a refill: aspirated and added volume, drug, concentration.",
            effectful=True,
        ),
        _d(
            MsgType.CONFIGURE_ALARMS,
            m.ConfigureAlarms,
            m.AlarmConfig,
            CLINICIAN,
            "Set the low-reservoir threshold and repeat intervals.",
            effectful=True,
        ),
        _d(
            MsgType.SILENCE_ALARM,
            m.SilenceAlarm,
            m.Ack,
            READERS,
            "Silence an alarm's tone for a while (it stays active).",
            effectful=True,
        ),
        _d(
            MsgType.ACKNOWLEDGE_ALARM,
            m.AcknowledgeAlarm,
            m.Ack,
            CLINICAL_READERS,
            "Acknowledge an alarm (logged); it clears when its cause is gone.",
            effectful=True,
        ),
        _d(
            MsgType.ALARM_NOTIFY,
            None,
            m.AlarmNotify,
            READERS,
            "Unsolicited alarm event from the pump while a session is open.",
        ),
        _d(MsgType.READ_LOG, m.ReadLog, m.LogPage, CLINICAL_READERS, "Read the event log, a page at a time."),
        _d(
            MsgType.SET_CLOCK,
            m.SetClock,
            m.SetClockReply,
            CLINICIAN,
            "Set the wall clock (flex steps follow its time of day).",
            effectful=True,
        ),
        _d(MsgType.READ_LIMITS, m.ReadLimits, m.DrugLimits, READERS, "Read the drug library and limits."),
        _d(
            MsgType.SET_LIMITS,
            m.SetLimits,
            m.DrugLimits,
            CLINICIAN,
            "Replace the drug library entry and limits.",
            effectful=True,
        ),
        _d(
            MsgType.TEST_ADVANCE_TIME,
            m.AdvanceTime,
            m.ClockReply,
            TEST,
            "Test role: advance virtual time.",
            effectful=True,
        ),
        _d(
            MsgType.TEST_HOLD_CLOCK,
            m.HoldClock,
            m.ClockReply,
            TEST,
            "Test role: hold or release the clock.",
            effectful=True,
        ),
        _d(
            MsgType.TEST_INJECT_FAULT,
            m.InjectFault,
            m.Ack,
            TEST,
            "Test role: inject a fault (stall, battery, memory, reset, power cut).",
            effectful=True,
        ),
        _d(MsgType.TEST_READ_PLANT, m.ReadPlant, m.PlantReply, TEST, "Test role: the plant's true state."),
        _d(
            MsgType.TEST_READ_STEP_LOG,
            m.ReadStepLog,
            m.StepLogReply,
            TEST,
            "Test role: step counter and recent step times.",
        ),
    ]
}


def message_def(msg_type: MsgType) -> MessageDef:
    return CATALOG[msg_type]


_BY_REQUEST = {d.request: d for d in CATALOG.values() if d.request is not None}


def request_type_of(message: object) -> MsgType:
    """The message type of a request payload object."""
    try:
        return _BY_REQUEST[type(message)].msg_type
    except KeyError:
        raise TypeError(f"{type(message).__name__} is not a request message") from None


def reply_type_of(message: object) -> MsgType | None:
    """The message type a reply payload belongs to, when the class is used by one type only."""
    owners = [d.msg_type for d in CATALOG.values() if d.reply is type(message)]
    return owners[0] if len(owners) == 1 else None
