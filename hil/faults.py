"""A fault-injecting link: a port wrapper that drops, duplicates, corrupts, delays and splits frames.

    link = FaultyLink(port, seed=7, drop=0.2, duplicate=0.2, corrupt=0.2, baud=115_200)
    prog = Programmer(link, keys=keys)      # anything that takes a pyserial-like port

``FaultyLink`` has the interface of a pyserial port as the programmer needs it
(``programmer.client.SerialPort``: ``timeout``, ``in_waiting``, ``read``, ``write``, ``close``).
It cuts the byte stream, both ways, into frames at the protocol's 0x00 delimiter (a frame is the
bytes between two delimiters, as ``protocol_spec.framing`` sees them) and, per frame and per
direction, reproducibly from ``seed``:

- drops it (probability ``drop``);
- sends it twice (``duplicate``);
- flips one random bit of it (``corrupt``; the first copy, if duplicated): the receiver's CRC
  or COBS check must catch it;
- holds it back ``delay_ms`` (every frame: a latency; the order is kept).

With ``split`` reads return random small chunks. With ``baud`` the link is paced like an 8N1
line: a write takes its bytes' line time, and received bytes become readable no earlier than
theirs. Time comes from the injected ``clock`` (seconds, monotonic) and ``sleep``: a test passes a
fake pair and waits for nothing. ``log`` records every fault done (frame index, direction, fault),
for a report; with one seed and one sequence of calls it is always the same.
"""

from __future__ import annotations

import enum
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from programmer.client import SerialPort
from protocol_spec.framing import DELIMITER, MAX_ENCODED_BYTES
from protocol_spec.timing import BITS_PER_BYTE

__all__ = ["Direction", "Fault", "FaultRates", "FaultRecord", "FaultyLink"]

_NS_PER_S = 1_000_000_000
_POLL_S = 0.02
"""The longest a read waits on the wrapped port at a time when nothing is scheduled."""
_MAX_SPLIT_BYTES = 8
"""The largest chunk a ``split`` read returns."""


def _stream(seed: int) -> random.Random:
    # reproducible fault schedules, not secrets: a seeded PRNG is the point
    return random.Random(seed)  # noqa: S311


class Direction(enum.Enum):
    TO_PUMP = "to_pump"
    """Written to the link: towards the pump."""
    FROM_PUMP = "from_pump"
    """Read from the link: from the pump."""


class Fault(enum.Enum):
    DROP = "drop"
    DUPLICATE = "duplicate"
    CORRUPT = "corrupt"
    PASSTHROUGH = "passthrough"
    """More than a frame's worth of bytes without a delimiter: passed on as they are, unharmed."""


@dataclass(frozen=True)
class FaultRates:
    """What happens to the frames of one direction: probabilities per frame, and a latency."""

    drop: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    delay_ms: int = 0

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability from 0 to 1, not {value!r}")
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms is at least 0, not {self.delay_ms!r}")


@dataclass(frozen=True)
class FaultRecord:
    """One fault done: the ``index``-th frame (from 0) of ``direction`` got ``fault``."""

    index: int
    direction: Direction
    fault: Fault
    detail: str = ""
    """For CORRUPT, the bit flipped (``byte B bit N``); for PASSTHROUGH, the bytes passed."""


class _Splitter:
    """Cut a byte stream into frames at the delimiter; bounded like ``framing.Deframer``."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """(bytes, is_frame): each frame's bytes without delimiters, or an undelimited run passed on."""
        out: list[tuple[bytes, bool]] = []
        for part_index, part in enumerate(data.split(DELIMITER)):
            if part_index > 0:
                if self._buf:
                    out.append((bytes(self._buf), True))
                self._buf.clear()
            self._buf += part
            if len(self._buf) > MAX_ENCODED_BYTES:
                out.append((bytes(self._buf), False))
                self._buf.clear()
        return out


@dataclass
class _Segment:
    """Bytes on their way out of the link: byte i is due at ``start_ns`` + the line time of i + 1 bytes."""

    start_ns: int
    data: bytes
    sent: int = 0


