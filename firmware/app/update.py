# An update over the air, the device's side (docs/updates.md): the offer checked
# (app/release.py) and kept on flash, the image downloaded in signed ranges into the ROM slot
# the app does not run from (romslot.staging()), each 4 KiB block written as it arrives and
# the progress saved after it (a reboot resumes at the first block not written), its hash
# over what is in flash, the switch at an idle moment (romslot.switch, then a reset), and the
# status each report carries. Loaded by the sync task (app/synctask.py) only while an update
# is in hand, or to read its record at boot; dropped from sys.modules after.
import asyncio
import json
import sys
from hashlib import sha256
from time import ticks_add, ticks_ms

from micropython import const

from app import VERSION, http, protocol, unload
from app.signing import signature

_BLOCK = const(4096)  # the staging slot's block: the one buffer the image passes through
_RANGE = const(32768)  # asked at once, a multiple of _BLOCK: fewer headers on the wire
_RANGE_MS = const(30000)  # one range within this, or it is asked again
_RETRY_MS = const(2000)  # the first wait after a failed range, doubled up to _BACKOFF_MS
_BACKOFF_MS = const(600000)
_task = None  # the download's task, while it runs


def check(offer, key, board, slot_bytes, facts=None):
    """The signed manifest (a dict) if this device takes the release `offer` names, else the
    refusal (a fault code). `slot_bytes`: the staging slot's size (0: none); `facts`:
    (MicroPython's version, its bytecode version), this interpreter's by default."""
    if not slot_bytes:  # nowhere to write it (CPython, a build without ROM slots)
        return "update_flash_failed"
    from binascii import a2b_base64

    from app import release

    im = sys.implementation
    v, mpy = facts or (im.version, getattr(im, "_mpy", 0))
    try:
        sig = a2b_base64(offer["signature"])
    except ValueError:
        sig = b""
    m = release.offer(offer["manifest"].encode(), sig, key, board, v, mpy, VERSION, slot_bytes)
    unload("release")
    if not isinstance(m, str) and [m["version"], m["size"], m["sha256"]] != [
            offer.get("version"), offer.get("size"), offer.get("sha256")]:
        return "update_bad_manifest"  # the device acts on the signed manifest alone
    return m


def status(rec, slot=None):
    """The UpdateStatus a report carries for the record `rec`; `slot`: romslot.status()
    once switched (trial, done or failed: the ROM slots know)."""
    st = rec["st"]
    if st == "switched":
        return slot
    d = {"release": rec["r"], "state": "verifying" if st == "ready" else st}
    if st == "downloading":
        d["at"] = rec["at"]
    elif st == "failed":
        d["reason"] = rec["why"]
    return d


def _slots(fn, *args):
    # romslot.fn(*args): the ROM slots' bootstrap module (None without it), let go of after
    # if it was loaded for this: on the filesystem, its bytecode would sit in the heap beside
    # the download, or beside the app on trial.
    had = "romslot" in sys.modules
    try:
        import romslot
    except ImportError:
        return None
    try:
        return getattr(romslot, fn)(*args)
    finally:
        if not had:
            sys.modules.pop("romslot", None)


def _save(s, rec):
    # (the journal's A/B copies with CRC in the state directory: a cut leaves the last good)
    s.device.state.write("upd", json.dumps(rec).encode())


def boot(s, data):
    """The record read at boot (`data`, bytes): an update in hand goes on, one finished is
    remembered (its release is not taken again)."""
    try:
        rec = json.loads(data)
        rec["st"]
    except (ValueError, KeyError, TypeError):
        return _set(s, None)
    if rec.get("v") == VERSION:  # the new app runs (a cut before the record said so)
        rec = {"r": rec["r"], "st": "switched", "v": VERSION}
    if rec["st"] == "switched":
        # romslot's status, read once: held with the record (a report imports no romslot)
        rec["ss"] = _slots("status")
        if rec["ss"] is None:
            rec["st"] = "gone"  # its end reported (a cut before the record said so)
    _set(s, rec)


