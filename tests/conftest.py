"""Shared fixtures. The MicroPython stand-ins are installed for the test session (and
undone after it), so the tests import the firmware's own source (firmware/app) as the device
runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from brewmeter import standins
from brewmeter.profiles import load_profile


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


# -- the cloud's database: SQLite, and a real PostgreSQL --------------------------------------

# The cloud's tests that take `ledger_at` or `memory_at` run on both engines; the PostgreSQL
# variants are `slow` (left out of the quick loop), SQLite stays the fast path.
ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the session (brewmeter.cloud.pgserver: Debian's packages,
    a temporary cluster run by an unprivileged user, a free port of 127.0.0.1), stopped at
    the end. Where it is not installed the tests using it skip, saying why in one line;
    under CI (CI=true) they fail instead: CI installs it (.ci/run) and must run them."""
    from brewmeter.cloud import pgserver

    why = pgserver.why_missing()
    if why is not None:
        if in_ci():
            pytest.fail(f"CI must run the PostgreSQL tests: {why}")
        pytest.skip(why)
    pg = pgserver.TempPostgres().start()
    yield pg
    pg.stop()


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture
def ledger_at(engine, tmp_path, request):
    """Where a test's ledger lives: a SQLite file in tmp_path, or (postgresql) a new schema
    of the session's PostgreSQL, as the URL `brewmeter cloud --db` takes."""
    if engine == "sqlite":
        return tmp_path / "ledger.db"
    return request.getfixturevalue("postgres").new_schema()


@pytest.fixture
def memory_at(engine, request):
    """As ledger_at, but SQLite in memory (nothing to reopen)."""
    if engine == "sqlite":
        return ":memory:"
    return request.getfixturevalue("postgres").new_schema()
