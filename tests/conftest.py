"""Shared fixtures. The MicroPython stand-ins are installed for the test session (and
undone after it), so the tests import the firmware's own source (firmware/app) as the device
runs it."""

from __future__ import annotations

import pytest
from brewmeter import standins
from brewmeter.harness import load_profile


def pytest_configure(config: pytest.Config) -> None:
    standins.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    standins.uninstall()


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
def main_py_board(tmp_path):
    """Makes an emulated board (not started) whose firmware is only `source` as main.py."""

    def make(source: str):
        from brewmeter.emulator.board import Board

        fw = tmp_path / "fw"
        fw.mkdir()
        (fw / "main.py").write_text(source)
        return Board(tmp_path / "flash.img", firmware_dir=fw, board_profile="emulator")

    return make


@pytest.fixture
async def http(cloud):
    """An HTTP client session on the `cloud` fixture of the test module (a CloudServer)."""
    import aiohttp

    async with aiohttp.ClientSession(cloud.url) as s:
        yield s
