"""The pytest plugin: HIL tests against pumps named by URL or target, with the suite's fixtures.

Registered through the ``pytest11`` entry point ``pumprig``, so any pytest run of a project that
has pumprig installed can use it::

    pytest --pump-url /dev/ttyACM0 tests/hil/              # a board
    pytest --pump-url pump:// --pump-url socket://127.0.0.1:5000   # each test, once per target
    pytest --pump-target board --pump-targets lab.toml     # a target by name (hil.conformance.targets)

    import pytest
    from protocol_spec.enums import AlarmSet

    @pytest.mark.requirement("ALM-LRS-001")      # optional: traced in pumprig's reports
    @pytest.mark.requires("test_role", "virtual_time")
    def test_low_reservoir_after_ninety_days(pump):          # reset to the known state
        pump.advance(90 * 86_400_000)
        assert AlarmSet.LOW_RESERVOIR in pump.clinician.status().alarms

Fixtures: ``pump`` (a ``DeviceUnderTest`` reset to its known state), ``programmer`` (its
clinician programmer), ``pump_connection`` (connected once per target, not reset). Markers:
``requirement(*ids)``, ``requires(*features)`` (``Feature`` names; a target without them skips,
with the reason), ``destructive`` (leaves the target unusable for therapy: runs last).
``--pump-profile`` keeps only the tests of that profile's requirements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from protocol_spec.enums import Feature

from .. import urlhandler
from .dut import DeviceUnderTest
from .requirements import PROFILES, Requirement, in_profile, load_requirements
from .targets import Target, TargetError, feature_names, load_targets, parse_features, target_for_url

__all__ = ["FIGURES_KEY", "Figure", "item_name", "required_features", "requirement_ids"]

FIGURES_KEY = pytest.StashKey[list["Figure"]]()
"""Figures a test recorded with ``pump_figure`` (item stash)."""
_TARGETS_KEY = pytest.StashKey[list[Target]]()
_REQUIREMENTS_KEY = pytest.StashKey[dict[str, Requirement]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pumprig", "pumprig: hardware-in-the-loop tests of an ITB pump")
    group.addoption(
        "--pump-url",
        action="append",
        default=[],
        metavar="URL",
        help="a pump to test: /dev/ttyACM0, /dev/pts/N, socket://HOST:PORT, rfc2217://HOST:PORT, pump:// "
        "(repeatable: every test runs once per pump)",
    )
    group.addoption(
        "--pump-target",
        action="append",
        default=[],
        metavar="NAME",
        help="a pump to test, by its name in the targets file (repeatable)",
    )
    group.addoption(
        "--pump-targets",
        metavar="FILE",
        default=None,
        help="the targets file (TOML; default: the shipped hil/conformance/targets.toml)",
    )
    group.addoption(
        "--pump-key-file",
        metavar="FILE",
        default=None,
        help="the key set of the pumps given by --pump-url (default: the published TEST keys)",
    )
    for line in ("dtr", "rts"):
        group.addoption(
            f"--pump-{line}",
            choices=("on", "off"),
            default=None,
            help=f"the {line.upper()} line of the pumps given by --pump-url once the port is open (default: on, "
            "as pyserial opens it; off keeps an auto-reset board from resetting again)",
        )
    group.addoption(
        "--pump-profile",
        choices=PROFILES,
        default=None,
        help="keep only the tests of this conformance profile's requirements (core < board < full)",
    )


class _Hooks:
    @pytest.hookspec(firstresult=False)
    def pytest_pumprig_connected(self, dut: DeviceUnderTest) -> None:
        """A target was connected (``dut.identity`` holds its IDENTIFY reply)."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(_Hooks)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requirement(*ids): the requirements (e.g. PRT-FRM-001) this test shows")
    config.addinivalue_line(
        "markers", "requires(*features): Feature names the target must have (test_role, virtual_time, ...)"
    )
    config.addinivalue_line("markers", "destructive: leaves the target unusable for therapy; runs after the others")
    urlhandler.register()
    try:
        config.stash[_TARGETS_KEY] = _targets(config)
    except TargetError as exc:
        raise pytest.UsageError(str(exc)) from exc


def _targets(config: pytest.Config) -> list[Target]:
    urls: list[str] = config.getoption("--pump-url")
    names: list[str] = config.getoption("--pump-target")
    file: str | None = config.getoption("--pump-targets")
    key_file: str | None = config.getoption("--pump-key-file")
    dtr, rts = (_line(config.getoption(f"--pump-{line}")) for line in ("dtr", "rts"))
    targets = [target_for_url(u, Path(key_file) if key_file else None, dtr=dtr, rts=rts) for u in urls]
    if names:
        known = load_targets(Path(file) if file else None)
        for name in names:
            if name not in known:
                raise TargetError(f"no target {name!r}; the targets file defines: {', '.join(known)}")
            targets.append(known[name])
    return targets


