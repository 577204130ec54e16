"""Requirements as data: numbered, each with its text, its source and its conformance profile.

The requirements live in ``hil/conformance/requirements/*.toml``, one file per area::

    area = "Framing"

    [[requirement]]
    id = "PRT-FRM-001"
    text = "Every frame is COBS-encoded and ends with one 0x00 delimiter."
    source = "SPEC.md#framing"
    profile = "core"

An id is ``AREA-GROUP-NNN``: AREA is PRT (the wire protocol), SEC (security), THR (therapy),
PRG (programming), ALM (alarms), REF (refill), LOG (event log), CLK (clock), LIM (limits),
FLT (behaviour under faults); GROUP is three letters naming the group within the area. A
``source`` is a SPEC.md section (``SPEC.md#anchor``, checked against SPEC.md's headings) or a
fact of the device or of safety practice, named in words (``domain: ...``, ``safety: ...``).

Profiles nest: ``core`` is what any device speaking the protocol must do, ``board`` adds what a
microcontroller port is expected to do, ``full`` adds everything the virtual pump does.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "PROFILES",
    "Requirement",
    "RequirementError",
    "in_profile",
    "load_requirements",
    "spec_anchors",
]

PROFILES = ("core", "board", "full")
"""Conformance profiles, smallest first; each includes the ones before it."""

ID_PATTERN = re.compile(r"^(PRT|SEC|THR|PRG|ALM|REF|LOG|CLK|LIM|FLT)-[A-Z]{3}-\d{3}$")
_SOURCE_PATTERN = re.compile(r"^(SPEC\.md#[a-z0-9_-]+|domain: .+|safety: .+)$")
_KEYS = {"id", "text", "source", "profile"}


class RequirementError(ValueError):
    """A requirements file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Requirement:
    id: str
    text: str
    source: str
    profile: str
    area: str

    @property
    def group(self) -> str:
        """``PRT-FRM`` of ``PRT-FRM-001``: the unit the summary table counts by."""
        return self.id.rsplit("-", 1)[0]


def in_profile(requirement_profile: str, selected: str) -> bool:
    """True if a requirement of ``requirement_profile`` is part of the ``selected`` profile."""
    return PROFILES.index(requirement_profile) <= PROFILES.index(selected)


def spec_anchors(spec_text: str) -> frozenset[str]:
    """The anchors of SPEC.md's headings, as GitHub spells them."""
    anchors = set()
    for line in spec_text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return frozenset(anchors)


def _spec_text() -> str:
    return resources.files("protocol_spec").joinpath("SPEC.md").read_text(encoding="utf-8")


def _files() -> list[tuple[str, str]]:
    folder = resources.files("hil.conformance").joinpath("requirements")
    return sorted((f.name, f.read_text(encoding="utf-8")) for f in folder.iterdir() if f.name.endswith(".toml"))


def load_requirements(files: Iterable[tuple[str, str]] | None = None) -> dict[str, Requirement]:
    """Every requirement by id, in file then table order; RequirementError if any entry is wrong."""
    anchors = spec_anchors(_spec_text())
    found: dict[str, Requirement] = {}
    for name, text in files if files is not None else _files():
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RequirementError(f"{name}: {exc}") from exc
        area = data.get("area")
        if not isinstance(area, str) or not area:
            raise RequirementError(f'{name}: needs `area = "..."`, the title of its requirements')
        entries = data.get("requirement", [])
        if not isinstance(entries, list) or not entries:
            raise RequirementError(f"{name}: holds no [[requirement]]")
        for entry in entries:
            req = _requirement(name, area, entry, anchors)
            if req.id in found:
                raise RequirementError(f"{name}: {req.id} is defined twice")
            found[req.id] = req
    return found


def _requirement(name: str, area: str, entry: Mapping[str, object], anchors: frozenset[str]) -> Requirement:
    where = f"{name}: {entry.get('id', '(an entry without id)')}"
    missing = _KEYS - entry.keys()
    extra = entry.keys() - _KEYS
    if missing or extra:
        raise RequirementError(
            f"{where}: needs exactly {sorted(_KEYS)} (missing {sorted(missing)}, extra {sorted(extra)})"
        )
    values = {k: entry[k] for k in _KEYS}
    if not all(isinstance(v, str) and v.strip() for v in values.values()):
        raise RequirementError(f"{where}: every field is a non-empty string")
    req = Requirement(area=area, **{k: str(v) for k, v in values.items()})
    if not ID_PATTERN.match(req.id):
        raise RequirementError(f"{where}: an id is AREA-GRP-NNN (e.g. PRT-FRM-001), AREA one of {ID_PATTERN.pattern}")
    if req.profile not in PROFILES:
        raise RequirementError(f"{where}: profile is one of {', '.join(PROFILES)}, not {req.profile!r}")
    if not _SOURCE_PATTERN.match(req.source):
        raise RequirementError(f"{where}: source is 'SPEC.md#anchor', 'domain: ...' or 'safety: ...'")
    if req.source.startswith("SPEC.md#") and req.source.removeprefix("SPEC.md#") not in anchors:
        raise RequirementError(f"{where}: SPEC.md has no section #{req.source.removeprefix('SPEC.md#')}")
    return req


def requirements_path() -> Path:
    """The folder of the shipped requirement files (for messages that tell a user where to look)."""
    return Path(str(resources.files("hil.conformance").joinpath("requirements")))
