# One boot of the emulated ESP32, inside the MicroPython unix port, started by
# host/brewmeter/emulator/process.py as
#   micropython -X heapsize=N -i board_launch.py IMAGE BUS_PORT BOOT_NO CAUSE RAW UID RTC ROM
# It does what ports/esp32/main.c and modules/_boot.py do: mount the ROM partition (ROM bytes,
# kept in IMAGE.rom, beside the update's slots IMAGE.romfs_new and IMAGE.romfs_old, all three
# esp32.Partition's; 0: none) at /rom when it holds a ROMFS image (py/runtime.c), mount the
# littlefs "vfs" partition at / (modules/inisetup.py formats it only when blank), run boot.py,
# then main.py unless the REPL was in raw mode, then leave to the REPL (`-i`: the unix
# port's own pyexec REPL, raw
# REPL and raw-paste included). A soft reset ends this process; the supervisor starts the
# next one on the same flash image.
import micropython

# Ctrl-C may interrupt boot.py and main.py only, as on the device. The supervisor sends
# SIGINT for Ctrl-C only while the process has a SIGINT handler, which kbd_intr(-1) removes.
micropython.kbd_intr(-1)

import gc  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import vfs  # noqa: E402

_SETUP_BOOT_PY = """\
# This file is executed on every boot (including wake-boot from deepsleep)
#import esp
#esp.osdebug(None)
#import webrepl
#webrepl.start()
"""

_CORRUPTED = """\
The filesystem appears to be corrupted. If you had important data there, you
may want to make a flash snapshot to try to recover it. Otherwise, perform
factory reprogramming of MicroPython firmware (completely erase flash, followed
by firmware programming).
"""


def _mount(bdev):
    # modules/_boot.py and modules/inisetup.py of the ESP32 port.
    import os

    vfs.umount("/")  # the unix port's host filesystem; the image file stays open in bdev
    try:
        vfs.mount(bdev, "/")
    except OSError:
        buf = bytearray(bdev.ioctl(5, 0))
        bdev.readblocks(0, buf)
        for b in buf:
            if b != 0xFF:  # not blank: the device never reformats, it says so and waits
                buf = None
                micropython.kbd_intr(3)
                try:
                    while True:
                        print(_CORRUPTED)
                        time.sleep(3)
                except KeyboardInterrupt:
                    micropython.kbd_intr(-1)
                    return
        buf = None
        print("Performing initial setup")
        vfs.VfsLfs2.mkfs(bdev)
        vfs.mount(vfs.VfsLfs2(bdev), "/")
        with open("boot.py", "w") as f:
            f.write(_SETUP_BOOT_PY)
    os.chdir("/")


def _rom(path, size):
    # The ROM partition (extmod/vfs.c, mp_vfs_mount_romfs_protected): `vfs.rom_ioctl` through
    # esp32/romvfs.py, mounted at /rom when it holds a ROMFS image; the sys.path
    # entries it adds. Its buffer is allocated first, in one piece, before anything else.
    # (esp32/rawsys.py, the board's `sys`, is counted with it: a few hundred bytes.)
    # Returns the heap it took (counted apart from the harness) and the sys.path entries.
    gc.collect()
    before = gc.mem_alloc()
    import esp32
    import rawsys
    import romvfs

    sys.modules["sys"] = rawsys  # sys.stdout.buffer raw, as on the ESP32
    sys.modules["vfs"] = romvfs
    if size:  # romfs, and the update's romfs_new and romfs_old (esp32.Partition)
        romvfs._attach(esp32._attach(path, size))
    gc.collect()
    took = gc.mem_alloc() - before
    try:
        vfs.mount(vfs.VfsRom(romvfs.rom_ioctl(2, 0)), "/rom")
    except (OSError, TypeError):  # none, blank or not a ROMFS image: no /rom, as on a chip
        return took, []
    return took, ["/rom", "/rom/lib"]


def _print_exception(e, me):
    # As pyexec prints it, minus this launcher's own frame.
    import io

    s = io.StringIO()
    sys.print_exception(e, s)
    skip = '  File "%s"' % me
    for line in s.getvalue().split("\n"):
        if line and not line.startswith(skip):
            print(line)


def _exec(path, g, me):
    # pyexec_file_if_exists(): True when done (or no file), False on an error, None on
    # SystemExit (a soft reset on the device).
    try:
        f = open(path)
    except OSError:
        return True
    try:
        code = f.read()
    finally:
        f.close()
    try:
        code = compile(code, path, "exec")
        g["__file__"] = path  # as pyexec does for a file
        micropython.kbd_intr(3)
        exec(code, g)
        micropython.kbd_intr(-1)
        return True
    except SystemExit:
        micropython.kbd_intr(-1)
        return None
    except BaseException as e:  # KeyboardInterrupt included: back to the REPL
        micropython.kbd_intr(-1)
        _print_exception(e, me)
        return False