def report(s):
    """The status the next report carries."""
    rec = s.upd
    if _task is None:  # (loaded for this alone)
        unload("update")
    return status(rec, rec["st"] == "switched" and rec.get("ss"))


def synced(s, sent, offers, seq):
    """A report carrying `sent` (its update status, or None) was acknowledged by a reply that
    made `offers` (a list) to the report `seq`."""
    rec = s.upd
    if sent and rec:
        st = sent["state"]
        if st == "trial":
            rec["ss"] = _slots("passed")
        elif st == "done" or st == "failed":
            if rec["st"] == "switched":
                _slots("reported")
            rec = {"r": rec["r"], "st": "gone"}
            _save(s, rec)
    if offers and (rec is None or rec["st"] == "gone"):
        o = offers[0]
        if o["release"] != (rec["r"] if rec else s.no):  # one refused or done: not again
            rec = _take(s, o, seq)
    _set(s, rec)


def _take(s, o, seq):
    part = _slots("staging")
    try:  # the release key (512 hex digits): not held while the app runs
        with s.device.state.fs.open("/provision.json", "rb") as f:
            key = bytes.fromhex(json.load(f)["release_key"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        key = None
    m = check(o, key, s.device.profile.board,
              part and part.ioctl(4, 0) * _BLOCK)  # type: ignore  (its blocks: 4 KiB)
    rec = {"r": o["release"], "u": o["url"], "q": seq, "at": 0, "st": "offered"}
    if isinstance(m, str):
        rec["st"], rec["why"] = "failed", m
    else:
        rec.update(v=m["version"], n=m["size"], h=m["sha256"], t=m["trial_s"])
    _save(s, rec)
    return rec


def _set(s, rec):
    # Held (s.upd, the module loaded) while the download's task runs; the record alone while
    # the update waits for its status to be acknowledged (failed, or on trial after the
    # switch: with romslot's status, romslot not loaded), the module imported again for
    # each report.
    global _task
    if rec and rec["st"] == "gone":
        s.no, rec = rec["r"], None
    s.upd = rec
    if rec is None or rec["st"] in ("failed", "switched"):
        unload("update")
    elif _task is None:
        _task = asyncio.create_task(_run(s, rec))


async def _run(s, rec):
    """The download, the verify and the switch, its own task: between the counting's polls
    (each step awaits), until the update is no longer the one in hand."""
    global _task
    wait = _RETRY_MS
    try:
        part = _slots("staging")
        buf = bytearray(_BLOCK)
        while s.upd is rec and rec["st"] in ("offered", "downloading"):
            try:
                why = None if part else "update_flash_failed"
                if not why:
                    why = _range(s, rec, part, buf)  # (CPython's streams need a wait_for)
                    why = await (why if http._MP else asyncio.wait_for(why, _RANGE_MS / 1000))
            except (http.HttpError, OSError, ValueError, asyncio.TimeoutError):
                why = 0  # no answer, cut off, or not our reply: asked again
            if isinstance(why, str):
                rec["st"], rec["why"] = "failed", why
                _save(s, rec)
            elif why is not None:  # 429, 5xx, a network error: back off as a report does
                await asyncio.sleep_ms(max(wait, why * 1000))
                wait = min(wait * 2, _BACKOFF_MS)
            else:
                wait = _RETRY_MS
        if s.upd is rec and rec["st"] == "verifying":
            # The image's SHA-256 over the slot read back a block at a time, yielding between
            # blocks: the slot is left as it is if it is not the manifest's (nothing runs it).
            h = sha256()
            mv = memoryview(buf)
            left = rec["n"]
            n = 0
            while left > 0:
                part.readblocks(n, buf)
                h.update(mv[:min(left, _BLOCK)])
                left -= _BLOCK
                n += 1
                await asyncio.sleep_ms(0)
            if h.digest() == bytes.fromhex(rec["h"]):
                rec["st"] = "ready"
            else:
                rec["st"], rec["why"] = "failed", "update_bad_hash"
            _save(s, rec)
        buf = mv = h = None
        # The switch at an idle moment: no brew running, no report in flight (the counts and
        # the outbox are on flash; the counters saved once more below).
        while s.upd is rec and rec["st"] == "ready":
            d = s.device
            if not (d.meter.pumping() or http._busy):
                d.save(ticks_ms())
                _slots("switch", {"release": rec["r"], "version": rec["v"], "size": rec["n"],
                                  "sha256": rec["h"], "trial_s": rec["t"]})
                rec["st"] = "switched"  # (a cut before this is read at boot: see boot())
                _save(s, {"r": rec["r"], "st": "switched", "v": rec["v"]})  # all a trial needs
                from app import hw

                hw.reset()
            await asyncio.sleep_ms(1000)
    finally:
        _task = None
        if rec["st"] == "failed":
            unload("update")  # (the record alone until its report is acknowledged)


def _request(s, rec, at, end):
    # (host, port, ssl, the request's bytes) for the range at..end: signed like a report,
    # X-Brewmeter-Seq the report whose reply made the offer, the Range in the body's place.
    rng = "bytes=%d-%d" % (at, end)
    scheme, host, port, path = http.parse_url(s.url)
    path += rec["u"]  # (after the cloud URL's own path, as the report's)
    seq = rec["q"]
    head = "GET %s HTTP/1.1\r\nHost: %s\r\nRange: %s\r\n%s: %d\r\n%s: %s\r\n" % (
        path, host, rng, protocol.SEQ_HEADER, seq, protocol.SIG_HEADER,
        signature(s.key, "GET", path, seq, rng.encode()))
    if s.key_id:
        head += "%s: %s\r\n" % (protocol.KEY_HEADER, s.key_id)
    return host, port, s.ssl if scheme == "https" else None, (
        head + "Connection: close\r\n\r\n").encode()


async def _range(s, rec, part, buf):
    """Ask the next range and write it to `part`, a block at a time as it arrives. Returns
    None (written), a refusal (a fault code), or the seconds to wait before asking again."""
    at = rec["at"]  # the first byte not written (a block's start: saved per block)
    end = min(at + _RANGE, rec["n"]) - 1
    host, port, ssl, head = _request(s, rec, at, end)
    c = None
    while http._busy:  # one request at a time (the sync's report first)
        await asyncio.sleep_ms(20)
    http._busy = http._MP
    deadline = ticks_add(ticks_ms(), _RANGE_MS)
    try:
        c = await http._connect(host, port, ssl, deadline)
        await http._send(c, head, deadline)
        head = None  # sent: not held while the range is read
        mv = memoryview(buf)
        cur = [0, 0]  # the headers pass through the block's buffer
        status, length, retry, cr = await http.head_of((c, deadline, buf, mv, cur),
                                                       b"content-range")
        retry = min(retry, 86400)
        if status == 404:
            return "update_withdrawn"  # not (or no longer) offered to this device
        if status == 416:
            return "update_truncated"  # the cloud's image ends before the manifest's size
        if status != 206:
            return retry
        n = end - at + 1
        if cr != b"bytes %d-%d/%d" % (at, end, rec["n"]) or length not in (None, b"%d" % n):
            raise http.HttpError("not the range asked")
        a, b = cur
        got = b - a  # body bytes read with the headers
        if got > n:
            raise http.HttpError("more bytes than asked")
        mv[:got] = mv[a:b]
        while n:
            k = min(n, _BLOCK)
            while got < k:
                r = await http._into(c, mv[got:k], deadline)
                if not r:
                    raise http.HttpError("closed mid-range")
                got += r
            part.writeblocks(at // _BLOCK, buf)
            at += k
            n -= k
            got = 0
            rec["at"] = at
            rec["st"] = "downloading" if at < rec["n"] else "verifying"
            _save(s, rec)  # a reboot resumes here
            await asyncio.sleep_ms(0)
        return None
    finally:
        http._busy = False
        if c:
            await http._close(c)
