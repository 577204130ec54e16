"""``pumprig decode``: frames or a capture in, annotated frames out."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from .codec import DecodeError, Packet
from .enums import Role
from .framing import FramingError
from .inspect import CaptureDecoder, DecodedFrame, describe, frame_json
from .jsonable import header_json, to_jsonable
from .security import TEST_KEY_SET, KeyFileError, KeySet, SessionKeys

__all__ = ["decode"]

_HEX_JUNK = re.compile(r"[\s:,_-]|0x", re.IGNORECASE)


def _parse_hex(text: str, what: str) -> bytes:
    cleaned = _HEX_JUNK.sub("", text)
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise click.BadParameter(f"{what} is not hex: {text[:40]!r}") from None


def _as_frame(data: bytes) -> bytes:
    """Accept a frame with or without its 0x00 delimiters."""
    return b"\x00" + data.strip(b"\x00") + b"\x00"


def _session_key(spec: str) -> SessionKeys:
    parts = spec.split(":")
    if len(parts) != 3:
        raise click.BadParameter("expected SESSION_ID:KEY_C2P_HEX:KEY_P2C_HEX")
    try:
        session_id = int(parts[0], 0)
    except ValueError:
        raise click.BadParameter(f"session id {parts[0]!r} is not a number") from None
    c2p, p2c = _parse_hex(parts[1], "key_c2p"), _parse_hex(parts[2], "key_p2c")
    if len(c2p) != 32 or len(p2c) != 32:
        raise click.BadParameter("session keys are 32 bytes (64 hex digits) each")
    return SessionKeys(session_id, Role.CLINICIAN, 0, c2p, p2c, b"")


def _vector_check(path: Path, as_json: bool) -> int:
    """Decode every frame of a golden-vector file and compare with its recorded fields."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read vector file {path}: {exc}") from None
    failures = 0
    results: list[dict[str, Any]] = []
    for v in doc.get("vectors", []):
        if "request_frame_hex" in v:  # a handshake: derive the session keys from its two frames
            ok, why = _judge_handshake(v)
            failures += not ok
            results.append({"id": v["id"], "name": f"handshake {v['role']}", "ok": ok, "detail": why})
            if not as_json:
                click.echo(f"{'PASS' if ok else 'FAIL'} {v['id']} handshake {v['role']}{'' if ok else ': ' + why}")
            continue
        if "frame_hex" not in v:
            continue
        sessions = []
        s = v.get("session")
        if s:
            sessions.append(
                SessionKeys(
                    s["session_id"],
                    Role[s["role"]],
                    int(s["key_id"], 16),
                    bytes.fromhex(s["key_c2p_hex"]),
                    bytes.fromhex(s["key_p2c_hex"]),
                    b"",
                )
            )
        decoder = CaptureDecoder(TEST_KEY_SET, sessions)
        frames = decoder.feed(bytes.fromhex(v["frame_hex"]))
        expect = v.get("expect", "accept")
        ok, why = _judge(frames, v, expect)
        failures += not ok
        results.append({"id": v["id"], "name": v.get("name", ""), "ok": ok, "detail": why})
        if not as_json:
            click.echo(f"{'PASS' if ok else 'FAIL'} {v['id']} {v.get('name', '')}{'' if ok else ': ' + why}")
    if as_json:
        click.echo(json.dumps({"file": str(path), "vectors": len(results), "failed": failures, "results": results}))
    else:
        click.echo(f"{len(results) - failures} passed, {failures} failed")
    return 1 if failures else 0


def _judge_handshake(v: dict[str, Any]) -> tuple[bool, str]:
    decoder = CaptureDecoder(TEST_KEY_SET)
    decoder.feed(bytes.fromhex(v["request_frame_hex"]) + bytes.fromhex(v["reply_frame_hex"]))
    keys = decoder.sessions.get(v["session_id"])
    if keys is None:
        return False, "no session keys derived from the two frames"
    if (keys.key_c2p.hex(), keys.key_p2c.hex(), keys.confirm.hex()) != (
        v["key_c2p_hex"],
        v["key_p2c_hex"],
        v["confirm_hex"],
    ):
        return False, "derived keys differ"
    return True, ""


