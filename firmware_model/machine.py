"""The therapy state machine: one table, Enum states, drawn into docs/pump_states.md.

The state is the basal therapy the pump runs (plus END_OF_SERVICE, which nothing leaves).
Conditions that stop the motor without changing the therapy (an empty reservoir, a motor
stall) are alarms, not states: when they clear, the same therapy resumes.

    python -m firmware_model.machine [--write | --check]   # regenerate / verify the diagram
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Any

from transitions import Machine

from protocol_spec.enums import TherapyMode

__all__ = ["DIAGRAM_PATH", "MODE_OF_STATE", "TRANSITIONS", "PumpState", "TherapyMachine", "mermaid"]


class PumpState(enum.Enum):
    STOPPED = "stopped"
    MINIMUM_RATE = "minimum_rate"
    CONTINUOUS = "continuous"
    FLEX = "flex"
    SINGLE_BOLUS = "single_bolus"
    END_OF_SERVICE = "end_of_service"


_RUNNING = [s for s in PumpState if s is not PumpState.END_OF_SERVICE]

TRANSITIONS: list[dict[str, Any]] = [
    # a committed program (the two-step stage + commit happens before this)
    {"trigger": "run_stopped", "source": _RUNNING, "dest": PumpState.STOPPED},
    {"trigger": "run_minimum_rate", "source": _RUNNING, "dest": PumpState.MINIMUM_RATE},
    {"trigger": "run_continuous", "source": _RUNNING, "dest": PumpState.CONTINUOUS},
    {"trigger": "run_flex", "source": _RUNNING, "dest": PumpState.FLEX},
    {"trigger": "run_single_bolus", "source": _RUNNING, "dest": PumpState.SINGLE_BOLUS},
    # the single bolus mode reverts to stopped when its bolus is done
    {"trigger": "single_bolus_done", "source": PumpState.SINGLE_BOLUS, "dest": PumpState.STOPPED},
    # low battery reset or an unrecoverable memory error: the safe state needs no concentration
    {"trigger": "safe_state", "source": _RUNNING, "dest": PumpState.MINIMUM_RATE},
    # the battery is exhausted: the motor stops for good
    {"trigger": "end_of_service", "source": _RUNNING, "dest": PumpState.END_OF_SERVICE},
]

MODE_OF_STATE: dict[PumpState, TherapyMode] = {
    PumpState.STOPPED: TherapyMode.STOPPED,
    PumpState.MINIMUM_RATE: TherapyMode.MINIMUM_RATE,
    PumpState.CONTINUOUS: TherapyMode.CONTINUOUS,
    PumpState.FLEX: TherapyMode.FLEX,
    PumpState.SINGLE_BOLUS: TherapyMode.SINGLE_BOLUS,
    PumpState.END_OF_SERVICE: TherapyMode.STOPPED,
}

RUN_TRIGGER: dict[TherapyMode, str] = {
    TherapyMode.STOPPED: "run_stopped",
    TherapyMode.MINIMUM_RATE: "run_minimum_rate",
    TherapyMode.CONTINUOUS: "run_continuous",
    TherapyMode.FLEX: "run_flex",
    TherapyMode.SINGLE_BOLUS: "run_single_bolus",
}


class TherapyMachine:
    """Holds the state; ``fire`` a trigger of the table (an invalid one raises MachineError)."""

    def __init__(self, initial: PumpState = PumpState.STOPPED) -> None:
        self.state: PumpState = initial
        self._machine = Machine(
            model=self,
            states=PumpState,
            transitions=TRANSITIONS,
            initial=initial,
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )

    def fire(self, trigger: str) -> None:
        self._machine.events[trigger].trigger(self)

    def can(self, trigger: str) -> bool:
        return self.state in _sources(trigger)


def _sources(trigger: str) -> list[PumpState]:
    out: list[PumpState] = []
    for t in TRANSITIONS:
        if t["trigger"] == trigger:
            src = t["source"]
            out.extend(src if isinstance(src, list) else [src])
    return out


def mermaid() -> str:
    """The state diagram, generated from TRANSITIONS."""
    lines = ["stateDiagram-v2", f"    [*] --> {PumpState.STOPPED.name}"]
    for t in TRANSITIONS:
        src = t["source"] if isinstance(t["source"], list) else [t["source"]]
        lines.extend(f"    {s.name} --> {t['dest'].name}: {t['trigger']}" for s in src if s is not t["dest"])
    lines.append(f"    {PumpState.END_OF_SERVICE.name} --> [*]")
    return "\n".join(lines)


DIAGRAM_PATH = Path(__file__).resolve().parent.parent / "docs" / "pump_states.md"


def diagram_document() -> str:
    return (
        "# Pump therapy states\n\n"
        "Generated from `firmware_model/machine.py` (`python -m firmware_model.machine --write`);\n"
        "`make test` fails if this file is stale. Self-transitions (re-programming the same mode)\n"
        "are allowed and not drawn. Empty reservoir and motor stall are alarms that hold the\n"
        "motor without changing the state.\n\n"
        "```mermaid\n" + mermaid() + "\n```\n"
    )


def main(argv: list[str]) -> int:
    text = diagram_document()
    if "--write" in argv:
        DIAGRAM_PATH.parent.mkdir(exist_ok=True)
        DIAGRAM_PATH.write_text(text)
        return 0
    if "--check" in argv:
        current = DIAGRAM_PATH.read_text() if DIAGRAM_PATH.exists() else ""
        if current != text:
            sys.stderr.write(f"{DIAGRAM_PATH} is stale: run python -m firmware_model.machine --write\n")
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