class _Direction:
    """The state of one direction: its random stream, splitter, rates and frame count."""

    def __init__(self, direction: Direction, rates: FaultRates, rng: random.Random) -> None:
        self.direction = direction
        self.rates = rates
        self.rng = rng
        self.splitter = _Splitter()
        self.frames = 0

    def apply(self, frame: bytes, log: list[FaultRecord]) -> list[bytes]:
        """The copies of ``frame`` that go on, each with its delimiters. Always draws 5 numbers."""
        index = self.frames
        self.frames += 1
        r_drop, r_dup, r_corrupt, r_byte, r_bit = (self.rng.random() for _ in range(5))
        byte_index = int(r_byte * len(frame))  # not randrange: its draws vary with the length
        bit = int(r_bit * 8)
        if r_drop < self.rates.drop:
            log.append(FaultRecord(index, self.direction, Fault.DROP))
            return []
        copies = [frame]
        if r_dup < self.rates.duplicate:
            log.append(FaultRecord(index, self.direction, Fault.DUPLICATE))
            copies.append(frame)
        if r_corrupt < self.rates.corrupt:
            damaged = bytearray(frame)
            damaged[byte_index] ^= 1 << bit
            copies[0] = bytes(damaged)
            log.append(FaultRecord(index, self.direction, Fault.CORRUPT, f"byte {byte_index} bit {bit}"))
        return [DELIMITER + c + DELIMITER for c in copies]