def _judge(frames: list[DecodedFrame], v: dict[str, Any], expect: str) -> tuple[bool, str]:
    if expect != "accept":
        problems = [getattr(f.result, "problem", None) for f in frames]
        names = {p.value for p in problems if p is not None}
        return (expect in names, f"expected {expect}, got {sorted(names) or 'an accepted frame'}")
    if len(frames) != 1:
        return False, f"expected one frame, got {len(frames)}"
    r = frames[0].result
    if "body_hex" in v and frames[0].body.hex() != v["body_hex"]:
        return False, "body differs"
    if "fields" not in v:  # a framing vector: the body is arbitrary bytes, not a packet
        return not isinstance(r, FramingError), "framing error"
    if not isinstance(r, Packet):
        if isinstance(r, DecodeError):
            return False, f"rejected: {r.code.name}: {r.detail}"
        return False, f"framing error: {r}"
    if "fields" in v and to_jsonable(r.message) != v["fields"]:
        return False, "decoded fields differ"
    if "header" in v and header_json(r.header) != v["header"]:
        return False, "decoded header differs"
    return True, ""


@click.command()
@click.argument("frames", nargs=-1)
@click.option(
    "--file",
    "capture",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="A raw binary capture of the link (- for stdin).",
)
@click.option(
    "--hex-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A text file of hex frames, one per line; '#' starts a comment.",
)
@click.option(
    "--vectors",
    "vector_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A golden-vector JSON file: decode each vector and compare with its fields.",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Device key file (pumprig-keys/1); default: the published TEST keys.",
)
@click.option(
    "--session-key",
    "session_keys",
    multiple=True,
    metavar="ID:C2P:P2C",
    help="Keys of a session whose handshake is not in the capture (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per frame (JSON lines).")
def decode(
    frames: tuple[str, ...],
    capture: Path | None,
    hex_file: Path | None,
    vector_file: Path | None,
    key_file: Path | None,
    session_keys: tuple[str, ...],
    as_json: bool,
) -> None:
    """Decode frames and annotate every field, following handshakes to decrypt.

    Give frames as hex arguments (delimiters optional), a raw capture with --file, or a
    file of hex lines with --hex-file. Session keys are derived from any SESSION_OPEN
    exchange in the input, using the key file's role keys (the published TEST keys by
    default). Rejected frames are shown with the reason a receiver would give.

    \b
    Examples:
      pumprig decode 00090112024d3c2b1a03...00
      pumprig decode --file capture.bin --key-file device-keys.json
      pumprig decode --hex-file frames.txt --json
      pumprig decode --vectors protocol_spec/vectors/messages.json
    """
    if vector_file is not None:
        sys.exit(_vector_check(vector_file, as_json))
    if key_file is not None:
        try:
            key_set = KeySet.load(key_file)
        except KeyFileError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        key_set = TEST_KEY_SET
        click.echo("note: using the published TEST key set (give --key-file for a real device)", err=True)
    decoder = CaptureDecoder(key_set, [_session_key(s) for s in session_keys])
    chunks: list[bytes] = [_as_frame(_parse_hex(f, "frame")) for f in frames]
    if hex_file is not None:
        for n, line in enumerate(hex_file.read_text(encoding="utf-8").splitlines(), start=1):
            hex_text = line.split("#", 1)[0].strip()
            if hex_text:
                chunks.append(_as_frame(_parse_hex(hex_text, f"line {n}")))
    if capture is not None:
        try:
            chunks.append(sys.stdin.buffer.read() if str(capture) == "-" else capture.read_bytes())
        except OSError as exc:
            raise click.ClickException(f"cannot read capture {capture}: {exc.strerror}") from None
    if not chunks:
        raise click.UsageError("nothing to decode: give hex frames, --file, --hex-file or --vectors")
    rejected = 0
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            rejected += not isinstance(frame.result, Packet)
            click.echo(json.dumps(frame_json(frame)) if as_json else describe(frame))
    if rejected and not as_json:
        click.echo(f"{rejected} frame(s) rejected", err=True)
