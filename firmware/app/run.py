# The app: load the board profile, recover the counts from flash, start the tasks: sensors,
# sync when the device is provisioned, the service console on the serial port, the day's
# work and the service button, all but the counting kept running by app/supervisor.py.
import asyncio
import gc
import sys
import time
from time import ticks_ms

import micropython
from micropython import const

from app import VERSION, hw, unload, wallclock
from app.device import Device
from app.journal import DeviceFS
from app.sensors import Sensors
from app.supervisor import Supervisor, take_hook

_GC_EVERY = const(4096)

# The shell's own state, read by this module alone:
_device = None  # for run(): what to save when Ctrl-C stops the app
_locked = False  # the serial port is locked: Ctrl-C and the raw REPL do nothing
_open_until = None  # ticks_ms when a PIN-opened maintenance window closes
LOCKED_MSG = b"\r\nlocked: unlock with --pin (service unlock --pin PIN)\r\n"



def window_over(now, until):
    return until is not None and time.ticks_diff(now, until) >= 0


async def main(profile, prov):
    global _device
    # Collect after every 4 KiB allocated, not only when the heap is full: short-lived objects
    # then go while they are still packed together, and what lives on is not scattered over
    # the whole heap. Fragmentation was most of the worst moment's need (brewmeter bench:
    # app_peak_heap_bytes); the counting allocates nothing per poll, so an idle machine
    # seldom collects.
    gc.threshold(_GC_EVERY)
    from app import startup  # (loaded by run()) needed until the tasks run, then unloaded

    sync = ssl = syncer = None
    if prov:
        try:
            ssl = startup.load_sync(prov)
        except (ImportError, KeyError, ValueError) as e:  # no radio, or a bad provisioning
            sync = "off (%s)" % e
    device = _device = Device(profile, DeviceFS())
    device.wall = wallclock.now  # 0 until NTP answers: brews are undated until then
    device.boot(hw.reset_cause(), ticks_ms())
    from app import replwatch

    was = replwatch.stopped_for(time.time())
    if was is not None:  # stopped into the REPL (Ctrl-C, mpremote) until this boot
        device.fault("app_stopped", "%d s at the REPL" % was if was >= 0 else "unknown time")
    del replwatch
    unload("replwatch")
    sup = Supervisor(device, take_hook())
    sensors = Sensors(profile, device)
    keep = sup.keep
    if prov and sync is None:
        try:
            syncer = startup.start_sync(device, prov, ssl)
            asyncio.create_task(keep("sync", syncer.run))
            sync = "on"
        except (ImportError, KeyError, ValueError) as e:
            sync = "off (%s)" % e
    del startup
    unload("startup")
    sync = sync or "off (not provisioned)"
    print("brewmeter ready fw=%s board=%s sync=%s" % (VERSION, profile.board, sync))
    asyncio.create_task(keep("console", serve_console, device, prov, syncer))
    asyncio.create_task(keep("day", _days, device))
    asyncio.create_task(keep("button", sensors.run_button))
    if sup.hook == "stall":  # tests only: the event loop stalls (a task stuck in a call)
        asyncio.create_task(_stall())
    elif sup.hook == "fail:counting":  # tests only: an error in the counting
        await asyncio.sleep_ms(1000)
        raise RuntimeError("test hook: counting made to fail")
    # The counting runs here, not restarted: an error in it ends main(), and run() resets.
    await sensors.run(hw.watchdog(profile.wdt_s * 1000))


async def _days(device):
    """The day's work: the filter's date, the day roll, and on a new day the forecast and
    the orders. Its own task: the counting never waits for it, nor fails with it."""
    while True:
        device.day_tick(ticks_ms())
        await asyncio.sleep_ms(1000)


async def _stall():
    await asyncio.sleep_ms(1000)
    while True:
        time.sleep_ms(100)


async def serve_console(device, prov, syncer):
    """The service console on the USB serial port, beside the REPL's Ctrl-C: it reads
    stdin without blocking the counting, and answers on stdout. `syncer`: the sync task's
    (app.synctask), None while the sync is off."""
    import select
    import sys

    con = None  # loaded when a tech first types: no heap for it while nobody is there
    line = None  # (bytes, overflow, cr) of a line being typed when the console was dropped
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
        if n and _locked and _open_until is None and buf.find(b"\x01", 0, n) >= 0:  # Ctrl-A
            out.write(LOCKED_MSG)  # what mpremote prints when it gives up
        if n and con is None:
            con, line = _console(device, prov, syncer, line), None
        if n and con is not None:
            reply = await con.serve(memoryview(buf)[:n], device.wall(), ticks_ms())
            if reply:
                out.write(reply)
            action, con.pending = con.pending, None
            if action and action[0] == "sync":
                # The console's heap goes back for the sync (the worst moment: the report,
                # the TLS connection and the reply): loaded again on the next byte. Its PIN
                # was right, so its guard holds nothing a new one would not read from flash.
                line = con.buf, con.overflow, con._cr
                con = None
                unload("console")
                unload("service")
                gc.collect()
            if action:
                out.write(await _carry_out(action, device, syncer))
        if window_over(ticks_ms(), _open_until):
            _lock_again(out)
        # Yield even with more input waiting: a flood on the port must never starve the
        # sensors (found by the fuzz test: a release went unseen behind a 100 KB backlog).
        await asyncio.sleep_ms(0 if n else 20)


