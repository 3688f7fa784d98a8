"""The update's ROM slots on the emulated board (firmware/romslot.py, the board's
esp32.Partition): a release built from this tree by the host's `release` code is written
into romfs_new through esp32.Partition, romslot.switch() journals it, and the reset installs
it; a release whose app raises at import, and one that never reports within its trial_s,
go back to the old app by themselves, which reports why; a power cut at the install's and
the rollback's flash operations always ends on a verified app with the counts intact."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from brewmeter import flashfiles, release, unixport
from brewmeter.emulator.board import Board
from brewmeter.fieldtech import READY
from brewmeter.flasher import Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.profiles import BOARDS
from brewmeter.runs.demo import read_counters
from brewmeter.standins import FIRMWARE

pytestmark = [pytest.mark.board, pytest.mark.slow]

KINDS = ["espresso", "hot_water", "lungo"]
OLD = release.firmware_version()

# Through the board's REPL, as the app's update task will: the image into romfs_new, a
# block at a time, then the switch (the caller resets).
_STAGE = """\
import os, romslot
p = romslot.staging()
buf = bytearray(4096)
b = 0
with open('/img', 'rb') as f:
    while f.readinto(buf):
        p.writeblocks(b, buf)
        b += 1
os.remove('/img')
romslot.switch(%r)
print('SWITCHED', b)
"""


def build(tmp: Path, monkeypatch: pytest.MonkeyPatch, version: str, trial_s: int = 600,
          run_head: str = "") -> tuple[Path, dict]:
    """A release of this tree with VERSION `version` and `run_head` put first in app/run.py,
    built by the host's release code: (its image, its manifest)."""
    tree = tmp / f"fw-{version}"
    shutil.copytree(FIRMWARE, tree)
    init = tree / "app" / "__init__.py"
    init.write_text(re.sub(r'^VERSION = ".*"$', f'VERSION = "{version}"', init.read_text(),
                           flags=re.M))
    run = tree / "app" / "run.py"
    run.write_text(run_head + run.read_text())
    with monkeypatch.context() as m:
        m.setattr(flashfiles, "FIRMWARE", tree)
        m.setattr(release, "FIRMWARE", tree)
        image, man = release.build(tmp / f"rel-{version}", ["emulator"], trial_s)
    return image, json.loads(man.read_bytes())


def mpremote(board: Board, *args: str) -> str:
    p = subprocess.run([unixport.tool("mpremote"), "connect", board.serial_port, *args],
                       capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, f"mpremote {args}: {p.stdout}{p.stderr}"
    return p.stdout


def stage(board: Board, image: Path, m: dict, rel: str = "r-1") -> None:
    """Write `image` into romfs_new and switch to it; not reset yet."""
    mpremote(board, "cp", str(image), ":/img")
    rec = {"release": rel, "version": m["version"], "size": m["size"], "sha256": m["sha256"],
           "trial_s": m["trial_s"]}
    assert f"SWITCHED {(m['size'] + 4095) // 4096}" in mpremote(board, "exec", _STAGE % rec)


def running(board: Board) -> tuple[str, dict | None]:
    """The app's VERSION in /rom, and romslot.status(), through the REPL."""
    out = mpremote(board, "exec", "import app, romslot, json\n"
                   "print('RUNNING', json.dumps([app.VERSION, romslot.status()]))")
    m = re.search(r"^RUNNING (.*)$", out, re.M)
    assert m, out
    v, st = json.loads(m[1])
    return v, st


def brew(board: Board) -> None:
    ctl = board.control()
    ctl.press("espresso")
    ctl.pulses(100)
    time.sleep(8.3)
    ctl.release("espresso")
    time.sleep(0.3)


@pytest.fixture
def flashed(tmp_path):
    """A board flashed with this tree (an unlocked provisioning: the REPL stages updates;
    the REPL watch brings it back into the app after 5 s), one espresso counted."""
    prof = json.loads((BOARDS / "emulator.json").read_text()) | {"repl_idle_s": 5}
    (tmp_path / "board.json").write_text(json.dumps(prof))
    with Board(tmp_path / "flash.img", board_profile=str(tmp_path / "board.json")) as b:
        Flasher(b.serial_port).flash(str(tmp_path / "board.json"), emulator_provision())
        brew(b)
        assert read_counters(b.serial_port, KINDS)["brews_total"] == 1
        yield b


def test_a_release_written_to_romfs_new_is_installed_at_the_next_boot(flashed, tmp_path,
                                                                       monkeypatch):
    image, m = build(tmp_path, monkeypatch, "9.0.0")
    assert running(flashed) == (OLD, None)
    stage(flashed, image, m)
    mark = flashed.transcript_end()
    flashed.control().reset()
    flashed.wait_output(READY, timeout=60, start=mark)
    assert running(flashed) == ("9.0.0", {"release": "r-1", "state": "trial"})
    assert read_counters(flashed.serial_port, KINDS)["brews_total"] == 1
    # The ROM partition is the new image, and romfs_old the one flash.sh deployed.
    rom = flashed.rom_image.read_bytes()
    assert rom[:m["size"]] == image.read_bytes()
    old = flashed.slot_images["romfs_old"].read_bytes()
    assert old != rom and old[:4] == rom[:4]  # both ROMFS images
