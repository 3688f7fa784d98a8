# The app: load the board profile, recover the counts from flash, start the tasks: sensors,
# sync when the device is provisioned, and the service console on the serial port.
import asyncio
import json
from time import ticks_ms

from app import VERSION, hw, wallclock
from app.device import Device
from app.sensors import Sensors
from app.store import DeviceFS

PROFILE_PATH = "/board.json"
PROVISION_PATH = "/provision.json"


def load_profile(path=PROFILE_PATH):
    """The validated board profile. The validator is needed once, at boot: it is unloaded
    afterwards (about 10 KB of heap on the unix port, 6 KB on an ESP32)."""
    import sys

    import app
    from app.profile import ProfileError, parse

    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ProfileError(path, "(file)", "missing: flash.sh writes it with --board")
    try:
        return parse(text, path)
    finally:
        sys.modules.pop("app.profile", None)
        if hasattr(app, "profile"):
            delattr(app, "profile")


def load_provision(path=PROVISION_PATH):
    """The provisioning flash.sh wrote (device id, key, Wi-Fi, cloud), or None."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def start_sync(device, prov):
    from app import tls
    from app.link import Wifi
    from app.syncer import Syncer

    wifi = prov["wifi"]
    url = prov["cloud_url"]
    ssl = tls.context(prov["ca_cert"]) if url.startswith("https://") else None
    syncer = Syncer(device, prov, Wifi(wifi["ssid"], wifi.get("password", "")), ssl)
    device.on_usage = syncer.usage
    return syncer


_device = None  # for run(): what to save when Ctrl-C stops the app
_syncer = None  # for the service console: the last sync's time and result


async def main(profile):
    global _device, _syncer
    device = _device = Device(profile, DeviceFS())
    device.wall = wallclock.now  # 0 until NTP answers: brews are undated until then
    # The sync stack (its modules, the TLS context, the reply buffer) before recovery, while
    # the heap is whole: after it the heap may hold no free run of 3-4 KiB for them.
    prov = load_provision()
    sync = "off (not provisioned)"
    if prov:
        try:
            _syncer = start_sync(device, prov)
            sync = "on"
        except (ImportError, KeyError, ValueError) as e:  # no radio, or a bad provisioning
            sync = "off (%s)" % e
    device.boot(hw.reset_cause(), ticks_ms())
    tasks = [asyncio.create_task(Sensors(profile, device).run())]
    if _syncer is not None:
        tasks.append(asyncio.create_task(_syncer.run()))
    print("brewmeter ready fw=%s board=%s sync=%s" % (VERSION, profile.board, sync))
    tasks.append(asyncio.create_task(serve_console(device, prov)))
    await asyncio.gather(*tasks)


async def serve_console(device, prov):
    """The service console on the USB serial port, beside the REPL's Ctrl-C: it reads
    stdin without blocking the counting, and answers on stdout."""
    import gc
    import select
    import sys

    con = None  # loaded when a tech first types: no heap for it while nobody is there
    raw = getattr(sys.stdin, "buffer", sys.stdin)
    ready = select.poll()
    ready.register(raw, select.POLLIN)
    buf = bytearray(64)
    out = getattr(sys.stdout, "buffer", sys.stdout)
    while True:
        # Poll, then take what is there (up to 64 bytes) one byte at a time: read(n) on a
        # MicroPython stdin would wait for all n bytes and stall the counting.
        n = 0
        while n < 64 and ready.poll(0):
            b = raw.read(1)
            if not b:
                break
            buf[n] = ord(b) if isinstance(b, str) else b[0]  # a text stdin (no .buffer)
            n += 1
        if n and con is None:
            gc.collect()
            from app.console import Console

            con = Console(device, status=lambda: status(device, prov),
                          pin=prov.get("service_pin") if prov else None)
        if n and con is not None:
            reply = con.serve(memoryview(buf)[:n], wallclock.now(), ticks_ms())
            if reply:
                out.write(reply)
            if con.pending:
                out.write(await _carry_out(con.pending, device))
                con.pending = None
        # Yield even with more input waiting: a flood on the port must never starve the
        # sensors (found by the fuzz test: a release went unseen behind a 100 KB backlog).
        await asyncio.sleep_ms(0 if n else 20)


async def _carry_out(action, device):
    """The service actions that need the shell: sync now, reboot."""
    if action[0] == "sync":
        if _syncer is None:
            return b"sync: off (not provisioned)\r\n"
        return ("sync: %s\r\n" % await _syncer.sync_once()).encode()
    device.save(ticks_ms())  # reboot: nothing unsaved is lost
    hw.reset()
    return b""


def status(device, prov):
    import gc
    import os

    from app.counters import RESET_CAUSES

    c = device.meter.c
    try:
        st = os.statvfs("/")
        flash_used = "%d of %d KiB" % ((st[2] - st[3]) * st[0] // 1024, st[2] * st[0] // 1024)
        blocks = st[2]
    except OSError:
        flash_used, blocks = "?", 512
    # Wear, estimated from the measured cost of a brew (flash_erases_per_brew, brewmeter
    # bench: 0.044 erases) spread by littlefs's wear levelling over the partition's blocks,
    # against NOR flash's 100,000 erase cycles.
    wear = c.total_brews() * 0.044 / blocks / 100000 * 100
    s = {"fw": VERSION, "board": device.profile.board,
         "flash_used": flash_used, "flash_wear_pct": "%.4f (estimate)" % wear,
         "device_id": prov.get("device_id") if prov else None,
         "uptime_s": device.uptime_ms(ticks_ms()) // 1000,
         "reset_cause": RESET_CAUSES[c.last_reset], "boots": c.boots,
         "clock": "set" if wallclock.synced else "not set", "heap_free": gc.mem_free(),
         "storage": "ok" if device.storage_ok else "failing"}
    if _syncer is not None:
        s["wifi"] = _syncer.link.state() if hasattr(_syncer.link, "state") else "?"
        last = _syncer.last
        s["last_sync"] = "never" if last is None else "%s (%d s ago)" % (
            last[1], (device.uptime_ms(ticks_ms()) - last[0]) // 1000)
    return s


def run():
    try:
        profile = load_profile()
    except ValueError as e:  # ProfileError
        # Stay at the REPL so the board can be re-flashed with a good profile.
        print("brewmeter: not started:", e)
        return
    try:
        asyncio.run(main(profile))
    except KeyboardInterrupt:
        # Ctrl-C drops to the REPL (mpremote and flash.sh rely on it): save what is not yet
        # saved (a rinse, the last seconds of water) first.
        if _device is not None and _device.meter is not None:
            _device.save(ticks_ms())
        raise
