# What boot needs once: the provisioning, the board profile, the sync's setup, the device's
# files read back. Loaded by app/run.py at boot and unloaded once the tasks run: none of it
# is held while the app works.
import json
import os
import struct

from micropython import const

from app import unload
from app.alerts import BrewTimes
from app.counters import Counters, unpack_counters
from app.days import Days
from app.forecast import Forecast
from app.journal import COUNTS, STATE, NewerFormat
from app.meter import Meter
from app.outbox import Outbox
from app.protocol import MAX_NAMED_SEQ, MAX_PROVISION, OTHER, STATUSES, era_after
from app.supplies import ERA_BITS, ITEMS, Supplies, _fmt

PROFILE_PATH = "/board.json"
_MAX_PROFILE = const(4096)  # a profile is well under 1 KB
PROVISION_PATH = "/provision.json"
_WDT_RESET = const(3)  # machine.WDT_RESET


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


# Recovery: what boot reads back of the device's files (Device.boot and Device.recover load
# this module for it), held only until the tasks run.


def load_counters(store):
    """The counters saved in Store `store`, or fresh ones if there are none."""
    data = store.read("counters")
    if data is None:
        return Counters()
    try:
        return unpack_counters(data, store.formats["counters"])
    except (KeyError, ValueError, struct.error):  # CRC-good but no layout of ours fits
        store.recovered.append("counters")
        return Counters()


def recover(dev):
    """Read Device `dev`'s counters, outbox and applied configuration back from flash."""
    try:
        c, data = load_counters(dev.store), dev.state.read("state")
    except NewerFormat as e:
        # Written by newer firmware: count on in RAM and leave the flash untouched.
        dev.store.read_only = dev.state.read_only = True
        c, data, newer = Counters(), None, str(e)
    else:
        newer = None
    saved = None
    if data:  # (one file: the outbox, configuration and history in one lookup at boot)
        try:
            saved = json.loads(data)
        except ValueError:
            pass
    if not isinstance(saved, dict):
        saved = {}  # none, or CRC-good but unreadable: start empty
    dev.outbox = Outbox(saved.get("ob"))
    dev._history = saved.get("days")
    dev._confirmed = saved.get("cd", 0)
    dev.service_lock = saved.get("lock", 0)
    dev.pin_fails = saved.get("pin") or [0, 0]
    dev.seq_era = saved.get("sq", 0)
    if dev.seq_era > era_after(MAX_NAMED_SEQ):
        dev.seq_era = 0  # a floor no backend may name (saved by earlier firmware)
    cfg = saved.get("cfg") or {}
    dev.config_version, dev.config = cfg.get("v", 0), cfg.get("s", {})
    dev.meter = Meter(dev.profile, c) if dev.profile else None  # (None: run.py's wait)
    if newer:
        dev.fault("storage_newer", newer)
    recovered = dev.store.recovered + dev.state.recovered
    if recovered:
        dev.fault("storage_recovered", ",".join(recovered))


def boot(dev, cause, now):
    """Recover Device `dev`, then count this boot and save it."""
    recover(dev)
    dev.meter.boot(cause)
    dev.days = Days(dev.meter.c, dev.meter.c.boots, dev._history, dev._confirmed)
    dev._second = now
    # The history with the counters (the journal writes it first): Days took an earlier
    # boot's undated brews out of the counters, and a cut between must not lose them.
    dev._commit(COUNTS | (STATE if dev.days.unsaved else 0))
    load_supplies(dev)
    if dev.supplies.fresh:  # the cycles start now: the first boot, or the state lost
        dev._new_era()  # (or never kept)
    if cause == _WDT_RESET:  # the event loop stalled, or the counting died
        dev.fault("watchdog_reset", "")


def load_supplies(dev):
    """Device `dev`'s consumables' state, after the counts (counting does not wait for it)."""
    n = len(dev.profile.kinds)
    sup = fc = bt = None
    if not dev.state.read_only:  # (newer firmware's flash: start afresh in RAM)
        try:
            sup, fc, bt = unpack_supplies(dev.state.read("sup"), n) or (None, None, None)
        except NewerFormat:
            dev.store.read_only = dev.state.read_only = True
    dev.supplies = Supplies(dev.meter.c, dev.profile.kinds, sup, dev.seq_era)
    dev.forecast = Forecast(n + 1, fc)
    dev.brew_times = BrewTimes(n, bt)
    dev._rates_saved = dev.forecast.day
    dev._dated = dev._dates()  # as at boot: dated by earlier boots' clocks, or never


def unpack_supplies(data, n):
    """(supplies state, forecast state, brew times state) from `data` for `n` brew kinds,
    or None if it is not such a record (another board's, or damaged past its CRC)."""
    fmt = _fmt(n)
    size = struct.calcsize(fmt)
    if data and len(data) == size - 4:  # written before the era
        data += bytes(4)
    if not data or len(data) != size:
        return None
    v = list(struct.unpack(fmt, data))
    era = v.pop() << ERA_BITS
    k = 3 * len(ITEMS)
    marks = v[k:k + n + 2]
    rest = v[k + n + 2:]
    items = {}
    for i, name in enumerate(ITEMS):
        cycle, st, alerted = v[3 * i:3 * i + 3]
        mark = {"coffee": marks[:n], "descaler": marks[n], "tablets": marks[n + 1]}.get(name, 0)
        status = STATUSES[st - 1] if 0 < st <= len(STATUSES) else OTHER if st == 255 else ""
        items[name] = [cycle if name == "filter" else era | cycle, mark, status, alerted]
    month = rest[:2]
    day, days, used = rest[2:5]
    at = rest[5:6 + n]
    rates = rest[6 + n:7 + 2 * n]
    bt = rest[7 + 2 * n:]
    fc = [day, days, used, at if day else None, rates]
    return {"it": items, "mo": month}, fc, [bt[:n], bt[n:]]
