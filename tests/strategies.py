"""Hypothesis strategies for the wire codec, derived from the field declarations alone.

``messages_of(cls)`` knows nothing about any particular message: it reads
``fields.field_infos(cls)`` (kind, range, enum, flags, item, max_items) and draws any value
the declaration allows. A new message class is covered the day it is declared.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from hypothesis import strategies as st

from protocol_spec.catalog import CATALOG
from protocol_spec.codec import Header
from protocol_spec.enums import PROTOCOL_VERSION, FrameFlags
from protocol_spec.examples import HANDSHAKE
from protocol_spec.fields import FieldInfo, field_infos
from protocol_spec.messages import ErrorReply
from protocol_spec.security import SessionKeys

__all__ = [
    "REPLY_CLASSES",
    "REQUEST_CLASSES",
    "any_reply",
    "any_request",
    "extreme_of",
    "field_strategy",
    "keys_for_session",
    "messages_of",
    "packets",
]

T = TypeVar("T")

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1

REQUEST_CLASSES: tuple[type[Any], ...] = tuple(
    dict.fromkeys(d.request for d in CATALOG.values() if d.request is not None)
)
"""Every request payload class of the catalogue, once each, in catalogue order."""
REPLY_CLASSES: tuple[type[Any], ...] = tuple(dict.fromkeys([*(d.reply for d in CATALOG.values()), ErrorReply]))
"""Every reply (and notification) payload class, plus ErrorReply."""

_ASCII_NO_NUL = st.characters(min_codepoint=1, max_codepoint=127)


def _int_strategy(info: FieldInfo) -> st.SearchStrategy[Any]:
    if info.enum is not None:
        members = [m for m in info.enum if info.lo <= m <= info.hi]
        assert members, f"{info.name}: no member of {info.enum.__name__} in [{info.lo}, {info.hi}]"
        return st.sampled_from(members)
    if info.flags is not None:
        flags_cls = info.flags
        mask = 0
        for m in flags_cls:
            mask |= int(m)
        return st.integers(0, mask).map(lambda v: flags_cls(v & mask))
    return st.integers(info.lo, info.hi)


def field_strategy(info: FieldInfo) -> st.SearchStrategy[Any]:
    """Any valid value of one declared field."""
    if info.kind == "int":
        return _int_strategy(info)
    if info.kind == "raw":
        return st.binary(min_size=info.width_bytes, max_size=info.width_bytes)
    if info.kind == "text":
        return st.text(alphabet=_ASCII_NO_NUL, max_size=info.width_bytes)
    assert info.item is not None, info
    if info.kind == "struct":
        return messages_of(info.item)
    if info.kind == "array":
        return st.lists(messages_of(info.item), max_size=info.max_items).map(tuple)
    raise AssertionError(f"unknown field kind {info.kind!r}")


_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {}


def messages_of(cls: type[T]) -> st.SearchStrategy[T]:
    """Any valid message of a dataclass, built purely from its field declarations."""
    strategy = _STRATEGIES.get(cls)
    if strategy is None:
        fields = {info.name: field_strategy(info) for info in field_infos(cls)}
        strategy = _STRATEGIES[cls] = st.builds(cls, **fields)
    return strategy


def any_request() -> st.SearchStrategy[Any]:
    """Any valid request payload of any message type in the catalogue."""
    return st.sampled_from(REQUEST_CLASSES).flatmap(messages_of)


def any_reply() -> st.SearchStrategy[Any]:
    """Any valid reply, notification or error payload."""
    return st.sampled_from(REPLY_CLASSES).flatmap(messages_of)


def _valid_int(info: FieldInfo) -> Any:
    if info.enum is not None:
        return min(m for m in info.enum if info.lo <= m <= info.hi)
    if info.flags is not None:
        return info.flags(0)
    return info.lo


def extreme_of(cls: type[T], *, largest: bool, items: int | None = None) -> T:
    """The largest (every array full, every text full) or smallest valid message of a class.

    Integers take their lowest valid value. ``items`` overrides the number of items of every
    array (capped at its maximum).
    """
    kwargs: dict[str, Any] = {}
    for info in field_infos(cls):
        if info.kind == "int":
            kwargs[info.name] = _valid_int(info)
        elif info.kind == "raw":
            kwargs[info.name] = bytes(info.width_bytes)
        elif info.kind == "text":
            kwargs[info.name] = "A" * info.width_bytes if largest else ""
        elif info.kind == "struct":
            assert info.item is not None
            kwargs[info.name] = extreme_of(info.item, largest=largest, items=items)
        else:
            assert info.item is not None
            count = info.max_items if largest else 0
            if items is not None:
                count = min(items, info.max_items)
            kwargs[info.name] = tuple(extreme_of(info.item, largest=largest, items=items) for _ in range(count))
    return cls(**kwargs)


def keys_for_session(session_id: int) -> SessionKeys:
    """The worked handshake's keys, relabelled for another session id."""
    return dataclasses.replace(HANDSHAKE.keys, session_id=session_id)


@st.composite
def packets(draw: st.DrawFn, secured: bool | None = None) -> tuple[Header, Any, SessionKeys | None]:
    """A header, a payload that belongs to it and, for SECURED frames, the session keys.

    Covers every message type in both directions, plaintext and secured, and ERROR replies
    (including replies to message types this side does not know).
    """
    msg_type = draw(st.sampled_from(list(CATALOG)))
    d = CATALOG[msg_type]
    from_pump = d.request is None or draw(st.booleans())
    error = from_pump and draw(st.booleans())
    if secured is None:
        secured = draw(st.booleans())
    raw_type: int = int(msg_type)
    if error:
        cls: type[Any] = ErrorReply
        raw_type = draw(st.one_of(st.just(raw_type), st.integers(0, 255)))
    elif from_pump:
        cls = d.reply
    else:
        assert d.request is not None
        cls = d.request
    flags = FrameFlags(0)
    if from_pump:
        flags |= FrameFlags.FROM_PUMP
    if secured:
        flags |= FrameFlags.SECURED
    if error:
        flags |= FrameFlags.ERROR
    needs_command_id = d.effectful and not from_pump and not error
    session_id = draw(st.integers(1 if secured else 0, U32_MAX))
    header = Header(
        version=PROTOCOL_VERSION,
        msg_type=raw_type,
        flags=flags,
        session_id=session_id,
        counter=draw(st.integers(0, U64_MAX)),
        echo_counter=draw(st.integers(0, U64_MAX)),
        command_id=draw(st.integers(1 if needs_command_id else 0, U64_MAX)),
    )
    message = draw(messages_of(cls))
    return header, message, keys_for_session(session_id) if secured else None