class FaultyLink:
    """A port that damages the frames passing through it, reproducibly from ``seed``.

    ``drop``, ``duplicate``, ``corrupt`` and ``delay_ms`` apply to both directions unless
    ``to_pump`` or ``from_pump`` gives that direction its own ``FaultRates``. ``baud`` None: no
    line pacing. ``clock`` is monotonic seconds; ``sleep`` takes seconds.
    """

    def __init__(
        self,
        port: SerialPort,
        *,
        seed: int,
        drop: float = 0.0,
        duplicate: float = 0.0,
        corrupt: float = 0.0,
        delay_ms: int = 0,
        split: bool = False,
        baud: int | None = None,
        to_pump: FaultRates | None = None,
        from_pump: FaultRates | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if baud is not None and baud < 1:
            raise ValueError(f"baud is at least 1, not {baud!r}")
        both = FaultRates(drop, duplicate, corrupt, delay_ms)
        root = _stream(seed)
        self.port = port
        """The wrapped port."""
        self.seed = seed
        self.split = split
        self.baud = baud
        self.log: list[FaultRecord] = []
        """Every fault done, in the order done."""
        self._tx = _Direction(Direction.TO_PUMP, to_pump or both, _stream(root.getrandbits(64)))
        self._rx_dir = _Direction(Direction.FROM_PUMP, from_pump or both, _stream(root.getrandbits(64)))
        self._chunks = _stream(root.getrandbits(64))
        self._clock = clock
        self._sleep = sleep
        self._timeout: float | None = port.timeout
        self._port_timeout: float | None = port.timeout
        self._held: deque[tuple[int, bytes]] = deque()
        """To the pump, held back: (due ns, bytes)."""
        self._tx_free_ns = 0
        self._rx_free_ns = 0
        self._incoming: deque[_Segment] = deque()
        self._rx = bytearray()

    # ------------------------------------------------------------------ what was done

    @property
    def frames(self) -> dict[Direction, int]:
        """Frames seen so far, per direction."""
        return {Direction.TO_PUMP: self._tx.frames, Direction.FROM_PUMP: self._rx_dir.frames}

    def counts(self) -> dict[tuple[Direction, Fault], int]:
        """How many of each fault in each direction (a report's summary of ``log``)."""
        counts: dict[tuple[Direction, Fault], int] = {}
        for record in self.log:
            key = (record.direction, record.fault)
            counts[key] = counts.get(key, 0) + 1
        return counts

    # ------------------------------------------------------------------ time

    def _now_ns(self) -> int:
        return round(self._clock() * _NS_PER_S)

    def _line_ns(self, n_bytes: int) -> int:
        if self.baud is None:
            return 0
        return -(-n_bytes * BITS_PER_BYTE * _NS_PER_S // self.baud)

    def _sleep_until(self, due_ns: int) -> None:
        wait_ns = due_ns - self._now_ns()
        if wait_ns > 0:
            self._sleep(wait_ns / _NS_PER_S)

    # ------------------------------------------------------------------ the SerialPort interface

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = value

    @property
    def in_waiting(self) -> int:
        self._service()
        return len(self._rx)

    def write(self, data: bytes, /) -> int:
        data = bytes(data)
        start_ns = max(self._now_ns(), self._tx_free_ns)
        self._tx_free_ns = start_ns + self._line_ns(len(data))
        self._sleep_until(self._tx_free_ns)  # a line is busy while its bytes go out
        due_ns = self._now_ns() + self._tx.rates.delay_ms * 1_000_000
        for piece, is_frame in self._tx.splitter.feed(data):
            if not is_frame:
                self.log.append(FaultRecord(self._tx.frames, Direction.TO_PUMP, Fault.PASSTHROUGH, f"{len(piece)}"))
                self._held.append((due_ns, piece))
                continue
            self._held.extend((due_ns, copy) for copy in self._tx.apply(piece, self.log))
        self._service()
        return len(data)

    def read(self, size: int = 1, /) -> bytes:
        timeout = self._timeout
        deadline_ns = None if timeout is None else self._now_ns() + round(timeout * _NS_PER_S)
        while True:
            self._service()
            if len(self._rx) >= size or (self.split and self._rx) or timeout == 0:
                break
            now_ns = self._now_ns()
            if deadline_ns is not None and now_ns >= deadline_ns:
                break
            next_ns = self._next_due_ns(1 if self.split else size - len(self._rx))
            if next_ns is not None:
                self._sleep_until(next_ns if deadline_ns is None else min(next_ns, deadline_ns))
            else:
                left_s = _POLL_S if deadline_ns is None else min(_POLL_S, (deadline_ns - now_ns) / _NS_PER_S)
                self._wait_on_port(left_s)
        take = min(size, len(self._rx))
        if self.split and take > 1:
            take = self._chunks.randint(1, min(take, _MAX_SPLIT_BYTES))
        data = bytes(self._rx[:take])
        del self._rx[:take]
        return data

    def close(self) -> None:
        self._held.clear()
        self._incoming.clear()
        self._rx.clear()
        self.port.close()

    # ------------------------------------------------------------------ moving bytes

    def _service(self) -> None:
        """Deliver held frames that are due, take what the port has, release received bytes that are due."""
        now_ns = self._now_ns()
        while self._held and self._held[0][0] <= now_ns:
            _, data = self._held.popleft()
            self.port.write(data)
        waiting = self.port.in_waiting
        if waiting:
            self._receive(self.port.read(waiting), now_ns)
        self._release(now_ns)

    def _receive(self, data: bytes, now_ns: int) -> None:
        arrive_ns = now_ns + self._rx_dir.rates.delay_ms * 1_000_000
        for piece, is_frame in self._rx_dir.splitter.feed(data):
            if is_frame:
                copies = self._rx_dir.apply(piece, self.log)
            else:
                self.log.append(
                    FaultRecord(self._rx_dir.frames, Direction.FROM_PUMP, Fault.PASSTHROUGH, f"{len(piece)}")
                )
                copies = [piece]
            for copy in copies:
                start_ns = max(arrive_ns, self._rx_free_ns)
                self._rx_free_ns = start_ns + self._line_ns(len(copy))
                self._incoming.append(_Segment(start_ns, copy))

    def _release(self, now_ns: int) -> None:
        while self._incoming:
            seg = self._incoming[0]
            total = len(seg.data)
            if self.baud is None:
                due = total
            else:  # byte k (from 1) is due at start + ceil(k * line time of a byte)
                due = min(total, max(seg.sent, (now_ns - seg.start_ns) * self.baud // (BITS_PER_BYTE * _NS_PER_S)))
            self._rx += seg.data[seg.sent : due]
            seg.sent = due
            if due < total:
                return
            self._incoming.popleft()

    def _next_due_ns(self, need: int) -> int | None:
        """When something next happens on its own: a held frame goes out, or ``need`` more received
        bytes are readable (or, if fewer are on their way, the last of them)."""
        dues: list[int] = []
        if self._held:
            dues.append(self._held[0][0])
        last: int | None = None
        for seg in self._incoming:
            left = len(seg.data) - seg.sent
            if need <= left:
                last = seg.start_ns + self._line_ns(seg.sent + need)
                break
            need -= left
            last = seg.start_ns + self._line_ns(len(seg.data))
        if last is not None:
            dues.append(last)
        return min(dues) if dues else None

    def _wait_on_port(self, left_s: float) -> None:
        """Nothing scheduled: let the wrapped port wait for a byte (it returns at the first one, or
        after ``_POLL_S``), then sleep what is left of ``left_s`` if it returned at once.

        The wrapped port's timeout is set once, never per wait: over ``rfc2217://`` every change
        of it renegotiates the port with the server (150 ms each, measured with ser2net)."""
        started_ns = self._now_ns()
        if self._port_timeout != _POLL_S:
            self.port.timeout = self._port_timeout = _POLL_S
        data = self.port.read(1)
        if data:
            self._receive(data, self._now_ns())
            return
        rest_ns = round(left_s * _NS_PER_S) - (self._now_ns() - started_ns)
        if rest_ns > 0:
            self._sleep(rest_ns / _NS_PER_S)  # a port that returned at once (virtual time, a fake)
