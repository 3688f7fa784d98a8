"""An update over the air on the emulated board, end to end on the device's side: a release
of this tree with another VERSION, built and signed by the host's `release` code, offered by
a small real aiohttp server (tests/test_update.py's Cloud: reports in, the image in signed
ranges); the board's own sync task takes it, downloads it into romfs_new through its
esp32.Partition while a brew is poured, verifies it, switches once the brew is over, boots
the new app on trial, reports trial then done; the brew is counted. A power cut at a flash
operation of the download (the board's control address: the staging slot's and littlefs's
operations counted alike) resumes it at the first block not written, and it ends on the
verified new app with the counts."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import pytest
from brewmeter import fieldtech, release
from brewmeter.emulator.board import Board
from brewmeter.flasher import READY, Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.profiles import BOARDS
from brewmeter.runs.demo import read_counters
from brewmeter.runs.slots import OLD, build, running
from test_update import DEV, KEY, REL, Cloud, _sign

pytestmark = [pytest.mark.board, pytest.mark.slow]

KINDS = ["espresso", "hot_water", "lungo"]

@contextmanager
def serving(cloud: Cloud) -> Iterator[str]:
    """The cloud on its own event loop, in a thread: the board's calls block this one."""
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    url = asyncio.run_coroutine_threadsafe(cloud.__aenter__(), loop).result(10)
    try:
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(cloud.__aexit__(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)


def _until(cond, timeout: float, what: str) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _release(tmp_path: Path) -> tuple[Path, dict, bytes, Path]:
    """This tree's app as release 9.0.0: (its image, its manifest, the manifest's bytes, the
    maker's key)."""
    image, m = build(tmp_path, "9.0.0")
    key = tmp_path / "maker.key"
    release.keygen(key)
    return image, m, (image.parent / release.MANIFEST).read_bytes(), key


@contextmanager
def flashed(tmp_path: Path, cloud: Cloud, key: Path) -> Iterator[tuple[Board, dict, dict]]:
    """An emulated board flashed for `cloud` (not offering yet) with `key`'s public half in
    its provisioning, its boot's report in: (the board, its provisioning, its profile)."""
    cloud.offering = False
    prof = json.loads((BOARDS / "emulator.json").read_text())
    (tmp_path / "board.json").write_text(json.dumps(prof))
    with serving(cloud) as url, Board(tmp_path / "flash.img",
                                      board_profile=str(tmp_path / "board.json")) as board:
        prov = emulator_provision(url) | {
            "device_id": DEV, "key": KEY, "lock": False,
            "release_key": release.public_hex(Path(f"{key}.pub"))}
        Flasher(board.serial_port).flash(str(tmp_path / "board.json"), prov)
        _until(lambda: cloud.reports, 60, "the boot's report")
        yield board, prov, prof


def test_an_offer_is_downloaded_during_a_brew_switched_after_it_and_reported_done(tmp_path):
    image, m, manifest, key = _release(tmp_path)
    cloud = Cloud(image.read_bytes(), manifest, _sign(key, manifest))
    cloud.config = {"version": 1, "settings": {"report_delay_s": 5}}
    with flashed(tmp_path, cloud, key) as (board, prov, prof):
        ctl = board.control()
        ctl.press("espresso")  # a brew runs while the update downloads
        poured = time.monotonic()
        ctl.pulses(100)
        cloud.offering = True
        mark = board.transcript_end()
        fieldtech.act(board.serial_port, "sync", prov["service_pin"], (b"sync: ",), timeout=30)
        _until(lambda: cloud.ranges and cloud.ranges[-1][1] == m["size"] - 1, 60,
               "the whole image asked")
        time.sleep(max(2.0, prof["min_brew_s"] + 0.5 - (time.monotonic() - poured)))
        assert b"brewmeter ready" not in board.transcript(mark)  # no switch during a brew
        ctl.pulses(100)
        ctl.release("espresso")
        board.wait_output(READY + b" fw=9.0.0", timeout=90, start=mark)
        _until(lambda: [s["state"] for s in cloud.statuses][-1:] == ["trial"], 60,
               "the trial's report")
        ctl.press("espresso")  # usage: the next report (5 s on) says done
        time.sleep(prof["min_brew_s"] + 0.5)
        ctl.release("espresso")
        _until(lambda: [s["state"] for s in cloud.statuses][-1:] == ["done"], 60,
               "the done report")
        time.sleep(2)  # (the reply applied: romslot.reported())
        # (read through the REPL at the end: it stops the app)
        assert running(board) == ("9.0.0", None)  # the update over, the new app stays
        assert read_counters(board.serial_port, KINDS)["brews_total"] == 2  # both counted
    assert cloud.statuses == [{"release": REL, "state": "trial"},
                              {"release": REL, "state": "done"}]


def test_no_counter_goes_back_across_the_switch(tmp_path):
    """A brew reported (the tech's sync, whose reply makes the offer), then the download and
    the switch: every counter the new app reports is at least what the cloud had before it,
    pump times included (the record keeps them in 10 ms units)."""
    image, m, manifest, key = _release(tmp_path)
    cloud = Cloud(image.read_bytes(), manifest, _sign(key, manifest))
    with flashed(tmp_path, cloud, key) as (board, prov, prof):
        ctl = board.control()
        for _ in range(2):  # (two runs: a pump time off the 10 ms units all but surely)
            ctl.press("espresso")
            ctl.pulses(100)
            time.sleep(prof["min_brew_s"] + 0.5)
            ctl.release("espresso")
            time.sleep(0.5)
        cloud.offering = True
        mark = board.transcript_end()
        fieldtech.act(board.serial_port, "sync", prov["service_pin"], (b"sync: ",), timeout=30)
        before = dict(cloud.counters)
        assert before["brews_total"] == 2 and before["pump_ms"] > 0
        board.wait_output(READY + b" fw=9.0.0", timeout=90, start=mark)
        _until(lambda: [s["state"] for s in cloud.statuses][-1:] == ["trial"], 60,
               "the trial's report")
    assert cloud.regressions == []
    assert cloud.counters["boots"] == before["boots"] + 1  # (the trial's report: all of them)


def _heap_free(board: Board, pin: str) -> int:
    """What the console's status says of the heap, the console loaded afresh (after a
    collect) by a tech's service action."""
    said = fieldtech.act(board.serial_port, "service unlock", pin, (b"unlock: ",), timeout=30)
    assert "not locked" in said  # the PIN taken, the console loaded
    s = fieldtech.ask(board.serial_port, "status", timeout=10)
    assert isinstance(s, dict)
    return s["heap_free"]


def test_a_tech_at_the_service_console_during_a_trial_does_not_fail_it(tmp_path):
    # On trial, the console is loaded by a tech's service action (the PIN checked) and stays
    # beside the app: on the emulator's heap the sync still reports, so the trial ends done
    # (romslot holds nothing while the new app runs, and no report imports it) and the brew
    # reaches the cloud.
    image, m, manifest, key = _release(tmp_path)
    cloud = Cloud(image.read_bytes(), manifest, _sign(key, manifest))
    cloud.config = {"version": 1, "settings": {"report_delay_s": 5}}
    with flashed(tmp_path, cloud, key) as (board, prov, prof):
        cloud.offering = True
        mark = board.transcript_end()
        fieldtech.act(board.serial_port, "sync", prov["service_pin"], (b"sync: ",), timeout=30)
        board.wait_output(READY + b" fw=9.0.0", timeout=120, start=mark)
        _until(lambda: cloud.statuses, 60, "the trial's report")
        trial = _heap_free(board, prov["service_pin"])  # the console stays loaded
        ctl = board.control()
        ctl.press("espresso")
        ctl.pulses(100)
        time.sleep(prof["min_brew_s"] + 0.5)
        ctl.release("espresso")
        _until(lambda: [s["state"] for s in cloud.statuses][-1:] == ["done"], 90,
               "the done report")
        _until(lambda: cloud.counters.get("brews_total") == 1, 30, "the brew in a report")
        time.sleep(1)  # (the reply applied: the update over)
        # (a tech's sync drops the console, and its report is acknowledged too)
        fieldtech.act(board.serial_port, "sync", prov["service_pin"], (b"sync: ok",),
                      timeout=30)
        after = _heap_free(board, prov["service_pin"])
        print(f"heap_free with the console loaded: on trial {trial}, after it {after}")
        # What the trial held beside the app (romslot: its module, its globals) is back
        assert trial > after - 2048, (trial, after)
    # (done may be reported more than once: the console beside the app, romslot imported to
    # end the update can run short of heap until the console is dropped)
    assert {s["release"] for s in cloud.statuses} == {REL}
    states = [s["state"] for s in cloud.statuses]
    assert states[0] == "trial" and set(states[1:]) == {"done"}, states


@pytest.mark.parametrize("after_ops, tear", [(40, False), (90, True)])
def test_a_power_cut_during_the_download_resumes_it_and_ends_on_the_verified_app(
        tmp_path, after_ops, tear):
    image, m, manifest, key = _release(tmp_path)
    cloud = Cloud(image.read_bytes(), manifest, _sign(key, manifest))
    with flashed(tmp_path, cloud, key) as (board, prov, prof):
        ctl = board.control()
        ctl.press("espresso")
        ctl.pulses(100)
        time.sleep(prof["min_brew_s"] + 0.5)
        ctl.release("espresso")
        time.sleep(0.5)  # counted and saved
        cloud.offering = True
        boots, mark = board.boots, board.transcript_end()
        ctl.power_cut(after_ops=after_ops, tear=tear)  # at a flash operation of the download
        fieldtech.act(board.serial_port, "sync", prov["service_pin"], (b"sync: ",), timeout=30)
        board.wait_output(READY + b" fw=9.0.0", timeout=120, start=mark)
        assert board.boots >= boots + 2  # the cut's boot, then the new app's
        # Asked again from the first block the cut left unwritten: not from the start
        r = cloud.ranges
        assert r[0][0] == 0 and r[-1][1] == m["size"] - 1
        again = [b[0] for a, b in pairwise(r) if b[0] != a[1] + 1]
        assert len(again) == 1 and 0 < again[0] and again[0] % 4096 == 0, r
        _until(lambda: [s["state"] for s in cloud.statuses][-1:] == ["trial"], 60,
               "the trial's report")
        time.sleep(2)  # (the trial's report acknowledged: passed)
        assert running(board) == ("9.0.0", {"release": REL, "state": "done"})
        assert read_counters(board.serial_port, KINDS)["brews_total"] == 1
        assert board.rom_image.read_bytes()[:m["size"]] == image.read_bytes()
    assert cloud.regressions == []  # nothing the cloud had before the cut went back


@pytest.mark.parametrize("case, reason", [("tampered", "update_bad_hash"),
                                          ("other_key", "update_bad_signature")])
def test_a_tampered_image_or_a_wrong_signature_is_refused_and_reported(tmp_path, case, reason):
    image, m, manifest, key = _release(tmp_path)
    other = tmp_path / "other.key"
    release.keygen(other)
    data = image.read_bytes()
    served = data[:1000] + bytes([data[1000] ^ 1]) + data[1001:]
    cloud = Cloud(data, manifest, _sign(other if case == "other_key" else key, manifest),
                  served if case == "tampered" else None)
    with flashed(tmp_path, cloud, key) as (board, prov, prof):
        cloud.offering = True
        rom = board.rom_image.read_bytes()
        fieldtech.act(board.serial_port, "sync", prov["service_pin"], (b"sync: ",), timeout=30)
        if case == "tampered":
            _until(lambda: cloud.ranges and cloud.ranges[-1][1] == m["size"] - 1, 60,
                   "the whole image asked")
        time.sleep(2)  # (verified, and refused)
        fieldtech.act(board.serial_port, "sync", prov["service_pin"], (b"sync: ",), timeout=30)
        assert cloud.statuses == [{"release": REL, "state": "failed", "reason": reason}]
        fieldtech.act(board.serial_port, "sync", prov["service_pin"], (b"sync: ",), timeout=30)
        assert len(cloud.statuses) == 1  # reported once; offered again, not taken again
        assert (cloud.ranges == []) == (case == "other_key")  # refused before any download
        assert board.rom_image.read_bytes() == rom  # the running app untouched
        assert running(board) == (OLD, None)
