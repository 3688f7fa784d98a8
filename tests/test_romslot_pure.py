"""firmware/romslot.py's decisions and journal, without a board: what boot does for each
journal step and count of trial boots (pure: also run under MicroPython,
tests/test_on_micropython.py), and what switch(), passed() and reported() leave in the
journal and status() says. The copies, the trial and the rollback on the emulated board's
flash: tests/test_romslot.py."""

import romslot
from romslot import BACK, COPY, DONE, FAILED, SAVE, TRIAL, TRIES, step


def test_boot_redoes_an_interrupted_copy_and_goes_back_after_the_trial_boots():
    # An interrupted copy is done again from its intact source, at any count.
    for n in (0, 1, 5):
        assert step(SAVE, n) == SAVE
        assert step(COPY, n) == COPY
        assert step(BACK, n) == BACK
    # A trial boot is counted until TRIES were; the next boot goes back (a crash loop,
    # watchdog resets and trial timers that fired all count alike).
    assert TRIES == 2
    assert [step(TRIAL, n) for n in range(4)] == [TRIAL, TRIAL, BACK, BACK]
    # Done and failed: nothing to do at boot, only to report.
    assert step(DONE, 0) is None and step(FAILED, 9) is None


def test_the_journal_from_switch_to_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(romslot, "PATH", str(tmp_path / "slot.json"))
    monkeypatch.setattr(romslot, "_j", None)
    assert romslot.status() is None
    assert romslot.staging() is None  # CPython: no esp32, no slot
    rec = {"release": "r-1", "version": "0.2.0", "size": 5000, "sha256": "ab" * 32,
           "trial_s": 600, "url": "/x"}
    romslot.switch(rec)
    monkeypatch.setattr(romslot, "_j", None)  # as after the reset: read from the file
    assert romslot.status() == {"release": "r-1", "state": "trial"}
    romslot._save(dict(romslot._j, s=TRIAL, n=1))
    # Each call as from a fresh import (the app's, boot() having left sys.modules): from the file
    monkeypatch.setattr(romslot, "_j", None)
    romslot.passed()
    monkeypatch.setattr(romslot, "_j", None)
    assert romslot.status() == {"release": "r-1", "state": "done"}
    monkeypatch.setattr(romslot, "_j", None)
    romslot.reported()
    assert not (tmp_path / "slot.json").exists() and romslot.status() is None
    romslot.switch(rec)
    romslot._j.update(s=FAILED, why="update_flash_failed")
    assert romslot.status() == {"release": "r-1", "state": "failed",
                                "reason": "update_flash_failed"}
    romslot._j["s"] = FAILED
    del romslot._j["why"]
    assert romslot.status()["reason"] == "update_trial_failed"
    romslot.reported()
    assert romslot.status() is None and list(tmp_path.iterdir()) == []
