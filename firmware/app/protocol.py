# The protocol between a device and the cloud (version 1, docs/protocol.yaml) in one place:
# the firmware and the cloud (host/brewmeter/cloud) both import it, so neither keeps its own
# copy of a limit, a name, a format or a rule. Pure, and small: the device loads it.
from micropython import const

VERSION = const(1)

# Paths (% device id) and headers.
REPORT_PATH = "/v1/devices/%s/report"
HEALTH_PATH = "/v1/health"
SEQ_HEADER = "X-Brewmeter-Seq"
SIG_HEADER = "X-Brewmeter-Signature"
# The id of the key that signed (provisioning's "key_id"; absent: the device's first key).
# The cloud accepts the old key and the new one while a rotation overlaps.
KEY_HEADER = "X-Brewmeter-Key"

# Limits. A report: body, counter fields (after flattening one level), day buckets, events,
# open orders, supplies; integers in [0, MAX_INT]; field names of NAME_CHARS, 1..MAX_NAME.
MAX_BODY = const(16384)
MAX_FIELDS = const(128)
MAX_DAYS = const(64)  # the device pages older buckets into the following reports
MAX_EVENTS = const(64)
MAX_ORDERS = const(16)
MAX_SUPPLIES = const(16)
MAX_NAME = const(32)
MAX_FW = const(32)  # the firmware version string
MAX_TEXT = const(200)  # any reason or message the device sends (config rejection, fault detail)
# The provisioning file flash.sh writes (/provision.json), as the device keeps it: read with
# this bound at boot, refused by flash.sh over it (a CA chain of a few certificates fits).
MAX_PROVISION = const(8192)
MAX_INT = 9007199254740991  # 2**53 - 1: what every JSON parser reads exactly
CLOCK_MIN = const(946684800)  # 2000-01-01: an earlier clock was never set
DAY_AHEAD = const(1)  # a bucket dated further ahead of the cloud's day is not billed
# A reply: body, status or header line, header count. The cloud keeps every reply within
# them (desired settings are checked against SETTINGS, so they stay far below MAX_REPLY).
MAX_REPLY = const(4096)
MAX_LINE = const(512)
MAX_HEADERS = const(32)
REPLY_MS = const(10000)  # the whole reply within this, or the report failed
MAX_KINDS = const(4)  # brew kinds a per-kind setting may name (a board's pump inputs)

# Day buckets (a report's `days`), one of: {"day": D, ...} usage on UTC day D (days since
# 1970); {"boot": b, "at_ms": t, ...} usage while the clock was unknown, from uptime t of boot
# b; {"fold": f, "last": D, ...} older buckets the device could not keep apart (offline past
# its history), folded into one, f unique per device, D the newest day in it (0: none known):
# the cloud places it on D (else the day it arrives) and marks it estimated. The other
# fields are usage counts ("brews_total", ...), absolute: the cloud keeps each one's maximum.
BUCKET_KEYS = ("day", "boot", "at_ms", "fold", "last")

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"

# Replies. 200: applied (or a retry of an applied one). 409: a seq conflict (see era_after).
# 429 and 5xx: try later (Retry-After, whole seconds, is honoured). Any other status is a
# refusal of the report itself: after refusals for REFUSED_S without a 200 the device raises
# the fault "sync_refused" ("<status> <reason>", the reply's "error" cut to MAX_TEXT) and
# from then on asks every REFUSED_RETRY_S (never less often), until a 200.
REFUSED_S = const(86400)
REFUSED_RETRY_S = const(3600)


def refused(status):
    return status != 200 and status != 409 and status != 429 and status < 500


# A reply's `config`: null, or {"version": v, "settings": {...}}, v an integer. The device
# applies only a version above the one it runs, unless the object also says "restored":
# true (the cloud's data were restored from a backup and its versions went back); any
# other lower version is refused as "version v is older than the applied one".
RESTORED = "restored"

# Sequence numbers: seq = era * SEQ_PER_BOOT + n, n counting this boot's reports. The era is
# the boot counter plus a floor offset the device keeps in flash, raised after a 409 to pass
# the cloud's highest seq (the device lost its state): seqs grow across reboots, no write.
SEQ_PER_BOOT = const(1 << 20)


def seq(era, n):
    return era * SEQ_PER_BOOT + n


# A 409 names the highest seq the backend accepted from the device (one it sent), and the
# device goes on in era_after() of it: so a backend names at most MAX_NAMED_SEQ. From the era
# after it, any count the 32-bit boot counter reaches still keeps every seq within MAX_INT.
# The device refuses a 409 naming more, as a refusal of its reports.
MAX_NAMED_SEQ = 4503599627370495  # 2**52 - 1


def era_after(s):
    """The first era whose seqs are all above seq `s`."""
    return s // SEQ_PER_BOOT + 1


def message(method, path, s, body):
    """What X-Brewmeter-Signature signs: HMAC-SHA256(key, message), lowercase hex."""
    return b"%s\n%s\n%d\n" % (method.encode(), path.encode(), s) + body


