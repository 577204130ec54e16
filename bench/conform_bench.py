"""Link and conformance benchmarks: what a served pump adds to a round trip, and the suite's wall time.

(a) The median STATUS round trip (``Programmer.status()``, request written to reply decoded)
over the pty of ``pumprig serve --pty``, set against a bare pty "echo" measured in the same
run: a child process that holds a pty's master and, for every request-sized chunk it reads,
writes back a reply-sized chunk at once. Both sides are separate processes, as with the served
pump; the client opens both ptys with the programmer's own ``open_port`` (same settings and
read timeout), writes the same number of bytes as a STATUS request and reads, as the
programmer does (``in_waiting`` or 1 byte at a time), until as many bytes as a STATUS reply
arrived. The sizes are those counted on the wire in this run. The echo therefore costs two
process wake-ups and the pty's copies, but no framing, codec, crypto or pump logic: the ratio
is what the whole stack (programmer and served pump) adds on top of the transport itself.
Goal: at most 5x. The same STATUS on ``pump://`` (no transport at all) is reported beside it,
set against the echo too: the share of the ratio that the codecs and the pump's logic alone
account for.

(b) The conformance suite's wall time per target, ``pumprig conform --url URL --profile full
--json`` in a subprocess: in-process (``pump://``), a pty and a TCP socket of ``pumprig serve``
(a fresh server per target: the destructive tests end a pump's service), and ``rfc2217://``
through a private ser2net (``hil.lab``) when ser2net is installed. Goal: the in-process full
profile under 30 s. Failing tests are counted, not hidden.

    python -m bench.conform_bench [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hil import urlhandler
from hil.lab import find_ser2net, ser2net_rfc2217
from programmer.client import Programmer, PublishedKeysWarning, SerialPort, open_port
from protocol_spec.security import TEST_KEY_SET

GOAL_RATIO = 5.0
GOAL_FULL_IN_PROCESS_S = 30.0
START_S = 30.0
"""How long a server may take to print its URL."""
SUITE_S = 900.0
"""Longest one suite run may take before it is stopped."""

_ECHO = r"""
import os, sys, tty
request, reply = int(sys.argv[1]), int(sys.argv[2])
master, slave = os.openpty()
tty.setraw(slave)
print(os.ttyname(slave), flush=True)
answer, pending = b"\x55" * reply, 0
while True:
    try:
        data = os.read(master, 4096)
    except OSError:
        break
    if not data:
        break
    pending += len(data)
    while pending >= request:
        pending -= request
        os.write(master, answer)
"""


def _pumprig() -> list[str]:
    script = Path(sys.executable).with_name("pumprig")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from hil.cli import main; main()"]


@contextlib.contextmanager
def _first_line_of(command: list[str]) -> Iterator[str]:
    """Run ``command``; yield the first line it prints (a URL or a path); stop it at the end."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_S)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            raise SystemExit(f"bench: {' '.join(command)} printed nothing within {START_S} s")
        yield line
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class _CountingPort:
    """A port that counts the bytes written and read (to size the echo like a STATUS exchange)."""

    def __init__(self, port: SerialPort) -> None:
        self.port = port
        self.written = 0
        self.read_bytes = 0

    @property
    def timeout(self) -> float | None:
        return self.port.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self.port.timeout = value

    @property
    def in_waiting(self) -> int:
        return self.port.in_waiting

    def read(self, size: int = 1, /) -> bytes:
        data = self.port.read(size)
        self.read_bytes += len(data)
        return data

    def write(self, data: bytes, /) -> int | None:
        self.written += len(data)
        return self.port.write(data)

    def close(self) -> None:
        self.port.close()


def _median_ms(samples_ns: list[int]) -> float:
    return round(statistics.median(samples_ns) / 1e6, 4)


def _p90_ms(samples_ns: list[int]) -> float:
    ordered = sorted(samples_ns)
    return round(ordered[int(0.9 * (len(ordered) - 1))] / 1e6, 4)


def status_round_trip(iterations: int) -> dict[str, Any]:
    """(a): the served pump's STATUS round trip against the bare pty echo (module docstring)."""
    with _first_line_of([*_pumprig(), "serve", "--pty"]) as pty:
        port = _CountingPort(open_port(pty))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PublishedKeysWarning)
            prog = Programmer(port, keys=TEST_KEY_SET, url=pty, owns_port=True)
        try:
            prog.connect()
            for _ in range(20):  # warm up: session open, caches
                prog.status()
            before_w, before_r = port.written, port.read_bytes
            prog.status()
            request_bytes, reply_bytes = port.written - before_w, port.read_bytes - before_r
            pump_ns = []
            for _ in range(iterations):
                t0 = time.perf_counter_ns()
                prog.status()
                pump_ns.append(time.perf_counter_ns() - t0)
        finally:
            prog.close()
    echo_ns = _echo_round_trips(request_bytes, reply_bytes, iterations)
    in_process_ns = _in_process_round_trips(iterations)
    ratio = statistics.median(pump_ns) / statistics.median(echo_ns)
    return {
        "goal": f"served pump's STATUS round trip <= {GOAL_RATIO} x a bare pty echo of the same sizes",
        "iterations": iterations,
        "request_bytes": request_bytes,
        "reply_bytes": reply_bytes,
        "served_pty_status": {"median_ms": _median_ms(pump_ns), "p90_ms": _p90_ms(pump_ns)},
        "bare_pty_echo": {"median_ms": _median_ms(echo_ns), "p90_ms": _p90_ms(echo_ns)},
        "in_process_status": {"median_ms": _median_ms(in_process_ns), "p90_ms": _p90_ms(in_process_ns)},
        "in_process_over_echo": round(statistics.median(in_process_ns) / statistics.median(echo_ns), 2),
        "ratio": round(ratio, 2),
        "within_goal": ratio <= GOAL_RATIO,
    }


