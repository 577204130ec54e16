"""Lost replies over a link against a target (the in-process virtual pump behind pyserial's
interface), and proof that the run over a link can fail."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest

from hil.campaigns import load_all
from hil.conformance import DeviceUnderTest

from .virtual_target import connected, device_of, run_over_link

SEED = 1


@pytest.fixture
def pump() -> Iterator[DeviceUnderTest]:
    with connected() as dut:
        yield dut


def test_lost_replies_over_a_link_meets_its_target_at_ci_size(pump: DeviceUnderTest) -> None:
    outcome = run_over_link("lost-replies", pump, SEED)
    assert outcome.done == load_all()["lost-replies"].size("ci", over_link=True)
    assert outcome.ok, (outcome.figures, outcome.note)
    assert outcome.figures["operations"] > 0
    assert outcome.figures["frames_drop_to_pump"] + outcome.figures["frames_drop_from_pump"] > 0


class _Forgetful(OrderedDict[int, Any]):
    """An exactly-once table that never finds a command: every retry runs the command again."""

    def get(self, key: int, default: Any = None) -> Any:
        del key
        return default


def test_a_target_that_forgets_its_command_ids_fails_lost_replies(pump: DeviceUnderTest) -> None:
    device_of(pump)._outcomes = _Forgetful()
    outcome = run_over_link("lost-replies", pump, SEED, 8)
    assert not outcome.ok
    assert outcome.figures["double_effects"] + outcome.figures["disagreements"] > 0
