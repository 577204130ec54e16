"""Serve one virtual pump on a pty or a TCP socket: the thin I/O shell around a ``Device``.

    server = PtyServer(device)               # or TcpServer(device, "127.0.0.1", 0)
    print(server.url)                        # /dev/pts/N or socket://127.0.0.1:PORT
    server.run()                             # until SIGINT/SIGTERM or server.stop()
    server.close()

Everything that decides is in ``Device``; this module only moves bytes and reads the clock.
Host time is ``time.monotonic_ns`` since the start, times ``time_scale``, in integer
milliseconds. ``Device.advance`` runs at least every 100 ms of real time and when the pump's
next event falls due. Writes never block: what the link cannot take yet waits in a bounded
buffer (the oldest bytes go first when it is full; the client's deframer resyncs).

The pty server holds its own slave end open, in raw mode, so clients can come and go: the
pump outlives every client, and bytes half a frame long from a client that vanished are
flushed by the next frame's leading delimiter. The TCP server serves one client at a time;
a new connection replaces the present one (a client that vanished without a word must not
lock the pump away).

The pump's non-volatile memory may live in a file (``open_state``). The file *is* the memory,
written through: every physical write of the device's store lands at its offset and is
fsync'd before the device goes on, so therapy, event log and boot counter survive a restart
of the process, and a process killed mid-write leaves what a power cut would (the next boot
repairs it). One process at a time: the file is locked while it is open.

    device, state, report = open_state(Path("pump.state"), pump_config, device_config, keys)
    ...                                      # serve device
    state.close()
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import selectors
import signal
import socket
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from firmware_model.config import PumpConfig
from firmware_model.device import Device, DeviceConfig, nv_layout
from firmware_model.nvm import BootReport
from firmware_model.presets import preset_image
from firmware_model.pump import Plant
from protocol_spec.security import KeySet

__all__ = [
    "OUT_BUFFER_BYTES",
    "TICK_MS",
    "PtyServer",
    "Server",
    "StateFile",
    "StateFileError",
    "TcpServer",
    "open_state",
]

TICK_MS = 100
"""The longest the loop sleeps (real time) between two calls of ``Device.advance``."""
OUT_BUFFER_BYTES = 64 * 1024
"""Bytes waiting for a slow (or absent) reader before the oldest are dropped."""
_READ_BYTES = 4096

_WAKE = "wake"
_LINK = "link"
_LISTEN = "listen"


_SignalHandler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


def _quiet(_message: str) -> None:
    """The default note sink: notes go nowhere."""


class Server(abc.ABC):
    """The loop shared by the pty and TCP servers: select, advance, flush."""

    url: str

    def __init__(
        self,
        device: Device,
        *,
        time_scale: int = 1,
        note: Callable[[str], None] = _quiet,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        out_buffer_bytes: int = OUT_BUFFER_BYTES,
    ) -> None:
        if time_scale < 1:
            raise ValueError("time_scale is a whole number, at least 1")
        self.device = device
        self.time_scale = time_scale
        self.note = note
        self._clock_ns = clock_ns
        self._start_ns = clock_ns()
        self._out = bytearray()
        self._out_limit = out_buffer_bytes
        self.dropped_out_bytes = 0
        self._stopping = False
        self._closed = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)

    # ------------------------------------------------------------------ time

    def now_ms(self) -> int:
        """Host time for the device: real monotonic time since the start, scaled, in ms."""
        return (self._clock_ns() - self._start_ns) * self.time_scale // 1_000_000

    def _timeout_s(self) -> float:
        """How long select may sleep: a tick at most, less if the pump has an event sooner."""
        pump_ms = self.device.pump_time_ms
        wait_ms = TICK_MS
        nxt = self.device.pump.next_event_ms()
        if nxt is not None and not self.device.clock_held:
            due_ms = max(1, nxt - pump_ms)  # pump time runs with host time while not held
            wait_ms = min(wait_ms, -(-due_ms // self.time_scale))
        return wait_ms / 1000

    # ------------------------------------------------------------------ running

    def run(self, *, handle_signals: bool = True) -> None:
        """Serve until ``stop()``, SIGINT or SIGTERM (signals: main thread only)."""
        previous: dict[signal.Signals, _SignalHandler] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            while not self._stopping:
                for key, mask in self._sel.select(self._timeout_s()):
                    self._dispatch(key.data, mask)
                self.device.advance(self.now_ms())
                self._take_output()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self._stopping = True
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\x00")

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.stop()

    def _dispatch(self, what: object, mask: int) -> None:
        if what == _WAKE:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 64):
                    pass
            return
        if what == _LISTEN:
            self._accept()
            return
        if mask & selectors.EVENT_READ:
            data = self._link_read()
            if data:
                self.device.receive_data(data, self.now_ms())
                self._take_output()
        if mask & selectors.EVENT_WRITE:
            self._flush()

    def _take_output(self) -> None:
        data = self.device.data_to_send()
        if data:
            self._out += data
            excess = len(self._out) - self._out_limit
            if excess > 0:
                del self._out[:excess]
                self.dropped_out_bytes += excess
        self._flush()

    def _flush(self) -> None:
        while self._out:
            sent = self._link_write(bytes(self._out))
            if sent <= 0:
                break
            del self._out[:sent]
        self._want_write(bool(self._out))

    def close(self) -> None:
        """Release every fd. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close_link()
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ per link kind

    @abc.abstractmethod
    def _accept(self) -> None:
        """A client connects (a listening socket is readable)."""

    @abc.abstractmethod
    def _link_read(self) -> bytes:
        """Bytes the client sent (b"" when it went away)."""

    @abc.abstractmethod
    def _link_write(self, data: bytes) -> int:
        """Bytes written without blocking (0: try again when writable)."""

    @abc.abstractmethod
    def _want_write(self, want: bool) -> None:
        """Ask the selector for (or stop asking for) writability."""

    @abc.abstractmethod
    def _close_link(self) -> None:
        """Drop the client's end (the server keeps listening)."""


