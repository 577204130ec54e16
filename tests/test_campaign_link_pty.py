"""Every campaign that runs over a link, at its CI size, against a pump served on a real pty by
``pumprig serve`` in another process: the rig's robustness runs work on a target it does not
hold in memory (a dev board is reached the same way)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hil.campaigns import Campaign, load_all, run_campaign
from hil.conformance import DeviceUnderTest
from hil.conformance.targets import target_for_url

from .serving import served, stop_cleanly

SEED = 3
OVER_LINK = [c for c in load_all().values() if c.link is not None]


@pytest.fixture(scope="module")
def pty_pump(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceUnderTest]:
    tmp_path = tmp_path_factory.mktemp("served")
    with served(tmp_path, "--pty") as (server, url):
        pump = DeviceUnderTest.connect(target_for_url(url))
        try:
            yield pump
        finally:
            pump.close()
        stop_cleanly(server, tmp_path)


def test_there_are_campaigns_over_a_link() -> None:
    names = {c.name for c in OVER_LINK}
    assert {"lost-replies"} <= names, names


@pytest.mark.parametrize("c", OVER_LINK, ids=lambda c: c.name)
def test_the_campaign_over_a_served_pty_meets_its_target(c: Campaign, pty_pump: DeviceUnderTest) -> None:
    size = c.size("ci", over_link=True)
    entry = run_campaign(c, size, None, SEED, pty_pump)
    assert entry["done"] == size
    assert entry["ok"], (entry["figures"], entry["note"])
    assert entry["url"].startswith("/dev/pts/")
