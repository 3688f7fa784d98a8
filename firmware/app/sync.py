# Sync decisions, pure: when to report, what a report holds (built from a snapshot of the
# device the sync task takes), and what a reply asks (a list of actions the sync task applies
# through the device, and so its journal). The sync task (app/synctask.py) does the I/O
# around it. Counters are sent cumulative, never as deltas, so a lost, repeated or reordered
# report can never lose or double usage.
import json
from time import ticks_add, ticks_diff

from app import VERSION, protocol
from app.protocol import setting
from app.supplies import ITEMS


class Schedule:
    """When the next report is due: `report_delay_s` after the first unreported usage
    (coalesced), at least every `sync_interval_s` (up to a tenth sooner: jitter), and after a
    failure an exponential backoff with equal jitter (half the window and a random part of
    the other half) up to `backoff_max_s`, never sooner than a Retry-After. The jitter
    (`rand`) keeps a fleet's reports from moving in step; equal rather than full, so fewer
    of those that failed through an outage come back in its first hour."""

    def __init__(self, now):
        self.due = now  # report once at boot
        self.failures = 0
        self.pending_since = None  # ticks of the first usage not yet reported

    def usage(self, now, cfg):
        if self.pending_since is None:
            self.pending_since = now
        if self.failures == 0:  # while backing off, the backoff decides
            due = ticks_add(self.pending_since, setting(cfg, "report_delay_s") * 1000)
            if ticks_diff(due, self.due) < 0:
                self.due = due

    def is_due(self, now):
        return ticks_diff(now, self.due) >= 0

    def ms_until_due(self, now):
        d = ticks_diff(self.due, now)
        return d if d > 0 else 0

    def sent(self):
        """A report is being built: usage from now on needs another one."""
        self.pending_since = None

    def succeeded(self, now, cfg, more=False, rand=0.0):
        """`more`: the report was one page of several: the next one is due now."""
        self.failures = 0
        every = setting(cfg, "sync_interval_s") * 1000
        self.due = now if more else ticks_add(now, every - int(rand * every) // 10)
        if self.pending_since is not None:  # usage arrived while the report was in flight
            self.usage(now, cfg)

    def failed(self, now, cfg, rand, retry_after_s=0, cap_s=86400):
        """`rand` is a random float in [0, 1): the caller's, so this stays pure. `cap_s`
        bounds the backoff further (a refusal: protocol.REFUSED_RETRY_S)."""
        self.failures += 1
        cap = min(setting(cfg, "backoff_max_s"), cap_s) * 1000
        w = min(cap, 2000 << min(self.failures, 16))
        delay = max(w // 2 + int(rand * w) // 2, 1000, min(retry_after_s, 86400) * 1000)
        self.due = ticks_add(now, delay)
        if self.pending_since is None:
            self.pending_since = now  # the failed report's usage is still unreported


def jitter(x):
    """The next state of a device's jitter (xorshift32; seed() makes the first from its id,
    so a run replays the same and two devices' differ). rand = state / 2**32."""
    x ^= x << 13 & 0xFFFFFFFF
    x ^= x >> 17
    return x ^ (x << 5 & 0xFFFFFFFF)


def seed(device_id):
    x = 2166136261  # FNV-1a of the id: ids a digit apart seed far apart
    for c in device_id:
        x = (x ^ ord(c)) * 16777619 & 0xFFFFFFFF
    return jitter(x | 1)


def changed(now, acked):
    """The counters in `now` that differ from `acked` (what the cloud has stored): the
    cloud keeps the maximum of each, so the rest need not travel again."""
    if acked is None:
        return now
    out = {}
    for k, v in now.items():
        if isinstance(v, dict):
            was = acked.get(k) or {}
            d = {}  # (a loop, not a comprehension: that is code held on the heap)
            for n, x in v.items():
                if was.get(n) != x:
                    d[n] = x
            if d:
                out[k] = d
        elif acked.get(k) != v:
            out[k] = v
    return out


def report(snap, seq, wall, uptime_ms, days, counters, rejected=None, supplies=None,
           update=None):
    """The report body (bytes) from `snap`, the device as the report saw it (boot, applied
    configuration version, outbox events, open orders: app.synctask.snapshot), `counters`
    (cumulative; changed() of synctask.usage()), `days` (Days.buckets()), the config state,
    the consumables that changed and the status of an update in hand (app/update.py)."""
    boot, applied, events, orders = snap
    cfg = {"applied": applied}
    if rejected:
        cfg["rejected"] = {"version": rejected[0], "reason": protocol.cut(rejected[1])}
    body = {
        "seq": seq, "boot": boot, "uptime_ms": uptime_ms, "clock": wall,
        "counters": counters, "days": days, "events": events, "config": cfg,
    }
    if "boots" in counters:  # the boot's first report (or a new boot): say what runs
        body["fw"] = VERSION
    if supplies:
        body["supplies"] = supplies
    if orders:
        body["orders"] = orders
    if update:
        body["update"] = update
    return json.dumps(body, separators=(",", ":")).encode()


def after_conflict(body, seq):
    """The era to go on in after a 409 to report `seq` (docs/protocol.yaml): past the
    reply's `seq`, the highest the cloud has from this device, and past our own. None if
    the reply names a seq no backend may (protocol.MAX_NAMED_SEQ): going past that could
    leave no seq the cloud accepts."""
    try:
        s = json.loads(body)["seq"]
    except (ValueError, KeyError, TypeError, IndexError):
        return protocol.era_after(seq)  # none named: past our own
    if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= protocol.MAX_NAMED_SEQ:
        return None
    return protocol.era_after(max(s, seq))


def refusal(status, body):
    """The sync_refused fault's detail: "<status> <the reply's error, or its text>"."""
    try:
        why = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError, IndexError):
        try:
            why = body.decode()
        except (UnicodeError, AttributeError):
            why = ""
    return protocol.cut("%d %s" % (status, why if isinstance(why, str) else ""))


class BadReply(ValueError):
    pass


def actions(body, sent_ids, applied, kinds, cycle, rejected=None, opened=()):
    """What a 200 reply asks of a device whose applied configuration is version `applied`,
    for brew `kinds`, whose consumable `name` runs cycle `cycle(name)`, whose orders
    `opened` ({order id: status}) are open: (actions, rejected). Actions, in the order to
    apply them: ("ack", event ids; those in `sent_ids` alone), ("orders", {order id:
    status}), ("fault", code, detail) where an open order has a status the protocol does
    not know (kept, ending the cycle's ordering: orders.apply_status) or an update offer is
    malformed (ignored), ("update", offer) of one well-shaped (app/update.py checks the rest),
    ("refill", name) where the owner refilled the cycle that runs, ("config", version,
    settings) checked.
    `rejected`: None, or (version, reason) of a
    configuration refused, to report next time; the one reported so far (the argument) while
    the reply has no configuration (the cloud took the rejection; a report without it would
    take it back). Raises BadReply, asking nothing, if the reply is not one of ours."""
    try:  # (on the device a stream, app.http.Body: no run of the reply's length needed)
        d = json.load(body) if hasattr(body, "readinto") else json.loads(body)
    except ValueError:
        raise BadReply("reply is not JSON")
    if not isinstance(d, dict) or not isinstance(d.get("ack"), list):
        raise BadReply("reply has no ack list")
    acks = []
    for i in d["ack"]:
        if not isinstance(i, int) or isinstance(i, bool):
            raise BadReply("ack holds a non-integer")
        if i in sent_ids:  # never forget an event the cloud was not sent
            acks.append(i)
    cfg = d.get("config")
    if cfg is not None and not (isinstance(cfg, dict) and isinstance(cfg.get("version"), int)):
        raise BadReply("config has no version")
    orders = _names_to(d, "orders", str)
    refill = _names_to(d, "refill", int)
    todo: list = [("ack", acks)]  # (annotated: pyright would type it by its first action)
    if orders:
        todo.append(("orders", orders))
    for oid, st in orders.items():
        if oid in opened and st and st != protocol.UNKNOWN and st not in protocol.STATUSES:
            todo.append(("fault", "order_status", "%s %s" % (oid, st[:protocol.MAX_NAME])))
    up = d.get("update")
    if up is not None:  # (a bad one is a fault, never a BadReply: that would lose the ack)
        todo.append(("update", up) if _offer(up) else ("fault", "update_bad_offer", ""))
    for name, n in refill.items():  # the owner refilled it, said in the cloud
        if name in ITEMS and cycle(name) == n:
            todo.append(("refill", name))
    if cfg is None:
        return todo, rejected
    v = cfg["version"]
    if v == applied:
        return todo, None
    if v < applied and cfg.get(protocol.RESTORED) is not True:
        return todo, (v, "version %d is older than the applied %d" % (v, applied))
    reason = protocol.check_settings(cfg.get("settings"), kinds)
    if reason is None:
        todo.append(("config", v, cfg["settings"]))
        return todo, None
    return todo, (v, reason)


def _names_to(d, key, typ):
    # The reply's d[key]: {name: value of typ}, {} if absent; BadReply if malformed.
    v = d.get(key)
    if v is None or v == []:  # [] : an older cloud's empty "orders"
        return {}
    if not isinstance(v, dict):
        raise BadReply("%s is not an object" % key)
    for x in v.values():
        if not isinstance(x, typ) or isinstance(x, bool):
            raise BadReply("%s holds a bad value" % key)
    return v


def _offer(up):
    # An UpdateOffer's shape: its release a name, a path of ours to download from (no space
    # or control character: it goes into a request line), the signed parts as strings.
    if not isinstance(up, dict):
        return False
    u = up.get("url")
    return (protocol.is_name(up.get("release")) and isinstance(u, str) and 0 < len(u) <= 200
            and u[0] == "/" and min(u) > " " and isinstance(up.get("manifest"), str)
            and isinstance(up.get("signature"), str) and type(up.get("size")) is int)
