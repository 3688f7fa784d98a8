# What boot needs once: the provisioning, the board profile, the sync's setup. Loaded by
# app/run.py at boot and unloaded once the tasks run: none of it is held while the app works.
import json
import os

from micropython import const

from app import unload
from app.protocol import MAX_PROVISION

PROFILE_PATH = "/board.json"
_MAX_PROFILE = const(4096)  # a profile is well under 1 KB
PROVISION_PATH = "/provision.json"


def load_profile(path=PROFILE_PATH):
    """The validated board profile. The validator is needed once, at boot: it is unloaded
    afterwards (about 10 KB of heap on the unix port, 6 KB on an ESP32)."""
    from app.profile import ProfileError, parse

    try:
        # Bounded by the file's size, not by a buffer of the bound: at boot the heap may
        # hold no free run of 4 KiB.
        n = os.stat(path)[6]
        if n > _MAX_PROFILE:
            raise ProfileError(path, "(file)", "over %d bytes: not a board profile" % _MAX_PROFILE)
        with open(path) as f:
            text = f.read(n)
    except OSError:
        raise ProfileError(path, "(file)", "missing: flash.sh writes it with --board")
    try:
        return parse(text, path)
    finally:
        unload("profile")


def load_provision(path=PROVISION_PATH):
    """The provisioning flash.sh wrote (device id, key, Wi-Fi, cloud); None if there is none,
    {} if it is unreadable (it may hold secrets all the same: locked, see locks())."""
    try:
        # Bounded by the file's size, not by a buffer of the bound: json.load streams it, and
        # boot has no 8 KiB run to spare.
        if os.stat(path)[6] > MAX_PROVISION:
            return {}
        with open(path) as f:
            p = json.load(f)
    except OSError:
        return None
    except ValueError:
        p = None
    if not isinstance(p, dict):
        return {}
    p.pop("release_key", None)  # not held while the app runs: read again for an update
    return p


def load_sync(prov):
    """The sync stack (the TLS context, then its modules), loaded before recovery while the
    heap is whole: after it the heap may hold no free run of 3 KiB for the context (one
    block), nor after the sync's modules. Returns the TLS context (None for a plain-http
    emulator cloud)."""
    from app import tls

    url = prov["cloud_url"]
    try:
        ctx = tls.context(prov.pop("ca_cert")) if url.startswith("https://") else None
    finally:
        unload("tls")  # needed once, for the context, as is the CA certificate
    from app import synctask  # noqa: F401

    return ctx


def start_sync(device, prov, ssl):
    from app.link import Wifi
    from app.synctask import wire

    wifi = prov["wifi"]
    s = wire(device, prov, Wifi(wifi["ssid"], wifi.get("password", "")), ssl)
    del prov["key"], prov["wifi"]  # the Syncer and the link keep them: no second copy held
    return s


def locks(prov):
    """Is the port locked? A provisioned machine is, unless its provisioning says "lock":
    false (the emulator's demo); an unprovisioned one holds no secrets."""
    return prov is not None and prov.get("lock", True) is not False
