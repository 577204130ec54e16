"""Golden vectors: generate ``protocol_spec/vectors/*.json`` from the worked examples, or check them.

Each file is a JSON object with a ``vectors`` list. A vector holds the frame in hex, what it
means (header and payload fields, by name) and everything needed to reproduce its bytes
(session keys, AEAD nonce, plaintext payload). Any implementation, in any language, can
check itself both ways: decode ``frame_hex`` and compare with the fields; encode the fields
with the given keys and counters and compare with ``frame_hex``.

    python -m protocol_spec.vectorgen --write   # regenerate (make spec)
    python -m protocol_spec.vectorgen --check   # exit 1 if a file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import examples
from .catalog import CATALOG
from .codec import HEADER_BYTES, encode_body, encode_payload
from .enums import PROTOCOL_VERSION, Direction, ErrorCode, FrameFlags, MsgType
from .framing import CRC_BYTES, MAX_ENCODED_BYTES, MAX_FRAME_BYTES, crc32, encode_frame
from .jsonable import header_json, to_jsonable
from .security import SESSION_INFO_LABEL, TEST_KEY_SET, aead_nonce, hkdf_info

__all__ = ["VECTOR_DIR", "generate", "main"]

VECTOR_DIR = Path(__file__).with_name("vectors")
FORMAT = "pumprig-vectors/1"


def _requirement(frame: examples.ScriptedFrame) -> str:
    h = frame.header
    if h.is_error:
        return f"PRT-ERR-{frame.message.code.name}"
    t = h.known_type
    assert t is not None
    if t is MsgType.SESSION_OPEN:
        return "SEC-HSK-001"
    return f"PRT-MSG-{t.name}"


def _frame_vector(i: int, f: examples.ScriptedFrame) -> dict[str, Any]:
    h = f.header
    body = encode_body(h, f.message, f.keys)
    assert encode_frame(body) == f.data
    v: dict[str, Any] = {
        "id": f"{i:03d}",
        "name": f.name,
        "requirement": _requirement(f),
        "direction": h.direction.name,
        "header": header_json(h),
        "payload_class": type(f.message).__name__,
        "fields": to_jsonable(f.message),
        "plaintext_payload_hex": encode_payload(f.message).hex(),
        "body_hex": body.hex(),
        "crc32": f"{crc32(body):08x}",
        "frame_hex": f.data.hex(),
    }
    if f.keys is not None:
        v["session"] = {
            "session_id": f.keys.session_id,
            "role": f.keys.role.name,
            "key_id": f"{f.keys.key_id:08x}",
            "key_c2p_hex": f.keys.key_c2p.hex(),
            "key_p2c_hex": f.keys.key_p2c.hex(),
        }
        v["aead_nonce_hex"] = aead_nonce(h.direction, h.counter).hex()
        v["aad_hex"] = body[:HEADER_BYTES].hex()
    else:
        v["session"] = None
    return v


def _handshake_vectors() -> list[dict[str, Any]]:
    out = []
    frames = examples.example_session()
    opens = [f for f in frames if f.header.known_type is MsgType.SESSION_OPEN and not f.header.is_error]
    for n in range(0, len(opens), 2):
        req, rep = opens[n], opens[n + 1]
        hello = req.message
        role_key = TEST_KEY_SET.by_id(hello.role, hello.key_id)
        assert role_key is not None
        serial = n // 2 + 1
        hs = examples.HandshakeExample(
            role_key,
            hello.client_nonce,
            bytes((b + serial - 1) & 0xFF for b in examples.HANDSHAKE.pump_entropy),
            rep.message.boot_counter,
            serial,
            rep.header.session_id,
        )
        assert hs.pump_nonce == rep.message.pump_nonce
        keys = hs.keys
        out.append(
            {
                "id": f"HS{serial}",
                "requirement": "SEC-HSK-001",
                "role": role_key.role.name,
                "key_id": f"{role_key.key_id:08x}",
                "role_key_hex": role_key.key.hex(),
                "test_key": True,
                "client_nonce_hex": hs.client_nonce.hex(),
                "pump_entropy_hex": hs.pump_entropy.hex(),
                "boot_counter": hs.boot_counter,
                "session_serial": hs.session_serial,
                "pump_nonce_hex": hs.pump_nonce.hex(),
                "session_id": hs.session_id,
                "hkdf_salt_hex": (hs.client_nonce + hs.pump_nonce).hex(),
                "hkdf_info_hex": hkdf_info(role_key.role, role_key.key_id, hs.session_id).hex(),
                "hkdf_okm_hex": (keys.key_c2p + keys.key_p2c + keys.confirm).hex(),
                "key_c2p_hex": keys.key_c2p.hex(),
                "key_p2c_hex": keys.key_p2c.hex(),
                "confirm_hex": keys.confirm.hex(),
                "request_frame_hex": req.data.hex(),
                "reply_frame_hex": rep.data.hex(),
            }
        )
    return out


def _framing_vectors() -> list[dict[str, Any]]:
    cases: list[tuple[str, bytes]] = [
        ("no zero bytes", bytes(range(1, 32))),
        ("zero bytes inside", b"\x00\x01\x00\x00\x02\x00"),
        ("254 non-zero bytes (one full COBS block)", bytes((i % 255) + 1 for i in range(254))),
        ("255 non-zero bytes (block boundary)", bytes((i % 255) + 1 for i in range(255))),
        ("maximal body", bytes((i * 7) & 0xFF for i in range(MAX_FRAME_BYTES - CRC_BYTES))),
    ]
    vectors: list[dict[str, Any]] = []
    for n, (name, body) in enumerate(cases, start=1):
        vectors.append(
            {
                "id": f"F{n}",
                "requirement": "PRT-FRM-001",
                "name": name,
                "expect": "accept",
                "body_hex": body.hex(),
                "crc32": f"{crc32(body):08x}",
                "frame_hex": encode_frame(body).hex(),
            }
        )
    good = encode_frame(bytes(range(1, 32)))
    bad_crc = bytearray(good)
    bad_crc[5] ^= 0x01
    rejects = [
        ("bit flip: CRC fails", bytes(bad_crc), "bad_crc"),
        ("COBS code byte pointing past the frame", b"\x00\x05\x01\x02\x00", "bad_cobs"),
        ("fewer bytes than a CRC", b"\x00\x03\x01\x02\x00", "too_short"),
        (
            "no delimiter for more than the maximum encoded length",
            b"\x00" + b"\x01" * (MAX_ENCODED_BYTES + 1) + b"\x00",
            "oversize",
        ),
    ]
    for n, (name, frame, problem) in enumerate(rejects, start=len(cases) + 1):
        vectors.append(
            {
                "id": f"F{n}",
                "requirement": "PRT-FRM-002",
                "name": name,
                "expect": problem,
                "frame_hex": frame.hex(),
            }
        )
    return vectors


def generate() -> dict[str, dict[str, Any]]:
    """Every vector file's content, by file name."""
    frames = examples.example_session()
    message_frames = [(i, f) for i, f in enumerate(frames) if not f.header.is_error]
    error_frames = [(i, f) for i, f in enumerate(frames) if f.header.is_error]
    common = {"format": FORMAT, "protocol_version": PROTOCOL_VERSION}
    covered_types = {f.header.msg_type for _, f in message_frames}
    covered_errors = {f.message.code for _, f in error_frames}
    assert covered_types == {int(t) for t in CATALOG}, "every message type has a vector"
    assert covered_errors == set(ErrorCode) - {ErrorCode.OK}, "every error code has a vector"
    return {
        "framing.json": {
            **common,
            "description": "Framing: 00 | COBS(body | CRC-32 u32le) | 00. 'expect' is accept or the framing problem.",
            "crc32_check": {"input_hex": b"123456789".hex(), "crc32": f"{crc32(b'123456789'):08x}"},
            "max_frame_bytes": MAX_FRAME_BYTES,
            "max_encoded_bytes": MAX_ENCODED_BYTES,
            "vectors": _framing_vectors(),
        },
        "handshake.json": {
            **common,
            "description": "Session handshakes with the published TEST keys: every derivation input and output.",
            "hkdf": (
                "HKDF-SHA256(ikm=role key, salt=client_nonce|pump_nonce, "
                "info=label|role u8|key_id u32le|session_id u32le), 80 bytes: key_c2p | key_p2c | confirm"
            ),
            "info_label_hex": SESSION_INFO_LABEL.hex(),
            "vectors": _handshake_vectors(),
        },
        "messages.json": {
            **common,
            "description": "One session sending every message type; SECURED frames carry their keys and AEAD nonce.",
            "aead": "ChaCha20-Poly1305; nonce = direction u32le | counter u64le; aad = 31-byte header",
            "directions": {d.name: int(d) for d in Direction},
            "flags": {f.name: int(f) for f in FrameFlags},
            "vectors": [_frame_vector(i, f) for i, f in message_frames],
        },
        "errors.json": {
            **common,
            "description": "One ERROR reply for every error code (header flag ERROR; payload ErrorReply).",
            "vectors": [_frame_vector(i, f) for i, f in error_frames],
        },
    }


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protocol_spec.vectorgen", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="regenerate the vector files")
    group.add_argument("--check", action="store_true", help="exit 1 if a vector file is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, doc in generate().items():
        path = VECTOR_DIR / name
        text = _dump(doc)
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    if stale:
        sys.stderr.write(f"stale vectors: {', '.join(stale)}: run `make spec`\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
