"""`brewmeter provision new`: a batch of machines made ready for flash.sh. For each one it
generates a device id (PREFIX-NNN) and a random key, registers the key with the cloud's admin
API, and writes PREFIX-NNN.json (the provisioning file flash.sh --provision takes) into the
output folder. No key, token or password is ever on a command line: the admin token comes from
a file, the environment or a prompt (secretargs.py), the Wi-Fi password from the environment.
With --release-key each file also holds the release public key (docs/updates.md)."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from brewmeter import secretargs
from brewmeter.flashfiles import FlashError, check_provision
from brewmeter.private import write_new

WIFI_ENV = "BREWMETER_WIFI_PASSWORD"


class ProvisionError(Exception):
    pass


def device_ids(prefix: str, count: int, start: int) -> list[str]:
    """PREFIX-001 ... : as many digits as the largest number needs, at least three."""
    width = max(3, len(str(start + count - 1)))
    return [f"{prefix}-{n:0{width}d}" for n in range(start, start + count)]


def read_ca(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        pem = Path(path).read_text()
    except OSError as e:
        raise ProvisionError(f"--ca-cert {path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ProvisionError(f"--ca-cert {path}: not a PEM text file") from None
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise ProvisionError(f"--ca-cert {path}: no PEM certificate in it "
                             f"(expected -----BEGIN CERTIFICATE-----)")
    return pem


def read_release_key(path: str | None) -> str | None:
    """The provisioning's release_key (the modulus, hex) from the release public key's PEM."""
    if path is None:
        return None
    from brewmeter import release

    try:
        return release.public_hex(Path(path))
    except release.ReleaseError as e:
        raise ProvisionError(f"--release-key {e}") from None


class Admin:
    """The cloud's admin API, as protocol.yaml describes it."""

    def __init__(self, url: str, token: str, ca_pem: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else None

    def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=15, context=self.ctx) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")[:300]
            if e.code in (401, 403):
                raise ProvisionError(f"{self.url}: the cloud refused the admin token "
                                     f"({e.code})") from None
            return e.code, {"error": text}
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ProvisionError(f"{self.url}: cannot reach the cloud: {reason}") from None

    def exists(self, device_id: str) -> bool:
        code, _ = self._call("GET", f"/v1/devices/{device_id}")
        return code == 200

    def register(self, device_id: str, key_hex: str) -> None:
        code, body = self._call("PUT", f"/v1/admin/devices/{device_id}", {"key": key_hex})
        if code not in (200, 201):
            raise ProvisionError(f"{device_id}: the cloud did not register it ({code}): "
                                 f"{body.get('error', body)}")


def new(args: argparse.Namespace, env: dict[str, str] | None = None) -> list[Path]:
    """Register and write the batch; returns the files written. Checks everything it can
    before it registers anything: the folder, the files, the token, the CA, the ids."""
    env = dict(os.environ) if env is None else env
    if args.count < 1:
        raise ProvisionError("--count must be at least 1")
    out = Path(args.out)
    ids = device_ids(args.prefix, args.count, args.start)
    files = [out / f"{i}.json" for i in ids]
    there = [str(f) for f in files if os.path.lexists(f)]  # a link too, even a dangling one
    if there:
        raise ProvisionError(f"{there[0]} already exists: its key would be lost; choose "
                             f"another --out, --prefix or --start")
    try:
        token = secretargs.need(args, secretargs.ADMIN_TOKEN, env)
    except secretargs.SecretError as e:
        raise ProvisionError(str(e)) from None
    ca = read_ca(args.ca_cert)
    release_key = read_release_key(getattr(args, "release_key", None))
    wifi = {"ssid": args.wifi_ssid, "password": env.get(WIFI_ENV, "")}
    provs = []
    for i in ids:
        p: dict = {"device_id": i, "key": secrets.token_hex(32), "wifi": wifi,
                   "cloud_url": args.cloud, "service_pin": f"{secrets.randbelow(10**6):06d}"}
        if ca:
            p["ca_cert"] = ca
        if args.ntp:
            p["ntp"] = args.ntp
        if release_key:
            p["release_key"] = release_key
        try:
            check_provision(p, i, "emulator" if args.cloud.startswith("http://") else "")
        except FlashError as e:
            raise ProvisionError(str(e)) from None
        provs.append(p)
    admin = Admin(args.cloud, token, ca)
    taken = [i for i in ids if admin.exists(i)]
    if taken:
        raise ProvisionError(f"the cloud already knows {', '.join(taken[:5])}: registering "
                             f"again would replace its key; choose another --prefix or --start")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for p, f in zip(provs, files, strict=True):
        admin.register(p["device_id"], p["key"])
        try:  # it holds the device's key and PIN: 0600 from the first byte
            write_new(f, json.dumps(p, indent=1) + "\n")
        except FileExistsError:
            raise ProvisionError(f"{f} appeared while provisioning: not overwritten; "
                                 f"{p['device_id']}'s key is registered but not written, "
                                 "provision it again under another id") from None
        written.append(f)
    return written


def add_arguments(ap: argparse.ArgumentParser) -> None:
    sub = ap.add_subparsers(dest="action", required=True)
    p = sub.add_parser("new", help="generate, register and write N provisioning files",
                       description=__doc__, allow_abbrev=False,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--count", type=int, required=True, help="how many machines")
    p.add_argument("--prefix", required=True,
                   help="device id prefix: ids are PREFIX-001, PREFIX-002, ...")
    p.add_argument("--start", type=int, default=1, help="the first machine's number")
    p.add_argument("--cloud", required=True,
                   help="the cloud's base URL (https://...; http:// only for the emulator)")
    secretargs.add(p, secretargs.ADMIN_TOKEN)
    p.add_argument("--ca-cert", metavar="FILE",
                   help="PEM file of the CA the cloud's TLS certificate chains to (https)")
    p.add_argument("--wifi-ssid", required=True,
                   help=f"the Wi-Fi network the machines join (password: ${WIFI_ENV})")
    p.add_argument("--release-key", metavar="PUBFILE",
                   help="the maker's release public key (`brewmeter release keygen` writes it "
                   "as FILE.pub): the machines install only releases it signed; without one "
                   "they accept no update over the air")
    p.add_argument("--ntp", default=None, help="NTP server, host or host:port")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the provisioning files (one PREFIX-NNN.json each)")
