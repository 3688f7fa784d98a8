"""Shared fixtures. Importing brewmeter.harness installs the MicroPython stand-ins, so the
tests import the firmware's own source (firmware/app) as the device runs it."""

from __future__ import annotations

import pytest
from brewmeter.harness import load_profile


@pytest.fixture
def profile():
    return load_profile("emulator")


@pytest.fixture
def meter(profile):
    from app.counting import Meter

    m = Meter(profile)
    m.boot(1)
    return m


@pytest.fixture
async def http(cloud):
    """An HTTP client session on the `cloud` fixture of the test module (a CloudServer)."""
    import aiohttp

    async with aiohttp.ClientSession(cloud.url) as s:
        yield s