def _boot(g):
    me = sys.argv[0]
    image, port, boot_no, cause, raw, uid, rtc = sys.argv[1:8]
    rom_size = int(sys.argv[8]) if len(sys.argv) > 8 else 0
    raw = raw == "1"
    here = me.rsplit("/", 1)[0] if "/" in me else "."
    sys.path.insert(0, here + "/esp32")
    sys.path.insert(1, here)
    import machine  # noqa: F401 - the board's `machine`: imported now, it stays importable
    import machine_bus
    import network  # noqa: F401 - the radio stand-in: imported now, it stays importable
    import norflash

    machine_bus._boot(int(port), int(boot_no), int(cause), bytes.fromhex(uid), int(rtc))
    rom_heap, rom_path = _rom(image, rom_size)

    class NoCount:
        def __getitem__(self, i):
            return 0

        def __setitem__(self, i, v):
            pass

    class Flash(norflash.NorFlash):
        # norflash.NorFlash, reporting every program and erase to the supervisor (which keeps
        # the wear counts across resets and cuts) and dying with the board when an armed
        # power cut ("C") hits. Reads and programs allocate nothing: littlefs closes a file
        # left open from its finaliser, with the heap locked, as the device does at a GC or
        # a soft reset; NorFlash's own methods allocate. Same NOR rules and cut semantics.
        # No method uses a variable of _boot: a closure call allocates its arguments.
        _nor = norflash
        _bus = machine_bus

        def reset_stats(self):
            self._nor.NorFlash.reset_stats(self)
            self.block_erases = NoCount()  # 4 KiB less of the board's heap
            # littlefs programs through its 128-byte cache: bigger writes take the NorFlash path
            self._scratch = bytearray(256)

        def _poll(self):
            # An armed cut applies from the next operation on; not while the heap is locked.
            try:
                self._bus._poll()
            except MemoryError:
                pass

        def readblocks(self, n, buf, off=0):
            f = self._file
            if self._mem is not None:
                return self._nor.NorFlash.readblocks(self, n, buf, off)
            self._alive()
            addr = n * self.block_size + off
            self._check(addr, len(buf))
            f.seek(addr)
            f.readinto(buf)
            self.bytes_read += len(buf)

        def program(self, addr, data):
            self._poll()
            f = self._file
            n = len(data)
            if self._mem is not None or n > len(self._scratch):
                try:
                    self._nor.NorFlash.program(self, addr, data)
                except self._nor.PowerCut:
                    self._bus._halt(b"Z\n")
            else:
                self._alive()
                self._check(addr, n)
                new = self._scratch
                f.seek(addr)
                f.readinto(new, n)
                for i in range(n):
                    if data[i] & ~new[i] & 0xFF:
                        raise self._nor.NorError(
                            "program at 0x%x sets a bit: erase first" % (addr + i))
                for i in range(n):
                    new[i] &= data[i]
                f.seek(addr)
                if self._start():
                    if self.tear:  # a torn program: the first half of the bytes landed
                        f.write(new, n // 2)
                    self._bus._halt(b"Z\n")
                f.write(new, n)
                self.programs += 1
                self.bytes_programmed += n
            self._bus._report(0x70, n)  # "p"

        def erase(self, block):
            self._poll()
            try:
                self._nor.NorFlash.erase(self, block)
            except self._nor.PowerCut:
                self._bus._halt(b"Z\n")
            self._bus._report(0x65, block)  # "e"

    collect = gc.collect
    modules = sys.modules

    def sweep():
        # A soft reset sweeps the heap (gc_sweep_all): finalisers close files left open, and
        # littlefs commits them. Drop every reference firmware could hold, then collect.
        g.clear()
        modules.clear()
        collect()

    ok = True
    try:
        bdev = Flash(path=image)
        machine_bus._flash = bdev
        if machine_bus._cut:  # a cut armed before the flash was there (a boot's)
            bdev.cut_after, bdev.tear = machine_bus._cut
        import esp32

        esp32._parts["vfs"] = (bdev, esp32._VFS)
        g["bdev"] = bdev
        _mount(bdev)
    except Exception as e:
        _print_exception(e, me)
        ok = False
    # The device's sys.path; '.frozen' keeps the unix port's frozen asyncio importable.
    sys.path[:] = ["", ".frozen"] + rom_path + ["/lib"]
    gc.collect()
    # The harness's own share of the heap; the ROM's buffer is counted apart (flash on a chip);
    # then the heap's whole pool, for the -X heapsize these take (the GC's tables included).
    used = gc.mem_alloc()
    machine_bus._send(b"M %d %d %d\n" % (used - rom_heap, rom_heap, used + gc.mem_free()))
    if ok:
        ok = _exec("boot.py", g, me)
        if ok and not raw:
            ok = _exec("main.py", g, me)
        if ok is None:
            sweep()
            machine_bus._halt(b"X\n")
    sys.atexit(sweep)  # the REPL's own exits (Ctrl-D, SystemExit) are soft resets too
    if g.get("__file__") == me:
        del g["__file__"]
    machine_bus._request(b"R\n")  # the supervisor now starts the raw REPL if that was the mode


_boot(globals())
# Leave the REPL what the device's _boot.py leaves it: gc, vfs, bdev.
for _k in ("_boot", "_exec", "_mount", "_rom", "_print_exception", "_SETUP_BOOT_PY", "_CORRUPTED",
           "micropython", "sys", "time", "_k"):
    globals().pop(_k)
gc.collect()
