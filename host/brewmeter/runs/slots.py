"""The update's ROM slots driven on the emulated board (firmware/romslot.py): a release of
this tree with another VERSION (and, to make it fail, a line put first in its app/run.py),
written into romfs_new through the board's REPL as the app's update task writes it, the
switch, and the boots until the old app is back. Used by tests/test_romslot.py and the
`rollback_boots` figure."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from brewmeter import release, unixport
from brewmeter.emulator.board import Board
from brewmeter.flasher import READY, Flasher
from brewmeter.flashfiles import emulator_provision
from brewmeter.profiles import BOARDS
from brewmeter.standins import FIRMWARE

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


def build(tmp: Path, version: str, trial_s: int = 600, run_head: str = "",
          init_head: str = "") -> tuple[Path, dict]:
    """A release of this tree with VERSION `version`, `run_head` put first in app/run.py and
    `init_head` in app/__init__.py, built by the host's release code in `tmp`: (its image,
    its manifest)."""
    tree = tmp / f"fw-{version}"
    shutil.copytree(FIRMWARE, tree)
    init = tree / "app" / "__init__.py"
    init.write_text(init_head + re.sub(r'^VERSION = ".*"$', f'VERSION = "{version}"',
                                       init.read_text(), flags=re.M))
    run = tree / "app" / "run.py"
    run.write_text(run_head + run.read_text())
    image, man = release.build(tmp / f"rel-{version}", ["emulator"], trial_s, tree)
    return image, json.loads(man.read_bytes())


def mpremote(board: Board, *args: str) -> str:
    p = subprocess.run([unixport.tool("mpremote"), "connect", board.serial_port, *args],
                       capture_output=True, text=True, timeout=90)
    if p.returncode != 0:
        raise RuntimeError(f"mpremote {args}: {p.stdout}{p.stderr}")
    return p.stdout


@contextlib.contextmanager
def flashed(d: Path, prov: dict | None = None) -> Iterator[Board]:
    """A board flashed with this tree, unlocked (the REPL stages updates) and its REPL
    watch at 5 s (a new app that fails to import leaves the REPL, which resets it back into
    the app: a locked machine resets at once); its cloud a port nothing answers on, unless
    the provisioning `prov` (flash.sh's input) says another."""
    prof = json.loads((BOARDS / "emulator.json").read_text()) | {"repl_idle_s": 5}
    (d / "board.json").write_text(json.dumps(prof))
    with Board(d / "flash.img", board_profile=str(d / "board.json")) as board:
        Flasher(board.serial_port).flash(str(d / "board.json"),
                                            prov or emulator_provision("http://127.0.0.1:9"))
        yield board


def stage(board: Board, image: Path, m: dict, rel: str = "r-1") -> None:
    """Write `image` into romfs_new and switch to it; not reset yet."""
    mpremote(board, "cp", str(image), ":/img")
    rec = {"release": rel, "version": m["version"], "size": m["size"], "sha256": m["sha256"],
           "trial_s": m["trial_s"]}
    out = mpremote(board, "exec", _STAGE % rec)
    if f"SWITCHED {(m['size'] + 4095) // 4096}" not in out:
        raise RuntimeError(out)


def running(board: Board) -> tuple[str, dict | None]:
    """The app's VERSION in /rom, and romslot.status(), through the REPL."""
    out = mpremote(board, "exec", "import app, romslot, json\n"
                   "print('RUNNING', json.dumps([app.VERSION, romslot.status()]))")
    m = re.search(r"^RUNNING (.*)$", out, re.M)
    if not m:
        raise RuntimeError(out)
    v, st = json.loads(m[1])
    return v, st


def boots_back(board: Board, image: Path, m: dict, timeout: float = 120) -> int:
    """Stage and switch to a release that fails its trial; reset; wait until the old app
    is up again. The boots from the first on the new release to the first on the old one,
    both counted."""
    stage(board, image, m)
    first, mark = board.boots + 1, board.transcript_end()
    board.control().reset()
    board.wait_output(READY + b" fw=" + OLD.encode(), timeout=timeout, start=mark)
    return board.boots - first + 1


def rollback_boots() -> dict[str, float]:
    """Boots from a release whose app raises at import back to the old app, on the
    emulated board."""
    with tempfile.TemporaryDirectory() as d:
        image, m = build(Path(d), "99.0.0", run_head="raise RuntimeError('broken')\n")
        with flashed(Path(d)) as board:
            t = time.monotonic()
            n = boots_back(board, image, m)
            if running(board) != (OLD, {"release": "r-1", "state": "failed",
                                        "reason": "update_trial_failed"}):
                raise RuntimeError("the old app is back but does not say failed")
            return {"rollback_boots": n, "rollback_s": round(time.monotonic() - t, 1)}
