"""Generated command sequences against every invariant of the pump model at once.

Each scenario is a fresh pump (20 or 40 mL, step volume and stroke error from small to large,
any low-reservoir threshold and wall clock) driven by a list of actions: advances of every
size and to the next event, refills (same or other concentration, tiny to full), programs of
every mode, PRIMING/BRIDGE/PATIENT boluses, cancels, clock changes either way, stalls, resets,
low battery resets, alarm settings. ``pump_strategies.Observer`` checks after every action:
conservation, the integral against THE ideal, the lag, the estimate, reservoir alarms at
their step, the basal rate against the program, the bolus rules, EOS and the step times.
"""

from __future__ import annotations

from hypothesis import given

from firmware_model import Pump

from .pump_strategies import Action, Observer, scenarios


@given(scenarios())
def test_valid_sequences_keep_every_invariant(scenario: tuple[Pump, list[Action]]) -> None:
    """After every action of a generated sequence: true + delivered + removed == filled; the
    integral equals ideal_nlms(rate_pieces) and exceeds steps * Q by less than Q; the estimate
    is the last fill minus the commanded steps and the truth differs by the stroke error times
    the steps (until dry); LOW/EMPTY are active exactly when the estimate is at or below the
    threshold / under one step, and were raised at the step that crossed; the motor never moves
    while empty, stalled or at EOS; no bolus runs during a critical alarm; the basal rate is the
    program's whatever the boluses do; every bolus ends once; the newest step is reported at the
    first ms the ideal reached it."""
    pump, actions = scenario
    Observer(pump).run(actions)


@given(scenarios(arbitrary=True))
def test_arbitrary_commands_refuse_cleanly(scenario: tuple[Pump, list[Action]]) -> None:
    """With commands of any wire-range arguments mixed in (wrong concentrations, unused fields,
    doses past every limit, bad flex schedules, unknown bolus kinds, negative clocks, memory
    faults, inactive alarms): nothing but RefusalError is ever raised, every refusal leaves
    therapy_digest() identical, and all the invariants above still hold."""
    pump, actions = scenario
    observer = Observer(pump)
    observer.run(actions)