def _line(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def requirement_ids(item: pytest.Item) -> tuple[str, ...]:
    ids: list[str] = []
    for mark in item.iter_markers("requirement"):
        ids.extend(str(a) for a in mark.args)
    return tuple(dict.fromkeys(ids))


def required_features(item: pytest.Item) -> Feature:
    features = Feature(0)
    for mark in item.iter_markers("requires"):
        for arg in mark.args:
            features |= arg if isinstance(arg, Feature) else parse_features([arg], f"{item.nodeid}: requires")
    return features


def item_name(item: pytest.Item) -> str:
    """``test_module.py::test_function``: how targets name a test in expected_failures."""
    func = getattr(item, "originalname", item.name)
    return f"{item.path.name}::{func}"


def _requirements(config: pytest.Config) -> dict[str, Requirement]:
    if _REQUIREMENTS_KEY not in config.stash:
        config.stash[_REQUIREMENTS_KEY] = load_requirements()
    return config.stash[_REQUIREMENTS_KEY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pump_connection" not in metafunc.fixturenames:
        return
    configured: list[Target] = metafunc.config.stash[_TARGETS_KEY]
    targets: list[Target | None] = [*configured] or [None]
    ids = [t.name if t is not None else "no-target" for t in targets]
    metafunc.parametrize("pump_connection", targets, ids=ids, indirect=True, scope="session")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    profile: str | None = config.getoption("--pump-profile")
    marked = [item for item in items if requirement_ids(item)]
    if marked:
        known = _requirements(config)
        for item in marked:
            unknown = [r for r in requirement_ids(item) if r not in known]
            if unknown:
                raise pytest.UsageError(f"{item.nodeid}: unknown requirement(s) {', '.join(unknown)}")
            item.user_properties.append(("requirements", " ".join(requirement_ids(item))))
    if profile is not None:
        known = _requirements(config) if marked else {}
        keep: list[pytest.Item] = []
        drop: list[pytest.Item] = []
        for item in items:
            ids = requirement_ids(item)
            (keep if not ids or any(in_profile(known[r].profile, profile) for r in ids) else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep
    # destructive tests last, keeping each target's tests together
    configured: list[Target] = config.stash[_TARGETS_KEY]
    order = {id(t): i for i, t in enumerate(configured)}

    def key(item: pytest.Item) -> tuple[int, int]:
        callspec = getattr(item, "callspec", None)
        target = callspec.params.get("pump_connection") if callspec is not None else None
        return (order.get(id(target), 0), int(item.get_closest_marker("destructive") is not None))

    items.sort(key=key)


@pytest.fixture(scope="session")
def pump_connection(request: pytest.FixtureRequest) -> Iterator[DeviceUnderTest]:
    """The target, connected once (per target) for the whole run; not reset."""
    target: Target | None = getattr(request, "param", None)
    if target is None:
        pytest.skip("no pump to test: give --pump-url URL or --pump-target NAME")
    dut = DeviceUnderTest.connect(target)
    request.config.hook.pytest_pumprig_connected(dut=dut)
    try:
        yield dut
    finally:
        dut.close()


@pytest.fixture
def pump(request: pytest.FixtureRequest, pump_connection: DeviceUnderTest) -> DeviceUnderTest:
    """The target in its known state (``DeviceUnderTest.reset``), after the feature check."""
    dut = pump_connection
    item = request.node
    missing = required_features(item) & ~dut.features
    if missing:
        pytest.skip(f"target {dut.target.name} lacks {', '.join(feature_names(missing))}")
    reason = dut.target.expected_failure(item_name(item), requirement_ids(item))
    if reason is not None:
        item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    dut.reset()
    return dut


@dataclass(frozen=True)
class Figure:
    """A plot for the report: named series of (x, y) points, drawn as steps (a cumulative
    volume: it changes at each point) or as lines with markers (a curve such as a trumpet). A
    series whose name starts with "bound" is a limit: drawn dashed, under the others."""

    title: str
    x_label: str
    y_label: str
    series: dict[str, list[tuple[float, float]]]
    style: str = "step"
    """"step" or "line"."""
    x_log: bool = False


@pytest.fixture
def pump_figure(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``pump_figure(title, x_label, y_label, {"delivered": [(t_ms, nl), ...]}, style="step")``: a plot
    for the report (``style`` "line" for curves)."""

    def record(
        title: str,
        x_label: str,
        y_label: str,
        series: dict[str, list[tuple[float, float]]],
        style: str = "step",
        *,
        x_log: bool = False,
    ) -> None:
        if style not in ("step", "line"):
            raise ValueError(f"style is 'step' or 'line', not {style!r}")
        figure = Figure(title, x_label, y_label, series, style, x_log)
        request.node.stash.setdefault(FIGURES_KEY, []).append(figure)

    return record


@pytest.fixture
def programmer(pump: DeviceUnderTest) -> Any:
    """The clinician's programmer of the target in its known state."""
    return pump.clinician
