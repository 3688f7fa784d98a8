"""Shared fixtures. The MicroPython stand-ins are installed for the test session (and
undone after it), so the tests import the firmware's own source (firmware/app) as the device
runs it."""

from __future__ import annotations

import os
from pathlib import Path

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
    from app.meter import Meter

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


@pytest.fixture
def no_narrowing(monkeypatch):
    """umask 0, and no chmod of any kind: a file's mode is the one it was created with, so a
    0600 file was never readable by others, not even for a moment (write, then chmod fails)."""
    def refused(*a, **k):
        raise AssertionError("a secret file narrowed after it was made")

    old = os.umask(0)
    for name in ("chmod", "fchmod", "lchmod"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refused)
    monkeypatch.setattr(Path, "chmod", refused)
    yield
    os.umask(old)
