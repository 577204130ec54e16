"""Reliability and security campaigns: each row of the safety table as runnable evidence.

Every campaign drives the real code (the device behind its protocol, the programmer, the codec,
the non-volatile memory) with one kind of fault or attack, counts what happened, and says
whether the row's target was met: "0 accepted in 1,000,000 forged frames", "100 % recovered
after a power cut at each of 412 write points". Each has a CI size (``make test`` runs it) and a
full size (``make campaign``), a time budget (a campaign stops early, cleanly, and reports how
far it got) and a seed (the same seed, the same run).

    pumprig campaign --list
    pumprig campaign replay forgery --size full --budget 10m
    pumprig campaign --size full --out bench/campaign.json --readme README.md   # make campaign

``bench/campaign.json`` holds the last full run; the README's table is rendered from it
(``render_table``) and a test keeps the two in step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hil.conformance import DeviceUnderTest

__all__ = [
    "README_BEGIN",
    "README_END",
    "REGISTRY",
    "SIZES",
    "Budget",
    "Campaign",
    "Outcome",
    "campaign",
    "load_all",
    "over_link",
    "render_table",
    "run_campaign",
    "update_readme",
]

SIZES = ("ci", "full")
README_BEGIN = "<!-- campaign table: rendered from bench/campaign.json by `pumprig campaign --readme`; do not edit -->"
README_END = "<!-- end of campaign table -->"


class Budget:
    """A campaign's time budget: check ``expired()`` between units of work (never inside one)."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._deadline = None if seconds is None else clock() + seconds

    def expired(self) -> bool:
        return self._deadline is not None and self._clock() >= self._deadline


@dataclass
class Outcome:
    """What a campaign did: ``done`` units of work (fewer than asked if the budget ran out),
    its figures (counts, by name), and whether the row's target was met."""

    done: int
    figures: dict[str, int | float]
    ok: bool
    note: str = ""
    exhausted: bool = False
    """Every case the campaign has was run (a campaign of enumerated cases, such as every write
    point): complete, however many fewer than the size asked."""


@dataclass(frozen=True)
class Campaign:
    name: str
    """Its name on the command line: ``replay``, ``malformed-frames``..."""
    row: str
    """The row of the safety table it shows (fault or threat)."""
    target: str
    """The figure the row asks for, in words."""
    unit: str
    """What ``size`` counts: frames, schedules, write points..."""
    sizes: tuple[int, int]
    """(CI size, full size)."""
    run: Callable[[int, Budget, int], Outcome] = field(repr=False)
    """``run(size, budget, seed)``."""
    link: LinkRun | None = field(default=None, repr=False)
    """The same row over a link against any target (``over_link``), or None."""
    link_sizes: tuple[int, int] = (0, 0)
    """(CI size, full size) over a link: a real link carries far fewer frames a second."""
    link_needs: tuple[str, ...] = ()
    """Features the target must announce (names of ``Feature``) for the run over a link."""

    def size(self, which: str, *, over_link: bool = False) -> int:
        return (self.link_sizes if over_link else self.sizes)[SIZES.index(which)]


LinkRun = Callable[[int, Budget, int, "DeviceUnderTest"], Outcome]
"""``run(size, budget, seed, pump)``: a campaign through the protocol alone, on a connected target."""

REGISTRY: dict[str, Campaign] = {}


def campaign(
    name: str, *, row: str, target: str, unit: str, sizes: tuple[int, int]
) -> Callable[[Callable[[int, Budget, int], Outcome]], Callable[[int, Budget, int], Outcome]]:
    """Register ``run(size, budget, seed) -> Outcome`` as a campaign."""

    def register(run: Callable[[int, Budget, int], Outcome]) -> Callable[[int, Budget, int], Outcome]:
        if name in REGISTRY:
            raise ValueError(f"campaign {name!r} is registered twice")
        REGISTRY[name] = Campaign(name, row, target, unit, sizes, run)
        return run

    return register


def over_link(name: str, *, sizes: tuple[int, int], needs: tuple[str, ...] = ()) -> Callable[[LinkRun], LinkRun]:
    """Register ``run(size, budget, seed, pump)`` as campaign ``name`` (registered in-process
    first) over a link: black-box, through the protocol alone, on any target that announces
    the features ``needs``."""

    def register(run: LinkRun) -> LinkRun:
        c = REGISTRY.get(name)
        if c is None:
            raise ValueError(f"campaign {name!r} must be registered before its run over a link")
        if c.link is not None:
            raise ValueError(f"campaign {name!r} has a run over a link already")
        REGISTRY[name] = replace(c, link=run, link_sizes=sizes, link_needs=needs)
        return run

    return register


def run_campaign(
    c: Campaign, size: int, budget_s: float | None, seed: int, pump: DeviceUnderTest | None = None
) -> dict[str, Any]:
    """Run one campaign (over a link to ``pump`` if given); its entry in bench/campaign.json."""
    started = time.monotonic()
    if pump is None:
        outcome = c.run(size, Budget(budget_s), seed)
    else:
        if c.link is None:
            raise ValueError(f"campaign {c.name!r} has no run over a link")
        outcome = c.link(size, Budget(budget_s), seed, pump)
    extra: dict[str, Any] = {}
    if pump is not None:
        i = pump.interrogate_at_start
        extra = {
            "target": pump.target.name,
            "url": pump.target.url,
            "device": f"{i.model} {i.serial_number} firmware {i.firmware_major}.{i.firmware_minor}.{i.firmware_patch}",
        }
    return {
        "name": c.name,
        "row": c.row,
        "target": c.target,
        "unit": c.unit,
        "size": size,
        "done": outcome.done,
        "complete": outcome.done >= size or outcome.exhausted,
        "figures": outcome.figures,
        "ok": outcome.ok,
        "note": outcome.note,
        "seed": seed,
        "budget_s": budget_s,
        "wall_s": round(time.monotonic() - started, 2),
        **extra,
    }


def _figures(figures: dict[str, Any]) -> str:
    def one(name: str, value: Any) -> str:
        return f"{name.replace('_', ' ')} {value:,}" if isinstance(value, int) else f"{name.replace('_', ' ')} {value}"

    return ", ".join(one(k, v) for k, v in figures.items())


def render_table(entries: Iterable[dict[str, Any]]) -> str:
    """The README's table (Markdown) from bench/campaign.json's entries."""
    lines = [
        "| fault or threat | target | run | figures | met |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        budget = e.get("budget_s")
        stopped = f" (stopped by the budget of {budget:g} s)" if budget is not None else " (stopped by the budget)"
        run = f"{e['done']:,} of {e['size']:,} {e['unit']}" + ("" if e["complete"] else stopped)
        lines.append(
            f"| {e['row']} | {e['target']} | {run}, {e['wall_s']} s | {_figures(e['figures'])} | "
            f"{'yes' if e['ok'] else '**no**: ' + (e['note'] or 'see bench/campaign.json')} |"
        )
    return "\n".join(lines)


def update_readme(readme: str, table: str) -> str:
    """``readme`` with the text between the campaign markers replaced by ``table``."""
    if README_BEGIN not in readme or README_END not in readme:
        raise ValueError("the README has no campaign table markers")
    head, rest = readme.split(README_BEGIN, 1)
    _old, tail = rest.split(README_END, 1)
    return f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}"


MODULES = ("frames", "security", "reliability", "link_frames", "link_security", "link_reliability")
"""The modules that register campaigns (``load_all`` imports them)."""


def load_all() -> dict[str, Campaign]:
    """Import every campaign module; the registry, in registration order."""
    import importlib  # noqa: PLC0415 - the modules import this package: load them after it

    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return REGISTRY
