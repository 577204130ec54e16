"""The conformance suite over a networked lab's path: the virtual pump on a pty, behind a
private ser2net (``hil.lab``), tested as ``rfc2217://127.0.0.1:PORT`` by ``pumprig conform``
in a subprocess - the way a board in a lab is tested (docs/boards.md).

Skipped, with the reason, where ser2net is not installed (``make venv`` installs it as root);
CI sets PUMPRIG_STRICT_SKIPS=1, which turns that skip into a failure.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.lab import find_ser2net, ser2net_rfc2217
from tests.serving import pumprig_command, served, stop_cleanly

CONFORM_S = 600.0
"""Longest the full profile may take over RFC 2217 (about 40 s on a quiet 2-core machine)."""


@pytest.mark.skipif(find_ser2net() is None, reason="ser2net is not installed (apt-get install ser2net)")
def test_full_profile_passes_over_rfc2217_behind_ser2net(tmp_path: Path) -> None:
    junit = tmp_path / "conform.xml"
    with served(tmp_path, "--pty") as (proc, pty), ser2net_rfc2217(pty) as url:
        assert url.startswith("rfc2217://127.0.0.1:")
        run = subprocess.run(
            [*pumprig_command(), "conform", "--url", url, "--profile", "full", "--junit", str(junit)],
            capture_output=True,
            text=True,
            timeout=CONFORM_S,
            check=False,
        )
        assert run.returncode == 0, f"pumprig conform exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
        stop_cleanly(proc, tmp_path)
    suites = ET.parse(junit).getroot()
    counts = ("tests", "failures", "errors")
    totals = {key: sum(int(s.get(key, "0")) for s in suites.iter("testsuite")) for key in counts}
    assert totals["tests"] > 0, f"no test ran: {run.stdout}"
    assert totals["failures"] == totals["errors"] == 0, totals
    names = {case.get("name", "") for case in suites.iter("testcase")}
    assert any(url in name for name in names), f"the results do not name the target {url}"
