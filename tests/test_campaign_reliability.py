"""The reliability campaigns at CI size, and proof that each of them can fail."""

from __future__ import annotations

from typing import Any

import pytest

import firmware_model.device
import firmware_model.nvm
from firmware_model.device import Device
from firmware_model.nvm import BootReport, NvStore, encode_copy
from firmware_model.pump import Pump
from firmware_model.units import MS_PER_DAY
from hil.campaigns import REGISTRY, Budget
from hil.campaigns import reliability as r
from programmer import PumpRefused, ReplyLost, UncertainOutcome
from protocol_spec import messages as m
from protocol_spec.enums import ErrorCode, MsgType

SEED = 1


@pytest.mark.parametrize("name", ["lost-replies", "power-loss", "memory-corruption", "overload"])
def test_the_campaign_meets_its_target_at_ci_size(name: str) -> None:
    c = REGISTRY[name]
    size = c.size("ci")
    outcome = c.run(size, Budget(None), SEED)
    assert outcome.done == size
    assert outcome.ok, (outcome.figures, outcome.note)


def test_lost_replies_is_reproducible_and_does_faults() -> None:
    a = r.lost_replies(6, Budget(None), 3)
    assert a == r.lost_replies(6, Budget(None), 3)
    assert a.figures["frames_dropped"] > 0
    assert a.figures["retries"] > 0


def test_power_loss_at_full_size_cuts_at_every_case_and_says_it_is_complete() -> None:
    """The full size is every write point of the full scenario, each also with a second cut at
    each write of the boot after it: when the scenario changes, so must the size."""
    c = REGISTRY["power-loss"]
    assert c.sizes[1] == sum(1 for _ in r.power_cut_cases(r.FULL_SCENARIO, double=True))
    short_cases = sum(1 for _ in r.power_cut_cases(r.SHORT_SCENARIO, double=False))
    outcome = r.power_loss(short_cases, Budget(None), SEED)  # every case of the short scenario
    assert (outcome.done, outcome.exhausted) == (short_cases, True)
    assert not r.power_loss(short_cases, Budget(0), SEED).exhausted


def test_a_budget_stops_a_campaign_cleanly() -> None:
    outcome = r.overload(10_000, Budget(0), SEED)
    assert outcome.done == 0
    assert not outcome.ok


# ---------------------------------------------------------------------- the checkers


def test_the_operation_checker_finds_doubles_and_disagreements() -> None:
    grant = m.PatientBolusGrant(25_000, 300_000, 0, 3)
    assert r.check_op(r.OpCheck("patient", grant, 1)) == []
    assert r.check_op(r.OpCheck("patient", grant, 2)) == ["double", "disagree"]
    assert r.check_op(r.OpCheck("program", m.CommitReply(1, 0), 0)) == ["disagree"]
    refused = PumpRefused(ErrorCode.HARD_LIMIT, msg_type=MsgType.COMMIT)
    assert r.check_op(r.OpCheck("program", refused, 1)) == ["disagree"]
    assert r.check_op(r.OpCheck("program", refused, 0, program_ok=False)) == ["partial"]
    unsure = UncertainOutcome(5, MsgType.REFILL)
    assert r.check_op(r.OpCheck("refill", unsure, 1, listed=ErrorCode.OK)) == []
    assert r.check_op(r.OpCheck("refill", unsure, 1, listed=None)) == ["disagree"]
    stage_lost = ReplyLost(6, MsgType.STAGE_BOLUS, m.CommandOutcome(6, MsgType.STAGE_BOLUS, ErrorCode.OK, 1_000))
    assert r.check_op(r.OpCheck("priming", stage_lost, 0)) == [], "the commit was never sent"
    assert r.check_op(r.OpCheck("priming", stage_lost, 1)) == ["disagree"]


def test_the_power_cut_checker_finds_counters_that_go_back() -> None:
    device, *_ = r._run_scenario(r.SHORT_SCENARIO[:2], None)
    old = r._snapshot(device)
    assert r.check_cut(r.CutCheck(old, old, old, old.durable_log_next_seq + 1, True)) == ["boot counter"]
    worse = r.Snapshot(**{**old.__dict__, "steps": old.steps + 2, "outcomes": frozenset()})
    got = r.Snapshot(**{**old.__dict__, "boot_counter": old.boot_counter + 1})
    assert r.check_cut(r.CutCheck(worse, worse, got, old.durable_log_next_seq, False)) == ["steps", "outcomes", "log"]


# ---------------------------------------------------------------------- broken models fail the campaigns


def test_a_pump_that_forgets_command_ids_fails_lost_replies(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Device._effectful

    def forgetful(self: Device, packet: Any, session: Any) -> None:
        self._outcomes.clear()
        original(self, packet, session)

    monkeypatch.setattr(Device, "_effectful", forgetful)
    outcome = r.lost_replies(40, Budget(None), SEED)
    assert not outcome.ok
    assert outcome.figures["double_boluses"] + outcome.figures["double_effects"] + outcome.figures["disagreements"]


def test_a_memory_that_keeps_one_copy_fails_power_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    def one_copy(self: NvStore, name: str, payload: bytes, on_committed: Any = None) -> None:
        seq = (self.seq(name) or 0) + 1
        self._physical_write(self.layout.copy_offsets(name)[0], encode_copy(self.layout.record(name), seq, payload))
        if on_committed is not None:
            on_committed()

    monkeypatch.setattr(NvStore, "write", one_copy)
    outcome = r.power_loss(12, Budget(None), SEED)
    assert not outcome.ok, outcome.figures
    assert outcome.figures["not_old_or_new"] > 0


def test_a_boot_that_ignores_bad_copies_fails_memory_corruption(monkeypatch: pytest.MonkeyPatch) -> None:
    real_boot = firmware_model.nvm.boot

    def blind_boot(*args: Any, **kwargs: Any) -> tuple[NvStore, BootReport]:
        store, _ = real_boot(*args, **kwargs)
        return store, BootReport()

    monkeypatch.setattr(firmware_model.device, "boot", blind_boot)
    outcome = r.memory_corruption(60, Budget(None), SEED)
    assert not outcome.ok
    assert outcome.figures["undetected"] + outcome.figures["wrong"] > 0


def test_a_pump_without_the_daily_hard_limit_fails_overload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Pump, "_check_daily_dose", lambda self, **_: None)
    outcome = r.overload(3_000, Budget(None), SEED)
    assert not outcome.ok
    assert outcome.figures["accepted_beyond_hard"] > 0


def test_a_power_cut_during_a_test_time_jump_keeps_the_accounting_within_a_step() -> None:
    scenario = (*r.SHORT_SCENARIO[:2], r._tester(m.AdvanceTime(MS_PER_DAY)))
    first, total = r._write_points(scenario)
    # the first write points of the jump, then a sample: each cut replays the scenario up to it
    cuts = [*range(first, first + 12), *range(first + 12, total, max(1, (total - first) // 24))]
    problems = {cut: r._one_cut(scenario, cut, None) for cut in cuts}
    assert not {cut: p for cut, p in problems.items() if p}
