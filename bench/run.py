"""Codec benchmarks: how much of a frame's line time the codec costs.

For each case a secured frame is encoded (header, AEAD, CRC-32, COBS) and decoded (deframe,
CRC, tag, payload, ranges) many times; the medians and 90th percentiles are set against the
time the same frame takes on the line at 115200 baud 8N1. The goal is a codec cost of at most
1 % of line time. Each case also times the payload parse on the codec's compiled path (the
positional record construct compiles from the same declarations) against the interpreted named
Struct, both measured in the same run (a ratio, not an absolute figure).

    python -m bench.run --out bench/results.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import accuracy_bench, conform_bench, simulate_bench, trumpet_bench
from protocol_spec import messages as m
from protocol_spec.codec import Header, decode_body, encode_packet, encode_payload
from protocol_spec.enums import PROTOCOL_VERSION, FrameFlags, MsgType
from protocol_spec.examples import EXAMPLE_REPLIES, HANDSHAKE, flex_13_steps
from protocol_spec.fields import struct_of, whole_payload_parser
from protocol_spec.framing import Deframer
from protocol_spec.timing import BITS_PER_BYTE, LINK_BAUD

FORMAT = "pumprig-bench/1"
BAUD = LINK_BAUD
GOAL_PERCENT = 1.0


@dataclass(frozen=True)
class Case:
    name: str
    header: Header
    message: Any


def _cases() -> list[Case]:
    keys = HANDSHAKE.keys
    status = EXAMPLE_REPLIES[MsgType.STATUS]  # the example of SPEC.md and the vectors
    reply_flags = FrameFlags.FROM_PUMP | FrameFlags.SECURED
    return [
        Case(
            "status_reply",
            Header(PROTOCOL_VERSION, MsgType.STATUS, reply_flags, keys.session_id, 41, 40, 0),
            status,
        ),
        Case(
            "stage_program_flex13",
            Header(PROTOCOL_VERSION, MsgType.STAGE_PROGRAM, FrameFlags.SECURED, keys.session_id, 42, 0, 0x0C0FFEE0),
            m.StageProgram(0, flex_13_steps()),
        ),
    ]


def _time_us(fn: Callable[[], object], repeats: int, inner: int) -> list[float]:
    """Per-call times in microseconds: ``repeats`` samples, each the mean of ``inner`` calls."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter_ns() - t0) / inner / 1000)
    return samples


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": round(statistics.median(ordered), 2),
        "p90_us": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
    }


def run_case(case: Case, repeats: int, inner: int) -> dict[str, Any]:
    keys = HANDSHAKE.keys
    wire = encode_packet(case.header, case.message, keys)
    deframer = Deframer()

    def decode() -> object:
        (body,) = deframer.feed(wire)
        assert isinstance(body, bytes)
        return decode_body(body, keys)

    result = decode()
    if getattr(result, "message", None) != case.message:
        raise SystemExit(f"bench: {case.name} does not round-trip: {result}")
    encode = _stats(_time_us(lambda: encode_packet(case.header, case.message, keys), repeats, inner))
    dec = _stats(_time_us(decode, repeats, inner))
    payload = encode_payload(case.message)
    cls = type(case.message)
    compiled = _stats(_time_us(lambda: whole_payload_parser(cls).parse(payload), repeats, inner))
    interpreted = _stats(_time_us(lambda: struct_of(cls).parse(payload), repeats, inner))
    line_us = len(wire) * BITS_PER_BYTE / BAUD * 1e6
    codec_us = encode["median_us"] + dec["median_us"]
    return {
        "case": case.name,
        "wire_bytes": len(wire),
        "payload_bytes": len(payload),
        "line_time_us": round(line_us, 1),
        "encode": encode,
        "decode": dec,
        "codec_percent_of_line_time": round(100 * codec_us / line_us, 3),
        "within_goal": 100 * codec_us / line_us <= GOAL_PERCENT,
        "payload_parse_compiled": compiled,
        "payload_parse_interpreted": interpreted,
        "interpreted_over_compiled": round(interpreted["median_us"] / compiled["median_us"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run, not a figure)")
    args = parser.parse_args(argv)
    repeats, inner = (5, 50) if args.quick else (31, 300)
    results = []
    print("bench: simulator, a whole pump life twice ...", flush=True)
    simulator = simulate_bench.run(1 if args.quick else 5)
    print("bench: trumpet curves from 30 days of steps ...", flush=True)
    trumpet = trumpet_bench.run(1 if args.quick else 5)
    for case in _cases():
        print(f"bench: {case.name} ...", flush=True)
        results.append(run_case(case, repeats, inner))
    conformance = conform_bench.run(100 if args.quick else 1000, suite=not args.quick)
    print("bench: accuracy properties, examples per second ...", flush=True)
    accuracy = accuracy_bench.run(20 if args.quick else 100)
    doc = {
        "format": FORMAT,
        "goal": f"encode + decode median <= {GOAL_PERCENT} % of the frame's time at {BAUD} baud 8N1",
        "samples": {"repeats": repeats, "calls_per_sample": inner},
        "machine": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "cases": results,
        "simulator": simulator,
        "trumpet": trumpet,
        "accuracy": accuracy,
        "conformance": conformance,
    }
    for r in results:
        print(
            f"{r['case']:<22} {r['wire_bytes']:>4} B on the wire, line {r['line_time_us']:>8.1f} us | "
            f"encode {r['encode']['median_us']:>6.1f} us, decode {r['decode']['median_us']:>6.1f} us "
            f"(median) = {r['codec_percent_of_line_time']:.2f} % of line time "
            f"[{'within' if r['within_goal'] else 'OVER'} the {GOAL_PERCENT} % goal] | "
            f"interpreted/compiled parse {r['interpreted_over_compiled']}x"
        )
    t, x = simulator["flex13_typical_dose"], simulator["flex13_ten_times_dose"]
    print(
        f"simulator: to EOS ({t['simulated_years']} y, {t['events']:,} events) in {t['wall_s_median']} s; "
        f"at 10x the dose ({x['simulated_years']} y, {x['steps']:,} steps) in {x['wall_s_median']} s; "
        f"ratio {simulator['ten_times_over_typical']} [{'within' if simulator['within_goal'] else 'OVER'} the goal]"
    )
    tr = trumpet["highest_rate"]
    print(
        f"trumpet: an IMPLANT curve and its bound from {tr['steps']:,} steps (30 days at the highest rate) "
        f"in {tr['wall_s_median']} s [{'within' if trumpet['within_goal'] else 'OVER'} the goal]"
    )
    print(
        "accuracy properties (examples/s): "
        + ", ".join(
            f"{name} {r['examples_per_s']}" + (" (FAILS)" if r["failed"] else "")
            for name, r in accuracy["properties"].items()
        )
    )
    rt = conformance["status_round_trip"]
    print(
        f"STATUS round trip: served pty {rt['served_pty_status']['median_ms']} ms, bare pty echo "
        f"{rt['bare_pty_echo']['median_ms']} ms, in process {rt['in_process_status']['median_ms']} ms (medians); "
        f"ratio {rt['ratio']}x [{'within' if rt['within_goal'] else 'OVER'} the {conform_bench.GOAL_RATIO}x goal]"
    )
    suite = conformance.get("suite")
    if suite is not None:
        walls = ", ".join(f"{name} {t.get('wall_s', '-')} s" for name, t in suite["targets"].items())
        print(f"conformance ({suite['profile']}): {walls} [{'within' if suite['within_goal'] else 'OVER'} the goal]")
    if args.out is not None:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"bench: wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
