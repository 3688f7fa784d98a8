# Runs under the MicroPython unix port: the firmware's update download and verify
# (app/update.py) against a real HTTP server that serves an image in ranges, the image
# written into a staging slot in RAM (esp32.Partition's block protocol), beside a loop that
# polls every 10 ms as the counting does. For tests and bench figures (brewmeter/bench/
# update.py); the switch itself is the CPython tests' (no brew ends here: it never comes).
#   micropython updatefetch.py FIRMWARE STATE_DIR URL PATH KEY_HEX SEQ SIZE SHA256 [AT [ROMSLOT]]
# ROMSLOT: a folder with the firmware's romslot.mpy (its partitions the slot in RAM here).
# FIRMWARE: a tree of .py or .mpy files, or the app's ROMFS image (a release's app.romfs),
# mounted at /rom and imported from there, as on the device (its code runs in place).
# prints one JSON line: the record at the end, the slot's SHA-256 over SIZE bytes, the
# longest gap between two polls (ms) and the heap the update held (bytes, see below).
import asyncio
import gc
import json
import sys
from hashlib import sha256
from time import ticks_diff, ticks_ms

fw, root, url, path, key, seq, size, digest = sys.argv[1:9]
at = int(sys.argv[9]) if len(sys.argv) > 9 else 0
if fw.endswith(".romfs"):
    import vfs

    with open(fw, "rb") as f:
        rom = f.read()  # (on a chip: memory-mapped flash, no heap)
    vfs.mount(vfs.VfsRom(memoryview(rom)), "/rom")
    fw = "/rom"
sys.path.insert(0, fw)
# What the sync loaded before any offer came: the HTTP client, its sockets, the signing.
import select  # noqa: E402, F401
import socket  # noqa: E402, F401

from app import http  # noqa: E402
from app.journal import DeviceFS, Store  # noqa: E402
from app.signing import signature  # noqa: E402, F401

_BLOCK = 4096
code = [0]
held = [0]  # the most the update held, measured as each block is written


class Partition:
    def __init__(self, blocks):
        self.data = bytearray(b"\xff" * (blocks * _BLOCK))

    def readblocks(self, n, buf, offset=0):
        a = n * _BLOCK + offset
        buf[:] = self.data[a:a + len(buf)]

    def writeblocks(self, n, buf):
        self.data[n * _BLOCK:(n + 1) * _BLOCK] = buf
        gc.collect()
        held[0] = max(held[0], gc.mem_alloc() - base)


class Slots:
    def __init__(self):
        self.part = Partition(32)

    def staging(self):
        return self.part

    def status(self):
        return None


class Esp32:
    def __init__(self, part):
        self.Partition = lambda label: part


class Meter:
    def pumping(self):
        return True  # a brew that never ends: verified, never switched


class Device:
    def __init__(self):
        self.state = Store(DeviceFS(), root + "/state")
        self.meter = Meter()


class Syncer:
    def __init__(self):
        self.device = Device()
        self.key = bytes.fromhex(key)
        self.url = url
        self.ssl = None
        self.key_id = None
        self.upd = None
        self.no = None


gap = [0]


async def poll():
    last = ticks_ms()
    while True:
        await asyncio.sleep_ms(10)
        now = ticks_ms()
        gap[0] = max(gap[0], ticks_diff(now, last))
        last = now


async def main():
    global base
    slots = Slots()
    if len(sys.argv) > 10:  # the real romslot, compiled, from this folder, loaded as the
        sys.path.insert(0, sys.argv[10])  # update asks it (esp32.Partition: the slot in RAM)
        sys.modules["esp32"] = Esp32(slots.part)
    else:
        sys.modules["romslot"] = slots
    s = Syncer()
    rec = {"r": "r-1", "u": path, "q": int(seq), "at": at, "st": "downloading" if at else
           "offered", "v": "9.0.0", "n": int(size), "h": digest, "t": 600}
    s.device.state.read("upd")
    s.device.state.write("upd", json.dumps(rec).encode())
    p = asyncio.create_task(poll())
    await asyncio.sleep_ms(50)
    gc.collect()
    base = gc.mem_alloc()  # before the update's module is loaded
    from app import update

    gc.collect()
    code[0] = gc.mem_alloc() - base  # the module (its bytecode too, unless run from a ROM)
    update.boot(s, s.device.state.read("upd"))
    rec = s.upd
    while rec["st"] not in ("ready", "failed"):
        await asyncio.sleep_ms(20)
    p.cancel()
    h = sha256(bytes(slots.part.data[:int(size)])).digest()
    print(json.dumps({"rec": rec, "slot_sha256": "".join("%02x" % b for b in h),
                      "gap_ms": gap[0], "held": held[0], "code": code[0], "busy": http._busy}))


base = 0
asyncio.run(main())