# Orders: one per consumable and depletion cycle, id "<item>-<cycle>": a device never uses one
# twice (its cycles only grow; after its consumables' state was lost they go on from the seq
# era x 2**16, app/supplies.py, and a fault "supplies_reset" says so). Statuses: "requested"
# until the cloud answers, then the cloud's word; "unknown": the cloud never received it.
# (The id's rule is checked by the cloud only: brewmeter.cloud.shared.parse_order.)
# (The order of STATUSES is stored on the device: append only.)
OPEN = ("requested", "placed", "needs_approval", "shipped")
STATUSES = OPEN + ("declined", "delivered")
UNKNOWN = "unknown"
# Any other status word (say "cancelled") ends ordering for the cycle like "declined"; the
# device keeps it (shown on the console; as OTHER after a reboot) and raises the fault
# "order_status" ("<order id> <status>"), which the next report carries.
OTHER = "other"


def order_id(item, cycle):
    return "%s-%d" % (item, cycle)


def is_name(s):
    # (strip: no generator per call, no code object of its own on the heap)
    return isinstance(s, str) and 0 < len(s) <= MAX_NAME and not s.strip(NAME_CHARS)


def cut(text):
    """`text` within MAX_TEXT characters, as every reason and message the device sends."""
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 3] + "..."


# The settings the owner and the maker may change (remote configuration from the cloud, or
# `config set` on the service console): " name minimum maximum default", all integers, in one
# string (one object on the device's heap; a dict of tuples was an object a setting).
# limits() reads one (checking the name), setting() a default (a name from the code, not
# checked: it runs after every brew); SETTINGS.split()[::4] names them all.
SETTINGS = (
    # Billing is by day and orders raise their own report, so usage can wait: two hours of
    # coalescing keeps a typical day to a few small reports (wire_bytes_per_day).
    " sync_interval_s 300 86400 86400"  # report at least this often, even with no usage
    " report_delay_s 5 14400 7200"  # after usage, wait this long to batch more into one
    " backoff_max_s 60 86400 14400"  # the longest wait between failed attempts
    # Consumables (app/supplies.py). Coffee comes in packs of coffee_pack units (pods, or
    # grams of beans); a brew of each kind uses coffee_use.KIND units.
    " coffee_pack 1 100000 100"
    " water_hardness_dh 1 40 10"  # German degrees; the filter and descaling follow it
    " descale_ldh 100 100000 1500"  # litres x degrees between descales (150 L at 10)
    " tablets_pack 1 1000 10"  # cleaning tablets per pack ...
    " clean_brews 10 10000 200"  # ... one every this many brews
    # Orders (app/orders.py): the owner's rules, kept by the device even offline (and by
    # the cloud, from the desired config).
    " lead_days 1 60 5"  # order when the forecast says it runs out sooner than this
    " auto_coffee 0 1 1"  # auto-order, per consumable
    " auto_filter 0 1 1"
    " auto_descaler 0 1 1"
    " auto_tablets 0 1 1"
    " ask_first 0 1 0"  # 1: every order waits for the owner's approval in the cloud
    " orders_month 0 100 6"  # at most this many orders per calendar month (UTC)
    " long_brew_pct 120 1000 200 "  # a brew this % of its kind's usual time is a fault
)
# Settings that hold a number per brew kind, as {"kind": n}: (minimum, maximum).
PER_KIND = {"coffee_use": (0, 1000)}


def limits(name):
    """(minimum, maximum, default) of setting `name`, or None: no such setting."""
    s = SETTINGS
    # (a name starts with a letter: never one of the numbers)
    i = s.find(" %s " % name) if is_name(name) and name[0].isalpha() else -1
    if i < 0:
        return None
    i += len(name) + 2
    lo, hi, d, _ = s[i:i + 24].split(" ", 3)  # (three numbers fit in 23 characters)
    return int(lo), int(hi), int(d)


def setting(settings, name):
    """The value of setting `name` (a name in the firmware's code): `settings`' own, else
    its default. (Looked up after every brew: the default read straight from SETTINGS.)"""
    v = settings.get(name)
    if v is None:
        # The bare name, no " name " made per call: no setting's name is part of another's,
        # and the code reads whole names (tests/test_sync.py checks both).
        i = SETTINGS.find(name)
        if i < 0:
            raise KeyError(name)
        i += len(name)
        v = int(SETTINGS[i:i + 24].split(" ", 4)[3])  # " minimum maximum default"
    return v


def _int_in(v, lo, hi):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _short(v):
    # repr of a value, bounded: a reason must fit MAX_TEXT whatever it quotes
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def check_settings(settings, kinds=None):
    """None if `settings` (a dict) is acceptable, else the reason it is not (at most
    MAX_TEXT characters). `kinds`: the board's brew kinds, which per-kind settings may name
    (None: any MAX_KINDS names)."""
    if not isinstance(settings, dict):
        return "settings must be an object"
    for k, v in settings.items():
        if k in PER_KIND:
            lo, hi = PER_KIND[k]
            if not isinstance(v, dict) or len(v) > MAX_KINDS:
                return "%s must be an object of at most %d kind: number" % (k, MAX_KINDS)
            for kind, n in v.items():
                if not is_name(kind) or (kinds is not None and kind not in kinds):
                    return "%s: no brew kind %s" % (k, _short(kind))
                if not _int_in(n, lo, hi):
                    return "%s.%s must be an integer in %d..%d, got %s" % (
                        k, kind, lo, hi, _short(n))
            continue
        lim = limits(k)
        if lim is None:
            return "unknown setting %s" % _short(k)
        lo, hi, _ = lim
        if not _int_in(v, lo, hi):
            return "%s must be an integer in %d..%d, got %s" % (k, lo, hi, _short(v))
    return None
