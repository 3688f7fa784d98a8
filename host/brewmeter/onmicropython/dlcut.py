# The power-cut sweep over the update's download (firmware app/update.py), under the unix port:
#     micropython dlcut.py FIRMWARE ONMICROPYTHON PROFILE DIR URL PATH KEY SEQ SIZE SHA256 MODE
#                          [CUT[:tear]]
# The emulated board's ROM partitions (esp32/esp32.py: romfs_new and its sisters in files
# beside DIR/flash.img) and MicroPython's littlefs on a NOR flash in DIR/flash.img (the
# device's counters and state, the update's record in it, the ROM slots' journal): a cut
# armed on the littlefs flash counts the ROM partitions' programs and erases too
# (machine_bus._flash), as the board's launcher wires them. The image is served in ranges
# at URL (brewmeter/bench/update.py's RangeServer).
# MODE "fresh": format, boot the Device, save its counters, take the offer (the record as
# update._take leaves it), then the download, the verify and the switch request until
# machine.reset(), with the power cut at program/erase CUT (torn with ":tear"): a JSON line,
# the operations counted (uncut), whether the cut happened and where (littlefs, or a ROM
# partition's program or erase), and the counts saved before the download.
# MODE "resume": a new boot on the same files (the process after the cut): the record read
# back, update.boot as the sync task calls it, the download resumed until machine.reset();
# a JSON line with the record found at boot, the record and the ROM slots' journal at the
# end, the staging slot's SHA-256 over SIZE bytes, and the counts read back.
import asyncio
import json
import sys
from hashlib import sha256

firmware, here = sys.argv[1], sys.argv[2]
sys.path[:0] = [firmware, here + "/esp32", here]
profile_path, d, url, path, key, seq, size, digest, mode = sys.argv[3:12]
size = int(size)

import esp32  # noqa: E402
import machine_bus  # noqa: E402
import norflash  # noqa: E402
import vfs  # noqa: E402

ROM = 32768  # ROM partitions of 8 blocks: room for the image, a faster sweep


class Cut(BaseException):  # the power is gone: nothing the firmware catches stops it
    pass


class Reset(BaseException):  # machine.reset(): the switch asked for, the run's end
    pass


def _halt(msg):
    raise Cut()


machine_bus._halt = _halt


class Flash(norflash.NorFlash):
    # The littlefs flash: a cut (or any operation after it) ends the run, as a dead chip
    # runs nothing more.
    def _alive(self):
        if self.dead:
            raise Cut()

    def program(self, addr, data):
        try:
            norflash.NorFlash.program(self, addr, data)
        except norflash.PowerCut:
            raise Cut() from None

    def erase(self, block):
        try:
            norflash.NorFlash.erase(self, block)
        except norflash.PowerCut:
            raise Cut() from None


class _Machine:
    @staticmethod
    def reset():
        raise Reset()


sys.modules["machine"] = _Machine
import romslot  # noqa: E402
from app.device import Device  # noqa: E402
from app.journal import DeviceFS  # noqa: E402
from app.profile import parse  # noqa: E402


def _totals(device):
    c = device.meter.c
    return [list(c.brews), c.rinses, c.water_ml, c.pump_ms]


class Syncer:
    def __init__(self, device):
        self.device = device
        self.key = bytes.fromhex(key)
        self.url = url
        self.ssl = None
        self.key_id = None
        self.upd = None
        self.no = None


def _device(fresh):
    image = d + "/flash.img"
    flash = Flash(4096, 32, path=image, data=b"\xff" * 4096 * 32 if fresh else None)
    if fresh:
        vfs.VfsLfs2.mkfs(flash)
    esp32._parts.clear()
    esp32._attach(image, ROM)
    vfs.mount(vfs.VfsLfs2(flash), "/flash")
    romslot.PATH = "/flash/slot.json"
    romslot._j = None
    with open(profile_path) as f:
        profile = parse(f.read(), profile_path)
    device = Device(profile, DeviceFS(), root="/flash")
    device.boot(1, 0)
    return flash, device


async def _until_reset(s):
    from app import update

    update.boot(s, s.device.state.read("upd"))
    while s.upd is not None and update._task is not None:
        await asyncio.sleep_ms(5)


def main():
    out = {"mode": mode}
    fresh = mode == "fresh"
    flash, device = _device(fresh)
    s = Syncer(device)
    if fresh:
        c = device.meter.c
        c.brews[0], c.rinses, c.water_ml, c.pump_ms = 1234, 56, 789012, 3456780
        device.save(0)
        out["saved"] = _totals(device)
        rec = {"r": "r-1", "u": path, "q": int(seq), "at": 0, "st": "offered", "v": "9.0.0",
               "n": size, "h": digest, "t": 600}
        device.state.write("upd", json.dumps(rec).encode())
        machine_bus._flash = flash
        flash.reset_stats()
        if len(sys.argv) > 12:
            k, _, tear = sys.argv[12].partition(":")
            flash.cut_after, flash.tear = int(k), tear == "tear"
    else:
        data = device.state.read("upd")
        rec = json.loads(data) if data else {}
        out["found"] = {"st": rec.get("st"), "at": rec.get("at")}
    out["cut_happened"] = out["reset"] = False
    try:
        asyncio.run(_until_reset(s))
    except Cut:
        out["cut_happened"] = True
    except Reset:
        out["reset"] = True
    out["ops"] = flash.ops
    if fresh:
        out["cut_in"] = "littlefs"
        for label, (part, _) in esp32._parts.items():
            if part.cut_op:
                out["cut_in"] = "%s %s" % (label, part.cut_op)
    else:
        data = device.state.read("upd")
        out["rec"] = json.loads(data) if data else None
        out["journal"] = romslot._load()
        buf = bytearray(size)
        esp32.Partition("romfs_new").readblocks(0, buf)
        out["slot_sha256"] = "".join("%02x" % b for b in sha256(buf).digest())
        back = Device(device.profile, DeviceFS(), root="/flash")
        back.recover()
        out["counts"] = _totals(back)
    print(json.dumps(out))


main()
