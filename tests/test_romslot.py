"""The update's ROM slots on the emulated board (firmware/romslot.py, the board's
esp32.Partition): a release built from this tree by the host's `release` code is written
into romfs_new through esp32.Partition, romslot.switch() journals it, and the reset installs
it; a release whose app raises at import, and one that never reports within its trial_s,
go back to the old app by themselves, which reports why; a power cut at the install's and
the rollback's flash operations always ends on a verified app with the counts intact."""

from __future__ import annotations

import time

import pytest
from brewmeter.emulator.board import Board
from brewmeter.fieldtech import READY
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.runs.demo import read_counters
from brewmeter.runs.slots import OLD, boots_back, build, flashed, mpremote, running, stage

pytestmark = [pytest.mark.board, pytest.mark.slow]

KINDS = ["espresso", "hot_water", "lungo"]


def brew(board: Board) -> None:
    ctl = board.control()
    ctl.press("espresso")
    ctl.pulses(100)
    time.sleep(8.3)
    ctl.release("espresso")
    time.sleep(0.3)


@pytest.fixture
def board(tmp_path):
    """A board flashed with this tree (runs.slots.flashed), one espresso counted."""
    with flashed(tmp_path) as b:
        brew(b)
        assert read_counters(b.serial_port, KINDS)["brews_total"] == 1
        yield b


def test_a_release_written_to_romfs_new_is_installed_at_the_next_boot(board, tmp_path):
    image, m = build(tmp_path, "9.0.0")
    assert running(board) == (OLD, None)
    stage(board, image, m)
    mark = board.transcript_end()
    board.control().reset()
    board.wait_output(READY, timeout=60, start=mark)
    assert running(board) == ("9.0.0", {"release": "r-1", "state": "trial"})
    assert read_counters(board.serial_port, KINDS)["brews_total"] == 1
    # The ROM partition is the new image, and romfs_old the one flash.sh deployed.
    rom = board.rom_image.read_bytes()
    assert rom[:m["size"]] == image.read_bytes()
    old = board.slot_images["romfs_old"].read_bytes()
    assert old != rom and old[:4] == rom[:4]  # both ROMFS images
    # The trial passed (the app's first acknowledged report), done reported: the update is
    # over, and the next boot runs the new app with no journal.
    out = mpremote(board, "exec", "import os, romslot\nromslot.status()\nromslot.passed()\n"
                   "print('S1', romslot.status())\nromslot.reported()\n"
                   "print('S2', romslot.status(), 'slot.json' in os.listdir('/'))")
    assert "S1 {'release': 'r-1', 'state': 'done'}" in out.replace('"', "'"), out
    assert "S2 None False" in out, out
    mark = board.transcript_end()
    board.control().reset()
    board.wait_output(b"brewmeter ready fw=9.0.0", timeout=60, start=mark)
    assert running(board) == ("9.0.0", None)


def test_a_release_whose_app_crashes_at_boot_goes_back_within_3_boots(board, tmp_path):
    image, m = build(tmp_path, "9.0.1", run_head="raise RuntimeError('a broken release')\n")
    assert boots_back(board, image, m) <= 3
    assert "a broken release" in board.transcript(0).decode(errors="replace")
    assert running(board) == (OLD, {"release": "r-1", "state": "failed",
                                    "reason": "update_trial_failed"})
    assert read_counters(board.serial_port, KINDS)["brews_total"] == 1
    assert board.rom_image.read_bytes() == board.slot_images["romfs_old"].read_bytes()


def test_a_release_that_never_reports_goes_back_when_its_trial_runs_out(board, tmp_path):
    # No cloud answers this board (runs.slots.flashed): no report is ever acknowledged.
    image, m = build(tmp_path, "9.0.2", trial_s=3)
    t = time.monotonic()
    assert boots_back(board, image, m) == 3
    assert time.monotonic() - t >= 2 * 3
    assert b"brewmeter ready fw=9.0.2" in board.transcript(0)  # it did run
    assert running(board) == (OLD, {"release": "r-1", "state": "failed",
                                    "reason": "update_trial_failed"})
    assert read_counters(board.serial_port, KINDS)["brews_total"] == 1


