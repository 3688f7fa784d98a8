"""What flash.sh puts on a device, made and checked on the laptop: the provisioning file's
fields (the service PIN only as its salted hash), the firmware compiled with mpy-cross and
its ROMFS image. The device side is flasher.py; the flash.sh command is flashsh.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import subprocess
from pathlib import Path

from brewmeter import unixport
from brewmeter.profiles import board_path
from brewmeter.standins import FIRMWARE

MANIFEST = "manifest.py"


# The service PIN reaches the device only as a salted PBKDF2-HMAC-SHA256 hash (the firmware's
# app/service.py checks it). 3000 iterations keep an unlock short on an ESP32 (docs/flashing.md,
# "Secrets at rest", works out what one costs).
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
    from brewmeter.cloud.auth import DEVICE_ID_RULE
    from brewmeter.cloud.shared import is_device_id
    from brewmeter.cloud.shared import protocol as P

    def bad(field: str, why: str) -> FlashError:
        return FlashError(f"{source}: field '{field}': {why}")

    if not isinstance(p, dict):
        raise bad("(top)", "must be a JSON object")
    known = {"device_id", "key", "key_id", "wifi", "cloud_url", "ca_cert", "ntp",
             "service_pin", "lock", "release_key"}
    for k in p:
        if k not in known:
            raise bad(k, f"unknown field (known: {', '.join(sorted(known))})")
    if not is_device_id(p.get("device_id")):
        raise bad("device_id", DEVICE_ID_RULE)
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
    if "release_key" in p and not re.fullmatch(r"[89a-f][0-9a-f]{511}", str(p["release_key"])):
        raise bad("release_key", "the release public key's 2048-bit modulus as 512 lowercase "
                  "hex digits (`brewmeter provision new --release-key FILE.pub` writes it)")
    if not isinstance(p.get("lock", True), bool):
        raise bad("lock", "true (the default: the serial port opens only with the service "
                  "PIN) or false")
    size = len(device_file(p))
    if size > P.MAX_PROVISION:
        raise FlashError(f"{source}: {size} bytes as the device keeps it, over the "
                         f"{P.MAX_PROVISION} it reads at boot (a shorter ca_cert: the cloud's "
                         "own chain only)")
    return p


def device_file(p: dict) -> bytes:
    """/provision.json as flash.sh writes it."""
    return json.dumps(device_provision(p), indent=1).encode()


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


def build(out: Path, board: str, provision: dict | None,
          firmware: Path = FIRMWARE) -> dict[str, Path]:
    """The device's files: firmware compiled to .mpy (boot.py and main.py stay source: the
    port runs those two by name; romslot.mpy beside them, never in the ROM it rewrites),
    the board profile and the provisioning. Returns {device path: local file}."""
    files: dict[str, Path] = {}
    for src in sorted(firmware.rglob("*.py")):
        rel = src.relative_to(firmware)
        if rel == Path(MANIFEST):
            continue  # for building firmware with the app frozen in, never on the device
        if rel.name in ("boot.py", "main.py"):
            dest = out / rel
            dest.write_bytes(src.read_bytes())
        else:
            dest = out / rel.with_suffix(".mpy")
            dest.parent.mkdir(parents=True, exist_ok=True)
            unixport.cross_compile(src, dest, rel.as_posix())
        files[dest.relative_to(out).as_posix()] = dest
    (out / "board.json").write_bytes(board_path(board).read_bytes())
    files["board.json"] = out / "board.json"
    if provision is not None:  # None: a board that counts but never syncs
        (out / "provision.json").write_bytes(device_file(provision))
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
    p = subprocess.run([unixport.tool("mpremote"), "romfs", "-o", str(image), "--no-mpy", "build",
                        str(tree)], capture_output=True, text=True, timeout=60)
    if p.returncode != 0 or not image.exists():
        raise FlashError(f"mpremote romfs build failed: {p.stdout}{p.stderr}")
    return image


def rom_size(query: str) -> int | None:
    """The first ROM partition's size from `mpremote romfs query`'s output; None if none."""
    m = re.search(r"ROMFS0 partition has size (\d+) bytes", query)
    return int(m[1]) if m else None


def mpy_cross_version() -> tuple[int, int]:
    out = subprocess.run([unixport.tool("mpy-cross"), "--version"], capture_output=True,
                         text=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise FlashError(f"cannot tell mpy-cross's bytecode version from {out!r}")
    return int(m[1]), int(m[2])

