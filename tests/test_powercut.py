"""Counts survive any power cut: the sweep cuts the power at every flash program/erase of a
scripted day, with and without a torn last program, on real littlefs, and checks the ground
truth after each recovery (every brew in a day bucket too). Plus the same on MicroPython's own
littlefs for a sample of cuts. Each with the clock known and never known."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
from app.device import FLUSH_S
from brewmeter.onmicropython import replay
from brewmeter.profiles import board_path
from brewmeter.runs import sweep

WINDOW_MS = FLUSH_S * 1000 + 2500


@pytest.fixture(scope="module")
def events(profile_module):
    return sorted(sweep.day(profile_module).events)


@pytest.fixture(scope="module")
def noclock_events(profile_module):
    return sorted(sweep.day(profile_module, clock=False).events)


@pytest.fixture(scope="module")
def profile_module():
    from brewmeter.profiles import load_profile

    return load_profile("emulator")


def test_the_day_is_a_real_workload(profile_module, events):
    truth = sweep.day(profile_module).truth
    assert truth.total_brews >= 20 and len([k for k in truth.brews if truth.brews[k]]) == 3
    assert truth.rinses >= 3
    ops, _ = sweep.count_ops(profile_module, events)
    assert ops >= 40  # enough flash operations for the sweep to mean something


@pytest.mark.parametrize("clock", [True, False], ids=["clock", "noclock"])
def test_every_cut_point_under_cpython_littlefs(profile_module, events, noclock_events, clock):
    events = events if clock else noclock_events
    s = sweep.sweep_cpython(profile_module, events, WINDOW_MS, clock=clock)
    ops, _ = sweep.count_ops(profile_module, events, clock=clock)
    assert s.cuts == 2 * ops  # every index, torn and not
    assert s.outbox_checked > 0  # some cuts came after the filter-change event was saved
    assert s.failures == []
    assert s.ok


@pytest.mark.parametrize("clock", [True, False], ids=["clock", "noclock"])
def test_sampled_cut_points_under_micropython_littlefs(profile_module, events, noclock_events,
                                                       clock):
    s = sweep.sweep_micropython(board_path("emulator"), profile_module,
                                events if clock else noclock_events, WINDOW_MS, sample=40,
                                clock=clock)
    assert s.cuts >= 40
    assert s.failures == []


@pytest.fixture(scope="module")
def orders_events(profile_module):
    return sorted(sweep.orders_day(profile_module).events)


def test_the_orders_day_reaches_the_commits_the_busy_day_does_not(profile_module, orders_events,
                                                                  monkeypatch):
    # Which commit each of the Device's entry points asked of the journal, on the uncut run.
    from app import journal
    from app.device import Device
    from app.journal import COUNTS, STATE, SUP
    from brewmeter.emulator import lfs, lfsfs
    from brewmeter.onmicropython import powercut
    from brewmeter.onmicropython.norflash import NorFlash

    seen: list[tuple[str, int]] = []
    within: list[str] = []
    commit = journal.commit
    monkeypatch.setattr(journal, "commit", lambda dev, what: (
        seen.append((within[-1] if within else "", what)), commit(dev, what))[1])

    def entry(name: str, f):  # noqa: ANN001, ANN202 - a Device method, wrapped
        def entered(self, *a):  # noqa: ANN001, ANN002, ANN202
            within.append(name)
            try:
                return f(self, *a)
            finally:
                within.pop()
        return entered

    for name in ("event", "day_tick", "clock_corrected"):
        monkeypatch.setattr(Device, name, entry(name, getattr(Device, name)))
    flash = NorFlash(block_count=sweep.SWEEP_BLOCKS)
    lfs.format(flash)
    r = powercut.run(profile_module, orders_events, flash, lfsfs.mount)
    assert r["final"][0] == r["final_billed"] == 23
    everything = SUP | STATE | COUNTS
    assert [w & everything for c, w in seen if c == "event" and w & 8] == [everything]  # order
    assert STATE | COUNTS in [w & everything for c, w in seen if c == "day_tick"]  # the roll
    assert [w & everything for c, w in seen if c == "clock_corrected"] == [everything]


@pytest.mark.slow
def test_every_cut_of_the_orders_day_under_cpython_and_micropython_littlefs(profile_module,
                                                                            orders_events):
    ops, _ = sweep.count_ops(profile_module, orders_events)
    s = sweep.sweep_cpython(profile_module, orders_events, WINDOW_MS)
    assert s.cuts == 2 * ops
    assert s.outbox_checked > 0
    assert (s.lost, s.doubled, s.failures) == (0, 0, []) and s.ok
    s = sweep.sweep_micropython(board_path("emulator"), profile_module, orders_events, WINDOW_MS,
                                sample=0)
    assert s.cuts == 2 * ops  # every cut, torn and not
    assert (s.lost, s.doubled, s.failures) == (0, 0, []) and s.ok


@pytest.mark.slow
def test_the_orders_day_sees_a_midnight_roll_that_saves_the_counters_first(
        profile_module, orders_events, monkeypatch):
    # The day task's roll writing the counters before the history: a cut between leaves the
    # first day's brews the cloud never heard of (after its last report) in no day bucket.
    from app.device import Device
    from app.journal import COUNTS, STATE

    def counters_first(self, now):
        wall = self.wall()
        if wall and wall // 86400 != self.meter.c.day:
            self.days.roll(wall)
            if self.days.unsaved:
                self._commit(COUNTS)
                self._commit(STATE)
        if wall and wall // 86400 != self.forecast.day:
            self.new_day(wall // 86400, now)

    monkeypatch.setattr(Device, "day_tick", counters_first)
    s = sweep.sweep_cpython(profile_module, orders_events, WINDOW_MS)
    assert s.lost > 0 and not s.ok


def test_the_sweep_sees_a_brew_in_no_day_bucket_as_lost(profile_module, noclock_events,
                                                        monkeypatch):
    # Boot saving the counters before the history (as 742a6e5 did): a cut between the two
    # writes leaves an earlier boot's undated brews counted but in no day bucket. The
    # clock-unknown day's afternoon boot moves the morning's brews: the sweep must see it.
    from app import startup
    from app.days import Days
    from app.journal import SUP

    def old_boot(self, cause, now):
        startup.recover(self)
        self.meter.boot(cause)
        self.days = Days(self.meter.c, self.meter.c.boots, self._history, self._confirmed)
        self._second = now
        self.save(now)
        self.save_days()
        startup.load_supplies(self)
        if self.supplies.fresh:
            self.supplies.fresh = not self._commit(SUP)

    monkeypatch.setattr(startup, "boot", old_boot)
    k = next(i for i, e in enumerate(noclock_events) if e[1] == replay.REBOOT)
    before, _ = sweep.count_ops(profile_module, noclock_events[:k], clock=False)
    s = sweep.sweep_cpython(profile_module, noclock_events, WINDOW_MS,  # the boot's writes
                            range(before + 1, before + 9), clock=False)
    assert s.lost > 0 and not s.ok
    f = s.failures[0]
    assert f["recovered"][0] == f["durable"][0] > f["recovered_billed"]  # counted, unbilled


def test_the_wear_at_a_mark_is_the_wear_of_the_run_up_to_it(profile_module, events):
    # brewmeter bench tells the first boot's wear (directories, first copies) from use's by a
    # mark: what the flash and the counts were at that script time, on MicroPython's littlefs.
    k = len(events) // 2
    mark_ms = events[k][0]
    k = next(i for i, e in enumerate(events) if e[0] >= mark_ms)
    whole = sweep.flashrun(board_path("emulator"), events, "store", 512, mark_ms=mark_ms)[0]
    half = sweep.flashrun(board_path("emulator"), events[:k], "store", 512)[0]
    assert whole["mark"] == [half["erases"], half["bytes_programmed"], half["final"][0]]
    assert 0 < half["final"][0] < whole["final"][0]
    assert whole["mark"][1] < whole["bytes_programmed"]


def test_the_checks_catch_a_lost_and_a_doubled_brew():
    # The checker itself must fail on bad recoveries, or a green sweep means nothing.
    base = {"cut_event": 3, "durable": [5, 1, 100, 1000], "ram": [6, 1, 150, 2000],
            "after": [2, 0, 10, 10], "durable_outbox": [1], "ram_outbox": [1, 2]}
    s = sweep.Summary()
    sweep.check({**base, "recovered": [4, 1, 100, 1000], "final": [6, 1, 0, 0],
                 "recovered_outbox": [1]} | _billed(4, 6), WINDOW_MS, s)
    sweep.check({**base, "recovered": [7, 1, 150, 2000], "final": [9, 1, 0, 0],
                 "recovered_outbox": [1]} | _billed(7, 9), WINDOW_MS, s)
    sweep.check({**base, "recovered": [6, 1, 150, 2000], "final": [8, 1, 0, 0],
                 "recovered_outbox": []} | _billed(6, 8), WINDOW_MS, s)
    sweep.check({**base, "recovered": [5, 1, 100, 1000], "final": [8, 1, 0, 0],
                 "recovered_outbox": [1]} | _billed(5, 8), WINDOW_MS, s)
    assert (s.lost, s.doubled, s.outbox_lost, s.wrong_after) == (1, 1, 1, 1)
    assert not s.ok
    # The counters right, but brews in no day bucket (the cloud cannot bill them to a day),
    # or in two: lost and doubled, after the recovery or by the end of the day.
    s = sweep.Summary()
    ok = {**base, "recovered": [5, 1, 100, 1000], "final": [7, 1, 0, 0],
          "recovered_outbox": [1]}
    sweep.check(ok | _billed(5, 7), WINDOW_MS, s)
    assert s.ok
    sweep.check(ok | _billed(3, 7), WINDOW_MS, s)
    sweep.check(ok | _billed(5, 6), WINDOW_MS, s)
    sweep.check(ok | _billed(6, 7), WINDOW_MS, s)
    assert (s.lost, s.doubled, s.wrong_after) == (2, 1, 0)
    assert s.by_op["none, in other"]["counts_lost"] == 2


def _billed(recovered: int, final: int) -> dict:
    return {"recovered_billed": recovered, "final_billed": final}


def test_the_checks_say_which_flash_operation_lost_what():
    base = {"cut_event": 3, "durable": [5, 1, 100, 1000], "ram": [6, 1, 150, 2000],
            "after": [2, 0, 10, 10], "durable_outbox": [1], "ram_outbox": [1, 2],
            "cut_op": "program", "cut_in": "counters", "tear": True}
    s = sweep.Summary()
    sweep.check({**base, "recovered": [3, 0, 100, 1000], "final": [5, 0, 0, 0],
                 "recovered_outbox": [1]} | _billed(3, 5), WINDOW_MS, s)
    sweep.check({**base, "cut_op": "erase", "tear": False, "recovered": [5, 1, 100, 1000],
                 "final": [7, 1, 0, 0], "recovered_outbox": [1]} | _billed(5, 7), WINDOW_MS, s)
    assert s.by_op == {"program, torn, in counters": {"cuts": 1, "recovered": 0,
                                                      "counts_lost": 3},
                       "erase, in counters": {"cuts": 1, "recovered": 1, "counts_lost": 0}}
    text = sweep.text({"cpython": {k: getattr(s, k) for k, _ in sweep.MEANS}}, 1, s.by_op)
    assert "program, torn, in counters" in text
    assert text.splitlines()[-1] == "FAIL: 1 of 2 power cuts went wrong (first ones below)"


@pytest.mark.slow
def test_powercut_prints_each_flash_operation_kind_and_a_pass_line():
    import json
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "brewmeter.cli", "powercut", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    ops = r["by_flash_op"]
    assert {op.split(",")[0] for op in ops} == {"program", "erase"}
    assert any(", torn," in op for op in ops)
    assert sum(k["cuts"] for k in ops.values()) == sum(r[c]["cuts"] for c in sweep.CASES)
    assert all(k["recovered"] == k["cuts"] and k["counts_lost"] == 0 for k in ops.values())
    assert all(r[c]["cuts"] > 0 and r[c]["lost"] == r[c]["doubled"] == 0
               for c in sweep.CASES)  # the clock known, and never known
    p = subprocess.run([sys.executable, "-m", "brewmeter.cli", "powercut"],
                       capture_output=True, text=True, timeout=600)
    assert "flash operation cut" in p.stdout and "boots recovered" in p.stdout
    assert p.stdout.splitlines()[-1].startswith("PASS: ")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["install", "rollback"])
def test_a_cut_at_any_flash_operation_of_the_switch_ends_on_a_verified_app(tmp_path, mode):
    """The update's switch (firmware/romslot.py) on the emulated board's ROM partitions and
    MicroPython's littlefs, the power cut at each program/erase of the boot that installs a
    release (romfs -> romfs_old, romfs_new -> romfs, the journal's writes) or rolls one back
    (romfs_old -> romfs), torn and not: the next boot finishes it, romfs holds the old or
    the new image whole and /rom serves it, and the counters are those saved before."""
    results = sweep.slot_sweep(tmp_path, mode)
    want = ("new", 3) if mode == "install" else ("old", 6)  # romslot.TRIAL, romslot.FAILED
    for r in results:
        assert r["cut_happened"] and "error" not in r, r
        assert (r["rom"], r["s"]) == want and r["serves"] == want[0], r
        assert r["counts_kept"] and r["why"] is None, r
    hit = {r["cut_in"] for r in results}
    copies = {"romfs program", "romfs erase"} | (
        {"romfs_old program", "romfs_old erase"} if mode == "install" else set())
    assert copies | {"littlefs"} <= hit, hit
    assert len(results) >= 2 * (28 if mode == "install" else 12)


@pytest.mark.slow
def test_a_cut_at_any_flash_operation_of_the_download_ends_on_a_verified_app(tmp_path):
    """The update's download (firmware app/update.py) of a four-block image from a range
    server on 127.0.0.1 into the emulated board's romfs_new under MicroPython, its record on
    MicroPython's littlefs, the verify and the switch request (romslot.switch's journal):
    the power cut at each program/erase, torn and not, then a new process on the same flash
    resumes it: it asks the server only from the first block the record says is not
    written, the slot holds the manifest's image, the switch is journaled for it, and the
    counters are those saved before the download. (The switch's own boot: the sweep above.)"""
    results = sweep.download_sweep(tmp_path)
    digest = hashlib.sha256(random.Random(0).randbytes(sweep.DOWNLOAD_BYTES)).hexdigest()
    ops = results[0]["ops_uncut"]
    assert len(results) == 2 * ops  # every operation of the uncut run, torn and not
    for r in results:
        assert r["cut_happened"] and r["cut_ops"] == r["cut"], r
        assert r["reset"] or r["found"]["st"] == "switched", r  # the switch asked for
        assert r["rec"] == {"r": "r-1", "st": "switched", "v": "9.0.0"}, r
        assert r["slot_sha256"] == digest, r  # no torn block taken for verified
        j = r["journal"]
        assert (j["s"], j["sha256"], j["size"]) == (1, digest, sweep.DOWNLOAD_BYTES), r
        assert r["counts"] == r["saved"], r  # 0 counts lost
        at = r["found"]["at"]
        if r["found"]["st"] in ("offered", "downloading"):
            assert at % 4096 == 0 and r["ranges"] == [(at, sweep.DOWNLOAD_BYTES - 1)], r
        else:
            assert r["ranges"] == [], r
    hit = Counter(r["cut_in"] for r in results)
    blocks = -(-sweep.DOWNLOAD_BYTES // 4096)
    # Each block's erase and program in romfs_new (torn and not), the rest on littlefs.
    assert hit["romfs_new erase"] == hit["romfs_new program"] == 2 * blocks, hit
    assert hit["littlefs"] == len(results) - 4 * blocks > 0, hit
