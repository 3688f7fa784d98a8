"""The service console's core (the serial shell and the laptop commands come next): line
discipline, read commands as tables and as one line of JSON, and garbage that changes
nothing."""

from __future__ import annotations

import json
import os
import random

import pytest
from app.console import MAX_LINE, Console, LineReader
from app.counting import BREW
from app.device import Device
from brewmeter.hostfs import DirFS


@pytest.fixture
def console(profile, tmp_path):
    d = Device(profile, DirFS(tmp_path))
    d.boot(1, 0)
    return Console(d, status=lambda: {"fw": "0.1.0", "wifi": "down"})


def test_line_ends_and_backspace():
    r = LineReader()
    assert r.feed(b"cou\x7fun") == []
    assert r.feed(b"ters\r\nfilter\rfaults\nx\x08\x08status\r") == [
        "counters", "filter", "faults", "status"]


def test_an_over_long_line_is_dropped_whole():
    r = LineReader()
    out = r.feed(b"a" * (10 * 1024) + b"\ncounters\n")
    assert out == [None, "counters"] and len(r.buf) == 0
    c = LineReader()
    assert c.feed(b"x" * (MAX_LINE + 1) + b"\r\n") == [None]


def test_counters_as_table_and_as_one_line_of_json(console):
    console.device.meter.c.brews[0] = 4
    console.device.event(BREW, 0, 0)
    table = console.feed(b"counters\r\n")
    assert "brews_total" in table and "espresso 4" in table
    line = console.feed(b"counters --json\n")
    assert line.count("\n") == 1
    assert json.loads(line)["brews"]["espresso"] == 4


def test_every_read_command_answers_json(console):
    for cmd in ("help", "counters", "filter", "events", "events 3", "faults", "config",
                "status"):
        out = console.feed(cmd.encode() + b" --json\n")
        json.loads(out)


def test_config_never_shows_secrets(console):
    console.device.apply_config(2, {"sync_interval_s": 900})
    out = console.feed(b"config --json\n")
    assert json.loads(out) == {"version": 2, "settings": {"sync_interval_s": 900}}
    assert "key" not in out and "password" not in out and "pin" not in out


def test_random_garbage_changes_nothing(console):
    before = json.loads(console.feed(b"counters --json\n"))
    rng = random.Random(1)
    for _ in range(2000):
        console.feed(os.urandom(rng.randrange(1, 64)))
    console.feed(b"\x03\x04\x1b[A\n")
    assert json.loads(console.feed(b"\ncounters --json\n")) == before
    assert "unknown command" in console.feed(b"rm -rf /\n")


def test_line_discipline_survives_random_bytes_under_micropython():
    from brewmeter import mp

    code = (f"import sys, os; sys.path.insert(0, {str(mp.FIRMWARE)!r})\n"
            "from app.console import LineReader\n"
            "r = LineReader(); n = 0\n"
            "for i in range(3000):\n"
            "    n += len(r.feed(os.urandom(40)))\n"
            "print('LINES', n, len(r.buf) <= 120, r.feed(b'\\ncounters\\r\\n')[-1:])\n")
    out = mp.run(["-c", code])
    assert "LINES" in out and "True ['counters']" in out
