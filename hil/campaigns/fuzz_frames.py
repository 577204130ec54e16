"""Coverage-guided fuzzing of the device's receive path with atheris (libFuzzer for Python).

    python -m hil.campaigns.fuzz_frames -atheris_runs=100000            # libFuzzer's options
    python -m hil.campaigns.fuzz_frames -max_total_time=600 corpus/     # keep a corpus

``firmware_model`` and ``protocol_spec`` are instrumented for coverage. Every input starts from
the same live pump as the ``malformed-frames`` campaign (``LivePump``: the default preset's
pump, filled and running its program, with an open clinician session, and its twin) and is
read as up to eight steps, each a mode, a wait (0 to 30 s of virtual time, so the bad-tag
backoff comes and goes but the session never times out) and up to 1,100 bytes:

0. the bytes as the line carries them;
1. the bytes as a frame body with a correct CRC (to the header, session and tag checks);
2. the bytes as header and payload, sealed with the live session's keys under a fresh counter
   (to the payload checks past the tag);
3. a real frame's body (golden vectors, or the live session's requests) with the bytes
   written over part of it, and a correct CRC.

Bytes that would deliver a request the pump may carry out are held back (``LivePump.offer``).
After the steps a good request must be answered as the twin answers it and the therapy state
must be the twin's; an exception or a broken invariant is a crash, which libFuzzer saves.
"""

from __future__ import annotations

import functools
import pickle
import struct
import sys
from dataclasses import dataclass

import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

with atheris.instrument_imports(include=["firmware_model", "protocol_spec"]):
    from firmware_model.device import Device
    from hil.campaigns.frames import (
        LivePump,
        MalformedFrames,
        frame_bytes,
        new_log_entries,
        seeded,
        therapy_state,
    )
    from protocol_spec import messages as m
    from protocol_spec.channel import Outgoing
    from protocol_spec.codec import HEADER_BYTES, Packet, decode_body
    from protocol_spec.enums import Direction, FrameFlags
    from protocol_spec.framing import Deframer
    from protocol_spec.security import seal_payload

__all__ = ["TestOneInput", "main"]

SEED = 0x0F022
MAX_STEPS = 8
STEP_MS = 250
MAX_WAIT_STEPS = 120
"""A wait is 0 to 120 times 250 ms: at most 8 x 30 s = 240 s, within the 300 s session timeout."""
_HEADER = struct.Struct("<BBBIQQQ")


@dataclass(frozen=True)
class _Template:
    live: bytes
    """The pickled live pump (without a twin): each input starts from a copy."""
    twin: bytes
    """The pickled twin: the same device, which sees only the clock and the good request."""
    good: Outgoing
    """The good request sent after each input (STATUS, with a counter below every one an input uses)."""
    bodies: list[bytes]
    """Real frame bodies to overwrite (mode 3)."""
    first_seq: tuple[int, int]


def _template() -> _Template:
    live = LivePump(SEED, twin=False)
    twin = LivePump(SEED, twin=False)
    good = live.channel.request(m.Status())
    bodies = MalformedFrames(seeded(SEED), live).bodies  # burns counters past the good request's
    first = (live.device.pump.log.next_seq, twin.device.pump.log.next_seq)
    return _Template(pickle.dumps(live), pickle.dumps(twin.device), good, bodies, first)


_T = _template()


@functools.lru_cache(maxsize=4096)
def _expected(now_ms: int) -> tuple[object, ...]:
    """What the twin answers to the good request at ``now_ms``, and its state after it."""
    twin: Device = pickle.loads(_T.twin)  # noqa: S301 - our own pickle, made above
    twin.receive_data(_T.good.data, now_ms)
    reply = _reply(twin.data_to_send(), twin)
    return reply, therapy_state(twin), new_log_entries(twin, _T.first_seq[1])


def _sealed(live: LivePump, chunk: bytes) -> bytes:
    head = chunk[:HEADER_BYTES].ljust(HEADER_BYTES, b"\x00")
    version, msg_type, flags, _sid, _counter, echo, command_id = _HEADER.unpack(head)
    flags |= int(FrameFlags.SECURED)
    counter = live.channel.request(m.Status()).header.counter  # fresh, never used
    raw = _HEADER.pack(version, msg_type, flags, live.session_id, counter, echo, command_id)
    direction = Direction.PUMP_TO_PROGRAMMER if flags & int(FrameFlags.FROM_PUMP) else Direction.PROGRAMMER_TO_PUMP
    return frame_bytes(raw + seal_payload(live.keys, direction, counter, raw, chunk[HEADER_BYTES:]))


def _overwritten(chunk: bytes) -> bytes:
    if len(chunk) < 3:
        return frame_bytes(_T.bodies[chunk[0] % len(_T.bodies)] if chunk else b"")
    base = _T.bodies[chunk[0] % len(_T.bodies)]
    at = (chunk[1] << 8 | chunk[2]) % (len(base) + 1)
    patch = chunk[3:]
    return frame_bytes(base[:at] + patch + base[at + len(patch) :])


def _reply(wire: bytes, device: Device) -> object:
    for item in Deframer().feed(wire):
        if isinstance(item, bytes):
            session = next(iter(device._sessions.values()), None)
            got = decode_body(item, session.keys if session is not None else None)
            if isinstance(got, Packet) and got.header.echo_counter == _T.good.header.counter:
                return got.message
    return None


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris calls
    fdp = atheris.FuzzedDataProvider(data)
    live: LivePump = pickle.loads(_T.live)  # noqa: S301 - our own pickle, made above
    now_ms = 0
    for _ in range(MAX_STEPS):
        if fdp.remaining_bytes() == 0:
            break
        mode = fdp.ConsumeIntInRange(0, 3)
        now_ms += STEP_MS * fdp.ConsumeIntInRange(0, MAX_WAIT_STEPS)
        chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1100))
        if mode == 0:
            wire = chunk
        elif mode == 1:
            wire = frame_bytes(chunk)
        elif mode == 2:
            wire = _sealed(live, chunk)
        else:
            wire = _overwritten(chunk)
        live.offer(wire, now_ms)
    got = live.send_good(_T.good)
    reply, state, logged = _expected(live.now_ms)
    if got is None or got.message != reply:
        raise AssertionError(f"the good request after the input got {got}, the twin's answer is {reply}")
    mine = therapy_state(live.device)
    for part, value in mine.items():
        if value != state[part]:  # type: ignore[index]
            raise AssertionError(f"the input changed the {part}: {value} != {state[part]}")  # type: ignore[index]
    if new_log_entries(live.device, _T.first_seq[0]) != logged:
        raise AssertionError("the input wrote to the log (not a SECURITY entry)")


def main(argv: list[str] | None = None) -> None:
    atheris.Setup(sys.argv if argv is None else argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
