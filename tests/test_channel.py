"""Sessions end to end through two Channels: counters, echoes, replays, the handshake."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol_spec import messages as m
from protocol_spec.channel import Channel, client_finish, client_hello, new_command_id
from protocol_spec.codec import HEADER_BYTES, DecodeError, Packet, encode_header
from protocol_spec.enums import ErrorCode, MsgType, ProgramSlot, StageKind
from protocol_spec.examples import HANDSHAKE, flex_13_steps
from protocol_spec.framing import Deframer
from protocol_spec.messages import ErrorReply
from protocol_spec.security import seal_payload


def _pair() -> tuple[Channel, Channel]:
    return Channel(from_pump=False, keys=HANDSHAKE.keys), Channel(from_pump=True, keys=HANDSHAKE.keys)


def _body(wire: bytes) -> bytes:
    (body,) = Deframer().feed(wire)
    assert isinstance(body, bytes)
    return body


def test_handshake_gives_both_sides_the_same_keys() -> None:
    hello = client_hello(HANDSHAKE.role_key, HANDSHAKE.client_nonce)
    pump = Channel(from_pump=True)
    client = Channel(from_pump=False)
    req = client.request(hello)
    got = pump.accept(_body(req.data))
    assert isinstance(got, Packet)
    reply = m.SessionOpenReply(HANDSHAKE.pump_nonce, HANDSHAKE.boot_counter, 300_000, HANDSHAKE.keys.confirm)
    rep = pump.reply(got.header, reply, session_id=HANDSHAKE.session_id)
    back = client.accept(_body(rep.data))
    assert isinstance(back, Packet)
    assert client_finish(HANDSHAKE.role_key, hello, back.header, back.message) == HANDSHAKE.keys
    forged = dataclasses.replace(reply, confirm=bytes(16))
    assert client_finish(HANDSHAKE.role_key, hello, back.header, forged) is None


def test_replies_echo_counter_and_command_id() -> None:
    client, pump = _pair()
    cid = new_command_id()
    req = client.request(m.StageProgram(0, flex_13_steps()), cid)
    got = pump.accept(_body(req.data))
    assert isinstance(got, Packet)
    rep = pump.reply(got.header, m.StageReply(1, StageKind.PROGRAM, 0, 0, 0))
    back = client.accept(_body(rep.data))
    assert isinstance(back, Packet)
    assert back.header.echo_counter == req.header.counter
    assert back.header.command_id == cid


@given(st.lists(st.integers(0, 20), min_size=1, max_size=40))
def test_each_authentic_frame_is_accepted_once(order: list[int]) -> None:
    """Whatever order frames arrive in (repeats included), none is accepted twice and the
    accepted counters strictly increase."""
    client, pump = _pair()
    sent = [client.request(m.Status()) for _ in range(21)]
    accepted: list[int] = []
    for i in order:
        got = pump.accept(_body(sent[i].data))
        if isinstance(got, Packet):
            accepted.append(got.header.counter)
        else:
            assert got.code is ErrorCode.REPLAYED_COUNTER
    assert accepted == sorted(set(accepted))


def test_a_refused_frame_does_not_move_the_counter_mark() -> None:
    """SPEC.md "Counters and replay": the mark moves only for a frame that passes every earlier
    check. A sealed frame whose payload is refused leaves it, so the next good frame (with a
    lower counter) is still accepted, and replaying the refused frame is refused the same way."""
    client, pump = _pair()
    good = client.request(m.ReadProgram(ProgramSlot.ACTIVE))
    header = dataclasses.replace(good.header, counter=good.header.counter + 1)
    bad_payload = bytes([9])  # no such program slot
    hb = encode_header(header)
    body = hb + seal_payload(HANDSHAKE.keys, header.direction, header.counter, hb, bad_payload)
    first = pump.accept(body)
    assert isinstance(first, DecodeError)
    assert first.code is ErrorCode.OUT_OF_RANGE
    assert pump.highest_received == 0
    again = pump.accept(body)
    assert isinstance(again, DecodeError)
    assert again.code is ErrorCode.OUT_OF_RANGE
    assert isinstance(pump.accept(_body(good.data)), Packet)


def test_forged_frames_do_not_move_the_high_water_mark() -> None:
    client, pump = _pair()
    req = client.request(m.Status())
    forged = bytearray(_body(req.data))
    forged[HEADER_BYTES] ^= 1
    refused = pump.accept(bytes(forged))
    assert isinstance(refused, DecodeError)
    assert refused.code is ErrorCode.BAD_TAG
    assert pump.highest_received == 0
    assert isinstance(pump.accept(_body(req.data)), Packet)


def test_reflected_and_plaintext_frames_are_refused_inside_a_session() -> None:
    client, pump = _pair()
    req = client.request(m.Status())
    reflected = client.accept(_body(req.data))  # the client's own frame sent back to it
    assert isinstance(reflected, DecodeError)
    plain = Channel(from_pump=False).request(m.Status())
    got = pump.accept(_body(plain.data))
    assert isinstance(got, DecodeError)
    assert got.code is ErrorCode.NO_SESSION


def test_error_replies_echo_even_unknown_types() -> None:
    client, pump = _pair()
    req = client.request(m.Status())
    unknown = dataclasses.replace(req.header, msg_type=0x7F)
    err = pump.error(unknown, ErrorReply(ErrorCode.UNKNOWN_MESSAGE, 255, 0, 0, 0))
    back = client.accept(_body(err.data))
    assert isinstance(back, Packet)
    assert back.msg_type is None
    assert back.header.msg_type == 0x7F
    assert back.message.code is ErrorCode.UNKNOWN_MESSAGE


def test_an_error_reply_of_another_version_is_still_readable() -> None:
    """VERSION_MISMATCH must reach a programmer that speaks another version."""
    pump = Channel(from_pump=True)
    req = Channel(from_pump=False).request(m.Identify())
    err = pump.error(req.header, ErrorReply(ErrorCode.VERSION_MISMATCH, 255, 1, 1, 0))
    body = bytearray(_body(err.data))
    body[0] = 9  # as a pump of protocol version 9 would send it
    back = Channel(from_pump=False).accept(bytes(body))
    assert isinstance(back, Packet)
    assert back.message.code is ErrorCode.VERSION_MISMATCH
    request_of_v9 = bytearray(_body(req.data))
    request_of_v9[0] = 9
    refused = pump.accept(bytes(request_of_v9))
    assert isinstance(refused, DecodeError)
    assert refused.code is ErrorCode.VERSION_MISMATCH


def test_effectful_requests_need_a_command_id() -> None:
    """The encoder refuses a COMMIT without one locally; a receiver refuses one sent anyway."""
    client, pump = _pair()
    with pytest.raises(ValueError, match="command id"):
        client.request(m.Commit(1))
    header = dataclasses.replace(client.request(m.Status()).header, msg_type=MsgType.COMMIT, counter=99)
    hb = encode_header(header)
    body = hb + seal_payload(HANDSHAKE.keys, header.direction, 99, hb, (1).to_bytes(4, "little"))
    got = pump.accept(body)
    assert isinstance(got, DecodeError)
    assert got.code is ErrorCode.MISSING_COMMAND_ID
