"""The golden vectors, checked both ways, whole, byte by byte and wrapped in garbage."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hil.cli import cli
from protocol_spec import CATALOG, ErrorCode, FrameFlags, Role
from protocol_spec.codec import Header, Packet, decode_body, encode_packet, payload_class
from protocol_spec.framing import Deframer, FramingError
from protocol_spec.jsonable import from_jsonable, header_json
from protocol_spec.messages import ErrorReply
from protocol_spec.security import TEST_KEY_SET, SessionKeys, derive_session_keys
from protocol_spec.vectorgen import VECTOR_DIR, generate
from protocol_spec.vectorgen import main as vectorgen_main

FILES = ("framing.json", "handshake.json", "messages.json", "errors.json")


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((VECTOR_DIR / name).read_text(encoding="utf-8"))
    return doc


def _frame_vectors() -> list[dict[str, Any]]:
    return [v for name in ("messages.json", "errors.json") for v in _load(name)["vectors"]]


def _keys(v: dict[str, Any]) -> SessionKeys | None:
    s = v["session"]
    if s is None:
        return None
    return SessionKeys(
        s["session_id"],
        Role[s["role"]],
        int(s["key_id"], 16),
        bytes.fromhex(s["key_c2p_hex"]),
        bytes.fromhex(s["key_p2c_hex"]),
        b"",
    )


def _header(v: dict[str, Any]) -> Header:
    h = v["header"]
    flags = FrameFlags(0)
    for name in h["flags"]:
        flags |= FrameFlags[name]
    return Header(
        h["version"], h["msg_type"], flags, h["session_id"], h["counter"], h["echo_counter"], int(h["command_id"], 16)
    )


def _message_class(header: Header) -> type[Any]:
    if header.is_error:
        return ErrorReply
    assert header.known_type is not None
    cls = payload_class(header.known_type, header.flags)
    assert cls is not None
    return cls


def test_vector_files_are_current() -> None:
    """The committed vectors are what the definitions generate (else: `make spec`)."""
    assert vectorgen_main(["--check"]) == 0, "vectors are stale: run `make spec`"
    for name, doc in generate().items():
        assert _load(name) == doc


def test_vectors_cover_every_message_type_and_error_code() -> None:
    types = {v["header"]["msg_type"] for v in _load("messages.json")["vectors"]}
    assert types == {int(t) for t in CATALOG}
    codes = {v["fields"]["code"] for v in _load("errors.json")["vectors"]}
    assert codes == {c.name for c in ErrorCode if c is not ErrorCode.OK}


@pytest.mark.parametrize("v", _frame_vectors(), ids=lambda v: f"{v['id']}-{v['name']}")
def test_vector_decodes_to_its_fields(v: dict[str, Any]) -> None:
    frame = bytes.fromhex(v["frame_hex"])
    bodies = Deframer().feed(frame)
    assert len(bodies) == 1
    body = bodies[0]
    assert isinstance(body, bytes)
    assert body.hex() == v["body_hex"]
    packet = decode_body(body, _keys(v))
    assert isinstance(packet, Packet), packet
    assert header_json(packet.header) == v["header"]
    assert from_jsonable(type(packet.message), v["fields"]) == packet.message


@pytest.mark.parametrize("v", _frame_vectors(), ids=lambda v: f"{v['id']}-{v['name']}")
def test_vector_encodes_from_its_fields(v: dict[str, Any]) -> None:
    header = _header(v)
    message = from_jsonable(_message_class(header), v["fields"])
    assert encode_packet(header, message, _keys(v)).hex() == v["frame_hex"]


def test_every_vector_byte_by_byte_and_in_garbage() -> None:
    """Fed one byte at a time, and between random garbage, every vector still decodes."""
    rng = random.Random(2)
    vectors = _frame_vectors()
    deframer = Deframer()
    for v in vectors:
        frame = bytes.fromhex(v["frame_hex"])
        got: list[bytes | FramingError] = []
        for b in frame:
            got.extend(deframer.feed(bytes([b])))
        assert got == [bytes.fromhex(v["body_hex"])]
    stream = bytearray()
    for v in vectors:
        stream += rng.randbytes(rng.randrange(0, 40))
        stream += bytes.fromhex(v["frame_hex"])
    bodies = [b for b in Deframer().feed(bytes(stream)) if isinstance(b, bytes)]
    for v in vectors:
        assert bytes.fromhex(v["body_hex"]) in bodies


@pytest.mark.parametrize("v", _load("handshake.json")["vectors"], ids=lambda v: str(v["id"]))
def test_handshake_vector_derivation(v: dict[str, Any]) -> None:
    role_key = TEST_KEY_SET.by_id(Role[v["role"]], int(v["key_id"], 16))
    assert role_key is not None
    assert role_key.key.hex() == v["role_key_hex"]
    keys = derive_session_keys(
        role_key, v["session_id"], bytes.fromhex(v["client_nonce_hex"]), bytes.fromhex(v["pump_nonce_hex"])
    )
    assert keys.key_c2p.hex() == v["key_c2p_hex"]
    assert keys.key_p2c.hex() == v["key_p2c_hex"]
    assert keys.confirm.hex() == v["confirm_hex"]
    assert (keys.key_c2p + keys.key_p2c + keys.confirm).hex() == v["hkdf_okm_hex"]


@pytest.mark.parametrize("v", _load("framing.json")["vectors"], ids=lambda v: str(v["id"]))
def test_framing_vector(v: dict[str, Any]) -> None:
    results = Deframer().feed(bytes.fromhex(v["frame_hex"]))
    if v["expect"] == "accept":
        assert results == [bytes.fromhex(v["body_hex"])]
    else:
        problems = {r.problem.value for r in results if isinstance(r, FramingError)}
        assert v["expect"] in problems
        assert not any(isinstance(r, bytes) for r in results)


@pytest.mark.parametrize("name", FILES)
def test_decode_cli_reads_every_vector_file_back(name: str) -> None:
    result = CliRunner().invoke(cli, ["decode", "--vectors", str(VECTOR_DIR / name), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["failed"] == 0
    assert report["vectors"] == len(_load(name)["vectors"])


def test_decode_cli_annotates_a_capture(tmp_path: Path) -> None:
    """A raw capture of a whole session decodes, keys derived from its handshake."""
    frames = _frame_vectors()
    capture = tmp_path / "capture.bin"
    handshake = _load("handshake.json")["vectors"][0]
    secured = [v for v in frames if v["session"] and v["session"]["session_id"] == handshake["session_id"]]
    capture.write_bytes(
        bytes.fromhex(handshake["request_frame_hex"])
        + bytes.fromhex(handshake["reply_frame_hex"])
        + b"".join(bytes.fromhex(v["frame_hex"]) for v in secured)
    )
    result = CliRunner().invoke(cli, ["decode", "--file", str(capture), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert len(lines) == 2 + len(secured)
    assert all(line["ok"] for line in lines), [line for line in lines if not line["ok"]]
    assert "keys derived" in (lines[1]["note"] or "")


def test_decode_cli_reports_rejections_without_traceback() -> None:
    v = _frame_vectors()[5]
    flipped = bytearray(bytes.fromhex(v["frame_hex"]))
    flipped[10] ^= 0x04
    result = CliRunner().invoke(cli, ["decode", flipped.hex()])
    assert result.exit_code == 0
    assert "FRAMING ERROR" in result.output
    bad = CliRunner().invoke(cli, ["decode", "zz"])
    assert bad.exit_code == 2
    assert "not hex" in bad.output
    assert "Traceback" not in bad.output