class PtyServer(Server):
    """The pump on a pseudo-terminal: clients open ``url`` (a /dev/pts/N path) like a serial port."""

    def __init__(
        self,
        device: Device,
        *,
        time_scale: int = 1,
        note: Callable[[str], None] = _quiet,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        out_buffer_bytes: int = OUT_BUFFER_BYTES,
    ) -> None:
        super().__init__(device, time_scale=time_scale, note=note, clock_ns=clock_ns, out_buffer_bytes=out_buffer_bytes)
        self._master = self._slave = -1
        self._writing = False
        try:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)  # our own end stays open: clients come and go, the pty stays
            os.set_blocking(self._master, False)
            self.url = os.ttyname(self._slave)
            self._sel.register(self._master, selectors.EVENT_READ, _LINK)
        except BaseException:
            self.close()
            raise

    def _accept(self) -> None:
        """Nothing listens on a pty: a client simply opens the slave path."""

    def _link_read(self) -> bytes:
        try:
            return os.read(self._master, _READ_BYTES)
        except BlockingIOError:
            return b""
        except OSError:  # EIO if every slave end closed: cannot happen while we hold ours
            return b""

    def _link_write(self, data: bytes) -> int:
        try:
            return os.write(self._master, data)
        except BlockingIOError:
            return 0

    def _want_write(self, want: bool) -> None:
        if want != self._writing:
            self._writing = want
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self._sel.modify(self._master, events, _LINK)

    def _close_link(self) -> None:
        if self._master >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._master)
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1


class TcpServer(Server):
    """The pump on a TCP socket: clients open ``url`` (socket://HOST:PORT) with pyserial."""

    def __init__(
        self,
        device: Device,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        time_scale: int = 1,
        note: Callable[[str], None] = _quiet,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        out_buffer_bytes: int = OUT_BUFFER_BYTES,
    ) -> None:
        super().__init__(device, time_scale=time_scale, note=note, clock_ns=clock_ns, out_buffer_bytes=out_buffer_bytes)
        self._client: socket.socket | None = None
        self._peer = ""
        self._writing = False
        self._listener: socket.socket | None = None
        try:
            self._listener = listener = socket.create_server((host, port))
            listener.setblocking(False)
            self._sel.register(listener, selectors.EVENT_READ, _LISTEN)
        except BaseException:
            self.close()
            raise
        bound_host, bound_port = listener.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"socket://{shown}:{bound_port}"

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _accept(self) -> None:
        if self._listener is None:
            return
        try:
            conn, addr = self._listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        peer = f"{addr[0]}:{addr[1]}"
        if self._client is not None:
            self.note(f"client {self._peer} replaced by {peer}")
            self._drop_client()
        else:
            self.note(f"client {peer} connected")
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client, self._peer = conn, peer
        self._writing = False
        self._sel.register(conn, selectors.EVENT_READ, _LINK)

    def _drop_client(self) -> None:
        client = self._client
        if client is None:
            return
        self._client = None
        self._out.clear()  # what was meant for the old client is nobody's business now
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(client)
        client.close()

    def _link_read(self) -> bytes:
        client = self._client
        if client is None:
            return b""
        try:
            data = client.recv(_READ_BYTES)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            self.note(f"client {self._peer} disconnected")
            self._drop_client()
        return data

    def _link_write(self, data: bytes) -> int:
        client = self._client
        if client is None:
            self._out.clear()  # nobody listens: replies and notifications go nowhere
            return 0
        try:
            return client.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self.note(f"client {self._peer} lost")
            self._drop_client()
            return 0

    def _want_write(self, want: bool) -> None:
        client = self._client
        if client is None or want == self._writing:
            return
        self._writing = want
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
        self._sel.modify(client, events, _LINK)

    def _close_link(self) -> None:
        self._drop_client()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(listener)
            listener.close()


