"""SPEC.md is generated from the definitions: the committed file is current and names everything."""

from __future__ import annotations

from typing import Any

import pytest

from protocol_spec import CATALOG, AlarmCode, ErrorCode, MsgType
from protocol_spec.codec import Header
from protocol_spec.fields import field_infos
from protocol_spec.messages import ErrorReply
from protocol_spec.specgen import SPEC_PATH, main, render


def _classes() -> list[type[Any]]:
    """Header, ErrorReply, every request and reply of the catalogue, and every record inside them."""
    todo: list[type[Any]] = [Header, ErrorReply]
    todo += [cls for d in CATALOG.values() for cls in (d.request, d.reply) if cls is not None]
    seen: list[type[Any]] = []
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        todo += [info.item for info in field_infos(cls) if info.item is not None]
    return seen


def test_spec_is_current() -> None:
    """The committed SPEC.md is exactly what the definitions and the template generate."""
    committed = SPEC_PATH.read_text(encoding="utf-8") if SPEC_PATH.exists() else ""
    generated = render()
    if committed != generated:
        old, new = committed.splitlines(), generated.splitlines()
        line = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
        pytest.fail(f"SPEC.md is stale (first difference at line {line + 1}): run `make spec`", pytrace=False)
    assert main(["--check"]) == 0


def test_spec_names_every_message_error_alarm_and_field() -> None:
    text = SPEC_PATH.read_text(encoding="utf-8")
    missing = [t.name for t in MsgType if t.name not in text]
    missing += [c.name for c in ErrorCode if f"`{c.name}`" not in text]
    missing += [a.name for a in AlarmCode if f"`{a.name}`" not in text]
    missing += [
        f"{cls.__name__}.{info.name}" for cls in _classes() for info in field_infos(cls) if f"`{info.name}`" not in text
    ]
    assert not missing, f"SPEC.md does not mention: {', '.join(missing)}"