def _in_process_round_trips(iterations: int) -> list[int]:
    """The same STATUS on ``pump://``: both codecs and the pump's logic, no transport, no process switch."""
    urlhandler.register()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PublishedKeysWarning)
        prog = Programmer.open("pump://")
    try:
        for _ in range(20):
            prog.status()
        samples = []
        for _ in range(iterations):
            t0 = time.perf_counter_ns()
            prog.status()
            samples.append(time.perf_counter_ns() - t0)
        return samples
    finally:
        prog.close()


def _echo_round_trips(request_bytes: int, reply_bytes: int, iterations: int) -> list[int]:
    request = b"\xaa" * request_bytes
    with _first_line_of([sys.executable, "-c", _ECHO, str(request_bytes), str(reply_bytes)]) as pty:
        port = open_port(pty)
        try:
            samples = []
            for i in range(iterations + 20):
                t0 = time.perf_counter_ns()
                port.write(request)
                got = 0
                while got < reply_bytes:
                    got += len(port.read(port.in_waiting or 1))
                if i >= 20:  # the same warm-up as the pump's
                    samples.append(time.perf_counter_ns() - t0)
            return samples
        finally:
            port.close()


def _conform(url: str, profile: str) -> dict[str, Any]:
    command = [*_pumprig(), "conform", "--url", url, "--profile", profile, "--json"]
    t0 = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, timeout=SUITE_S, check=False)
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {"exit_status": run.returncode, "wall_s": round(wall, 2)}
    try:
        doc = json.loads(run.stdout)
    except json.JSONDecodeError:
        result["error"] = (run.stderr or run.stdout).strip()[-500:]
        return result
    result["suite_s"] = round(float(doc.get("duration_s", 0.0)), 2)
    result["counts"] = doc.get("counts", {})
    result["not_passed"] = sorted(
        r.get("name", "?") for r in doc.get("results", []) if r.get("outcome") in {"failed", "error", "xpassed"}
    )
    return result


def suite_times(profile: str = "full") -> dict[str, Any]:
    """(b): the suite's wall time per target (module docstring)."""
    targets: dict[str, Any] = {}
    print(f"bench: conformance ({profile}) in process ...", flush=True)
    targets["in_process"] = {"url": "pump://", **_conform("pump://", profile)}
    for name, option in (("pty", ["--pty"]), ("tcp", ["--tcp", "127.0.0.1:0"])):
        print(f"bench: conformance ({profile}) over a {name} ...", flush=True)
        with _first_line_of([*_pumprig(), "serve", *option]) as url:
            targets[name] = {"url": "/dev/pts/N" if name == "pty" else "socket://127.0.0.1:PORT"}
            targets[name].update(_conform(url, profile))
    if find_ser2net() is not None:
        print(f"bench: conformance ({profile}) over rfc2217 (a private ser2net) ...", flush=True)
        with _first_line_of([*_pumprig(), "serve", "--pty"]) as pty, ser2net_rfc2217(pty) as url:
            targets["rfc2217"] = {"url": "rfc2217://127.0.0.1:PORT (ser2net)", **_conform(url, profile)}
    else:
        targets["rfc2217"] = {"skipped": "ser2net is not installed"}
    in_process = targets["in_process"].get("wall_s")
    return {
        "goal": f"the in-process {profile} profile in under {GOAL_FULL_IN_PROCESS_S} s",
        "profile": profile,
        "targets": targets,
        "within_goal": in_process is not None and in_process < GOAL_FULL_IN_PROCESS_S,
    }


def run(iterations: int = 1000, *, suite: bool = True, profile: str = "full") -> dict[str, Any]:
    """Both benchmarks as one JSON-ready dict (``bench.run`` puts it under "conformance")."""
    print("bench: STATUS round trip, served pty vs bare pty echo ...", flush=True)
    result: dict[str, Any] = {"status_round_trip": status_round_trip(iterations)}
    if suite:
        result["suite"] = suite_times(profile)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.conform_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--quick", action="store_true", help="fewer round trips, the core profile (a smoke run)")
    args = parser.parse_args(argv)
    doc = run(100, profile="core") if args.quick else run()
    rt = doc["status_round_trip"]
    print(
        f"STATUS round trip ({rt['request_bytes']} B out, {rt['reply_bytes']} B back): served pty "
        f"{rt['served_pty_status']['median_ms']} ms, bare pty echo {rt['bare_pty_echo']['median_ms']} ms "
        f"(median): {rt['ratio']}x [{'within' if rt['within_goal'] else 'OVER'} the {GOAL_RATIO}x goal]"
    )
    for name, t in doc["suite"]["targets"].items():
        figures = f"{t['wall_s']} s, exit {t['exit_status']}, {t.get('counts', t.get('error'))}" if "wall_s" in t else t
        print(f"conformance {doc['suite']['profile']:<5} {name:<11} {figures}")
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"bench: wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
