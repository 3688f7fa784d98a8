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