def _console(device, prov, syncer, line):
    """The console, loaded (its class held by nothing else, so dropping it frees its
    module); `line`: the line being typed when it was last dropped."""
    gc.collect()
    from app.console import Console

    con = Console(device, status=lambda: status(device, prov, syncer),
                  pin=prov.get("service_pin_hash") if prov else None)
    if line is not None:
        con.buf, con.overflow, con._cr = line
    return con


def _lock_again(out):
    global _open_until
    micropython.kbd_intr(-1)
    _open_until = None
    out.write(b"service: maintenance window over: the port is locked\r\n")


async def _carry_out(action, device, syncer):
    """The service actions that need the shell: sync now, reboot, open the port."""
    global _open_until
    if action[0] == "unlock":
        if not _locked:
            return b"unlock: the port is not locked\r\n"
        s = getattr(device.profile, "unlock_s", 900)  # (no profile: a bad one, see run())
        micropython.kbd_intr(3)
        _open_until = time.ticks_add(ticks_ms(), s * 1000)
        return ("unlock: the port is open for %d s (Ctrl-C stops the app)\r\n" % s).encode()
    if action[0] == "sync":
        if syncer is None:
            return b"sync: off (not provisioned)\r\n"
        try:
            result = await syncer.sync_once()
        except MemoryError:  # the answer at least; the sync task tries again on its own
            gc.collect()
            result = "out of memory"
        return ("sync: %s\r\n" % result).encode()
    device.save(ticks_ms())  # reboot: nothing unsaved is lost
    hw.reset()
    return b""


def status(device, prov, syncer):
    import os

    from app.counters import RESET_CAUSES

    c = device.meter.c
    try:
        st = os.statvfs("/")
        used, total = (st[2] - st[3]) * st[0] // 1024, st[2] * st[0] // 1024
        blocks = st[2]
    except OSError:
        used = total = None
        blocks = 512
    # Wear, estimated from the erases a brew costs in use (flash_erases_per_brew, as
    # `./brewmeter bench` measured it when this was written) spread by littlefs's wear
    # levelling over the partition's blocks, against NOR flash's 100,000 erase cycles.
    wear = c.total_brews() * 0.0386 / blocks / 100000 * 100
    s = {"fw": VERSION, "board": device.profile.board,
         "flash_used_kib": used, "flash_total_kib": total,
         "flash_wear_est_pct": round(wear, 4),
         "device_id": prov.get("device_id") if prov else None,
         "uptime_s": device.uptime_ms(ticks_ms()) // 1000,
         "reset_cause": RESET_CAUSES[c.last_reset], "boots": c.boots,
         "clock": "set" if device.wall() else "not set", "heap_free": gc.mem_free(),
         "storage": "ok" if device.storage_ok else "failing"}
    if syncer is not None:
        s["wifi"] = syncer.link.state() if hasattr(syncer.link, "state") else "?"
        last = syncer.last
        s["last_sync"] = "never" if last is None else last[1]
        s["last_sync_age_s"] = None if last is None else (
            device.uptime_ms(ticks_ms()) - last[0]) // 1000
    return s


def run():
    global _locked
    try:
        # boot.py and main.py turned Ctrl-C off on a provisioned machine: no REPL before this.
        from app import startup  # what boot needs once (main() unloads it)

        prov = startup.load_provision()
        # Locked: Ctrl-C (0x03) is a byte for the console, which ignores it.
        _locked = startup.locks(prov)
        if not _locked:
            micropython.kbd_intr(3)
        profile = None
        try:
            profile = startup.load_profile()
        except ValueError as e:  # ProfileError
            print("brewmeter: not started:", e)
            if not _locked:
                # Stay at the REPL so the board can be re-flashed with a good profile (boot.py's
                # REPL watch stays armed: the watchdog is fed while the port is in use).
                return
            # Locked: the console waits for a service unlock (the tries saved as ever), then
            # Ctrl-C stops it into the REPL, to re-flash.
            device = Device(None, DeviceFS())
            device.recover()
            asyncio.run(serve_console(device, prov, None))
        watch = sys.modules.get("app.replwatch")
        if watch is not None:  # armed by boot.py: the app feeds the watchdog from now on
            watch.disarm()
            watch = None
            unload("replwatch")
        startup = None  # (this frame lives on: it would hold the module)
        asyncio.run(main(profile, prov))
    except KeyboardInterrupt:
        _save()
        if _locked and _open_until is None:  # one that came before the lock: never the REPL
            hw.reset()
        # Ctrl-C drops to the REPL (mpremote and flash.sh rely on it): save what is not yet
        # saved (a rinse, the last seconds of water) first. The REPL watch brings the app
        # back once the port has been quiet for repl_idle_s.
        try:
            from app import replwatch

            replwatch.stopped(time.time())
            replwatch.arm()
        except Exception as e:  # noqa: BLE001 - the REPL comes up whatever fails here
            print("brewmeter: REPL watch not armed:", e)
        raise
    except Exception as e:  # noqa: BLE001 - an error escaped the supervisor: the counting's
        # Never left at the REPL on an error: save what can be saved, say why, reset.
        sys.print_exception(e)
        _save()
        hw.reset()


def _save():
    if _device is not None and _device.meter is not None:
        try:
            _device.save(ticks_ms())
        except Exception:  # noqa: BLE001 - the flash failing too: the reset still comes
            pass
