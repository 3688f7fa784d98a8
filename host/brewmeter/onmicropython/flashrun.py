# Runs the firmware's storage on MicroPython's own littlefs (vfs.VfsLfs2) over the emulated NOR
# flash, under the unix port:
#     micropython flashrun.py FIRMWARE PROFILE EVENTS.jsonl MODE BLOCKS [CUT[:tear] ...] [mark:MS]
#                             [noclock]
# MODE "store" is the firmware as it is; "json" and "log" swap its counters file for the two
# baselines `brewmeter bench` compares it with. Without CUTs: one run, its wear as JSON (with
# mark:MS, also the wear and brews at script time MS, to tell first boot from use). With
# CUTs: one power-cut run per program/erase index, its checks' inputs as a JSON line each.
# noclock: NTP never answers (the wall clock stays unknown).
# MODE "recovery": after the run, fill the outbox, power-cycle, and report the bytes the
# mount and the boot read from flash.
import json
import sys

import vfs


def _json_baseline(device):
    # What most MicroPython projects do: a JSON file of all counters, rewritten on change.
    from app import readout

    kinds = device.profile.kinds

    def save_counters(c):
        with open("/flash/counters.json", "w") as f:
            f.write(json.dumps(readout.counters(c, kinds)))

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


def _recovery_read(profile, flash, t):
    """Boot reads with a full outbox (the largest state there is), at the worst moment:
    littlefs scans a directory's whole metadata log on each lookup, and each log grows with
    every save until littlefs compacts it. So: a month of days of 16 saves and a power
    cycle, with what a boot would read after each save; the most the recovery
    (startup.recover: counters and outbox) read, the most littlefs's mount read before it,
    and the most the consumables' state read after it (startup.load_supplies: counting does
    not wait for that)."""
    import powercut
    from app import startup
    from app.device import Device
    from app.outbox import MAX_EVENTS

    device = powercut.boot(profile, _mount(flash)[0], "/flash", t, {})
    for i in range(MAX_EVENTS):
        device.add_event({"kind": "filter_changed", "cycle": i, "ml": 150000 + i,
                           "pump_ms": 36000000, "brews": 1500, "age_s": 15552000})
    worst_mount = worst_boot = worst_supplies = 0
    for day in range(30):
        for _ in range(16):
            device.meter.c.brews[0] += 1
            device.save(t)
            flash.reset_stats()
            fs = _mount(flash)[0]
            worst_mount = max(worst_mount, flash.bytes_read)
            flash.reset_stats()
            d = Device(profile, fs, root="/flash")
            d.recover()
            worst_boot = max(worst_boot, flash.bytes_read)
            flash.reset_stats()
            startup.load_supplies(d)
            worst_supplies = max(worst_supplies, flash.bytes_read)
        device = powercut.boot(profile, fs, "/flash", t + day, {})
    return worst_boot, worst_mount, worst_supplies


def _mount(flash):
    try:
        vfs.umount("/flash")
    except OSError:
        pass
    vfs.mount(vfs.VfsLfs2(flash), "/flash")
    from app.journal import DeviceFS  # the device's own: builtin open on the mounted vfs

    return DeviceFS(), "/flash"


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
    mode = argv[4]
    patch = {"json": _json_baseline, "log": _log_baseline}.get(mode)
    marks = [int(a[5:]) for a in argv[6:] if a.startswith("mark:")]
    clock = "noclock" not in argv[6:]
    args = [a for a in argv[6:] if not a.startswith("mark:") and a != "noclock"]
    cuts = [int(a.split(":")[0]) for a in args]
    tears = [a.endswith(":tear") for a in args]
    base = norflash.NorFlash(block_count=int(argv[5]))  # 512: the ESP32's 2 MiB partition
    vfs.VfsLfs2.mkfs(base)
    image = base.snapshot()
    if not cuts:
        r = powercut.run(profile, events, base, _mount, None, patch,
                         marks[0] if marks else None, clock)
        r.update(bytes_programmed=base.bytes_programmed, erases=base.erases,
                 bytes_read=base.bytes_read)
        if mode == "recovery":
            (r["recovery_read_bytes"], r["mount_read_bytes"],
             r["supplies_read_bytes"]) = _recovery_read(profile, base, events[-1][0])
        print(json.dumps(r))
        return
    import gc

    base = None
    for cut, tear in zip(cuts, tears):
        flash = None
        gc.collect()  # the previous run's flash image: the heap holds one at a time
        flash = norflash.NorFlash.from_bytes(image, tear=tear)
        r = powercut.run(profile, events, flash, _mount, cut, patch, clock=clock)
        r["cut"] = cut
        r["tear"] = tear
        print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv)
