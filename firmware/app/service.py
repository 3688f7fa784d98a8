# Service actions on the console, behind the service PIN provisioned with the device (a
# string of 6-8 digits), of which the device keeps only a salted hash: PBKDF2-HMAC-SHA256,
# "pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX", written by flash.sh. Five wrong PINs lock
# them for five minutes, each further lock twice the last (at most a day) until a right
# PIN; the wrong tries, the lock and the count of locks are saved, so a reboot lifts
# nothing. Every action is recorded as an event (it reaches the cloud with the next sync).
# Pure: the console passes `now` (ticks_ms), `wall`. The hash yields to the event loop every
# _SLICE iterations, so the counting polls on while a PIN is checked.
import asyncio
from time import ticks_diff

from micropython import const

from app import protocol
from app.journal import STATE

_TRIES = const(5)
LOCK_S = const(300)
LOCK_MAX_S = const(86400)
_SLICE = const(50)  # iterations between two yields (what one takes: docs/flashing.md, Secrets)
MAX_ITERATIONS = const(10000)  # a stored hash naming more is refused, as a malformed one


def same(given, pin):
    """given (None: no PIN given) == pin, in a time that depends only on the PIN's length,
    not on where (or whether) they differ."""
    a, b = (given or "").encode(), pin.encode()
    d = len(a) ^ len(b)
    for i in range(len(b)):
        d |= (a[i] if i < len(a) else 0) ^ b[i]
    return d == 0


async def pbkdf2(pin, salt, n):
    """PBKDF2-HMAC-SHA256 of `pin` (str), one 32-byte block (RFC 8018), as hashlib's
    pbkdf2_hmac: the HMAC's padded keys made once, the XOR of the rounds done on an int;
    in slices of _SLICE iterations, between which the event loop runs."""
    from hashlib import sha256

    from app.signing import pads

    ipad, opad = pads(pin.encode())
    u = salt + b"\x00\x00\x00\x01"
    acc = 0
    for i in range(n):
        if i % _SLICE == _SLICE - 1:
            await asyncio.sleep_ms(0)
        h = sha256(ipad)
        h.update(u)
        h2 = sha256(opad)
        h2.update(h.digest())
        u = h2.digest()
        acc ^= int.from_bytes(u, "big")
    return acc.to_bytes(32, "big")


def parse_hash(rec):
    """(iterations, salt, hash) of a provisioned PIN hash, or None if it is not one."""
    from binascii import unhexlify

    try:
        algo, n, salt, h = rec.split("$")
        n = int(n)
        if algo == "pbkdf2-sha256" and 1 <= n <= MAX_ITERATIONS and len(h) == 64:
            return n, unhexlify(salt), unhexlify(h)
    except (AttributeError, ValueError):
        pass
    return None


async def pin_matches(given, rec):
    """Does `given` (None: no PIN) hash to the provisioned hash `rec` (parse_hash's)?"""
    from binascii import hexlify

    n, salt, want = rec
    return same(hexlify(await pbkdf2(given or "", salt, n)).decode(), hexlify(want).decode())


class Locked(ValueError):
    pass


