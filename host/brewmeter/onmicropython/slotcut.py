# The power-cut sweep over the update's switch (firmware/romslot.py), under the unix port:
#     micropython slotcut.py FIRMWARE ONMICROPYTHON OLD.romfs NEW.romfs MODE ROM [CUT[:tear] ...]
# The emulated board's ROM partitions (esp32/esp32.py: romfs mapped at /rom through
# esp32/romvfs.py, romfs_new, romfs_old, ROM bytes each) and its littlefs on a NOR flash
# (the journal, /flash/slot.json, and the counters beside it), as the board's launcher
# wires them: a cut armed on the littlefs flash counts the ROM partitions' programs and
# erases too (machine_bus._flash), and dies the same way (machine_bus._halt).
# MODE "install": romfs holds OLD, romfs_new NEW, the journal as romslot.switch() leaves it;
# "rollback": romfs holds NEW on trial with its last trial boot counted, romfs_old OLD.
# Without CUTs: one run, {"ops": N}. With CUTs: for each, romslot.boot() until the power
# fails at that program/erase (torn with ":tear"), then power back on and boot again: a JSON
# line with where the cut was (littlefs, or a ROM partition's program or erase), the
# journal's step, which image romfs holds ("old", "new" or "torn"), what /rom serves (its
# v.txt), and whether the counters read back are those saved before.
import hashlib
import json
import sys

firmware, here = sys.argv[1], sys.argv[2]
sys.path[:0] = [firmware, here + "/esp32", here]

import esp32  # noqa: E402
import machine_bus  # noqa: E402
import norflash  # noqa: E402
import romvfs  # noqa: E402 - (it wraps the unix port's vfs: imported before it stands in)
import vfs  # noqa: E402

sys.modules["vfs"] = romvfs


class Cut(Exception):
    pass


def _halt(msg):
    raise Cut()


machine_bus._halt = _halt


class _Timer:  # the trial's timer is not what this sweeps (tests/test_romslot.py runs it)
    ONE_SHOT = 0

    def __init__(self, i):
        pass

    def init(self, **kw):
        pass

    def deinit(self):
        pass


class _Machine:
    Timer = _Timer


sys.modules["machine"] = _Machine
import romslot  # noqa: E402
from app.counters import Counters  # noqa: E402
from app.journal import DeviceFS, Store, pack_counters  # noqa: E402
from app.startup import load_counters  # noqa: E402

B = 4096


def _hex(b):
    return "".join("%02x" % x for x in hashlib.sha256(b).digest())


def _mount(flash, rom):
    for p in ("/flash", "/rom"):
        try:
            vfs.umount(p)
        except OSError:
            pass
    vfs.mount(vfs.VfsLfs2(flash), "/flash")
    try:
        vfs.mount(vfs.VfsRom(romvfs.rom_ioctl(2, 0)), "/rom")
    except (OSError, TypeError):  # a torn image: no /rom, as on a chip
        pass


def _setup(mode, old, new, size):
    flash = norflash.NorFlash(B, 16)
    vfs.VfsLfs2.mkfs(flash)
    parts = {}
    for i, (label, data) in enumerate((("romfs", old if mode == "install" else new),
                                       ("romfs_new", new),
                                       ("romfs_old", b"" if mode == "install" else old))):
        r = esp32._Rom(size, None, True)
        r._mem[:len(data)] = data
        parts[label] = (r, (1, 0x8F, esp32._ROM_AT + i * size))
    esp32._parts.clear()
    esp32._parts.update(parts)
    romvfs._attach(parts["romfs"][0])
    _mount(flash, parts["romfs"][0])
    c = Counters()
    c.brews[0], c.rinses, c.water_ml, c.pump_ms = 1234, 56, 789012, 3456789
    Store(DeviceFS(), "/flash/counts").save_counters(c)
    romslot.PATH = "/flash/slot.json"
    romslot._j = None
    rec = {"release": "r-1", "version": "9.0.0", "size": len(new), "sha256": _hex(new),
           "trial_s": 600}
    if mode == "install":
        romslot.switch(rec)
    else:
        rec.update(s=romslot.TRIAL, n=romslot.TRIES,
                   o=_hex(old + b"\xff" * (size - len(old))))
        romslot._save(rec)
    machine_bus._flash = flash
    flash.reset_stats()
    return flash, pack_counters(c)


def _boot():
    romslot._j = None
    romslot.boot(None)


def main(argv):
    old, new = open(argv[3], "rb").read(), open(argv[4], "rb").read()
    mode, size, cuts = argv[5], int(argv[6]), argv[7:]
    if not cuts:
        flash = _setup(mode, old, new, size)[0]
        _boot()
        print(json.dumps({"ops": flash.ops}))
        return
    for arg in cuts:
        k, _, tear = arg.partition(":")
        flash, saved = _setup(mode, old, new, size)
        flash.cut_after, flash.tear = int(k), tear == "tear"
        out = {"cut": int(k), "tear": tear == "tear", "cut_happened": False}
        try:
            _boot()
        except (Cut, norflash.PowerCut):
            out["cut_happened"] = True
        out["cut_in"] = "littlefs"
        for label, (part, _) in esp32._parts.items():
            if label != "vfs" and part.cut_op:
                out["cut_in"] = "%s %s" % (label, part.cut_op)
        flash.power_on()
        rom = esp32._parts["romfs"][0]
        _mount(flash, rom)
        try:
            _boot()
        except Exception as e:  # noqa: BLE001 - said in the result
            out["error"] = repr(e)
        j = romslot._load() or {}
        out["s"], out["n"], out["why"] = j.get("s"), j.get("n"), j.get("why")
        mem = bytes(rom._mem)
        out["rom"] = ("new" if mem[:len(new)] == new else
                      "old" if mem == old + b"\xff" * (size - len(old)) else "torn")
        try:
            with open("/rom/v.txt") as f:
                out["serves"] = f.read().strip()
        except OSError:
            out["serves"] = None
        got = load_counters(Store(DeviceFS(), "/flash/counts"))
        out["counts_kept"] = pack_counters(got) == saved
        print(json.dumps(out))


main(sys.argv)
