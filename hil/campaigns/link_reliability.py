"""Lost replies and duplicates over a link, against any target.

The clinician's (and the patient's) programmer talks through a seeded ``FaultyLink`` wrapped
around the target's port: frames dropped, duplicated, delayed and split, both ways, in real
time. Each operation is one effectful command of a kind the pump must carry out exactly once
(a program, a priming bolus, a patient bolus, a refill, a cancel, the clock, the alarms, the
limits). Afterwards the suite's own programmer, on the clean port, reads the target's log and
its list of command outcomes, and the campaign checks what the in-process campaign checks, with
the same checker (``reliability.check_op``): never carried out twice, never a partly applied
program, and what the programmer believes is what the pump did.

Black-box: through the protocol alone. The target starts from the conformance suite's known
state (``DeviceUnderTest.reset``), which holds its clock if it offers the test role.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from hil.conformance import SUITE_CONCENTRATION_UG_PER_ML, SUITE_DOSE_NG_PER_DAY, DeviceUnderTest, continuous
from hil.faults import Direction, Fault, FaultyLink
from programmer import Programmer, ProgrammerError, PumpRefused, UncertainOutcome
from programmer.client import ProgrammerOptions
from protocol_spec import messages as m
from protocol_spec.codec import encode_payload
from protocol_spec.enums import BolusKind, ErrorCode, Feature, ProgramSlot, RefillConfirmation, Role
from protocol_spec.framing import crc32

from . import Budget, Outcome, over_link
from .reliability import EFFECTS, OpCheck, check_op

__all__ = ["LINK_OP_KINDS"]

REPLY_TIMEOUT_MS = 150
"""Short, to keep a campaign of many lost frames fast; many times a round trip on any link."""
RETRIES = 4
OPS_PER_SCHEDULE = 4
LINK_OP_KINDS = ("program", "priming", "patient", "refill", "cancel", "clock", "alarms", "limits")
_CONFIRMED = RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED
_PRIMING_NL = (10_000, 20_000)
_PRIMING_MS = 120_000
_PATIENT = m.PatientBolusSettings(enabled=1, dose_ng=5_000, duration_ms=60_000, lockout_ms=0, max_per_24h=255)


def _rng(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - reproducible fault schedules, not secrets


@dataclass
class _Op:
    kind: str
    send: Callable[[Programmer, Programmer], object]
    """Carry it out with (clinician, patient) over the faulty link."""
    holds: Callable[[DeviceUnderTest], bool]
    """Whether the target holds what it set (asked over the clean port)."""


def _op(kind: str, pump: DeviceUnderTest, rng: random.Random) -> _Op:
    b = pump.baseline
    clean = pump.clinician
    if kind == "program":
        program = continuous(SUITE_DOSE_NG_PER_DAY * rng.choice((7, 8, 9, 10)) // 10)

        def send_program(c: Programmer, _p: Programmer) -> object:
            return c.commit(c.stage_program(program, override_soft_limits=True).stage_token)

        return _Op(kind, send_program, lambda d: d.clinician.read_program(ProgramSlot.ACTIVE) == program)
    if kind == "priming":
        volume_nl = rng.choice(_PRIMING_NL)

        def send_priming(c: Programmer, _p: Programmer) -> object:
            return c.commit(c.stage_bolus(BolusKind.PRIMING, volume_nl, _PRIMING_MS).stage_token)

        return _Op(kind, send_priming, lambda d: True)
    if kind == "patient":
        return _Op(kind, lambda _c, p: p.patient_bolus_request(), lambda d: True)
    if kind == "refill":
        added = b.reservoir_capacity_nl - rng.randrange(0, 2_000_000)
        estimate = clean.status().reservoir_estimate_nl

        def send_refill(c: Programmer, _p: Programmer) -> object:
            return c.refill(
                aspirated_volume_nl=estimate,
                added_volume_nl=added,
                drug=b.limits.drug,
                concentration_ug_per_ml=SUITE_CONCENTRATION_UG_PER_ML,
                catheter_volume_nl=b.catheter_volume_nl,
                confirmations=_CONFIRMED,
            )

        return _Op(kind, send_refill, lambda d: d.clinician.status().reservoir_estimate_nl <= added)
    if kind == "cancel":
        return _Op(kind, lambda c, _p: c.cancel_bolus(), lambda d: d.clinician.status().bolus_active is BolusKind.NONE)
    if kind == "clock":
        wall_ms = 1_790_000_000_000 + rng.randrange(10**9)
        return _Op(kind, lambda c, _p: c.set_clock(wall_ms), lambda d: True)
    if kind == "alarms":
        threshold = b.low_reservoir_threshold_nl + rng.randrange(0, 1_000) * 1_000
        return _Op(
            kind,
            lambda c, _p: c.configure_alarms(
                low_reservoir_threshold_nl=threshold, critical_repeat_ms=600_000, non_critical_repeat_ms=3_600_000
            ),
            lambda d: d.clinician.interrogate().low_reservoir_threshold_nl == threshold,
        )
    if kind == "limits":
        return _Op(kind, lambda c, _p: c.set_limits(b.limits), lambda d: d.clinician.read_limits() == b.limits)
    raise ValueError(kind)  # pragma: no cover


def _effects(pump: DeviceUnderTest, first_seq: int, kind: str) -> int:
    log_kind, code, _ = EFFECTS[kind]
    return sum(
        1 for e in pump.clinician.read_all_log(first_seq) if e.kind is log_kind and (code is None or e.code == code)
    )


def _one_op(pump: DeviceUnderTest, op: _Op, clinician: Programmer, patient: Programmer) -> tuple[list[str], str]:
    """Carry out ``op`` over the faulty link, then judge it over the clean port: (problems, how it ended)."""
    c = pump.clinician
    if op.kind != "cancel" and c.status().bolus_active is not BolusKind.NONE:
        c.cancel_bolus()  # a bolus the last operation started (the clock may be held): a clean start
    first_seq = c.read_log(0, 1).next_seq
    old_program = c.read_program(ProgramSlot.ACTIVE)
    result: object
    try:
        result = op.send(clinician, patient)
    except ProgrammerError as exc:
        result = exc
    pump.raw.drain()
    info = c.interrogate()
    effects = _effects(pump, first_seq, op.kind)
    listed: ErrorCode | None = None
    if isinstance(result, UncertainOutcome) and result.msg_type is EFFECTS[op.kind][2]:
        listed = next((ErrorCode(o.result) for o in info.outcomes if o.command_id == result.command_id), None)
    program_ok = True
    if op.kind == "program":  # exactly the old or the new program, and the one INTERROGATE reports
        active = c.read_program(ProgramSlot.ACTIVE)
        program_ok = (active == old_program or op.holds(pump)) and info.program_crc == crc32(encode_payload(active))
    state_ok = effects == 0 or op.holds(pump)
    how = type(result).__name__ if isinstance(result, ProgrammerError) else "reply"
    if isinstance(result, PumpRefused):
        how = f"refused_{result.code.name if result.code is not None else 'unknown'}"
    return check_op(OpCheck(op.kind, result, effects, listed, program_ok, state_ok)), how


def _ids_from(rng: random.Random) -> Callable[[], int]:
    """Command ids drawn from ``rng``: a schedule is reproducible from its seed, ids included."""
    return lambda: rng.getrandbits(63) + 1


def _kinds(pump: DeviceUnderTest) -> tuple[str, ...]:
    """The kinds this target can carry out (a patient bolus needs the feature)."""
    return tuple(k for k in LINK_OP_KINDS if k != "patient" or pump.has(Feature.PATIENT_BOLUS))


@over_link("lost-replies", sizes=(3, 1_000))
def lost_replies_over_link(size: int, budget: Budget, seed: int, pump: DeviceUnderTest) -> Outcome:
    """``size`` schedules of ``OPS_PER_SCHEDULE`` operations each, through a seeded faulty link
    (drop 5 to 20 %, duplicate 0 to 20 %, delays, split writes) on the target's own port."""
    rng = _rng(seed)
    pump.reset()
    if pump.has(Feature.PATIENT_BOLUS):
        staged = pump.clinician.stage_patient_bolus(_PATIENT, override_soft_limits=True)
        pump.clinician.commit(staged.stage_token)
    kinds = _kinds(pump)
    counts: dict[str, int] = {}
    problems: list[str] = []
    faults: dict[str, int] = {}
    done = 0
    while done < size and not budget.expired():
        link = FaultyLink(
            pump.port,
            seed=rng.getrandbits(64),
            drop=rng.choice((0.05, 0.1, 0.2)),
            duplicate=rng.choice((0.0, 0.1, 0.2)),
            delay_ms=rng.choice((0, 0, 2)),
            split=rng.random() < 0.5,
        )
        ids = _rng(rng.getrandbits(64))
        options = ProgrammerOptions(reply_timeout_ms=REPLY_TIMEOUT_MS, retries=RETRIES, command_ids=_ids_from(ids))
        timeout = pump.port.timeout
        try:
            with contextlib.ExitStack() as stack:
                try:
                    clinician = stack.enter_context(pump.programmer_on(link, Role.CLINICIAN, **options))
                    patient = stack.enter_context(pump.programmer_on(link, Role.PATIENT, **options))
                except ProgrammerError:  # a handshake never got through: no command was sent
                    counts["handshake_failed"] = counts.get("handshake_failed", 0) + 1
                else:
                    for _ in range(OPS_PER_SCHEDULE):
                        kind = kinds[rng.randrange(len(kinds))]
                        found, how = _one_op(pump, _op(kind, pump, rng), clinician, patient)
                        problems += [f"{kind}: {p}" for p in found]
                        counts[how] = counts.get(how, 0) + 1
                        counts[kind] = counts.get(kind, 0) + 1
        finally:
            pump.port.timeout = timeout
            pump.raw.drain()
            pump.refresh_sessions()
        for (direction, fault), n in link.counts().items():
            if fault in (Fault.DROP, Fault.DUPLICATE):
                key = f"frames_{fault.value}_{'to_pump' if direction is Direction.TO_PUMP else 'from_pump'}"
                faults[key] = faults.get(key, 0) + n
        done += 1
    figures: dict[str, int | float] = {
        "operations": sum(counts.get(k, 0) for k in LINK_OP_KINDS),
        "replies": counts.get("reply", 0),
        "refused": sum(v for k, v in counts.items() if k.startswith("refused_")),
        **{k: v for k, v in sorted(counts.items()) if k.startswith("refused_")},
        "replies_lost_resolved": counts.get("ReplyLost", 0),
        "uncertain": counts.get("UncertainOutcome", 0),
        "no_reply": counts.get("NoReply", 0),
        "handshakes_failed": counts.get("handshake_failed", 0),
        **faults,
        "double_effects": sum(1 for p in problems if p.endswith(": double")),
        "partial_programs": sum(1 for p in problems if p.endswith(": partial")),
        "disagreements": sum(1 for p in problems if p.endswith((": disagree", ": state"))),
    }
    return Outcome(done, figures, ok=done > 0 and not problems, note=problems[0] if problems else "")