# ---------------------------------------------------------------------- non-volatile memory in a file


class StateFileError(Exception):
    """A state file that cannot be used (or written): what is wrong and what to do."""


class StateFile:
    """An open, locked state file of exactly the image's size: the device's non-volatile
    memory. ``on_write`` is the store's write hook (``Device.boot(on_write=...)``)."""

    def __init__(self, path: Path, fd: int, image: bytes) -> None:
        self.path = path
        self.image = image
        """The image as it was read when the file was opened."""
        self._fd = fd

    @classmethod
    def open(cls, path: Path, size: int, new_image: bytes | None = None) -> StateFile:
        """Open the state file at ``path``, which must hold ``size`` bytes; or, with
        ``new_image``, create it (mode 0600, never over an existing file) holding that image."""
        if new_image is not None:
            if len(new_image) != size:
                raise ValueError(f"the new image has {len(new_image)} bytes, not {size}")
            _create(path, new_image)
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise StateFileError(f"{path} does not exist") from None
        except OSError as exc:
            raise StateFileError(f"cannot open {path}: {exc.strerror or exc}") from exc
        try:
            _lock_and_check(fd, path, size)
            image = _read_all(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, image)

    def on_write(self, offset: int, length: int, data: bytes) -> None:
        """Write through: the bytes at ``offset``, then fsync, before the device goes on."""
        view = memoryview(data)[:length]
        try:
            while view:
                written = os.pwrite(self._fd, view, offset)
                view = view[written:]
                offset += written
            os.fsync(self._fd)
        except OSError as exc:
            raise StateFileError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Release the file (and its lock). Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> StateFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_state(
    path: Path,
    pump_config: PumpConfig,
    device_config: DeviceConfig,
    keys: KeySet,
    *,
    preset: str | None = None,
) -> tuple[Device, StateFile, BootReport]:
    """Boot a device whose non-volatile memory is the file at ``path``, written through.

    A missing file is created: factory-new (``preset`` None: erased memory, an empty pump,
    STOPPED) or in the preset's situation. An existing file is booted as it is (the boot
    counter goes up; a bad copy is repaired); with a ``preset`` it is refused, as is a file
    whose size is not the image's. The plant (true reservoir, battery charge) does not live
    in the file: a pump booted from an existing file holds what its firmware believes.
    """
    layout = nv_layout(pump_config, device_config)
    new_image: bytes | None = None
    plant: Plant | None = None
    if not path.exists():
        if preset is None:
            new_image = layout.blank_image()
        else:
            new_image, plant = preset_image(preset, pump_config, device_config, keys)
    elif preset is not None:
        raise StateFileError(
            f"{path} already holds a pump: a preset applies to a new state file only "
            "(drop the preset, or give a new file)"
        )
    state = StateFile.open(path, layout.size, new_image)
    try:
        device, report = Device.boot(
            pump_config, keys, config=device_config, image=state.image, plant=plant, on_write=state.on_write
        )
    except BaseException:
        state.close()
        raise
    return device, state, report


def _create(path: Path, image: bytes) -> None:
    """``path`` holding ``image``, mode 0600, whole or not at all: written and fsync'd under a
    temporary name, then linked into place (never over a file that appeared meanwhile)."""
    directory = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=directory)  # mode 0600
    except OSError as exc:
        raise StateFileError(f"cannot create {path}: {exc.strerror or exc}") from exc
    try:
        view = memoryview(image)
        offset = 0
        while offset < len(view):
            offset += os.pwrite(fd, view[offset:], offset)
        os.fsync(fd)
        os.link(tmp, path)
    except FileExistsError:
        raise StateFileError(f"{path} appeared while it was being created: start again") from None
    except OSError as exc:
        raise StateFileError(f"cannot create {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # the new name itself, durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _lock_and_check(fd: int, path: Path, size: int) -> None:
    """One process at a time, and a file of the image's size."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StateFileError(f"{path} is in use by another pump (another pumprig serve?)") from None
    found = os.fstat(fd).st_size
    if found != size:
        raise StateFileError(
            f"{path} holds {found} bytes, not the {size} bytes of this pump's non-volatile memory: "
            "it is not a state file, or one of a pump with another --config; give that --config, or a new file"
        )


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