class PinGuard:
    def __init__(self, device, pin_hash):
        self.device = device
        self.pin = parse_hash(pin_hash)
        self.bad_pin = pin_hash is not None and self.pin is None
        self.locked_at = None  # ticks when a saved or new lock started counting this boot

    def lock(self, seconds, fails=None):
        """Lock (or unlock, 0) service actions, and with `fails` set the wrong-PIN counts;
        saved so a reboot does not lift or reset them. (Here, not in Device: the device
        holds its code only while a service action runs.)"""
        dev = self.device
        dev.service_lock = seconds
        if fails is not None:
            dev.pin_fails = fails
        dev._commit(STATE)

    def _lock_left_s(self, now):
        left = self.device.service_lock
        if not left:
            return 0
        if self.locked_at is None:
            self.locked_at = now  # a lock saved before a reboot counts again from boot
        left -= ticks_diff(now, self.locked_at) // 1000
        if left <= 0:
            self.lock(0)
            self.locked_at = None
            return 0
        return left

    async def check(self, given, now):
        """Raise ValueError unless `given` is the PIN and actions are not locked. A PIN that
        is missing or not 6-8 digits is a usage error and costs no try."""
        if not (given and given.isdigit() and 6 <= len(given) <= 8):
            raise ValueError("usage: ... --pin PIN, the service PIN (6-8 digits): no try spent")
        left = self._lock_left_s(now)
        if left:
            raise Locked("service actions locked for %d s after %d wrong PINs" % (left, _TRIES))
        if not self.pin:
            raise ValueError("the provisioned service PIN hash is not pbkdf2-sha256$N$SALT$HASH: "
                             "service actions are off" if self.bad_pin else
                             "no service PIN provisioned: service actions are off")
        dev = self.device
        # The try is saved as a wrong one (the fifth with its lock) before the hash can tell
        # anything, so a power cut during the check cannot take it back; a right PIN clears it.
        fails, locks = dev.pin_fails
        fails += 1
        s = 0
        if fails >= _TRIES:
            s = min(LOCK_S << min(locks, 12), LOCK_MAX_S)
            fails, locks = 0, locks + 1
        self.lock(s, [fails, locks])
        if await pin_matches(given, self.pin):
            self.lock(0, [0, 0])
            return
        if s:
            self.locked_at = now
            raise Locked("wrong PIN: service actions locked for %d s" % s)
        raise ValueError("wrong PIN (%d tries left)" % (_TRIES - fails))


def act(device, words, wall, now):
    """Do the service action `words` (PIN already checked). Returns the answer, or
    ("sync",) / ("reboot",) for the shell to carry out."""
    what = " ".join(words[:2])
    if what in ("filter change", "descale done"):  # the older names of two refills
        words = ["refill", "filter" if words[0] == "filter" else "descaler"]
    if words[0] == "refill":
        from app.supplies import ITEMS

        if len(words) != 2 or words[1] not in ITEMS:
            raise ValueError("refill ITEM; items: %s" % ", ".join(ITEMS))
        ev = device.refill(words[1], "console", now, wall)
        if words[1] == "filter":
            return "filter changed: cycle %d closed at %d ml" % (ev["cycle"], ev["ml"])
        if words[1] == "descaler":
            return "descale recorded: cycle %d closed" % ev["cycle"]
        return "%s refilled: cycle %d closed" % (words[1], ev["cycle"])
    if what == "config set":
        if len(words) != 4 or not words[3].lstrip("-").isdigit():
            raise ValueError("config set KEY VALUE (an integer); keys: %s, %s.KIND" % (
                ", ".join(sorted(protocol.SETTINGS.split()[::4])),  # every 4th word: a name
                ".KIND, ".join(protocol.PER_KIND)))
        new = dict(device.config)
        key, _, kind = words[2].partition(".")
        if kind:  # a per-kind setting: coffee_use.espresso 7
            new[key] = per_kind = dict(new.get(key) or {})
            per_kind[kind] = int(words[3])
        else:
            new[key] = int(words[3])
        reason = protocol.check_settings(new, device.profile.kinds)
        if reason:
            raise ValueError(reason)
        if not device.apply_config(device.config_version, new):
            raise ValueError("could not save the setting")
        _record(device, "config set %s %s" % (words[2], words[3]), wall)
        return "%s = %s" % (words[2], words[3])
    if words == ["service", "unlock"]:  # the shell opens the port (run.py)
        _record(device, "service unlock", wall)
        return ("unlock",)
    if words[:1] in (["sync"], ["reboot"]):
        _record(device, words[0], wall)
        return (words[0],)
    raise ValueError("unknown service action; actions: refill ITEM, filter change, "
                     "descale done, config set KEY VALUE, sync, reboot, service unlock "
                     "(each with --pin PIN)")


def _record(device, action, wall):
    device.add_event({"kind": "service", "action": action, "wall": wall})
