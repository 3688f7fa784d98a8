"""app/replwatch.py's pure parts under CPython: the profile's two numbers read without the
validator, the quiet test across a ticks wrap, and the stop note the next boot reads."""

from __future__ import annotations

import json

from app import replwatch


def test_settings_from_the_profile_held_to_range(tmp_path):
    p = tmp_path / "board.json"
    assert replwatch.settings(str(p)) == (300, 30)  # missing: defaults
    p.write_text(json.dumps({"repl_idle_s": 60, "wdt_s": 10}))
    assert replwatch.settings(str(p)) == (60, 10)
    p.write_text(json.dumps({"repl_idle_s": 0, "wdt_s": 10**9}))
    assert replwatch.settings(str(p)) == (5, 600)  # never a REPL reset every second
    p.write_text("{not json")
    assert replwatch.settings(str(p)) == (300, 30)


def test_quiet_too_long_across_a_ticks_wrap():
    from time import ticks_add

    last = ticks_add(0, -1000)  # just before the wrap
    assert not replwatch.quiet_too_long(ticks_add(last, 4999), last, 5000)
    assert replwatch.quiet_too_long(ticks_add(last, 5000), last, 5000)


def test_the_stop_note_is_read_once(tmp_path, monkeypatch):
    monkeypatch.setattr(replwatch, "STOPPED_PATH", str(tmp_path / "stopped"))
    assert replwatch.stopped_for(1000) is None
    replwatch.stopped(1000)
    assert replwatch.stopped_for(1300) == 300
    assert replwatch.stopped_for(1300) is None
    replwatch.stopped(1_700_000_000)
    assert replwatch.stopped_for(5) == -1  # the clock went back: a power cut


def test_armed_it_feeds_while_the_repl_writes_and_resets_once_quiet(monkeypatch):
    from brewmeter import standins
    from brewmeter.clock import VirtualClock
    from brewmeter.standins import machine

    standins.set_clock(VirtualClock())
    resets = []
    monkeypatch.setattr(machine, "reset", lambda: resets.append(1), raising=False)
    assert machine.timers() == [] and machine.term() is None
    replwatch.arm(10, 3)
    [timer] = machine.timers()
    tap = machine.term()
    assert tap is not None
    feeds = machine.WDT.feeds
    for _ in range(30):  # 30 s of a tech typing: the REPL echoes every second
        standins.clock.advance(1000)
        tap.write(b"x")
        timer.fire()
    assert machine.WDT.feeds == feeds + 30 and not resets
    for _ in range(10):  # then quiet
        standins.clock.advance(1000)
        timer.fire()
    assert resets == [1]
    replwatch.disarm()
    assert machine.timers() == [] and machine.term() is None  # the timer stopped
