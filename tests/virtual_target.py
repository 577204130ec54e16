"""The virtual pump as a target over a link (``pump://``), for the tests of what runs against
any target: connected and identified, closed after; and, for the tests that break a target on
purpose, the in-process device behind the link (never for the code under test)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from firmware_model.device import Device
from hil import urlhandler
from hil.campaigns import Budget, Outcome, load_all
from hil.conformance import DeviceUnderTest
from hil.conformance.targets import target_for_url
from hil.urlhandler.protocol_pump import Serial

__all__ = ["connected", "device_of", "run_over_link"]


@contextlib.contextmanager
def connected(url: str = "pump://") -> Iterator[DeviceUnderTest]:
    """A fresh virtual pump (every ``pump://`` open makes a new one) as a connected target."""
    urlhandler.register()
    dut = DeviceUnderTest.connect(target_for_url(url))
    try:
        yield dut
    finally:
        dut.close()


def device_of(pump: DeviceUnderTest) -> Device:
    """The in-process device behind a ``pump://`` target."""
    port = pump._shared.port
    assert isinstance(port, Serial)
    assert port.device is not None
    return port.device


def run_over_link(name: str, pump: DeviceUnderTest, seed: int, size: int | None = None) -> Outcome:
    """Campaign ``name`` over the link to ``pump``: at its CI size over a link unless ``size``."""
    c = load_all()[name]
    assert c.link is not None
    return c.link(c.size("ci", over_link=True) if size is None else size, Budget(None), seed, pump)
