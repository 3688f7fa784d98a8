"""`brewmeter release`: the app as a release for updates over the air (docs/updates.md). `build`
makes the app's ROMFS image (the one flash.sh deploys) and its manifest; `sign` signs the
manifest with the maker's release key (RSA-2048, PKCS#1 v1.5, SHA-256); `keygen` makes that
key. The private key stays with the maker: never on a device, never in the cloud. Devices hold
the public key in their provisioning (`brewmeter provision new --release-key`) and check a
release with app/release.py before it runs."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from brewmeter import flashfiles
from brewmeter.private import write_new
from brewmeter.profiles import BOARDS, load_profile
from brewmeter.standins import FIRMWARE

IMAGE = "app.romfs"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # the raw 256 bytes
KEY_BITS = 2048
EXPONENT = 65537  # the device verifies with this exponent alone
# The app mounts its image with vfs.rom_ioctl: ROMFS came in MicroPython 1.25.
MIN_MICROPYTHON = (1, 25, 0)
TRIAL_S = 600  # the new app's time to boot, recover the counts and report once
MAX_TRIAL_S = 7 * 86400
MANIFEST_FORMAT = 1


class ReleaseError(Exception):
    pass


def firmware_version(firmware: Path = FIRMWARE) -> str:
    """The firmware's VERSION (firmware/app/__init__.py), which the device reports as `fw`."""
    m = re.search(r'^VERSION = "([0-9]+(?:\.[0-9]+)*)"$',
                  (firmware / "app" / "__init__.py").read_text(), re.M)
    if not m:
        raise ReleaseError("firmware/app/__init__.py: no VERSION = \"N.N.N\" in it")
    return m[1]


def board_names() -> list[str]:
    return sorted(load_profile(p.stem).board for p in BOARDS.glob("*.json"))


def manifest(image: bytes, boards: list[str], trial_s: int = TRIAL_S,
             version: str | None = None, mpy: int | None = None) -> bytes:
    """The manifest of `image`: the bytes that are signed, as the device reads them."""
    fields = {"format": MANIFEST_FORMAT, "version": version or firmware_version(),
              "size": len(image), "sha256": hashlib.sha256(image).hexdigest(),
              "mpy": flashfiles.mpy_cross_version()[0] if mpy is None else mpy,
              "micropython": list(MIN_MICROPYTHON), "boards": boards, "trial_s": trial_s}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def build(out: Path, boards: list[str] | None = None, trial_s: int = TRIAL_S,
          firmware: Path = FIRMWARE) -> tuple[Path, Path]:
    """Write OUT/app.romfs and OUT/manifest.json of the app in `firmware`; returns their
    paths. Refuses a folder that already holds a release (its signature would no longer
    match)."""
    from app.release import MAX_MANIFEST

    known = board_names()
    boards = sorted(set(boards or known))
    unknown = [b for b in boards if b not in known]
    if unknown:
        raise ReleaseError(f"--board {unknown[0]}: no such board (boards: {', '.join(known)})")
    if not 1 <= trial_s <= MAX_TRIAL_S:
        raise ReleaseError(f"--trial-s {trial_s}: 1 to {MAX_TRIAL_S} seconds")
    there = [out / n for n in (IMAGE, MANIFEST, SIGNATURE) if (out / n).exists()]
    if there:
        raise ReleaseError(f"{there[0]} exists: a release is built into a new folder")
    with tempfile.TemporaryDirectory() as d:
        # (the app's files are any board's)
        files = flashfiles.build(Path(d), "emulator", None, firmware)
        image = flashfiles.build_rom(Path(d), files).read_bytes()
    for b in boards:
        rom = load_profile(b).rom_bytes
        if rom and len(image) > rom:
            raise ReleaseError(f"the {len(image)}-byte image does not fit board {b}'s "
                               f"{rom}-byte ROM partition")
    text = manifest(image, boards, trial_s, firmware_version(firmware))
    if len(text) > MAX_MANIFEST:
        raise ReleaseError(f"the manifest would be {len(text)} bytes, over the {MAX_MANIFEST} "
                           "a device reads: name fewer --board")
    out.mkdir(parents=True, exist_ok=True)
    (out / IMAGE).write_bytes(image)
    (out / MANIFEST).write_bytes(text)
    return out / IMAGE, out / MANIFEST


def keygen(out: Path) -> Path:
    """Write a new release key: OUT (the private key, PEM, mode 0600) and OUT.pub (the public
    key, PEM, for provisioning). Refuses to overwrite either."""
    pub = Path(f"{out}.pub")
    for p in (out, pub):
        if p.exists() or p.is_symlink():
            raise ReleaseError(f"{p} exists: not overwritten (a release key is made once; "
                               "devices provisioned with it trust it alone)")
    key = rsa.generate_private_key(public_exponent=EXPONENT, key_size=KEY_BITS)
    write_new(out, key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode())
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


