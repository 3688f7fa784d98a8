# Runs the firmware's storage on MicroPython's own littlefs (vfs.VfsLfs2) over the emulated NOR
# flash, under the unix port:
#     micropython flashrun.py FIRMWARE PROFILE EVENTS.jsonl MODE [CUT ...]
# MODE "store" is the firmware as it is; "json" and "log" swap its counters file for the two
# baselines `brewmeter bench` compares it with. Without CUTs: one run, its wear as JSON. With
# CUTs: one power-cut run per program/erase index, its checks' inputs as a JSON line each.
import json
import sys

import vfs

_BLOCKS = 512  # the ESP32's 2 MiB vfs partition


def _json_baseline(device):
    # What most MicroPython projects do: a JSON file of all counters, rewritten on change.
    from app import snapshot

    kinds = device.profile.kinds

    def save_counters(c):
        with open("/flash/counters.json", "w") as f:
            f.write(json.dumps(snapshot.counters(c, kinds)))

    device.store.save_counters = save_counters


def _log_baseline(device):
    # An append-only event log: one 16-byte record per change, flushed each time.
    import struct

    f = open("/flash/events.log", "ab")

    def save_counters(c):
        f.write(struct.pack("<IIII", c.total_brews(), c.water_ml, c.pump_ms & 0xFFFFFFFF,
                            c.rinses))
        f.flush()

    device.store.save_counters = save_counters


def _mount(flash):
    try:
        vfs.umount("/flash")
    except OSError:
        pass
    vfs.mount(vfs.VfsLfs2(flash), "/flash")
    return _DeviceFS(), "/flash/data"


class _DeviceFS:
    def open(self, path, mode):
        return open(path, mode)

    def mkdir(self, path):
        import os

        os.mkdir(path)


def main(argv):
    sys.path.insert(0, argv[1])
    import norflash
    import powercut
    from app.profile import parse

    with open(argv[2]) as f:
        profile = parse(f.read(), argv[2])
    events = []
    with open(argv[3]) as f:
        for line in f:
            events.append(json.loads(line))
    patch = {"store": None, "json": _json_baseline, "log": _log_baseline}[argv[4]]
    cuts = [int(a.split(":")[0]) for a in argv[5:]]
    tears = [a.endswith(":tear") for a in argv[5:]]
    base = norflash.NorFlash(block_count=_BLOCKS)
    vfs.VfsLfs2.mkfs(base)
    image = base.snapshot()
    if not cuts:
        r = powercut.run(profile, events, base, _mount, None, patch)
        r.update(bytes_programmed=base.bytes_programmed, erases=base.erases,
                 bytes_read=base.bytes_read)
        print(json.dumps(r))
        return
    for cut, tear in zip(cuts, tears):
        flash = norflash.NorFlash.from_bytes(image, tear=tear)
        r = powercut.run(profile, events, flash, _mount, cut, patch)
        r["cut"] = cut
        r["tear"] = tear
        print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv)
