"""Hypothesis profiles: ``HYPOTHESIS_PROFILE`` = ci (default), campaign or dev.

``make test`` runs the "ci" profile; ``make campaign`` the long one. Every profile has no
deadline: a slow machine must never turn into a flaky failure.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=_SLOW_DATA)
settings.register_profile("campaign", max_examples=5000, deadline=None, suppress_health_check=_SLOW_DATA)
settings.register_profile("dev", max_examples=20, deadline=None, suppress_health_check=_SLOW_DATA)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    """Under PUMPRIG_STRICT_SKIPS=1 (CI) a skipped test fails the run: CI installs every tool."""
    skipped = terminalreporter.stats.get("skipped", [])
    if os.environ.get("PUMPRIG_STRICT_SKIPS") == "1" and skipped:
        terminalreporter.write_line(f"PUMPRIG_STRICT_SKIPS=1: {len(skipped)} skipped test(s) fail this run", red=True)
        session = terminalreporter._session
        assert session is not None
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
