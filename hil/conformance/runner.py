"""Run the conformance suite against targets and collect results per test and per requirement.

    result = run_conformance([target], profile="full", junit=Path("results.xml"))
    result.ok                     # every required test passed
    result.requirement_status()   # {"PRT-FRM-001": "passed", ...}

The suite runs in this process under pytest with the plugin; this module adds a collector that
turns pytest's reports into ``TestResult`` values (and calls ``on_result`` for a progress bar).
A test that fails, errors, or passes while expected to fail (strict) makes the run fail; a test
skipped because the target lacks a feature is not required; an expected failure is reported.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from protocol_spec import __version__
from protocol_spec.jsonable import to_jsonable

from .dut import DeviceUnderTest
from .plugin import FIGURES_KEY, Figure, item_name, requirement_ids
from .requirements import Requirement, in_profile, load_requirements
from .targets import Target, feature_names

__all__ = [
    "OUTCOMES",
    "Figure",
    "RunResult",
    "Selection",
    "TargetInfo",
    "TestResult",
    "collect_suite",
    "dump_json",
    "group_by_requirement",
    "run_conformance",
    "suite_dir",
]

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
_FAILING = frozenset({"failed", "error", "xpassed"})
_STRICT_XPASS = "[XPASS(strict)]"


def suite_dir() -> Path:
    return Path(__file__).with_name("suite")


@dataclass
class TestResult:
    nodeid: str
    name: str
    """``module.py::function``"""
    target: str
    requirements: tuple[str, ...]
    outcome: str = "error"
    """Until pytest reports on it: a collected test that never ran fails the run."""
    duration_s: float = 0.0
    message: str = "did not run (the run was interrupted)"
    """The skip or xfail reason, or the failure's last line."""
    details: str = ""
    """The failure's full text."""
    figures: list[Figure] = field(default_factory=list)


@dataclass(frozen=True)
class TargetInfo:
    name: str
    url: str
    description: str
    identify: dict[str, Any]
    features: list[str]


@dataclass
class RunResult:
    version: str
    profile: str
    seed: int
    targets: list[TargetInfo]
    requirements: dict[str, Requirement]
    results: list[TestResult]
    collection_errors: list[str]
    started_at: str
    duration_s: float
    command: str = ""

    @property
    def counts(self) -> dict[str, int]:
        return {o: sum(1 for r in self.results if r.outcome == o) for o in OUTCOMES}

    @property
    def ok(self) -> bool:
        """Every required test passed: none failed, errored or passed unexpectedly, and some ran."""
        c = self.counts
        return not self.collection_errors and not any(c[o] for o in _FAILING) and c["passed"] > 0

    def in_scope(self) -> list[Requirement]:
        return [r for r in self.requirements.values() if in_profile(r.profile, self.profile)]

    def tests_of(self, requirement_id: str) -> list[TestResult]:
        return [t for t in self.results if requirement_id in t.requirements]

    def requirement_status(self) -> dict[str, str]:
        """Per requirement of the profile: failed > xpassed > error > passed > xfailed > skipped > not run."""
        status: dict[str, str] = {}
        for req in self.in_scope():
            outcomes = {t.outcome for t in self.tests_of(req.id)}
            for o in ("failed", "error", "xpassed", "passed", "xfailed", "skipped"):
                if o in outcomes:
                    status[req.id] = "failed" if o in _FAILING else o
                    break
            else:
                status[req.id] = "not run"
        return status

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = to_jsonable(asdict(self))
        data["ok"] = self.ok
        data["counts"] = self.counts
        data["requirement_status"] = self.requirement_status()
        for r in data["results"]:
            r.pop("figures", None)
        return data


