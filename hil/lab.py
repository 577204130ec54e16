"""A private ser2net: a serial port (a board, or the pty of ``pumprig serve --pty``) as RFC 2217.

    pumprig serve --pty                                # prints /dev/pts/N

    with ser2net_rfc2217("/dev/pts/N") as url:         # rfc2217://127.0.0.1:PORT?ign_set_control
        Programmer.open(url).status()

This is how a networked lab exposes its boards (labgrid's exporter runs ser2net the same way),
in miniature: the instance started here has its own YAML configuration in a temporary
directory, runs in the foreground (``-d``: its log goes to a file next to the configuration,
shown if it fails), writes no pid file and takes no UUCP lock unless asked (``uucp_lock``), and
never touches the system's ser2net service or /etc/ser2net. It is stopped (SIGTERM, then
SIGKILL) however the block ends.

Settings that matter (ser2net 4.x, gensio):

- ``tcp(nodelay)``: without it ser2net's socket delays small writes (Nagle) until the
  client's delayed ACK, about 40 ms per reply; with it a STATUS round trip takes a few ms.
- ``chardelay: false``: ser2net otherwise waits about two characters' time (at least 1 ms)
  after the last byte from the device before it forwards them.
- A pty has no modem lines: ser2net never answers pyserial's SET_CONTROL (DTR, RTS) for one,
  and pyserial's ``open`` then fails ("timeout while waiting for option 'control'"). For a pty
  the URL therefore carries pyserial's ``?ign_set_control`` (it sleeps 0.1 s instead of
  waiting for each answer). Setting the baud rate on a pty works (acknowledged).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["SER2NET_START_S", "Ser2netError", "find_ser2net", "is_pty", "ser2net_rfc2217"]

SER2NET_START_S = 10.0
"""How long ser2net may take to listen."""

_PTY_MAJORS = range(136, 144)  # Linux: Unix98 pty slaves (/dev/pts/N)
_TCP_LISTEN = "0A"
_STARTUP_FAILED = b"Unable to startup network port"  # e.g. a fixed port in use: ser2net keeps running


class Ser2netError(RuntimeError):
    """ser2net is missing, did not start, or did not listen; the message says why."""


def find_ser2net() -> str | None:
    """The ser2net executable: on PATH, or Debian's /usr/sbin/ser2net (not on a user's PATH)."""
    found = shutil.which("ser2net")
    if found is not None:
        return found
    debian = Path("/usr/sbin/ser2net")
    return str(debian) if os.access(debian, os.X_OK) else None


def is_pty(device_path: str) -> bool:
    """True if ``device_path`` is a pseudo-terminal's slave (no modem lines)."""
    try:
        st = os.stat(device_path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTY_MAJORS


def _config(device_path: str, port: int, baud: int) -> str:
    # Quoted scalars: a device path may hold YAML's special characters.
    return (
        "connection: &pumprig\n"
        f'  accepter: "telnet(rfc2217),tcp(nodelay),127.0.0.1,{port}"\n'
        f'  connector: "serialdev,{device_path},{baud}n81,local"\n'
        "  options:\n"
        "    kickolduser: true\n"
        "    chardelay: false\n"
    )


def _listening_port(pid: int) -> int | None:
    """The TCP port process ``pid`` listens on (matched by socket inode in /proc), or None."""
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    except OSError:
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _TCP_LISTEN and fields[9] in inodes:
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def ser2net_rfc2217(
    device_path: str,
    port: int = 0,
    *,
    baud: int = 115200,
    uucp_lock: bool = False,
    ser2net: str | None = None,
) -> Iterator[str]:
    """A private ser2net serving ``device_path`` as telnet/RFC 2217 on 127.0.0.1; yields its URL.

    ``port`` 0 lets ser2net bind any free port (read back from /proc, so no race with other
    processes). The URL is ``rfc2217://127.0.0.1:PORT``, with ``?ign_set_control`` for a pty
    (module docstring). Ser2netError if ser2net is missing or does not listen within
    ``SER2NET_START_S``.
    """
    exe = ser2net or find_ser2net()
    if exe is None:
        raise Ser2netError("ser2net is not installed (Debian/Ubuntu: apt-get install ser2net)")
    with tempfile.TemporaryDirectory(prefix="pumprig-ser2net-") as tmp:
        config = Path(tmp) / "ser2net.yaml"
        config.write_text(_config(device_path, port, baud))
        log_path = Path(tmp) / "ser2net.log"
        command = [exe, "-c", str(config), "-d"] + ([] if uucp_lock else ["-u"])
        with log_path.open("wb") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own argument list, no shell
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + SER2NET_START_S
            bound = _listening_port(proc.pid)
            while bound is None or (port and bound != port):
                if proc.poll() is not None or time.monotonic() > deadline or _STARTUP_FAILED in _tail(log_path):
                    raise Ser2netError(
                        f"ser2net did not listen on 127.0.0.1:{port or 'any port'} "
                        f"(exit code {proc.poll()}): {_tail(log_path).decode(errors='replace').strip()}"
                    )
                time.sleep(0.02)
                bound = _listening_port(proc.pid)
            yield f"rfc2217://127.0.0.1:{bound}" + ("?ign_set_control" if is_pty(device_path) else "")
        finally:
            _stop(proc)


def _tail(path: Path) -> bytes:
    try:
        return path.read_bytes()[-2000:]
    except OSError:
        return b""