def _rsa(key: object, path: Path) -> None:
    if not isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        raise ReleaseError(f"{path}: not an RSA key")
    numbers = (key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key).public_numbers()
    if key.key_size != KEY_BITS or numbers.e != EXPONENT:
        raise ReleaseError(f"{path}: an RSA-{key.key_size} key with e={numbers.e}; a device "
                           f"verifies RSA-{KEY_BITS} with e={EXPONENT} only")


def load_public(path: Path) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read: {e.strerror}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ReleaseError(f"{path}: not a PEM public key (keygen writes one as "
                           "KEYFILE.pub)") from None
    _rsa(key, path)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def public_hex(path: Path) -> str:
    """The provisioning's `release_key`: the public key's modulus, 512 hex digits."""
    return f"{load_public(path).public_numbers().n:0{KEY_BITS // 4}x}"


def sign(key_path: Path, manifest_path: Path) -> Path:
    """Sign the manifest (after checking it names the image beside it) into manifest.sig."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as e:
        raise ReleaseError(f"{key_path}: cannot read: {e.strerror}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ReleaseError(f"{key_path}: not an unencrypted PEM private key "
                           "(`brewmeter release keygen` makes one)") from None
    _rsa(key, key_path)
    assert isinstance(key, rsa.RSAPrivateKey)
    try:
        text = manifest_path.read_bytes()
        image = (manifest_path.parent / IMAGE).read_bytes()
    except OSError as e:
        raise ReleaseError(f"{e.filename}: cannot read: {e.strerror}") from None
    try:
        m = json.loads(text)
        named = (m["size"], m["sha256"])
    except (ValueError, KeyError, TypeError):
        raise ReleaseError(f"{manifest_path}: not a release manifest") from None
    if named != (len(image), hashlib.sha256(image).hexdigest()):
        raise ReleaseError(f"{manifest_path}: does not name {IMAGE} beside it (its size or "
                           "SHA-256 differ): not signed")
    sig = key.sign(text, padding.PKCS1v15(), hashes.SHA256())
    out = manifest_path.parent / SIGNATURE
    out.write_bytes(sig)
    return out


def verify(pub: rsa.RSAPublicKey, text: bytes, sig: bytes) -> bool:
    try:
        pub.verify(sig, text, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        if args.action == "build":
            out = Path(args.out or f"release-{firmware_version()}")
            image, man = build(out, args.board, args.trial_s)
            m = json.loads(man.read_bytes())
            print(f"built release {m['version']}: {image} ({m['size']} bytes, sha256 "
                  f"{m['sha256'][:16]}...), {man} (boards {', '.join(m['boards'])}); "
                  f"next: ./brewmeter release sign --key KEYFILE {man}")
        elif args.action == "sign":
            print(f"signed: {sign(Path(args.key), Path(args.manifest))}")
        else:
            pub = keygen(Path(args.out))
            print(f"wrote {args.out} (the private key: keep it off devices and out of the "
                  f"cloud) and {pub} (for ./brewmeter provision new --release-key {pub})")
    except ReleaseError as e:
        print(f"brewmeter release: {e}", file=sys.stderr)
        return 2
    return 0


def add_arguments(ap: argparse.ArgumentParser) -> Any:  # noqa: ANN401 - the subparsers
    """The device's side (build, sign, keygen); the subcommands, for the cloud's side
    (rollout.py, added by cli.py: rollout imports this module)."""
    sub = ap.add_subparsers(dest="action", required=True)
    p = sub.add_parser("build", help="the app's ROMFS image and its manifest",
                       allow_abbrev=False)
    p.add_argument("--out", metavar="DIR",
                   help="a new folder for app.romfs and manifest.json (default: "
                   "release-VERSION here)")
    p.add_argument("--board", action="append", metavar="NAME",
                   help="a board kind the release runs on (again for more; default: every "
                   "profile in boards/)")
    p.add_argument("--trial-s", type=int, default=TRIAL_S, metavar="S",
                   help="the new app's time to boot, recover and report once, or the device "
                   "goes back to the app it ran")
    p = sub.add_parser("sign", help="sign a manifest with the release key",
                       allow_abbrev=False)
    p.add_argument("--key", required=True, metavar="FILE", help="the private key (keygen's)")
    p.add_argument("manifest", metavar="MANIFEST",
                   help="release build's manifest.json (app.romfs beside it)")
    p = sub.add_parser("keygen", help="make a release key pair (RSA-2048)", allow_abbrev=False)
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the private key's file (mode 0600); the public key goes to FILE.pub")
    return sub