def test_a_power_cut_in_the_install_on_the_board_ends_on_the_new_app(board, tmp_path):
    """The board's power cut (control address: after_ops, armed for the next boot) reaches
    the ROM partitions: cut inside the copy to romfs_old, at about the journal's write
    between the copies, and inside the copy to romfs (torn), the boot after finishes the
    install: the new app runs, whole, with the counts. (Every cut point, under MicroPython:
    tests/test_powercut.py.) Releases of this tree, A as flash.sh deployed it and B, are
    installed in turn."""
    a, ma = build(tmp_path, OLD)
    b, mb = build(tmp_path, "9.0.0")
    assert board.rom_image.read_bytes()[:ma["size"]] == a.read_bytes()
    for k, tear, (image, m) in ((7, False, (b, mb)), (66, False, (a, ma)), (80, True, (b, mb))):
        stage(board, image, m)
        mark = board.transcript_end()
        ctl = board.control()
        ctl.power_cut(after_ops=k, tear=tear, next_boot=True)
        boots = board.boots
        ctl.reset()
        board.wait_output(b"brewmeter ready fw=" + m["version"].encode(), timeout=90,
                          start=mark)
        assert board.boots == boots + 2, k  # the cut, then the boot that finished it
        assert board.command({"cmd": "status"})["reset_cause"] == "PWRON_RESET"
        assert running(board) == (m["version"], {"release": "r-1", "state": "trial"})
        assert board.rom_image.read_bytes()[:m["size"]] == image.read_bytes()
        assert read_counters(board.serial_port, KINDS)["brews_total"] == 1


def test_a_locked_machine_whose_new_app_package_fails_to_import_goes_back(board, tmp_path):
    """The device's own path: a locked machine resets at once when the app fails to import,
    here the app package itself (boot.py cannot arm the REPL watch either, nor can romslot
    again after the copy): each such boot is counted before anything of the new ROM is
    imported, and the third runs the old app."""
    image, m = build(tmp_path, "9.0.3", init_head="raise ImportError('no app here')\n")
    stage(board, image, m)
    mpremote(board, "exec", "import json\nwith open('/provision.json') as f:\n"
             "    d = json.load(f)\nd['lock'] = True\nwith open('/provision.json', 'w') as f:\n"
             "    json.dump(d, f)")
    first, mark = board.boots + 1, board.transcript_end()
    board.control().reset()
    board.wait_output(b"brewmeter ready fw=" + OLD.encode(), timeout=60, start=mark)
    assert board.boots - first + 1 == 3
    said = board.transcript(mark)
    assert said.count(b"no app here") >= 2 and b"brewmeter ready fw=9.0.3" not in said
    assert board.rom_image.read_bytes() == board.slot_images["romfs_old"].read_bytes()


def test_a_release_whose_app_hangs_at_boot_goes_back_when_its_trial_runs_out(board, tmp_path):
    """Before the app starts the watchdog nothing else would reset it: the trial's timer
    (machine.Timer, a scheduled callback) does."""
    image, m = build(tmp_path, "9.0.4", trial_s=2, run_head="while True:\n    pass\n")
    assert boots_back(board, image, m) == 3
    assert running(board) == (OLD, {"release": "r-1", "state": "failed",
                                    "reason": "update_trial_failed"})


def test_a_flash_ends_the_update_in_hand(tmp_path):
    """flash.sh over a machine with a switch journaled: the flashed app runs on, no journal
    copies another over it, and the staged download is no longer the release's."""
    prov = emulator_provision("http://127.0.0.1:9")
    with flashed(tmp_path, prov) as board:
        image, m = build(tmp_path, "9.0.5")
        stage(board, image, m)
        assert board.slot_images["romfs_new"].read_bytes()[:m["size"]] == image.read_bytes()
        Flasher(board.serial_port).flash(str(tmp_path / "board.json"), prov)
        for _ in range(3):
            mark = board.transcript_end()
            board.control().reset()
            board.wait_output(b"brewmeter ready fw=" + OLD.encode(), timeout=60, start=mark)
        assert running(board) == (OLD, None)
        assert board.slot_images["romfs_new"].read_bytes()[:4096] == b"\xff" * 4096
