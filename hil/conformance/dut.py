"""The device under test: one target, connected once, and the known state every test starts from.

    dut = DeviceUnderTest.connect(target)
    dut.reset()                         # the known state (below), through the protocol alone
    dut.clinician.status()              # programmers of each role share the one port
    dut.advance(3_600_000)              # TEST_ADVANCE_TIME (needs Feature.VIRTUAL_TIME)
    dut.raw.send(frame)                 # bytes (hil.conformance.raw builds and reads frames)

Every programmer opens its own session on the one port the target was opened with, so the suite
talks to one pump whether the URL is a device, a socket or ``pump://`` (which makes a new pump at
every open). The suite uses nothing but the protocol: what it does to a virtual pump it can do to
a board.

**The known state** (``reset``), from whatever the previous test left: the clock held (test role),
a motor stall cleared (fault injection), nothing staged, no bolus running, the drug library and
the low-reservoir threshold the device had when the run started, the suite's alarm repeat
intervals, a full reservoir of the suite's concentration, patient boluses disabled, and the
suite's continuous program running. What cannot be reset through the protocol stays: the event
log grows, the battery drains, the rolling 24 h windows remember; tests that depend on them
advance time past them first.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Unpack

from programmer.client import Programmer, ProgrammerOptions, PublishedKeysWarning, SerialPort, open_port
from programmer.errors import ProgrammerError, PumpRefused
from protocol_spec import messages as m
from protocol_spec.channel import new_command_id
from protocol_spec.enums import (
    AlarmSet,
    BatteryState,
    BolusKind,
    ErrorCode,
    FaultKind,
    Feature,
    RefillConfirmation,
    Role,
    TherapyMode,
)
from protocol_spec.security import TEST_KEY_SET, KeySet

from .sharedport import PortView, SharedPort
from .targets import Target, TargetError, feature_names

__all__ = [
    "SUITE_ALARM_REPEATS_MS",
    "SUITE_CONCENTRATION_UG_PER_ML",
    "SUITE_DOSE_NG_PER_DAY",
    "Baseline",
    "CommandIds",
    "DeviceUnderTest",
    "RawLink",
    "Refusal",
    "TargetUnusable",
    "continuous",
    "refused",
]

MS_PER_DAY = 86_400_000
SUITE_CONCENTRATION_UG_PER_ML = 500
"""The concentration of the known state (one of baclofen's usual: 50, 500, 1000, 2000 ug/mL)."""
SUITE_DOSE_NG_PER_DAY = 100_000
"""The known state's continuous dose: 100 ug/day (200 uL/day at 500 ug/mL)."""
SUITE_ALARM_REPEATS_MS = (600_000, 3_600_000)
"""Repeat intervals of critical and non-critical alarm tones in the known state."""


class TargetUnusable(RuntimeError):
    """The target cannot be brought to the known state (e.g. its battery is at end of service)."""


@dataclass(frozen=True)
class Baseline:
    """What the device had when the run started, restored by every reset."""

    limits: m.DrugLimits
    low_reservoir_threshold_nl: int
    catheter_volume_nl: int
    reservoir_capacity_nl: int
    step_volume_nl: int


class RawLink:
    """Bytes to and from the target, for tests of what the programmer never sends
    (``hil.conformance.raw`` builds and reads the frames)."""

    def __init__(self, port: PortView) -> None:
        self.port = port

    def send(self, data: bytes) -> None:
        self.port.write(data)

    def drain(self) -> None:
        """Discard whatever is waiting for the raw link (left-overs of an earlier test)."""
        self.port.discard()


class CommandIds:
    """A programmer's source of command ids: fresh random ones, or one chosen id (``reusing``).

    Every id handed out is kept in ``issued``, in order."""

    def __init__(self) -> None:
        self.chosen: int | None = None
        self.issued: list[int] = []

    def __call__(self) -> int:
        command_id = self.chosen if self.chosen is not None else new_command_id()
        self.issued.append(command_id)
        return command_id

    @property
    def last(self) -> int:
        return self.issued[-1]

    @contextlib.contextmanager
    def reusing(self, command_id: int) -> Iterator[None]:
        """Every command sent inside the block carries ``command_id``."""
        self.chosen = command_id
        try:
            yield
        finally:
            self.chosen = None


class DeviceUnderTest:
    """A connected target: its identity, features, baseline and one programmer per role."""

    def __init__(self, target: Target, port: SerialPort, keys: KeySet) -> None:
        self.target = target
        self.keys = keys
        self._shared = SharedPort(port)
        self._raw_view = self._shared.view()
        self._programmers: dict[Role, Programmer] = {}
        self.raw = RawLink(self._raw_view)
        probe = self.programmer(Role.CLINICIAN)
        identity = probe.identity
        assert identity is not None
        self.identity: m.IdentifyReply = identity
        announced = Feature(identity.features)
        if target.features is not None and target.features & ~announced:
            missing = ", ".join(feature_names(target.features & ~announced))
            raise TargetError(f"target {target.name} lists features its IDENTIFY reply does not announce: {missing}")
        self.features: Feature = announced if target.features is None else target.features
        info = probe.interrogate()
        self.interrogate_at_start = info
        self.baseline = Baseline(
            limits=probe.read_limits(),
            low_reservoir_threshold_nl=info.low_reservoir_threshold_nl,
            catheter_volume_nl=info.catheter_volume_nl,
            reservoir_capacity_nl=info.reservoir_capacity_nl,
            step_volume_nl=info.step_volume_nl,
        )

    @classmethod
    def connect(cls, target: Target) -> DeviceUnderTest:
        keys = KeySet.load(target.key_file) if target.key_file is not None else TEST_KEY_SET
        port = open_port(target.url, dtr=target.dtr, rts=target.rts)
        try:
            return cls(target, port, keys)
        except BaseException:
            port.close()
            raise

    def close(self) -> None:
        for prog in self._programmers.values():
            with contextlib.suppress(ProgrammerError, OSError):
                prog.close()
        self._programmers.clear()
        self._shared.close()

    # ------------------------------------------------------------------ programmers

    def has(self, *features: Feature) -> bool:
        return all(f in self.features for f in features)

    def programmer(self, role: Role) -> Programmer:
        """The suite's programmer of ``role`` on this target (opened on first use, then kept)."""
        prog = self._programmers.get(role)
        if prog is None:
            prog = self.new_programmer(role)
            self._programmers[role] = prog
        return prog

    def new_programmer(self, role: Role, **options: Unpack[ProgrammerOptions]) -> Programmer:
        """A programmer of its own (a session of its own) on the shared port; the caller closes it.
        ``options`` go to ``Programmer`` (``reply_timeout_ms``, ``retries``, ``clock``...)."""
        view = self._shared.view()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PublishedKeysWarning)
            prog = Programmer(view, keys=self.keys, role=role, url=self.target.url, **options)
        view.session_id = lambda: prog.session_id
        prog.connect()
        return prog

    @contextlib.contextmanager
    def programmer_on(
        self, port: SerialPort, role: Role = Role.CLINICIAN, **options: Unpack[ProgrammerOptions]
    ) -> Iterator[Programmer]:
        """A programmer on a wrapper of the shared port (a fault-injecting link), closed after."""
        timeout = self._raw_view.timeout
        prog = Programmer(port, keys=self.keys, role=role, url=self.target.url, **options)
        try:
            prog.connect()
            yield prog
        finally:
            with contextlib.suppress(ProgrammerError, OSError):
                prog.close()
            self._raw_view.timeout = timeout  # a wrapper (FaultyLink) may have changed it

    @property
    def port(self) -> SerialPort:
        """The raw link's view of the shared port: wrap it (FaultyLink) for ``programmer_on``;
        frames of sessions the suite's programmers do not hold come here when it wrote last."""
        return self._raw_view

    @property
    def clinician(self) -> Programmer:
        return self.programmer(Role.CLINICIAN)

    @property
    def patient(self) -> Programmer:
        return self.programmer(Role.PATIENT)

    @property
    def test(self) -> Programmer:
        """The test role's programmer (callers declare ``requires("test_role")``)."""
        return self.programmer(Role.TEST)

    def clear_notifications(self, prog: Programmer) -> None:
        """Take in every ALARM_NOTIFY the pump has sent ``prog``'s session so far (one STATUS
        exchange reads them), then forget them: what ``prog.notifications`` holds after this
        was sent after this."""
        prog.status()
        prog.notifications.clear()

    def refresh_sessions(self) -> None:
        """Let the suite's programmers find out now whether the pump ended their sessions.

        A pump holds a few sessions and ends the one idle longest when another opens (SPEC.md,
        "Timing and retries"): a test that opens programmers of its own can end the suite's. A
        request without effect (STATUS) opens a lost session again, where a command with effect
        sent into it could not always be settled (once 8 newer commands fill the pump's
        outcomes, for a role that may not read them). The reset calls this first."""
        for prog in self._programmers.values():
            prog.status()

    def advance(self, delta_ms: int) -> m.ClockReply:
        """Move the pump's clock ``delta_ms`` forward (test role, virtual time)."""
        return self.test.advance_time(delta_ms)

    def record_steps(self, duration_ms: int, rate_nl_per_day: int) -> list[int]:
        """Advance the held clock ``duration_ms`` and return the time of every motor step taken
        meanwhile, read from the step log as the clock goes (test role, virtual time, step log).
        The clock moves in chunks of at most 64 steps at ``rate_nl_per_day`` (the highest rate
        that runs), so no step leaves the log's ring before it is read; a lost step fails."""
        first = self.test.read_step_log(0, 1).steps_total
        chunk_ms = max(1, 64 * self.baseline.step_volume_nl * MS_PER_DAY // max(1, rate_nl_per_day))
        times: list[int] = []
        left_ms = duration_ms
        while left_ms > 0:
            self.advance(min(chunk_ms, left_ms))
            left_ms -= min(chunk_ms, left_ms)
            while True:
                page = self.test.read_step_log(first + len(times))
                if page.first_step != first + len(times):
                    raise AssertionError(f"the step log lost steps {first + len(times)}..{page.first_step - 1}")
                times.extend(s.at_ms for s in page.steps)
                if not page.steps or page.first_step + len(page.steps) >= page.steps_total:
                    break
        return times

    def now_ms(self) -> int:
        return self.clinician.status().uptime_ms

    # ------------------------------------------------------------------ the known state

    def reset(self) -> None:
        """Bring the target to the known state (module docstring); TargetUnusable if it cannot be."""
        c = self.clinician
        self.raw.drain()
        self.refresh_sessions()
        if self.has(Feature.TEST_ROLE):
            self.test.hold_clock(True)
        status = c.status()
        alarms = AlarmSet(status.alarms)
        if status.battery_state is BatteryState.EOS or AlarmSet.EOS in alarms:
            raise TargetUnusable(f"target {self.target.name}'s battery is at end of service: restart the target")
        if AlarmSet.MOTOR_STALL in alarms:
            if not self.has(Feature.FAULT_INJECTION):
                raise TargetUnusable(f"target {self.target.name} reports a motor stall the suite cannot clear")
            self.test.inject_fault(FaultKind.MOTOR_STALL_CLEAR)
        if status.staged:
            c.abort()
        if status.bolus_active is BolusKind.SINGLE:  # a SINGLE_BOLUS program: CANCEL_BOLUS cannot stop it
            self.program(m.Program(TherapyMode.STOPPED, 0, 0, 0, 0, 0, ()))
        elif status.bolus_active is not BolusKind.NONE:
            c.cancel_bolus()
        b = self.baseline
        c.set_limits(b.limits)
        c.configure_alarms(
            low_reservoir_threshold_nl=b.low_reservoir_threshold_nl,
            critical_repeat_ms=SUITE_ALARM_REPEATS_MS[0],
            non_critical_repeat_ms=SUITE_ALARM_REPEATS_MS[1],
        )
        c.refill(
            aspirated_volume_nl=c.status().reservoir_estimate_nl,
            added_volume_nl=b.reservoir_capacity_nl,
            drug=b.limits.drug,
            concentration_ug_per_ml=SUITE_CONCENTRATION_UG_PER_ML,
            catheter_volume_nl=b.catheter_volume_nl,
            confirmations=RefillConfirmation.NEEDLE_IN_RESERVOIR | RefillConfirmation.ASPIRATION_CONFIRMED,
        )
        if self.has(Feature.PATIENT_BOLUS):
            staged = c.stage_patient_bolus(m.PatientBolusSettings(0, 0, 0, 0, 0))
            c.commit(staged.stage_token)
        self.program(continuous(SUITE_DOSE_NG_PER_DAY), override_soft_limits=True)
        left = AlarmSet(c.status().alarms) & ~AlarmSet.ERI
        if left:
            raise TargetUnusable(f"target {self.target.name} still has alarms after a reset: {left!r}")
        for prog in self._programmers.values():
            prog.notifications.clear()

    def program(self, program: m.Program, *, override_soft_limits: bool = False) -> m.CommitReply:
        """Stage and commit a basal program (both steps), as a clinician."""
        staged = self.clinician.stage_program(program, override_soft_limits=override_soft_limits)
        return self.clinician.commit(staged.stage_token)


def continuous(dose_ng_per_day: int, concentration_ug_per_ml: int = SUITE_CONCENTRATION_UG_PER_ML) -> m.Program:
    return m.Program(TherapyMode.CONTINUOUS, concentration_ug_per_ml, dose_ng_per_day, 0, 0, 0, ())


@dataclass
class Refusal:
    """What ``refused`` caught: the pump's error reply."""

    error: PumpRefused | None = None


@contextlib.contextmanager
def refused(code: ErrorCode) -> Iterator[Refusal]:
    """``with refused(ErrorCode.HARD_LIMIT) as r: ...``: the block must end in that refusal."""
    caught = Refusal()
    try:
        yield caught
    except PumpRefused as exc:
        if exc.code is not code:
            got = exc.code.name if exc.code is not None else "an unknown code"
            raise AssertionError(f"expected a refusal with {code.name}, got {got}: {exc}") from exc
        caught.error = exc
        return
    raise AssertionError(f"expected a refusal with {code.name}; the request succeeded")
