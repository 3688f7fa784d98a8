# The app's ROM slots (docs/updates.md). MicroPython's esp32 port maps one ROM partition,
# "romfs", at /rom, so there is no A/B: a download lands in "romfs_new"; at boot, before the
# app is imported, this copies romfs -> romfs_old (kept for a rollback), then romfs_new ->
# romfs, checks romfs's SHA-256, and the app runs on trial; a trial that fails copies
# romfs_old back. Each step is journaled in /slot.json before the next begins, so a power cut
# redoes the interrupted copy from its intact source. On the filesystem beside main.py (an
# update never replaces it); main.py imports it only while /slot.json exists.
import hashlib
import json
import os
import sys
from binascii import hexlify

from micropython import const

PATH = "/slot.json"
TRIES = const(2)  # trial boots; the next one goes back (a crash loop: the 3rd boot)
_TIMER = const(1)  # machine.Timer id: app/replwatch.py has 0
_B = const(4096)
# Journal steps ("s"): what boot does next.
SAVE = const(1)  # copy romfs -> romfs_old
COPY = const(2)  # copy romfs_new -> romfs, then check it
TRIAL = const(3)  # the new app runs; "n": its boots so far
DONE = const(4)
BACK = const(5)  # copy romfs_old -> romfs
FAILED = const(6)

_j = None  # the journal (None: no update in hand)


def step(s, n):
    """What boot does for journal step `s` after `n` trial boots: SAVE, COPY, TRIAL, BACK or
    None (nothing: done or failed, to report)."""
    if s == TRIAL and n >= TRIES:
        return BACK
    return s if s in (SAVE, COPY, TRIAL, BACK) else None


def _part(label):
    try:
        from esp32 import Partition

        return Partition(label)
    except (ImportError, OSError):  # CPython, the frozen build, a board without the slots
        return None


def staging():
    """The partition a download is written into (esp32.Partition), or None."""
    return _part("romfs_new")


def _load():
    try:
        with open(PATH) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _save(j):
    # littlefs's rename is one metadata commit: the old journal or the new, never neither.
    with open(PATH + ".tmp", "w") as f:
        json.dump(j, f)
    os.rename(PATH + ".tmp", PATH)


def _hash(p, n, buf):
    # The SHA-256 (hex) of partition p's first n bytes, read back.
    h = hashlib.sha256()
    mv = memoryview(buf)
    for b in range(0, n, _B):
        k = min(_B, n - b)
        p.readblocks(b // _B, mv[:k])
        h.update(mv[:k])
    return hexlify(h.digest()).decode()


def _copy(src, dst, n, buf):
    for b in range((n + _B - 1) // _B):
        src.readblocks(b, buf)
        dst.writeblocks(b, buf)


def switch(rec):
    """Install the release in romfs_new at the next boot: `rec` has release, version, size,
    sha256, trial_s. The caller resets the machine next."""
    global _j
    _j = {k: rec[k] for k in ("release", "version", "size", "sha256", "trial_s")}
    _j["s"] = SAVE
    _save(_j)


def boot(reset):
    """Finish an install or a rollback, count a trial boot, arm the trial's timer with the
    callback `reset` (main.py's: a function of this module would hold its globals on the
    heap for the whole trial). Runs before the app is imported; leaves sys.modules (the
    functions below read /slot.json from a fresh import). False when no update is in hand."""
    global _j
    sys.modules.pop("romslot", None)
    j = _j = _load()
    if not j:
        return False
    rom = w = None
    while True:
        s = step(j["s"], j.get("n", 0))
        if s is None or s == TRIAL:
            break
        if rom is None:  # the app's modules run from the ROM: none may outlive its bytes
            w = sys.modules.get("app.replwatch")
            if w:
                w.disarm()
            for k in list(sys.modules):
                if k == "app" or k.startswith("app."):
                    del sys.modules[k]
            rom = _part("romfs")
            buf = bytearray(_B)
            whole = rom.info()[3]
        if s == SAVE:
            old = _part("romfs_old")
            h = _hash(rom, whole, buf)
            _copy(rom, old, whole, buf)
            if _hash(old, whole, buf) == h:
                j["s"], j["o"] = COPY, h
            else:  # the app in romfs is untouched
                j["s"], j["why"] = FAILED, "update_flash_failed"
        elif s == COPY:
            _copy(_part("romfs_new"), rom, j["size"], buf)
            if _hash(rom, j["size"], buf) == j["sha256"]:
                j["s"], j["n"] = TRIAL, 0
            else:
                j["s"], j["why"] = BACK, "update_flash_failed"
        else:
            _copy(_part("romfs_old"), rom, whole, buf)
            j["s"] = FAILED
            if _hash(rom, whole, buf) != j["o"]:
                j["why"] = "update_flash_failed"
        _save(j)
    if j["s"] == TRIAL:  # counted first: whatever fails below, this boot was a try
        j["n"] = j.get("n", 0) + 1
        _save(j)
        import machine

        # No acknowledged report in trial_s: reset, and the boot count decides.
        machine.Timer(_TIMER).init(mode=machine.Timer.ONE_SHOT, period=j["trial_s"] * 1000,
                                   callback=reset)
    if rom is not None:
        import vfs

        try:
            vfs.umount("/rom")
        except OSError:
            pass
        vfs.mount(vfs.VfsRom(vfs.rom_ioctl(2, 0)), "/rom")  # type: ignore
        if w:  # boot.py had armed it: again, from the ROM's new bytes
            from app import replwatch

            replwatch.arm()
    return True


def status():
    """None, or the update's status as a report carries it."""
    global _j
    j = _j = _j or _load()
    if not j:
        return None
    s = j["s"]
    if s == FAILED:
        return {"release": j["release"], "state": "failed",
                "reason": j.get("why", "update_trial_failed")}
    return {"release": j["release"], "state": "done" if s == DONE else "trial"}


def passed():
    """The new app had a report acknowledged on trial: it stays. Returns status()."""
    global _j
    j = _j = _j or _load()
    if j and j["s"] == TRIAL:
        import machine

        # The ESP32's Timer(id) is the one object the port keeps per hardware timer (as
        # the emulated board's): this stops the timer boot() armed, holding nothing.
        machine.Timer(_TIMER).deinit()
        j["s"] = DONE
        _save(j)
    return status()


def reported():
    """A report carrying done or failed was acknowledged: the update is over."""
    global _j
    j = _j or _load()
    if j and j["s"] in (DONE, FAILED):
        os.remove(PATH)
        _j = None