class _Collector:
    """A pytest plugin object: results per test, in the order they finish."""

    def __init__(self, on_result: Callable[[TestResult, int], None] | None) -> None:
        self.on_result = on_result
        self.results: dict[str, TestResult] = {}
        self.items: dict[str, pytest.Item] = {}
        self.collection_errors: list[str] = []
        self.connected: list[DeviceUnderTest] = []

    def pytest_pumprig_connected(self, dut: DeviceUnderTest) -> None:
        self.connected.append(dut)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collection_errors.append(f"{report.nodeid}: {report.longreprtext}")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            self.items[item.nodeid] = item
            callspec = getattr(item, "callspec", None)
            target = callspec.params.get("pump_connection") if callspec is not None else None
            self.results[item.nodeid] = TestResult(
                nodeid=item.nodeid,
                name=item_name(item),
                target=target.name if isinstance(target, Target) else "",
                requirements=requirement_ids(item),
            )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        result = self.results.get(report.nodeid)
        if result is None:
            return
        result.duration_s += report.duration
        xfail_reason = getattr(report, "wasxfail", None)
        if report.when == "call" or (report.when == "setup" and not report.passed):
            strict_xpass = report.failed and report.longreprtext.startswith(_STRICT_XPASS)
            if strict_xpass:
                result.outcome = "xpassed"
                result.message = report.longreprtext.removeprefix(_STRICT_XPASS).strip()
            elif xfail_reason is not None:
                result.outcome = "xfailed" if report.skipped else "xpassed"
                result.message = str(xfail_reason)
            elif report.skipped:
                result.outcome = "skipped"
                result.message = _skip_reason(report)
            elif report.failed:
                result.outcome = "failed" if report.when == "call" else "error"
                result.details = report.longreprtext
                result.message = _last_line(report.longreprtext)
            else:
                result.outcome = "passed"
                result.message = ""
        elif report.when == "teardown":
            if report.failed and result.outcome not in _FAILING:
                result.outcome = "error"
                result.details = report.longreprtext
                result.message = "teardown: " + _last_line(report.longreprtext)
            item = self.items.get(report.nodeid)
            if item is not None:
                figures: list[Figure] = item.stash.get(FIGURES_KEY, [])
                result.figures = list(figures)
            if self.on_result is not None:
                self.on_result(result, len(self.results))


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return _last_line(report.longreprtext)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("E "):
            return ln[2:].strip()
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class Selection:
    """Which targets to run against: bare URLs and target names (of ``targets_file`` or the shipped)."""

    urls: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    targets_file: Path | None = None
    key_file: Path | None = None
    """The key set of the ``urls`` (None: the published TEST keys)."""
    dtr: bool | None = None
    """The DTR line of the ``urls`` once open (None: asserted, as pyserial opens the port)."""
    rts: bool | None = None
    """The RTS line, likewise."""


def pytest_args(
    selection: Selection,
    *,
    profile: str,
    seed: int,
    junit: Path | None = None,
    keyword: str | None = None,
    verbose: bool = False,
) -> list[str]:
    """The pytest command line of a conformance run (also what a user can run by hand)."""
    args = [str(suite_dir()), "-c", str(Path(__file__).with_name("pytest.ini")), "--rootdir", str(suite_dir())]
    args += ["-p", "no:cacheprovider", "--pump-profile", profile, f"--hypothesis-seed={seed}"]
    args += ["-o", "junit_suite_name=pumprig-conformance", "-o", "junit_family=xunit1"]
    for url in selection.urls:
        args += ["--pump-url", url]
    if selection.key_file is not None:
        args += ["--pump-key-file", str(selection.key_file)]
    for line, value in (("dtr", selection.dtr), ("rts", selection.rts)):
        if value is not None:
            args += [f"--pump-{line}", "on" if value else "off"]
    for name in selection.names:
        args += ["--pump-target", name]
    if selection.targets_file is not None:
        args += ["--pump-targets", str(selection.targets_file)]
    if junit is not None:
        args += ["--junitxml", str(junit)]
    if keyword:
        args += ["-k", keyword]
    args += ["-q", "-rfE"] if verbose else ["-p", "no:terminal"]
    return args


def run_conformance(
    selection: Selection,
    *,
    profile: str = "core",
    seed: int | None = None,
    junit: Path | None = None,
    keyword: str | None = None,
    verbose: bool = False,
    on_result: Callable[[TestResult, int], None] | None = None,
    command: str = "",
) -> RunResult:
    """Run the suite against the selected targets (in this process); the results, whatever they are."""
    seed = secrets.randbelow(2**32) if seed is None else seed
    collector = _Collector(on_result)
    started = time.time()
    args = pytest_args(selection, profile=profile, seed=seed, junit=junit, keyword=keyword, verbose=verbose)
    pytest.main(args, plugins=[collector])
    infos = [
        TargetInfo(
            dut.target.name,
            dut.target.url,
            dut.target.description,
            to_jsonable(dut.identity),
            feature_names(dut.features),
        )
        for dut in collector.connected
    ]
    return RunResult(
        version=__version__,
        profile=profile,
        seed=seed,
        targets=infos,
        requirements=load_requirements(),
        results=list(collector.results.values()),
        collection_errors=collector.collection_errors,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        duration_s=time.time() - started,
        command=command,
    )


def collect_suite() -> dict[str, tuple[str, ...]]:
    """Every test of the suite (``module.py::function``) and the requirements it names, without a target."""
    collector = _Collector(None)
    args = [str(suite_dir()), "-c", str(Path(__file__).with_name("pytest.ini")), "--rootdir", str(suite_dir())]
    code = pytest.main([*args, "-p", "no:cacheprovider", "-p", "no:terminal", "--collect-only"], plugins=[collector])
    if code not in (0, 5) or collector.collection_errors:
        raise RuntimeError("the suite does not collect: " + "; ".join(collector.collection_errors))
    return {r.name: r.requirements for r in collector.results.values()}


def group_by_requirement(tests: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    by_requirement: dict[str, list[str]] = {}
    for name, requirements in tests.items():
        for req in requirements:
            by_requirement.setdefault(req, []).append(name)
    return by_requirement


def dump_json(result: RunResult) -> str:
    return json.dumps(result.to_json(), indent=2, sort_keys=True)
