"""One port, many programmers: every frame read goes to the programmer whose session it belongs to.

The suite's programmers (clinician, patient, test, and the ones a test opens) share the single
port a target was opened with. Each reads through its own ``PortView``; the frames read from the
port, by whichever view is reading, are sorted by the session id in their header: a frame of a
session one of the views holds goes to that view, any other frame (plaintext, a session being
opened, an unknown session, bytes that are not a frame) to the view that wrote last. So an
ALARM_NOTIFY into the clinician's session that arrives while the test role waits for its own
reply is kept for the clinician, on any link and in any chunking, instead of being dropped by
a programmer that cannot read it.

The port's own timeout is set once (a short poll) and never again: over ``rfc2217://`` every
change of it renegotiates the port with the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from programmer.client import SerialPort
from protocol_spec.codec import decode_header
from protocol_spec.framing import DELIMITER, MAX_ENCODED_BYTES, Deframer

__all__ = ["POLL_S", "PortView", "SharedPort"]

POLL_S = 0.02
"""The longest one read of the shared port waits for a byte."""


class SharedPort:
    """A port and the views that read it (see the module docstring)."""

    def __init__(self, port: SerialPort) -> None:
        self.port = port
        port.timeout = POLL_S
        self._views: list[PortView] = []
        self._last_writer: PortView | None = None
        self._partial = bytearray()

    def view(self) -> PortView:
        """A new view; set its ``session_id`` to route its session's frames to it."""
        view = PortView(self)
        self._views.append(view)
        return view

    def close(self) -> None:
        self._views.clear()
        self.port.close()

    def _write(self, view: PortView, data: bytes) -> int | None:
        self._last_writer = view
        return self.port.write(data)

    def _pump(self, *, wait: bool) -> None:
        """Read what the port has (with ``wait``: at least one byte, or ``POLL_S``) and route it."""
        n = self.port.in_waiting
        if n:
            data = self.port.read(n)
        elif wait:
            data = self.port.read(1)
            n = self.port.in_waiting
            if data and n:
                data += self.port.read(n)
        else:
            return
        self._route(data)

    def _route(self, data: bytes) -> None:
        self._partial += data
        while True:
            end = self._partial.find(0)
            if end < 0:
                if len(self._partial) > MAX_ENCODED_BYTES:  # no frame can be this long: garbage
                    self._deliver(None, bytes(self._partial))
                    self._partial.clear()
                return
            segment = bytes(self._partial[:end])
            del self._partial[: end + 1]
            if segment:
                self._deliver(self._session_of(segment), DELIMITER + segment + DELIMITER)

    @staticmethod
    def _session_of(segment: bytes) -> int | None:
        items = Deframer().feed(segment + DELIMITER)
        if len(items) != 1 or not isinstance(items[0], bytes):
            return None
        header = decode_header(items[0])
        return header.session_id if header is not None and header.session_id else None

    def _deliver(self, session_id: int | None, frame: bytes) -> None:
        target = self._last_writer
        if session_id is not None:
            for view in self._views:
                if view.session_id is not None and view.session_id() == session_id:
                    target = view
                    break
        if target is None and self._views:
            target = self._views[0]
        if target is not None:
            target.rx += frame


class PortView:
    """A programmer's port on a ``SharedPort``: ``read``, ``write``, ``in_waiting``, ``timeout``."""

    def __init__(self, shared: SharedPort) -> None:
        self._shared = shared
        self.rx = bytearray()
        self._timeout: float | None = POLL_S
        self.session_id: Callable[[], int] | None = None
        """The session this view's programmer holds (its frames come here)."""

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = value

    @property
    def in_waiting(self) -> int:
        self._shared._pump(wait=False)
        return len(self.rx)

    def read(self, size: int = 1, /) -> bytes:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        self._shared._pump(wait=False)
        while len(self.rx) < size:
            if deadline is not None and time.monotonic() >= deadline:
                break
            self._shared._pump(wait=True)
        data = bytes(self.rx[:size])
        del self.rx[:size]
        return data

    def write(self, data: bytes, /) -> int | None:
        return self._shared._write(self, data)

    def discard(self) -> None:
        """Drop what is buffered for this view and what the port holds."""
        self._shared._pump(wait=False)
        self.rx.clear()

    def close(self) -> None:
        """A view closes nothing: the shared port lives as long as the device under test."""
