"""Targets as data: a name, a URL, the features the suite may use, and expected failures.

    [target.bench-board]
    url = "/dev/ttyACM0"
    description = "pump firmware on the bench's dev board"
    features = ["test_role", "virtual_time"]     # optional: at most these (default: all announced)
    key_file = "pump-0042.keys"                  # optional (default: the published TEST keys)
    [target.bench-board.expected_failures]
    "test_alarms.py::test_low_reservoir_raised_at_threshold" = "firmware issue #12: off by one step"
    "ALM-LRS-002" = "every test of this requirement: not implemented yet"

A target's features are what its IDENTIFY reply announces (``Feature``), narrowed to the
``features`` listed, if any; a bare URL is a target named after it with every announced feature.
Listing a feature the device does not announce is an error: the suite would test what is not there.
Expected failures are reported as such (xfail, strict: a test that then passes fails the run),
never hidden.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from protocol_spec.enums import Feature

__all__ = ["Target", "TargetError", "feature_names", "load_targets", "parse_features", "target_for_url"]


class TargetError(ValueError):
    """A target file or name is wrong; the message says what to fix."""


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    description: str = ""
    features: Feature | None = None
    """At most these features are used (None: whatever the device announces)."""
    key_file: Path | None = None
    expected_failures: Mapping[str, str] = field(default_factory=dict)
    """Test name (``module.py::function``) or requirement id -> why it is expected to fail."""
    dtr: bool | None = None
    """The DTR line once the port is open (None: asserted, as pyserial opens it). False holds it
    low: an auto-reset board is not reset again by the programmers that open after the first."""
    rts: bool | None = None
    """The RTS line, likewise."""

    def expected_failure(self, test_name: str, requirement_ids: tuple[str, ...]) -> str | None:
        """Why ``test_name`` is expected to fail on this target, or None."""
        for key in (test_name, *requirement_ids):
            if key in self.expected_failures:
                return f"expected to fail on target {self.name}: {self.expected_failures[key]}"
        return None


def feature_names(features: Feature) -> list[str]:
    return [f.name.lower() for f in Feature if f in features and f.name is not None]


def parse_features(names: list[object], where: str) -> Feature:
    known = {f.name.lower(): f for f in Feature if f.name is not None}
    result = Feature(0)
    for name in names:
        if not isinstance(name, str) or name.lower() not in known:
            raise TargetError(f"{where}: unknown feature {name!r}; known: {', '.join(known)}")
        result |= known[name.lower()]
    return result


def target_for_url(
    url: str, key_file: Path | None = None, *, dtr: bool | None = None, rts: bool | None = None
) -> Target:
    """A bare URL as a target: named after it, every feature it announces."""
    return Target(name=url, url=url, description="given by URL", key_file=key_file, dtr=dtr, rts=rts)


def _shipped() -> str:
    return resources.files("hil.conformance").joinpath("targets.toml").read_text(encoding="utf-8")


def load_targets(path: Path | None = None) -> dict[str, Target]:
    """The targets of ``path`` (a TOML file), or the shipped ones; TargetError says what is wrong."""
    where = str(path) if path is not None else "the shipped targets.toml"
    try:
        text = path.read_text(encoding="utf-8") if path is not None else _shipped()
        data = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"cannot read {where}: {exc}") from exc
    base = path.parent if path is not None else Path.cwd()
    targets = {}
    for name, entry in data.get("target", {}).items():
        targets[name] = _target(name, entry, f"{where}: target {name}", base)
    if not targets:
        raise TargetError(f"{where} defines no [target.NAME]")
    return targets


def _target(name: str, entry: Mapping[str, object], where: str, base: Path) -> Target:
    allowed = {"url", "description", "features", "key_file", "expected_failures", "dtr", "rts"}
    extra = entry.keys() - allowed
    if extra:
        raise TargetError(f"{where}: unknown keys {sorted(extra)}; allowed: {sorted(allowed)}")
    url = entry.get("url")
    if not isinstance(url, str) or not url:
        raise TargetError(f'{where}: needs url = "..." (a device path, socket://, rfc2217:// or pump://)')
    features = entry.get("features")
    if features is not None and not isinstance(features, list):
        raise TargetError(f"{where}: features is a list of names")
    key_file = entry.get("key_file")
    if key_file is not None and not isinstance(key_file, str):
        raise TargetError(f"{where}: key_file is a path")
    failures = entry.get("expected_failures", {})
    if not isinstance(failures, dict) or not all(isinstance(v, str) and v.strip() for v in failures.values()):
        raise TargetError(f"{where}: expected_failures maps a test or requirement to its reason (a string)")
    lines: dict[str, bool | None] = {}
    for line in ("dtr", "rts"):
        value = entry.get(line)
        if value is not None and not isinstance(value, bool):
            raise TargetError(f"{where}: {line} is true or false (the line once the port is open)")
        lines[line] = value
    description = entry.get("description", "")
    return Target(
        name=name,
        url=url,
        description=str(description),
        features=parse_features(features, where) if features is not None else None,
        key_file=(base / key_file) if key_file else None,
        expected_failures=dict(failures),
        dtr=lines["dtr"],
        rts=lines["rts"],
    )
