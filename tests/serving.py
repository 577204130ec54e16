"""``pumprig`` as a process, and ``pumprig serve`` as a subprocess, for the tests that need real
ptys and sockets. Every server started here is stopped, and its pipes closed, however the test ends."""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["START_S", "pumprig_command", "served", "stop_cleanly"]

START_S = 30.0
"""How long a server may take to print its URL (a loaded CI machine is slow to import)."""


def pumprig_command() -> list[str]:
    """The installed ``pumprig`` script next to this interpreter, or the module if it is missing."""
    script = Path(sys.executable).with_name("pumprig")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from hil.cli import main; main()"]


@contextmanager
def served(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``pumprig serve ARGS`` as a subprocess; yields it and the URL of its first stdout line.
    Its stderr goes to ``tmp_path / "serve.stderr"``; it is killed if still running at the end."""
    err_path = tmp_path / "serve.stderr"
    with err_path.open("ab") as err:
        proc = subprocess.Popen([*pumprig_command(), "serve", *args], stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_S)
        assert ready, f"no URL within {START_S} s: {err_path.read_text()}"
        url = proc.stdout.readline().decode().strip()
        assert url, f"server ended: {err_path.read_text()}"
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def stop_cleanly(proc: subprocess.Popen[bytes], tmp_path: Path) -> None:
    """SIGTERM the server and check it ended with exit code 0 within 10 s."""
    proc.terminate()
    code = proc.wait(timeout=10)
    assert code == 0, (tmp_path / "serve.stderr").read_text()
